"""The HDF5 feature store: the one module of tlearn that imports h5py.

Layout of a store (``.h5``):

``features``  float32 (rows, feature_dim), chunked by rows, optionally compressed
``labels``    int32 (rows,), index into ``label_names``
``label_names`` utf-8 strings (classes,)
``paths``     utf-8 strings (rows,), absolute image paths
``split``     uint8 (rows,), index into the ``split_names`` attribute
``source_index`` int64 (rows,), position of the image in the planned list
``groups``    int64 (rows,), images that must share a split (augmented copies of one
              photo, byte-identical files, near-duplicates) share a group id
``signatures`` float16 (rows, 768), each image as 16 x 16 pixels, centred and scaled
              (:func:`features.neighbours.pixel_signatures`; zeros: not known). Stores
              written before version 3 have none
``skipped/paths``, ``skipped/reasons``, ``skipped/source_index``: files that could not be
used, why, and their position in the planned list

Attributes record the feature specification (backbone, layer, pooling, input
size, preprocessing, weights), library versions, creation time and a
fingerprint of the image list. A store is written to ``<out>.partial`` and
renamed into place only when complete, so a file at the final path is always
whole; the partial file is resumable.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from features.errors import UserInputError
from features.integrity import publish_file
from features.neighbours import SIGNATURE_SIZE
from features.spec import FeatureSpec

H5PY_VERSION = h5py.__version__
STORE_FORMAT = "tlearn-features"
STORE_VERSION = 3  # 2: per-row groups; 3: pixel signatures
SPLIT_NAMES = ("train", "test", "val")
COMPRESSIONS = ("none", "lzf", "gzip")
_STR = h5py.string_dtype("utf-8")
_TARGET_CHUNK_BYTES = 1 << 20
_ROW_DATASETS = ("features", "labels", "split", "source_index", "groups", "signatures")
_SKIPPED_INDEX, _SKIPPED_REASON = "skipped/source_index", "skipped/reason_bytes"
_REASON_BYTES = 512
_FINAL_DATASETS = ("paths", "skipped/paths", "skipped/reasons")
# Room kept free beyond the rows being written: HDF5 allocates whole chunks (up to
# 1 MiB here) and rewrites its metadata at every flush. A full disk met inside HDF5
# leaves the file inconsistent, so a batch that might not fit is not started.
_SPACE_MARGIN = 4 << 20


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _allocate(fd: int, size: int) -> None:
    """Give the file ``fd`` ``size`` bytes of real disk space."""
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError) as exc:  # not on macOS; refused by some file systems
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        block = b"\xff" * (1 << 20)  # not zeros, which a compressing file system would drop
        for _ in range(size >> 20):
            os.write(fd, block)
        os.fsync(fd)


def _write_failure_reason(exc: BaseException) -> str:
    """The operating system's words from an HDF5 write error (its message is a page)."""
    found = re.search(r"error message = '([^']*)'", str(exc))
    if found:
        return found.group(1)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _reason_bytes(reason: str) -> bytes:
    """UTF-8 of ``reason`` cut to the fixed field without splitting a character."""
    return str(reason).encode("utf-8")[:_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished store for ``path`` is written."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _rows_per_chunk(feature_dim: int) -> int:
    return max(1, min(1024, _TARGET_CHUNK_BYTES // (4 * max(1, feature_dim))))


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class FeatureStoreWriter:
    """Append-only writer of a store at ``<path>.partial``, resumable after a crash.

    Rows only become part of the store at :meth:`commit`; on reopening, anything
    written after the last commit is discarded, so a run killed mid-batch resumes
    from the last flushed row without duplicates or garbage.

    While the run goes on only fixed-size values are appended (numbers, and the
    reasons of skipped files as fixed-length bytes): variable-length strings live
    in HDF5's global heap, which a process killed between two flushes leaves
    inconsistent with the file. Paths are therefore written once, by
    :meth:`finalize`, from the planned list and each row's ``source_index``.

    Parameters
    ----------
    path : path-like
        Final path of the store; the writer works on ``<path>.partial``.
    planned_paths : sequence of str
        Every input item, in order; rows and skipped files refer to it by index.
    attrs : dict
        Metadata recorded as HDF5 attributes (spec, versions, fingerprint...).
    settings_key : str
        Digest of everything that determines the content; a partial file with
        another key is not resumed.
    feature_dim : int
        Values per row.
    label_names : list of str
        Class names, in label order.
    compression : {"none", "lzf", "gzip"}, default="none"
        HDF5 filter for ``features``.
    """

    def __init__(self, path, *, planned_paths, attrs: dict[str, Any], settings_key: str,
                 feature_dim: int, label_names: list[str], compression: str = "none") -> None:
        if compression not in COMPRESSIONS:
            raise UserInputError(
                f"unknown compression {compression!r}; choose one of: {', '.join(COMPRESSIONS)}"
            )
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.reserve = self.partial.with_name(self.partial.name + ".reserve")
        self.planned_paths = [str(p) for p in planned_paths]
        self.resumed_rows = 0
        self.items_done = 0
        if self.partial.is_symlink() or (self.partial.exists() and not self.partial.is_file()):
            raise UserInputError(
                f"{self.partial} exists and is not a file tlearn left (a link, folder or "
                "special file); remove it or choose another --out")
        self._file = None
        self._dsets: dict[str, h5py.Dataset] = {}
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._reserve_space()
        try:
            if self.partial.exists():
                self._file = self._reopen(settings_key)
            else:
                with self._writing():
                    self._file = self._create(attrs, settings_key, feature_dim, label_names,
                                              compression)
        except BaseException:
            self.reserve.unlink(missing_ok=True)
            raise

    def _reopen(self, settings_key: str) -> h5py.File:
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as exc:
            raise UserInputError(
                f"unfinished store {self.partial} cannot be opened ({exc}); "
                "rerun with --overwrite to start again"
            ) from exc
        if (f.attrs.get("settings_key") != settings_key or _SKIPPED_REASON not in f
                or "signatures" not in f):  # a partial file of an older tlearn
            f.close()
            raise UserInputError(
                f"unfinished store {self.partial} was started with other settings or images; "
                "rerun with the same settings to resume, or with --overwrite to start again"
            )
        for name in _FINAL_DATASETS:  # left by a finalize that was interrupted: redone
            if name in f:
                del f[name]
        rows = int(f.attrs["rows_committed"])
        skipped = int(f.attrs["skipped_committed"])
        for name in _ROW_DATASETS:
            f[name].resize(rows, axis=0)
        for name in (_SKIPPED_INDEX, _SKIPPED_REASON):
            f[name].resize(skipped, axis=0)
        self.resumed_rows = rows
        self.items_done = int(f.attrs["items_done"])
        return f

    def _create(self, attrs, settings_key, feature_dim, label_names, compression) -> h5py.File:
        f = h5py.File(self.partial, "w")
        chunk_rows = _rows_per_chunk(feature_dim)
        f.create_dataset(
            "features", shape=(0, feature_dim), maxshape=(None, feature_dim), dtype="float32",
            chunks=(chunk_rows, feature_dim),
            compression=None if compression == "none" else compression,
        )
        for name, dtype in (("labels", "int32"), ("split", "uint8"), ("source_index", "int64"),
                            ("groups", "int64")):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
        f.create_dataset("signatures", shape=(0, SIGNATURE_SIZE), maxshape=(None, SIGNATURE_SIZE),
                         dtype="float16", chunks=(_rows_per_chunk(SIGNATURE_SIZE // 2),
                                                  SIGNATURE_SIZE))
        f.create_dataset("label_names", data=np.array(label_names, dtype=object), dtype=_STR)
        f.create_dataset(_SKIPPED_INDEX, shape=(0,), maxshape=(None,), dtype="int64",
                         chunks=(256,))
        f.create_dataset(_SKIPPED_REASON, shape=(0,), maxshape=(None,),
                         dtype=f"S{_REASON_BYTES}", chunks=(256,))
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["format"] = STORE_FORMAT
        f.attrs["format_version"] = STORE_VERSION
        f.attrs["split_names"] = json.dumps(SPLIT_NAMES)
        f.attrs["compression"] = compression
        f.attrs["settings_key"] = settings_key
        f.attrs["rows_committed"] = 0
        f.attrs["skipped_committed"] = 0
        f.attrs["items_done"] = 0
        f.attrs["complete"] = False
        f.flush()
        return f

    def _check_space(self, nbytes: int) -> None:
        """Refuse, before writing anything, ``nbytes`` the disk might not hold.

        Everything committed stays readable, so a rerun after freeing space resumes.
        """
        free = _free_bytes(self.partial.parent)
        need = nbytes + _SPACE_MARGIN
        if free < need:
            raise UserInputError(
                f"the disk of {self.partial} is almost full ({free / 2**20:.1f} MiB free, about "
                f"{need / 2**20:.1f} MiB needed to go on); free some space and run the same "
                "command again to resume")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a write HDF5 could not do (a disk full after all) into one line.

        HDF5 cannot be trusted to have left the file consistent, so the unfinished
        store is removed and a rerun starts cleanly, instead of resuming from it.
        HDF5 also meets a full disk where h5py cannot raise (freeing a dataset flushes
        its chunks, and h5py prints the error): those are caught here too.
        """
        failures: list[BaseException] = []
        saved_unraisable, saved_except = sys.unraisablehook, sys.excepthook

        def unraisable(report) -> None:
            if isinstance(report.exc_value, (OSError, RuntimeError)):
                failures.append(report.exc_value)
            else:
                saved_unraisable(report)

        def printed(kind, value, tb) -> None:
            if isinstance(value, (OSError, RuntimeError)):
                failures.append(value)
            else:
                saved_except(kind, value, tb)

        sys.unraisablehook, sys.excepthook = unraisable, printed
        try:
            yield
        except (OSError, RuntimeError) as exc:
            failures.insert(0, exc)
        finally:
            sys.unraisablehook, sys.excepthook = saved_unraisable, saved_except
        if not failures:
            return
        reason = _write_failure_reason(failures[0])
        for failure in failures:
            failure.__traceback__ = None  # frees the failed HDF5 objects they hold
        failures.clear()
        self._discard()
        raise UserInputError(
            f"could not write {self.partial} ({reason}); the unfinished store was removed: "
            "free some space (or choose another --out) and run the same command again")

    def _reserve_space(self) -> None:
        """Hold :data:`_SPACE_MARGIN` bytes of the disk in ``<partial>.reserve``.

        HDF5 keeps what it failed to write and tries again at every close, and at exit
        (where a file it still cannot write crashes the process): freeing the reserve
        gives it the room to finish, into a file then removed.
        """
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o600)
            try:
                _allocate(fd, _SPACE_MARGIN)
            finally:
                os.close(fd)
        except OSError as exc:
            self.reserve.unlink(missing_ok=True)
            raise UserInputError(
                f"cannot keep {_SPACE_MARGIN >> 20} MiB free beside {self.partial} "
                f"({exc.strerror or exc}); free some space and run the same command again"
            ) from exc

    def _discard(self) -> None:
        self.reserve.unlink(missing_ok=True)
        # Reports of the failure already met say nothing new: not printed.
        saved = sys.unraisablehook, sys.excepthook
        sys.unraisablehook, sys.excepthook = (lambda _report: None), (lambda *_exc: None)
        try:
            if self._file is not None:
                with contextlib.suppress(Exception):
                    self._file.close()
            self._dsets.clear()
            gc.collect()
        finally:
            sys.unraisablehook, sys.excepthook = saved
        self.partial.unlink(missing_ok=True)

    def _dset(self, name: str) -> h5py.Dataset:
        # Kept open while the writer is: freeing a dataset flushes its chunks, and a
        # flush failing there (a full disk) cannot be raised and leaves HDF5 a dataset
        # it crashes on at exit.
        if name not in self._dsets:
            self._dsets[name] = self._file[name]
        return self._dsets[name]

    @staticmethod
    def _append(dataset, values) -> None:
        n = dataset.shape[0]
        dataset.resize(n + len(values), axis=0)
        dataset[n:] = values

    def append(self, features: np.ndarray, labels, split, source_index, groups=None, *,
               signatures: np.ndarray | None = None) -> None:
        """Write rows (``source_index`` into the planned paths); they count once committed.

        ``groups`` defaults to ``source_index`` (every image its own group);
        ``signatures`` to zeros (not known).
        """
        if len(features) == 0:
            return
        features = np.asarray(features, dtype=np.float32)
        self._check_space(features.nbytes + (32 + 2 * SIGNATURE_SIZE) * len(features))
        with self._writing():
            self._append(self._dset("features"), features)
            self._append(self._dset("labels"), np.asarray(labels, dtype=np.int32))
            self._append(self._dset("split"), np.asarray(split, dtype=np.uint8))
            self._append(self._dset("source_index"), np.asarray(source_index, dtype=np.int64))
            self._append(self._dset("groups"), np.asarray(
                source_index if groups is None else groups, dtype=np.int64))
            self._append(self._dset("signatures"), np.zeros(
                (len(features), SIGNATURE_SIZE), np.float16) if signatures is None
                else np.asarray(signatures, dtype=np.float16))

    def skip(self, source_index, reasons) -> None:
        """Record planned items that could not be used, and why."""
        if len(source_index) == 0:
            return
        self._check_space((8 + _REASON_BYTES) * len(source_index))
        with self._writing():
            self._append(self._dset(_SKIPPED_INDEX), np.asarray(source_index, dtype=np.int64))
            self._append(self._dset(_SKIPPED_REASON), np.array(
                [_reason_bytes(r) for r in reasons], dtype=f"S{_REASON_BYTES}"))

    def commit(self, items_done: int) -> None:
        """Make everything written so far durable; ``items_done`` input items are accounted for."""
        f = self._file
        with self._writing():
            f.attrs["rows_committed"] = self._dset("features").shape[0]
            f.attrs["skipped_committed"] = self._dset(_SKIPPED_INDEX).shape[0]
            f.attrs["items_done"] = items_done
            f.flush()
        self.items_done = items_done

    def committed_rows(self) -> tuple[h5py.Dataset, np.ndarray, np.ndarray, np.ndarray]:
        """The features written so far (read a block at a time), pixel signatures, groups
        and split."""
        return (self._dset("features"), self._dset("signatures")[:],
                np.asarray(self._dset("groups")[:], dtype=np.int64),
                np.asarray(self._dset("split")[:], dtype=np.uint8))

    def record_groups(self, groups: np.ndarray, split: np.ndarray) -> None:
        """Replace every row's group and split (near-duplicates joined), before :meth:`finalize`.

        Recording again what was recorded is harmless, so a run interrupted here
        resumes by deciding the same groups again.
        """
        with self._writing():
            self._dset("groups")[:] = np.asarray(groups, dtype=np.int64)
            self._dset("split")[:] = np.asarray(split, dtype=np.uint8)
            self._file.flush()

    def skipped_items(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every file skipped so far."""
        return [(self.planned_paths[i], r) for i, r in zip(
            self._dset(_SKIPPED_INDEX)[:], _decode(self._dset(_SKIPPED_REASON)[:]), strict=True)]

    @property
    def rows(self) -> int:
        return int(self._dset("features").shape[0])

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> Path:
        """Write the paths, mark complete, close, and atomically move the file into place."""
        f = self._file
        rows = self._dset("source_index")[:]
        paths = [self.planned_paths[i] for i in rows]
        skipped = self.skipped_items()
        self._check_space(2 * sum(len(p) + 16 for p in paths + [p for p, _ in skipped])
                          + _REASON_BYTES * len(skipped))
        with self._writing():
            for name, values in (("paths", paths), ("skipped/paths", [p for p, _ in skipped]),
                                 ("skipped/reasons", [r for _, r in skipped])):
                self._dsets[name] = f.create_dataset(name, data=np.array(values, dtype=object),
                                                     dtype=_STR)
            for key, value in (extra_attrs or {}).items():
                self._file.attrs[key] = value
            self._file.attrs["complete"] = True
            self._file.flush()
            self._file.close()
            publish_file(self.partial, self.path)
        self.reserve.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        """Close without finishing (the partial file stays, resumable)."""
        if self._file is not None and self._file.id.valid:
            with self._writing():  # closing writes what HDF5 still holds
                self._file.close()
        self.reserve.unlink(missing_ok=True)


@dataclass(frozen=True)
class SkippedImage:
    path: str
    reason: str


class FeatureStore:
    """Read access to a finished feature store.

    Parameters
    ----------
    path : path-like
        A ``.h5`` file written by :func:`features.extract_features`.

    Raises
    ------
    UserInputError
        If the file is missing, is not HDF5, is not a tlearn store, or is unfinished.

    Examples
    --------
    >>> with FeatureStore("artifacts/features/animals__vgg16.h5") as store:  # doctest: +SKIP
    ...     X, y = store.load("train")
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserInputError(
                f"{self.path} is a folder, not a feature store; if it holds images, run "
                f"'tlearn extract {self.path}' first and pass the .h5 store it writes")
        if not self.path.is_file():
            hint = ""
            if partial_path(self.path).exists():
                hint = " (an unfinished extraction exists; rerun 'tlearn extract' to finish it)"
            raise UserInputError(f"feature store {self.path} does not exist{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise UserInputError(
                f"{self.path} is not a readable HDF5 feature store (truncated or another "
                "format?); run 'tlearn extract' to create one"
            ) from exc
        attrs = self._file.attrs
        if attrs.get("format") != STORE_FORMAT or "features" not in self._file:
            self._file.close()
            raise UserInputError(
                f"{self.path} is an HDF5 file but not a tlearn feature store; "
                "run 'tlearn extract' to create one"
            )
        if not bool(attrs.get("complete", False)):
            self._file.close()
            raise UserInputError(f"{self.path} is unfinished; rerun 'tlearn extract' to finish it")
        try:
            self._labels = np.asarray(self._file["labels"][:], dtype=np.int64)
            self._split = np.asarray(self._file["split"][:], dtype=np.uint8)
        except (OSError, KeyError) as exc:
            self._file.close()
            raise UserInputError(f"{self.path} is damaged ({exc}); extract it again") from exc
        try:
            split_names = json.loads(attrs["split_names"])
            if not (isinstance(split_names, list) and split_names
                    and all(isinstance(n, str) for n in split_names)
                    and int(self._split.max(initial=0)) < len(split_names)):
                raise ValueError(f"not a list of split names: {attrs['split_names']!r}"[:200])
        except (KeyError, TypeError, ValueError) as exc:
            self._file.close()
            raise UserInputError(f"{self.path} is damaged (its split_names attribute: {exc}); "
                                 "extract it again") from exc
        self.split_names: tuple[str, ...] = tuple(split_names)

    # context manager -------------------------------------------------------
    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    # metadata --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(rows, feature_dim)."""
        rows, dim = self._file["features"].shape
        return int(rows), int(dim)

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.shape[1]

    @property
    def label_names(self) -> list[str]:
        return _decode(self._file["label_names"][:])

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    @property
    def paths(self) -> list[str]:
        return _decode(self._file["paths"][:])

    @property
    def groups(self) -> np.ndarray:
        """Group id of every row; rows of one group always share a split.

        Stores written before groups were recorded give every row its own group.
        """
        name = "groups" if "groups" in self._file else "source_index"
        return np.asarray(self._file[name][:], dtype=np.int64)

    @property
    def signatures(self) -> np.ndarray | None:
        """Pixel signature of every row (:func:`features.neighbours.pixel_signatures`),
        None for stores written before they were recorded."""
        if "signatures" not in self._file:
            return None
        return self._file["signatures"][:]

    @property
    def split(self) -> np.ndarray:
        """Split name of every row, as an array of str."""
        return np.array(self.split_names, dtype=object)[self._split]

    @property
    def attrs(self) -> dict[str, Any]:
        out = {}
        for key, value in self._file.attrs.items():
            out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    @property
    def spec(self) -> FeatureSpec:
        """The feature specification the store was extracted with."""
        return FeatureSpec.from_dict(self.attrs)

    @property
    def skipped(self) -> list[SkippedImage]:
        return [SkippedImage(p, r) for p, r in zip(
            _decode(self._file["skipped/paths"][:]), _decode(self._file["skipped/reasons"][:]),
            strict=True)]

    @property
    def nbytes(self) -> int:
        """Size of the feature matrix in memory as float32."""
        rows, dim = self.shape
        return rows * dim * 4

    def split_mask(self, name: str) -> np.ndarray:
        """Boolean mask of the rows in split ``name`` (``train``, ``test`` or ``val``)."""
        if name not in self.split_names:
            raise UserInputError(
                f"unknown split {name!r}; choose one of: {', '.join(self.split_names)}"
            )
        return self._split == self.split_names.index(name)

    def split_counts(self) -> dict[str, int]:
        return {name: int(self.split_mask(name).sum()) for name in self.split_names}

    # data ------------------------------------------------------------------
    def _rows(self, split: str | None) -> np.ndarray:
        if split is None:
            return np.arange(self.n_rows)
        return np.flatnonzero(self.split_mask(split))

    def iter_chunks(
        self, split: str | None = None, chunk_rows: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(row_indices, X, y)`` chunks of a split, in row order, float32.

        Memory stays bounded by ``chunk_rows`` rows whatever the store's size.
        """
        rows = self._rows(split)
        if chunk_rows is None:
            chunk_rows = max(1, (64 << 20) // max(1, 4 * self.feature_dim))
        dset = self._file["features"]
        for start in range(0, len(rows), chunk_rows):
            idx = rows[start:start + chunk_rows]
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            if hi - lo <= 2 * len(idx):
                # Dense selection: one slab read (much faster than fancy indexing in
                # h5py) costs at most twice the rows asked for.
                block = dset[lo:hi]
                if hi - lo != len(idx):
                    block = block[idx - lo]
            else:
                # Sparse selection (a small split spread over the store): only the rows
                # asked for, one run of consecutive rows at a time.
                block = np.empty((len(idx), dset.shape[1]), dtype=np.float32)
                breaks = np.flatnonzero(np.diff(idx) != 1) + 1
                pos = 0
                for run in np.split(idx, breaks):
                    block[pos:pos + len(run)] = dset[int(run[0]):int(run[-1]) + 1]
                    pos += len(run)
            yield idx, np.asarray(block, dtype=np.float32), self._labels[idx]

    def load(self, split: str | None = None, *, max_bytes: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Whole ``(X, y)`` of a split as float32, read chunk by chunk into one array.

        Raises
        ------
        UserInputError
            When the array would not fit in ``max_bytes`` (default: 80 % of the
            machine's available memory); stream with :meth:`iter_chunks` instead.
        """
        rows = self._rows(split)
        need = len(rows) * self.feature_dim * 4
        limit = max_bytes if max_bytes is not None else int(0.8 * _available_memory())
        if need > limit:
            raise UserInputError(
                f"features of split {split or 'all'} need {need / 2**30:.1f} GiB, more than the "
                f"{limit / 2**30:.1f} GiB available; use the out-of-core 'sgd' classifier"
            )
        X = np.empty((len(rows), self.feature_dim), dtype=np.float32)
        pos = 0
        for idx, block, _ in self.iter_chunks(split):
            X[pos:pos + len(idx)] = block
            pos += len(idx)
        return X, self._labels[rows].copy()

    def __repr__(self) -> str:
        rows, dim = self.shape
        return f"FeatureStore({str(self.path)!r}, rows={rows}, feature_dim={dim})"


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def read_store_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """Attributes of a finished store at ``path``, or None if there is none readable."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != STORE_FORMAT or not f.attrs.get("complete", False):
                return None
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except OSError:
        return None
