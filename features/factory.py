"""The one entry point from a backbone name or a recorded spec to a feature extractor.

:func:`create_extractor` builds the Keras network (:mod:`features.networks`) and
hands it to the runtime that runs it (:mod:`features.runtimes`): extraction,
prediction, serving, the Ray engine and saved models all get their networks here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from features.backbones import weights_version
from features.errors import UserInputError
from features.networks import build_network, rebuild_network
from features.runtimes import TENSORFLOW, compile_extractor, resolve_runtime
from features.settings import NetworkSettings
from features.spec import FeatureExtractor, FeatureSpec


def create_extractor(
    network: str | NetworkSettings | FeatureSpec | None = None,
    *,
    calibration_paths: Sequence[str] | None = None,
    **choices: Any,
) -> FeatureExtractor:
    """The extractor of the user's choices, run by their runtime.

    Parameters
    ----------
    network : NetworkSettings, str or FeatureSpec, optional
        The settings (:class:`features.settings.NetworkSettings`, which documents every
        choice); or a backbone name, with the other choices as keywords
        (``create_extractor("vgg16", weights="none")`` is
        ``create_extractor(NetworkSettings("vgg16", weights="none"))``); or the
        :class:`FeatureSpec` recorded with features: then the network that made them is
        rebuilt exactly (precision, calibration and all), and only ``runtime`` may be
        chosen besides. None: the default settings and ``choices``.
    calibration_paths : sequence of str, optional
        For int8: the training images the quantization is calibrated on
        (:func:`features.runtimes.calibration_sample`); for a spec, needed only when
        its quantized network is not in the cache.
    **choices
        Fields of :class:`features.settings.NetworkSettings`, when ``network`` is not
        settings already.

    Returns
    -------
    FeatureExtractor
        Its ``spec`` records every choice, the runtime included.

    Raises
    ------
    UserInputError
        For an unknown backbone, layer, pooling, precision or runtime, an input size
        under the backbone's minimum, weights that cannot be found or loaded, int8
        without calibration images, or a spec whose network cannot be rebuilt as
        recorded.
    TypeError
        Settings and keyword choices together, or a keyword that is not a setting.
    """
    unknown = sorted(set(choices) - set(NetworkSettings.field_names()))
    if unknown:
        raise TypeError(f"create_extractor() got unknown settings: {', '.join(unknown)}")
    if isinstance(network, FeatureSpec):
        spec = network
        extra = [name for name, value in choices.items() if name != "runtime"
                 and (value != "imagenet" if name == "weights" else value)]
        if extra:
            raise UserInputError(
                f"a recorded feature spec fixes {', '.join(extra)}; pass the backbone's name "
                "to choose them, or drop them")
        precision = spec.precision
        runtime = resolve_runtime(choices.get("runtime"), precision)
        # OpenVINO converts the float32 network; its int8 is quantized from that.
        network_precision = precision if runtime == TENSORFLOW else "float32"
        built = rebuild_network(replace(spec, runtime=TENSORFLOW,
                                        precision=network_precision, calibration=""))
        calibration = spec.calibration
    else:
        if isinstance(network, NetworkSettings):
            if choices:
                raise TypeError("create_extractor() takes NetworkSettings or keyword "
                                "choices, not both")
            settings = network
        else:
            if choices.get("precision") is None:  # None asks for the default, float32
                choices.pop("precision", None)
            settings = NetworkSettings(**({"backbone": network} if network else {}),
                                       **choices)
        precision = settings.precision
        runtime = resolve_runtime(settings.runtime, precision)
        network_precision = precision if runtime == TENSORFLOW else "float32"
        built = build_network(replace(settings, precision=network_precision))
        calibration = ""
    return compile_extractor(
        built, runtime, precision, calibration_paths=calibration_paths,
        calibration=calibration,
        weights_version=weights_version(built.spec.backbone, built.spec.weights))
