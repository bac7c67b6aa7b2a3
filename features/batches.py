"""Decode image files a few batches ahead of the network, in low-priority threads.

Extraction and batch prediction both consume :func:`iter_computed_batches` (the
local engine) or the same per-batch work run elsewhere (:func:`compute_batch`, the
Ray engine): while the network computes one batch, the next ones are decoded,
resized and preprocessed, so the CPU or GPU never waits for JPEG decoding, and at
most ``workers + 1`` batches are in memory whatever the number of files.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from features.devices import available_cores
from features.errors import UserInputError
from features.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    load_images,
    nvjpeg_decoder,
)
from features.neighbours import SIGNATURE_SIDE, pixel_signatures

Preprocess = Callable[[np.ndarray], np.ndarray]
#: Decoding threads: a count, or ``"auto"`` (:func:`resolve_workers`).
Workers = int | str
AUTO = "auto"


def resolve_workers(workers: Workers) -> int:
    """Decoding threads for ``workers``: ``"auto"`` is one per core this process may use.

    Threads, not processes: Pillow releases the GIL while it decodes and resizes, and
    ``bench/decode.py`` measured threads as fast as processes per worker on 320-px and
    12-megapixel JPEGs, without copying every batch between processes.

    Raises
    ------
    UserInputError
        For anything but a positive count or ``"auto"``.
    """
    if isinstance(workers, str) and workers.strip().lower() == AUTO:
        return available_cores()
    try:
        count = int(workers)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (isinstance(workers, float) and not workers.is_integer()):
        raise UserInputError(f"--workers must be 'auto' or a whole number of at least 1, "
                             f"got {workers!r}")
    return count


@dataclass
class BatchPositions:
    """Where the files of one batch are, and which of them decoded.

    Attributes
    ----------
    begin, end : int
        Positions of the batch in the file list.
    good : list of int
        Positions (within the batch) of the files that decoded, in order.
    bad : list of (int, str)
        Position within the batch and reason of each file that did not decode.
    """

    begin: int
    end: int
    good: list[int]
    bad: list[tuple[int, str]]

    @property
    def good_positions(self) -> np.ndarray:
        """Positions of the decoded files in the whole list."""
        return np.asarray(self.good, dtype=np.int64) + self.begin


@dataclass
class DecodedBatch(BatchPositions):
    """Files ``begin:end`` of the list, decoded: ``x`` holds the preprocessed pixels of
    the files in ``good``, one row each."""

    x: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0, 3), np.float32))
    #: :func:`features.neighbours.pixel_signatures` of the decoded files, from their
    #: pixels before preprocessing (the same whatever the network); None if not known
    signatures: np.ndarray | None = None


def _lower_thread_priority() -> None:
    # Decoding runs at the lowest priority so it fills the gaps between the network's
    # ops instead of preempting its threads: on a CPU with few cores a preempted
    # compute thread stalls all the others at the next synchronisation point.
    # Where this is not possible (not Linux, not permitted), decoding runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


_DEVICE_DECODER: list = []  # [decoder or None], found once per process


def device_decoder():
    """The GPU JPEG decoder of :func:`features.images.nvjpeg_decoder`, looked up once.

    Only under the torch backend: torch then holds the GPU already; under jax or
    TensorFlow a second framework on the same GPU would fight it for memory.
    """
    from features.devices import TORCH, active_backend

    if not _DEVICE_DECODER:
        _DEVICE_DECODER.append(nvjpeg_decoder() if active_backend() == TORCH else None)
    return _DEVICE_DECODER[0]


def decode_batch(paths: Sequence[str], size: int, max_pixels: int, preprocess: Preprocess
                 ) -> tuple[list[int], np.ndarray, list[tuple[int, str]], np.ndarray | None]:
    """Decode and preprocess ``paths``; returns ``(good, x, bad, signatures)`` as in
    :class:`DecodedBatch`.

    Large JPEGs go to the GPU's decoder where there is one (:func:`device_decoder`).
    """
    good, images, cells, bad = [], [], [], []
    decoded = load_images(paths, size, max_pixels=max_pixels, device_decoder=device_decoder(),
                          cells=SIGNATURE_SIDE)
    for i, result in enumerate(decoded):
        if isinstance(result, ImageDecodeError):
            bad.append((i, result.reason))
        else:
            images.append(result[0])
            cells.append(result[1])
            good.append(i)
    if not images:
        return good, np.empty((0, size, size, 3), dtype=np.float32), bad, None
    # of the picture as decoded, before its resize to the network's input: the same
    # signature whatever the network (features.neighbours)
    signatures = pixel_signatures(np.stack(cells))
    pixels = np.stack(images)
    return good, preprocess(pixels), bad, signatures


def iter_decoded_batches(paths: Sequence[str], *, size: int, batch_size: int,
                         preprocess: Preprocess, start: int = 0, workers: Workers = AUTO,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[DecodedBatch]:
    """Yield every batch of ``paths[start:]`` decoded, in order, decoding ahead in threads.

    Parameters
    ----------
    paths : sequence of str
    size : int
        Side of the square images.
    batch_size : int
        Files per batch; batches start at ``start``, ``start + batch_size``...
    preprocess : callable
        Applied to each batch of uint8 images in the decoding thread.
    start : int, default=0
        First file (a resumed run starts after its committed files).
    workers : int or "auto", default="auto"
        Decoding threads (:func:`resolve_workers`); ``workers + 1`` batches (at least 2)
        are decoded ahead.
    max_pixels : int
        Larger images are refused as possible decompression bombs.
    """
    workers = resolve_workers(workers)
    total = len(paths)
    begins = iter(range(start, total, batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tlearn-decode",
                            initializer=_lower_thread_priority) as pool:
        pending: deque = deque()

        def submit_next() -> None:
            begin = next(begins, None)
            if begin is not None:
                end = min(begin + batch_size, total)
                pending.append((begin, end, pool.submit(
                    decode_batch, paths[begin:end], size, max_pixels, preprocess)))

        for _ in range(max(2, workers + 1)):
            submit_next()
        while pending:
            begin, end, future = pending.popleft()
            good, x, bad, signatures = future.result()
            submit_next()
            yield DecodedBatch(begin, end, good, bad, x=x, signatures=signatures)


@dataclass
class ComputedBatch(BatchPositions):
    """Files ``begin:end`` of the list, decoded and computed (features or class scores):
    ``values`` holds one row of results per file in ``good``.

    What an extraction or batch prediction consumes, whichever engine computed it.
    """

    values: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    #: :func:`features.neighbours.pixel_signatures` of the decoded rows; None where the
    #: engine does not return them (stored as zeros: never grouped as near-duplicates)
    signatures: np.ndarray | None = None


Compute = Callable[[np.ndarray], np.ndarray]


def compute_decoded(batch: DecodedBatch, compute: Compute) -> ComputedBatch:
    """The per-batch work of every engine: ``compute`` on the decoded rows of ``batch``."""
    values = np.asarray(compute(batch.x)) if batch.good else np.empty((0, 0), np.float32)
    return ComputedBatch(batch.begin, batch.end, batch.good, batch.bad, values=values,
                         signatures=batch.signatures if batch.good else None)


def compute_batch(paths: Sequence[str], begin: int, *, size: int, preprocess: Preprocess,
                  compute: Compute, max_pixels: int = DEFAULT_MAX_PIXELS) -> ComputedBatch:
    """Decode ``paths`` (files ``begin:begin + len(paths)`` of a list) and compute them.

    What a remote worker runs on one batch; :func:`iter_computed_batches` does the
    same on one machine, decoding ahead in threads.
    """
    good, x, bad, signatures = decode_batch(paths, size, max_pixels, preprocess)
    return compute_decoded(DecodedBatch(begin, begin + len(paths), good, bad, x=x,
                                        signatures=signatures), compute)


def iter_computed_batches(paths: Sequence[str], *, size: int, batch_size: int,
                          preprocess: Preprocess, compute: Compute, start: int = 0,
                          workers: Workers = AUTO, max_pixels: int = DEFAULT_MAX_PIXELS
                          ) -> Iterator[ComputedBatch]:
    """The local engine: every batch of ``paths[start:]`` decoded ahead in threads, then
    computed here, in order (parameters as :func:`iter_decoded_batches`)."""
    for batch in iter_decoded_batches(paths, size=size, batch_size=batch_size,
                                      preprocess=preprocess, start=start, workers=workers,
                                      max_pixels=max_pixels):
        yield compute_decoded(batch, compute)
