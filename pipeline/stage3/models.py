"""The networks of stage 3: a backbone under a new head, and MiniVGGNet from scratch.

BatchNorm layers of a backbone are never trainable, in either phase, so their
statistics stay those of ImageNet while the layers around them are trained. That
flag, not the ``training=False`` of the backbone's call, is what keeps them in
inference mode: under ``fit`` Keras 3 passes ``training=True`` to nested models
whatever the functional graph recorded (keras-team/keras#20285), and a
BatchNorm layer updates its statistics only when it is trainable as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from features.errors import UserInputError
from pipeline.augmentation import AugmentationConfig, build_augmentation


@dataclass(frozen=True)
class HeadConfig:
    """The new top: pooling -> Dense(units, ReLU) -> Dropout -> softmax."""

    pooling: str = "avg"
    units: int = 256
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.pooling not in ("avg", "flatten"):
            raise UserInputError(f"unknown head pooling {self.pooling!r}; choose avg or flatten")
        if self.units < 1 or not 0 <= self.dropout < 1:
            raise UserInputError("head units must be >= 1 and dropout in [0, 1)")


def find_unfreeze_index(base: Any, name: str) -> int:
    """Index of the first layer of ``base`` to train: exact name, or first name with that prefix.

    ``"all"`` unfreezes everything (index 0).
    """
    import difflib

    if name == "all":
        return 0
    names = [layer.name for layer in base.layers]
    if name in names:
        return names.index(name)
    prefixed = [i for i, n in enumerate(names) if n.startswith(name)]
    if prefixed:
        return prefixed[0]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see 'tlearn backbones --layers'"
    raise UserInputError(f"--unfreeze {name!r} is not a layer of {base.name}; {hint} "
                         "(or pass --unfreeze all)")


def build_finetune_model(backbone: str, n_classes: int, *, weights: str = "imagenet",
                         input_size: int | None = None, head: HeadConfig | None = None,
                         augmentation: AugmentationConfig | None = None, seed: int = 0
                         ) -> tuple[Any, Any]:
    """Backbone without its top, frozen, under a new dense head, with augmentation in front.

    Returns
    -------
    (keras.Model, keras.Model)
        The whole model and its base (for freezing and unfreezing).
    """
    import keras
    from keras import layers

    from features.backbones import get_backbone
    from features.networks import build_base_model

    head = head or HeadConfig()
    size = int(input_size or get_backbone(backbone).input_size)
    base = build_base_model(backbone, weights=weights, input_size=size)
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    augmenter = build_augmentation(augmentation or AugmentationConfig(), seed)
    if augmenter is not None:
        x = augmenter(x)
    x = base(x, training=False)
    x = (layers.GlobalAveragePooling2D(name="head_pool") if head.pooling == "avg"
         else layers.Flatten(name="head_flatten"))(x)
    x = layers.Dense(head.units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(head.dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_finetune"), base


def build_minivggnet(n_classes: int, *, input_size: int = 64,
                     augmentation: AugmentationConfig | None = None, seed: int = 0) -> Any:
    """MiniVGGNet: two CONV-RELU-BN x2 -> POOL -> DROPOUT blocks (32, 64), Dense 512, softmax."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    augmenter = build_augmentation(augmentation or AugmentationConfig(), seed)
    if augmenter is not None:
        x = augmenter(x)
    for block, filters in enumerate((32, 64), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", name=f"block{block}_conv{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, name="fc")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.Dropout(0.5, name="fc_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="minivggnet")


def base_of(model: Any) -> Any:
    """The backbone inside a model of :func:`build_finetune_model` (or one loaded back)."""
    import keras

    return next(layer for layer in model.layers
                if isinstance(layer, keras.Model) and layer.name != "augmentation")


def freeze_base(model: Any) -> None:
    """Phase 1: only the head trains."""
    base_of(model).trainable = False


def unfreeze_base_from(model: Any, layer_name: str) -> None:
    """Phase 2: train the backbone from ``layer_name`` (see :func:`find_unfreeze_index`) up.

    BatchNorm layers stay frozen wherever they are, inside nested blocks too: their
    statistics come from ImageNet, and the small batches of fine-tuning would only
    blur them.
    """
    import keras

    base = base_of(model)
    base.trainable = True
    start = find_unfreeze_index(base, layer_name)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start
        for inner in _with_nested(layer):
            if isinstance(inner, keras.layers.BatchNormalization):
                inner.trainable = False


def _with_nested(layer: Any):
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _with_nested(inner)


def without_augmentation(model: Any) -> Any:
    """The same network for inference, sharing weights, minus the augmentation block.

    The random layers are the identity at inference; dropping them makes the saved
    model loadable by plain Keras, with nothing of tlearn imported.
    """
    import keras

    layers = [layer for layer in model.layers[1:] if layer.name != "augmentation"]
    if len(layers) == len(model.layers) - 1:
        return model
    inputs = keras.Input(model.input_shape[1:], name="image")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def with_features(model: Any) -> Any:
    """The same network, sharing weights, giving its class probabilities and after them,
    in the same rows, the features its last layer classifies (the penultimate layer's
    output): what the "unknown" score of a stage 3 model is computed from. One output,
    so every runtime and export runs it as it runs the plain network."""
    import keras

    last = model.layers[-1]
    return keras.Model(model.inputs, keras.layers.Concatenate(name="scores_and_features")(
        [model.outputs[0], last.input]), name=model.name)


def scale_to_unit(images: np.ndarray) -> np.ndarray:
    """Preprocessing of the from-scratch network: pixels / 255."""
    return np.asarray(images, dtype=np.float32) / 255.0
