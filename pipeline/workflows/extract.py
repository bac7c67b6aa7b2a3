"""Stage 1: ``tlearn extract``, a dataset's images to a feature store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.backbones import get_backbone
from features.batches import Workers
from features.extraction import (
    DeviceCallback,
    ExtractionResult,
    ProgressCallback,
    extract_features,
)
from features.neighbours import NEAR_DUPLICATE_THRESHOLD
from features.runtimes import DEFAULT_CALIBRATION_IMAGES
from features.settings import NetworkSettings
from pipeline.config import (
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
    exclusions: dict | None = None


@dataclass(frozen=True)
class ExtractSettings:
    """Everything ``tlearn extract`` is asked: the data, its split, the network, the store.

    Attributes
    ----------
    data : path-like
        Folder with a sub-folder per class, or a CSV of ``path,label``.
    out : path-like, optional
        Store path; default ``artifacts/features/<dataset>__<backbone>[__layer][__pooling]``
        ``[__taps][__mirror].h5`` (see :func:`pipeline.config.default_store_path`).
    network : NetworkSettings
        The network (:class:`features.settings.NetworkSettings`).
    test_size, val_size : float
        Shares of each class held out for test and validation.
    seed : int
        Seed of the split (and of the choice of int8 calibration images).
    calibration_images : int
        For int8: how many training images calibrate the quantization.
    batch_size : int
        Images per forward pass.
    workers : int or "auto"
        Threads decoding images ahead of the network (``"auto"``: one per core).
    compression : {"none", "lzf", "gzip"}
        HDF5 compression of the features.
    overwrite : bool
        Replace a finished store made differently (only once the new one is complete).
    engine, address : str
        Where the features are computed: ``local`` (here) or ``ray`` (the cluster at
        ``address``; see :func:`pipeline.engines.open_engine`). The store is the same.
    near_duplicates : bool
        Join images whose features are near-identical (resized, re-encoded, slightly
        cropped copies) into one group before the split is recorded, so a copy never
        sits in train while its photo is in test (:mod:`features.neighbours`).
    exclude : path-like, optional
        CSV of images to leave out or relabel (:func:`pipeline.datasets.read_exclusions`),
        e.g. the issues.csv of ``tlearn check``; recorded in the store.
    """

    data: str | Path
    out: str | Path | None = None
    network: NetworkSettings = field(default_factory=NetworkSettings)
    test_size: float = DEFAULT_TEST_SIZE
    val_size: float = 0.0
    seed: int = DEFAULT_SEED
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: Workers = "auto"
    compression: str = "none"
    overwrite: bool = False
    engine: str = "local"
    address: str | None = None
    near_duplicates: bool = True
    exclude: str | Path | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ExtractSettings:
        """The settings of flat options named as the fields of this class and of
        :class:`NetworkSettings` (the ``tlearn extract`` flags).

        Raises
        ------
        TypeError
            An option that is no setting of either.
        """
        network = set(NetworkSettings.field_names())
        return cls(network=NetworkSettings(**{k: v for k, v in options.items() if k in network}),
                   **{k: v for k, v in options.items() if k not in network})


def extract_dataset(settings: ExtractSettings, *, progress: ProgressCallback | None = None,
                    on_device: DeviceCallback | None = None) -> ExtractReport:
    """Stage 1: find the images of ``settings.data``, split them, and write their features
    to a store.

    ``progress(done, total)`` is called after every batch, ``on_device(line)`` once with
    what computes when work starts. The store records the split
    settings beside the network's :class:`features.spec.FeatureSpec` (see
    :func:`features.extraction.extract_features`).

    Returns
    -------
    ExtractReport
    """
    s, network = settings, settings.network
    images, dataset = load_dataset(s.data, test_size=s.test_size, val_size=s.val_size,
                                   seed=s.seed, exclude=s.exclude)
    excluded = {} if dataset.exclusions is None else {
        "exclude_file": dataset.exclusions["file"],
        "n_excluded": dataset.exclusions["excluded"],
        "n_relabelled": dataset.exclusions["relabelled"]}
    out = s.out
    if out is None:
        out = default_store_path(dataset_name(s.data), get_backbone(network.backbone).name,
                                 network.layer, network.pooling, taps=network.taps,
                                 mirror=network.mirror)
    with open_engine(s.engine, s.address) as chosen:
        result = extract_features(
            images, out, network, calibration_images=s.calibration_images,
            calibration_seed=s.seed, batch_size=s.batch_size, compression=s.compression,
            overwrite=s.overwrite, workers=s.workers, progress=progress, on_device=on_device,
            feature_batches=chosen.feature_batches,
            near_duplicates=NEAR_DUPLICATE_THRESHOLD if s.near_duplicates else None,
            extra_attrs={"test_size": s.test_size, "val_size": s.val_size, "seed": s.seed,
                         "n_ignored_files": len(dataset.ignored),
                         "n_groups": len(set(images.group_ids.tolist())),
                         "n_duplicate_files": dataset.grouping.duplicates,
                         "n_augmented_copies": dataset.grouping.augmented, **excluded},
        )
    return ExtractReport(result=result, class_counts=dataset.class_counts(),
                         ignored=dataset.ignored, grouping=dataset.grouping,
                        exclusions=dataset.exclusions)
