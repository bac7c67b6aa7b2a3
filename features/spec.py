"""What determines an image's features (:class:`FeatureSpec`), and the extractor that makes them.

A :class:`FeatureSpec` is recorded in every feature store and every saved model:
two equal specs give equal features, and :func:`features.factory.create_extractor`
rebuilds the network from one. A :class:`FeatureExtractor` is that network behind
one interface, whatever runs it (:mod:`features.runtimes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

#: ``cls_avg``: a vision transformer's class token and the mean of its patch tokens,
#: concatenated (DINOv2's linear evaluation); ``avg`` and ``max`` of a transformer pool
#: its patch tokens. Each backbone's own choices: :attr:`BackboneConfig.poolings`.
POOLINGS = ("flatten", "avg", "max", "cls_avg")
#: What each image's features are computed from: the image, or the mean of the image's
#: and its left-right mirror's features (twice the compute).
VIEWS = ("image", "image+mirror")
#: Compute precisions of the Keras network itself (float16: mixed precision, for GPUs);
#: ``features.runtimes`` adds ``int8`` for OpenVINO (every runtime's own list is in its
#: registry entry).
PRECISIONS = ("float32", "bfloat16", "float16")


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
    precision : {"float32", "bfloat16", "float16", "int8"}
        Compute precision of the network. bfloat16, float16 and int8 features are not
        float32 ones rounded: a classifier must see features of the precision it was
        trained on. Features are stored as float32 whatever the precision.
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
    backend : {"tensorflow", "jax", "torch"}
        The Keras backend that computed the network (:mod:`features.devices`). Like the
        runtime it is recorded, not compared: float32 features of the backends agree
        within :data:`features.devices.BACKEND_MIXING_TOLERANCE` and may be mixed.
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
    # Stores and models written before backends existed were computed by TensorFlow.
    backend: str = "tensorflow"

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
