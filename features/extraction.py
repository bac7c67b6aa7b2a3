"""Stream labelled images through a feature extractor into a feature store.

Decoding and resizing run in a small thread pool a few batches ahead of the
network, so the CPU or GPU computing features never waits for JPEG decoding;
at most ``prefetch`` batches are in memory at once, whatever the dataset size.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from features.backbones import get_backbone
from features.batches import Compute, ComputedBatch, Workers, iter_computed_batches, resolve_workers
from features.devices import (
    active_backend,
    backend_versions,
    is_device_out_of_memory,
    out_of_memory_line,
)
from features.errors import UserInputError
from features.factory import create_extractor
from features.images import DEFAULT_MAX_PIXELS
from features.integrity import check_output_path, file_digest, output_lock, settings_key
from features.neighbours import (
    GROUPING_RULE,
    SIGNATURE_RULE,
    NearDuplicateGrouping,
    join_near_duplicates,
    near_duplicate_pairs,
)
from features.networks import normalize_weights
from features.runtimes import (
    DEFAULT_CALIBRATION_IMAGES,
    OPENVINO,
    calibration_sample,
    resolve_runtime,
    runtime_device,
    runtime_versions,
)
from features.settings import NetworkSettings
from features.spec import FeatureExtractor, predict_in_buckets
from features.store import (
    H5PY_VERSION,
    SPLIT_NAMES,
    FeatureStoreWriter,
    partial_path,
    read_store_attrs,
)

ProgressCallback = Callable[[int, int], None]
#: Hears what computes (:meth:`features.devices.Device.describe`) once work starts.
DeviceCallback = Callable[[str], None]

#: Where the features of the files come from, a batch at a time and in order:
#: ``source(extractor, paths, start=..., batch_size=..., workers=..., max_pixels=...)``
#: yields a :class:`features.batches.ComputedBatch` of features for every batch of
#: ``paths[start:]``. :func:`local_feature_batches` computes them here; an engine of
#: ``pipeline`` (Ray) computes them elsewhere with the same per-batch work.
FeatureBatches = Callable[..., Iterator[ComputedBatch]]


def _features_in_buckets(extractor: FeatureExtractor, batch_size: int, x: np.ndarray
                         ) -> np.ndarray:
    return np.concatenate(predict_in_buckets(extractor.predict_preprocessed, x, batch_size))


def feature_compute(extractor: FeatureExtractor, batch_size: int) -> Compute:
    """The per-batch work of extraction: features of a preprocessed batch.

    A short batch is padded to the next power of two, not to ``batch_size``, so
    memory follows the images (4 images at ``--batch-size 512`` run as 4), while
    at most log2(batch_size) + 1 batch shapes are ever compiled.
    """
    return partial(_features_in_buckets, extractor, batch_size)


def local_feature_batches(extractor: FeatureExtractor, paths: Sequence[str], *, start: int,
                          batch_size: int, workers: Workers, max_pixels: int
                          ) -> Iterator[ComputedBatch]:
    """The local engine: decode ahead in ``workers`` threads, compute in this process."""
    return iter_computed_batches(paths, size=extractor.spec.input_size, batch_size=batch_size,
                                 preprocess=extractor.preprocess_input,
                                 compute=feature_compute(extractor, batch_size), start=start,
                                 workers=workers, max_pixels=max_pixels)


@dataclass(frozen=True)
class LabeledImages:
    """The images to extract, with labels, the split each one belongs to, and its group.

    Attributes
    ----------
    paths : sequence of str
        Absolute image paths, in a deterministic order.
    labels : numpy.ndarray of int
        Index into ``label_names`` for each path.
    label_names : list of str
        Class names.
    split : numpy.ndarray of uint8
        Index into :data:`features.store.SPLIT_NAMES` for each path.
    source : str
        Where the list came from (folder or CSV), for the record.
    groups : numpy.ndarray of int64, optional
        Images of one group (augmented copies of one photo, byte-identical files)
        share a group id and always share a split; each image is its own group
        when None.
    """

    paths: Sequence[str]
    labels: np.ndarray
    label_names: list[str]
    split: np.ndarray
    source: str = ""
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def group_ids(self) -> np.ndarray:
        """The group of every image (its own position when no groups were given)."""
        if self.groups is None:
            return np.arange(len(self.paths), dtype=np.int64)
        return np.asarray(self.groups, dtype=np.int64)

    def fingerprint(self) -> str:
        """SHA-256 over every path, label, split, group, file size and modification time.

        The modification time (nanoseconds) makes an edited photo of the same size
        count as changed, so a resume never mixes rows of the old and new file.
        """
        digest = hashlib.sha256()
        for path, label, split, group in zip(self.paths, self.labels, self.split,
                                             self.group_ids, strict=True):
            try:
                stat = Path(path).stat()
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            digest.update(
                f"{path}\t{self.label_names[label]}\t{split}\t{group}\t{size}\t{mtime}\n".encode())
        return digest.hexdigest()


@dataclass
class ExtractionResult:
    """What an extraction run did."""

    path: Path
    rows: int
    feature_dim: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_processed: int = 0
    resumed_rows: int = 0
    up_to_date: bool = False
    near_duplicate_groups: int | None = None
    near_duplicates_moved: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the features depend on (the Keras backend's)."""
    import PIL

    return {"python": platform.python_version(), "numpy": np.__version__,
            **backend_versions(), "h5py": H5PY_VERSION, "pillow": PIL.__version__}


