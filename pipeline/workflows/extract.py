"""Stage 1: ``tlearn extract``, a dataset's images to a feature store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from features.backbones import get_backbone
from features.extraction import ExtractionResult, ProgressCallback, extract_features
from features.runtimes import DEFAULT_CALIBRATION_IMAGES
from pipeline.config import (
    DEFAULT_BACKBONE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_SIZE,
    default_store_path,
)
from pipeline.datasets import Grouping, dataset_name, load_dataset
from pipeline.engines import open_engine


@dataclass
class ExtractReport:
    """Outcome of :func:`extract_dataset`: the extraction, what discovery left out, and
    how images were grouped for the split."""

    result: ExtractionResult
    class_counts: dict[str, int]
    ignored: list[tuple[str, str]] = field(default_factory=list)
    grouping: Grouping | None = None


def extract_dataset(
    data: str | Path,
    *,
    out: str | Path | None = None,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    taps: str | None = None,
    mirror: bool = False,
    precision: str = "float32",
    runtime: str | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compression: str = "none",
    test_size: float = DEFAULT_TEST_SIZE,
    val_size: float = 0.0,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    workers: int = 2,
    progress: ProgressCallback | None = None,
    engine: str = "local",
    address: str | None = None,
) -> ExtractReport:
    """Stage 1: find the images of ``data``, split them, and write their features to a store.

    Parameters
    ----------
    data : path-like
        Folder with a sub-folder per class, or a CSV of ``path,label``.
    out : path-like, optional
        Store path; default ``artifacts/features/<dataset>__<backbone>[__layer][__pooling]``
        ``[__taps][__mirror].h5`` (see :func:`pipeline.config.default_store_path`).
    test_size, val_size : float
        Shares of each class held out for test and validation.
    seed : int
        Seed of the split (and of the choice of int8 calibration images).
    runtime, calibration_images
        What runs the network, and for int8 how many training images calibrate it
        (:func:`features.extraction.extract_features`).
    engine, address : str
        Where the features are computed: ``local`` (here) or ``ray`` (the cluster at
        ``address``; see :func:`pipeline.engines.open_engine`). The store is the same.
    Other parameters are those of :func:`features.extract_features`.

    Returns
    -------
    ExtractReport
    """
    backbone = get_backbone(backbone).name  # fail on a typo before scanning a large folder
    images, dataset = load_dataset(data, test_size=test_size, val_size=val_size, seed=seed)
    if out is None:
        out = default_store_path(dataset_name(data), backbone, layer, pooling, taps=taps,
                                 mirror=mirror)
    with open_engine(engine, address) as chosen:
        result = extract_features(
            images, out, backbone=backbone, weights=weights, input_size=input_size,
            layer=layer, pooling=pooling, taps=taps, mirror=mirror, precision=precision,
            runtime=runtime, calibration_images=calibration_images, calibration_seed=seed,
            batch_size=batch_size, compression=compression, overwrite=overwrite,
            workers=workers, progress=progress, feature_batches=chosen.feature_batches,
            extra_attrs={"test_size": test_size, "val_size": val_size, "seed": seed,
                         "n_ignored_files": len(dataset.ignored),
                         "n_groups": len(set(images.group_ids.tolist())),
                         "n_duplicate_files": dataset.grouping.duplicates,
                         "n_augmented_copies": dataset.grouping.augmented},
        )
    return ExtractReport(result=result, class_counts=dataset.class_counts(),
                         ignored=dataset.ignored, grouping=dataset.grouping)
