"""One library call per command: what ``tlearn <command>`` runs after parsing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from features.backbones import get_backbone
from features.extraction import ExtractionResult, ProgressCallback, extract_features
from pipeline.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_SIZE,
    default_store_path,
)
from pipeline.datasets import dataset_name, load_dataset


@dataclass
class ExtractReport:
    """Outcome of :func:`extract_dataset`: the extraction plus what discovery left out."""

    result: ExtractionResult
    n_listed: int
    class_counts: dict[str, int]
    ignored: list[tuple[str, str]] = field(default_factory=list)


def extract_dataset(
    data: str | Path,
    *,
    out: str | Path | None = None,
    backbone: str = "vgg16",
    weights: str | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    precision: str = "float32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    compression: str = "none",
    test_size: float = DEFAULT_TEST_SIZE,
    val_size: float = 0.0,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    workers: int = 2,
    progress: ProgressCallback | None = None,
) -> ExtractReport:
    """Stage 1: find the images of ``data``, split them, and write their features to a store.

    Parameters
    ----------
    data : path-like
        Folder with a sub-folder per class, or a CSV of ``path,label``.
    out : path-like, optional
        Store path; default ``artifacts/features/<dataset>__<backbone>[__layer][__pooling].h5``.
    test_size, val_size : float
        Shares of each class held out for test and validation.
    seed : int
        Seed of the split.
    Other parameters are those of :func:`features.extract_features`.

    Returns
    -------
    ExtractReport
    """
    get_backbone(backbone)  # fail on a typo before scanning a large folder
    images, dataset = load_dataset(data, test_size=test_size, val_size=val_size, seed=seed)
    if out is None:
        out = default_store_path(dataset_name(data), backbone, layer, pooling)
    result = extract_features(
        images, out, backbone=backbone, weights=weights, input_size=input_size, layer=layer,
        pooling=pooling, precision=precision, batch_size=batch_size, compression=compression,
        overwrite=overwrite, workers=workers, progress=progress,
        extra_attrs={"test_size": test_size, "val_size": val_size, "seed": seed,
                     "n_ignored_files": len(dataset.ignored)},
    )
    return ExtractReport(result=result, n_listed=len(images),
                         class_counts=dataset.class_counts(), ignored=dataset.ignored)