def _settings_key(fingerprint: str, images: LabeledImages, extractor: FeatureExtractor,
                  compression: str, near_duplicates: float | None) -> str:
    return settings_key({
        "fingerprint": fingerprint,
        "spec": extractor.spec.to_dict(),
        "compression": compression,
        "label_names": list(images.label_names),
        "signatures": SIGNATURE_RULE,
        # decides the recorded groups and split: another threshold is another store
        **({"near_duplicates": {**GROUPING_RULE, "pixels": near_duplicates}}
               if near_duplicates is not None else {}),
    })


def extract_features(
    images: LabeledImages,
    out: str | Path,
    network: NetworkSettings | None = None,
    *,
    extractor: FeatureExtractor | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_seed: int = 0,
    batch_size: int = 32,
    compression: str = "none",
    overwrite: bool = False,
    workers: Workers = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    extra_attrs: dict | None = None,
    progress: ProgressCallback | None = None,
    on_device: DeviceCallback | None = None,
    feature_batches: FeatureBatches | None = None,
    near_duplicates: float | None = None,
) -> ExtractionResult:
    """Compute features of ``images`` and write them to the HDF5 store ``out``.

    The store is written to ``<out>.partial`` and moved into place when
    complete. Rerunning after an interruption resumes from the last flushed row
    when settings and images are unchanged. Unusable images are skipped and
    recorded with their reason.

    Parameters
    ----------
    images : LabeledImages
        Paths, labels, class names and split of every image.
    out : path-like
        Store to write (``.h5``).
    network : NetworkSettings, optional
        The network to build (:class:`features.settings.NetworkSettings`; its defaults
        when neither it nor ``extractor`` is given).
    extractor : FeatureExtractor, optional
        A network already built, instead of ``network`` (not with it).
    calibration_images : int, default=300
        For int8: training-split images (never test ones) the quantization is
        calibrated on, chosen at random with ``calibration_seed``; their paths are
        recorded in the store so the same network can be rebuilt to predict.
    calibration_seed : int, default=0
    batch_size : int, default=32
        Images per forward pass.
    compression : {"none", "lzf", "gzip"}, default="none"
        HDF5 compression of the features.
    overwrite : bool, default=False
        Replace a finished store (only once the new one is complete) or discard
        an unfinished one made with other settings.
    workers : int or "auto", default="auto"
        Threads decoding images ahead of the network; ``"auto"``: one per core this
        process may use (:func:`features.batches.resolve_workers`).
    max_pixels : int
        Larger images are refused as possible decompression bombs.
    extra_attrs : dict, optional
        More attributes to record (dataset source, split settings...).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch.
    on_device : callable, optional
        Called once with the line saying what computes (``"GPU:0 NVIDIA H100 80GB HBM3,
        jax"``) when the network is built and work starts; the store records it as
        ``device``.
    feature_batches : callable, optional
        Where the features are computed (:data:`FeatureBatches`); default
        :func:`local_feature_batches`. Whatever computes them, this process writes
        the store, in file order, with the same commit and resume semantics.
    near_duplicates : float, optional
        Once every feature is written and before the store is finished, near-duplicate
        rows (pixel signatures this alike once aligned, whatever the network:
        :func:`features.neighbours.near_duplicate_pairs`) join one group, and a group split
        between train and test goes whole to the split most of it was in. None: groups
        and split stay as ``images`` gives them.

    Returns
    -------
    ExtractionResult
        With ``up_to_date=True`` and nothing recomputed when ``out`` already holds
        exactly these features.

    Raises
    ------
    UserInputError
        Bad settings, an existing store made differently (without ``overwrite``),
        or no usable image at all. Nothing is written in these cases. Also the device
        running out of memory (one line suggesting a smaller ``batch_size``): the store
        is not published, and a rerun resumes after the rows committed.
    TypeError
        Both ``network`` and ``extractor``: one decides the network.
    """
    if network is not None and extractor is not None:
        raise TypeError("extract_features() takes network settings or a ready extractor, "
                        "not both")
    if batch_size < 1:
        raise UserInputError(f"batch size must be at least 1, got {batch_size}")
    workers = resolve_workers(workers)
    if len(images) == 0:
        raise UserInputError("no images to extract")
    out = Path(out)
    check_output_path(out)
    calibration_attrs: dict = {}
    fingerprint = images.fingerprint()  # stats every file: once per run
    request_attrs: dict = {}
    if extractor is None:
        network = network or NetworkSettings()
        precision = network.precision
        runtime = resolve_runtime(network.runtime, precision)
        # The request as given, answered before the network is built (seconds, and
        # TensorFlow's import): a store made by the same request over the same files is
        # up to date. The settings key below stays the authority for everything else.
        weights_name = normalize_weights(network.weights)
        config = get_backbone(network.backbone)
        request_attrs = {"request_key": settings_key({
            # every network setting, so a new one is part of the request without a word here
            **{f.name: getattr(network, f.name) for f in fields(network)},
            "fingerprint": fingerprint, "label_names": list(images.label_names),
            "compression": compression, "backbone": config.name, "signatures": SIGNATURE_RULE,
            **({"near_duplicates": {**GROUPING_RULE, "pixels": near_duplicates}}
               if near_duplicates is not None else {}),
            # The facts that settle what None asks for: a changed default is a new request.
            "defaults": [(c.input_size, c.default_pooling, c.stage_taps, c.preprocessing)
                         for c in (config, *config.members)],
            "weights": weights_name, "weights_sha256": file_digest(weights_name)
            if weights_name not in ("imagenet", "random") else "",
            "runtime": runtime, "backend": active_backend(),
            "calibration": [calibration_images, calibration_seed] if precision == "int8"
            else None})}
        existing = read_store_attrs(out) if out.exists() and not overwrite else None
        if existing is not None and existing.get("request_key") == request_attrs["request_key"]:
            return ExtractionResult(out, int(existing["rows_committed"]),
                                    int(existing["feature_dim"]), up_to_date=True)
        calibration_paths = None
        if precision == "int8":
            calibration_paths = calibration_sample(
                images.paths, images.split == SPLIT_NAMES.index("train"), calibration_images,
                calibration_seed)
            calibration_attrs = {"calibration_paths": json.dumps(calibration_paths),
                                 "calibration_seed": calibration_seed}
        # The runtime resolved above: the store is made by the runtime its request names.
        extractor = create_extractor(replace(network, runtime=runtime),
                                     calibration_paths=calibration_paths)
    key = _settings_key(fingerprint, images, extractor, compression, near_duplicates)

    # Held until the store is in place: a second run on this --out is refused at once
    # instead of resuming, discarding or publishing the partial file this one writes.
    with output_lock(out):
        if out.exists():
            existing = read_store_attrs(out)
            if existing is not None and existing.get("settings_key") == key and not overwrite:
                return ExtractionResult(out, int(existing["rows_committed"]),
                                        extractor.spec.feature_dim, up_to_date=True)
            if not overwrite:
                raise UserInputError(
                    f"{out} already exists with other settings or images; pass --overwrite to "
                    "replace it, or --out to write elsewhere"
                )
        device = runtime_device(extractor.spec.runtime, extractor.spec.precision)
        if on_device:
            on_device(device.describe())
        stale = partial_path(out)
        if overwrite and stale.is_file() and not stale.is_symlink():
            stale.unlink()  # anything else there is refused by the writer, not removed

        attrs = {
            **extractor.spec.to_dict(),
            "fingerprint": fingerprint,
            "source": images.source,
            "n_images_listed": len(images),
            "library_versions": json.dumps(library_versions() | (
                runtime_versions(int8=extractor.spec.precision == "int8")
                if extractor.spec.runtime == OPENVINO else {})),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device.describe(),
            **calibration_attrs,
            **request_attrs,
            **(extra_attrs or {}),
        }
        writer = FeatureStoreWriter(
            out, planned_paths=images.paths, attrs=attrs, settings_key=key,
            feature_dim=extractor.spec.feature_dim, label_names=list(images.label_names),
            compression=compression,
        )
        start_item = writer.items_done
        resumed_rows = writer.resumed_rows
        total = len(images)
        source = feature_batches or local_feature_batches
        paths = list(images.paths)
        groups = images.group_ids
        t0 = time.perf_counter()
        try:
            if progress:
                progress(start_item, total)
            for batch in source(extractor, paths, start=start_item, batch_size=batch_size,
                                workers=workers, max_pixels=max_pixels):
                if batch.good:
                    idx = batch.good_positions
                    writer.append(batch.values, images.labels[idx], images.split[idx], idx,
                                  groups[idx], signatures=batch.signatures)
                writer.skip([batch.begin + i for i, _ in batch.bad], [r for _, r in batch.bad])
                writer.commit(batch.end)
                if progress:
                    progress(batch.end, total)
            if writer.rows == 0:
                writer.close()
                partial_path(out).unlink(missing_ok=True)
                raise UserInputError(
                    f"none of the {total} images could be read; check the files "
                    "(see 'tlearn extract' output for reasons)"
                )
            elapsed = time.perf_counter() - t0
            skipped_store = writer.skipped_items()
            rows = writer.rows
            # the rate of this run's images (decoded and through the network), for 'compare'
            rate = (total - start_item) / elapsed if elapsed > 0 else 0.0
            found: dict = {}
            joined = None
            if near_duplicates is not None:
                joined = _join_near_duplicates(writer, near_duplicates)
                found = {"near_duplicate_threshold": near_duplicates,
                         "n_groups": len(np.unique(joined.groups)),
                         "n_near_duplicate_groups": joined.near_duplicate_groups,
                         "n_near_duplicates_moved": joined.moved}
            writer.finalize({"extraction_seconds": elapsed, "n_skipped": len(skipped_store),
                             "extraction_images_per_second": rate, **found})
        except Exception as exc:
            writer.close()
            if is_device_out_of_memory(exc):
                raise UserInputError(out_of_memory_line(batch_size, device)) from exc
            raise
        except BaseException:
            writer.close()
            raise
        return ExtractionResult(
            path=out, rows=rows, feature_dim=extractor.spec.feature_dim, skipped=skipped_store,
            seconds=elapsed, images_processed=total - start_item, resumed_rows=resumed_rows,
            near_duplicate_groups=joined.near_duplicate_groups if joined else None,
            near_duplicates_moved=joined.moved if joined else 0,
        )


def _join_near_duplicates(writer: FeatureStoreWriter, threshold: float
                          ) -> NearDuplicateGrouping:
    """Join near-identical rows' groups and record the groups and split of every row."""
    _features, signatures, groups, split = writer.committed_rows()
    first, second, _ = near_duplicate_pairs(signatures, threshold=threshold)
    joined = join_near_duplicates(first, second, groups, split)
    writer.record_groups(joined.groups, joined.split)
    return joined
