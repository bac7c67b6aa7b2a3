"""Stream labelled images through a feature extractor into a feature store.

Decoding and resizing run in a small thread pool a few batches ahead of the
network, so the CPU or GPU computing features never waits for JPEG decoding;
at most ``prefetch`` batches are in memory at once, whatever the dataset size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from features.backbones import FeatureExtractor, build_feature_extractor
from features.errors import UserInputError
from features.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from features.store import H5PY_VERSION, FeatureStoreWriter, partial_path, read_store_attrs

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class LabeledImages:
    """The images to extract, with labels and the split each one belongs to.

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
    """

    paths: Sequence[str]
    labels: np.ndarray
    label_names: list[str]
    split: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """SHA-256 over every path, its label, split and file size: changes when the data does."""
        digest = hashlib.sha256()
        for path, label, split in zip(self.paths, self.labels, self.split, strict=True):
            try:
                size = Path(path).stat().st_size
            except OSError:
                size = -1
            digest.update(f"{path}\t{self.label_names[label]}\t{split}\t{size}\n".encode())
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

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the features depend on."""
    import keras
    import PIL
    import tensorflow as tf

    return {"python": platform.python_version(), "numpy": np.__version__,
            "tensorflow": tf.__version__, "keras": keras.__version__, "h5py": H5PY_VERSION,
            "pillow": PIL.__version__}


def _settings_key(fingerprint: str, images: LabeledImages, extractor: FeatureExtractor,
                  compression: str) -> str:
    payload = {
        "fingerprint": fingerprint,
        "spec": extractor.spec.to_dict(),
        "precision": extractor.precision,
        "compression": compression,
        "label_names": list(images.label_names),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _lower_thread_priority() -> None:
    # Decoding runs at the lowest priority so it fills the gaps between the network's
    # ops instead of preempting its threads: on a CPU with few cores a preempted
    # compute thread stalls all the others at the next synchronisation point.
    # Where this is not possible (not Linux, not permitted), decoding runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _decode_batch(paths: Sequence[str], size: int, max_pixels: int, preprocess):
    good, images, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, size, max_pixels=max_pixels))
            good.append(i)
        except ImageDecodeError as exc:
            bad.append((i, exc.reason))
    x = preprocess(np.stack(images)) if images else np.empty((0, size, size, 3), dtype=np.float32)
    return good, x, bad


def extract_features(
    images: LabeledImages,
    out: str | Path,
    *,
    backbone: str = "vgg16",
    weights: str | Path | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    precision: str = "float32",
    batch_size: int = 32,
    compression: str = "none",
    overwrite: bool = False,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    extra_attrs: dict | None = None,
    extractor: FeatureExtractor | None = None,
    progress: ProgressCallback | None = None,
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
    backbone, weights, input_size, layer, pooling, precision
        See :func:`features.backbones.build_feature_extractor`.
    batch_size : int, default=32
        Images per forward pass.
    compression : {"none", "lzf", "gzip"}, default="none"
        HDF5 compression of the features.
    overwrite : bool, default=False
        Replace a finished store (only once the new one is complete) or discard
        an unfinished one made with other settings.
    workers : int, default=2
        Threads decoding images ahead of the network.
    max_pixels : int
        Larger images are refused as possible decompression bombs.
    extra_attrs : dict, optional
        More attributes to record (dataset source, split settings...).
    extractor : FeatureExtractor, optional
        A prebuilt extractor (its settings win over the backbone arguments).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch.

    Returns
    -------
    ExtractionResult
        With ``up_to_date=True`` and nothing recomputed when ``out`` already holds
        exactly these features.

    Raises
    ------
    UserInputError
        Bad settings, an existing store made differently (without ``overwrite``),
        or no usable image at all. Nothing is written in these cases.
    """
    if batch_size < 1:
        raise UserInputError(f"batch size must be at least 1, got {batch_size}")
    if len(images) == 0:
        raise UserInputError("no images to extract")
    out = Path(out)
    if extractor is None:
        extractor = build_feature_extractor(
            backbone, weights=weights, input_size=input_size, layer=layer, pooling=pooling,
            precision=precision,
        )
    fingerprint = images.fingerprint()  # stats every file: once per run
    key = _settings_key(fingerprint, images, extractor, compression)

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
    if overwrite and partial_path(out).exists():
        partial_path(out).unlink()

    attrs = {
        **extractor.spec.to_dict(),
        "precision": extractor.precision,
        "fingerprint": fingerprint,
        "source": images.source,
        "n_images_listed": len(images),
        "library_versions": json.dumps(library_versions()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra_attrs or {}),
    }
    writer = FeatureStoreWriter(
        out, attrs=attrs, settings_key=key, feature_dim=extractor.spec.feature_dim,
        label_names=list(images.label_names), compression=compression,
    )
    start_item = writer.items_done
    resumed_rows = writer.resumed_rows
    total = len(images)
    size = extractor.spec.input_size
    paths = list(images.paths)
    t0 = time.perf_counter()
    try:
        if progress:
            progress(start_item, total)
        starts = range(start_item, total, batch_size)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tlearn-decode",
                                initializer=_lower_thread_priority) as pool:
            pending: deque = deque()
            batch_starts = iter(starts)
            prefetch = max(2, workers + 1)

            def submit_next() -> None:
                begin = next(batch_starts, None)
                if begin is not None:
                    end = min(begin + batch_size, total)
                    pending.append((begin, end, pool.submit(
                        _decode_batch, paths[begin:end], size, max_pixels,
                        extractor.preprocess_input)))

            for _ in range(prefetch):
                submit_next()
            while pending:
                begin, end, future = pending.popleft()
                good, x, bad = future.result()
                submit_next()
                if good:
                    feats = extractor.predict_preprocessed(x, batch_size)
                    idx = np.asarray(good) + begin
                    writer.append(feats, images.labels[idx], [paths[i] for i in idx],
                                  images.split[idx], idx)
                writer.skip([paths[begin + i] for i, _ in bad], [r for _, r in bad])
                writer.commit(end)
                if progress:
                    progress(end, total)
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
        writer.finalize({"extraction_seconds": elapsed, "n_skipped": len(skipped_store)})
    except BaseException:
        writer.close()
        raise
    return ExtractionResult(
        path=out, rows=rows, feature_dim=extractor.spec.feature_dim, skipped=skipped_store,
        seconds=elapsed, images_processed=total - start_item, resumed_rows=resumed_rows,
    )
