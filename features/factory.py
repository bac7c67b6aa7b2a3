"""The one entry point from a backbone name or a recorded spec to a feature extractor.

:func:`create_extractor` builds the Keras network (:mod:`features.networks`) and
hands it to the runtime that runs it (:mod:`features.runtimes`): extraction,
prediction, serving, the Ray engine and saved models all get their networks here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from features.backbones import DEFAULT_BACKBONE, weights_version
from features.errors import UserInputError
from features.networks import build_network, rebuild_network
from features.runtimes import TENSORFLOW, compile_extractor, resolve_runtime
from features.spec import FeatureExtractor, FeatureSpec


def create_extractor(
    backbone: str | FeatureSpec = DEFAULT_BACKBONE,
    *,
    weights: str | Path | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    precision: str | None = None,
    taps: str | Sequence[str] | None = None,
    mirror: bool = False,
    runtime: str | None = None,
    calibration_paths: Sequence[str] | None = None,
) -> FeatureExtractor:
    """The extractor of ``backbone`` with the user's choices, run by ``runtime``.

    Parameters
    ----------
    backbone : str or FeatureSpec, default="efficientnet_lite0"
        A registry name (:data:`features.backbones.BACKBONES`), names joined by ``+``,
        or the :class:`FeatureSpec` recorded with features: then the network that made
        them is rebuilt exactly (precision, calibration and all), and only
        ``runtime`` and ``calibration_paths`` may be given besides.
    weights, input_size, layer, pooling, taps, mirror
        See :func:`features.networks.build_network`.
    precision : {"float32", "bfloat16", "int8"}, optional
        float32 by default (a spec's own); bfloat16 runs in TensorFlow only, int8 in
        OpenVINO only.
    runtime : {"tensorflow", "openvino"}, optional
        What runs the network; :func:`features.runtimes.resolve_runtime` by default.
        float32 features of either runtime may be mixed
        (:data:`features.runtimes.MIXING_TOLERANCE`).
    calibration_paths : sequence of str, optional
        For int8: the training images the quantization is calibrated on
        (:func:`features.runtimes.calibration_sample`); for a spec, needed only when
        its quantized network is not in the cache.

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
    """
    if isinstance(backbone, FeatureSpec):
        spec = backbone
        given = {"weights": weights != "imagenet", "input_size": input_size, "layer": layer,
                 "pooling": pooling, "precision": precision, "taps": taps, "mirror": mirror}
        extra = [name for name, value in given.items() if value]
        if extra:
            raise UserInputError(
                f"a recorded feature spec fixes {', '.join(extra)}; pass the backbone's name "
                "to choose them, or drop them")
        precision = spec.precision
        runtime = resolve_runtime(runtime, precision)
        # OpenVINO converts the float32 network; its int8 is quantized from that.
        network_precision = precision if runtime == TENSORFLOW else "float32"
        network = rebuild_network(replace(spec, runtime=TENSORFLOW,
                                          precision=network_precision, calibration=""))
        calibration = spec.calibration
    else:
        precision = precision or "float32"
        runtime = resolve_runtime(runtime, precision)
        network_precision = precision if runtime == TENSORFLOW else "float32"
        network = build_network(backbone, weights=weights, input_size=input_size, layer=layer,
                                pooling=pooling, precision=network_precision, taps=taps,
                                mirror=mirror)
        calibration = ""
    return compile_extractor(
        network, runtime, precision, calibration_paths=calibration_paths,
        calibration=calibration,
        weights_version=weights_version(network.spec.backbone, network.spec.weights))
