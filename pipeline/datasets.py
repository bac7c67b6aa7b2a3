"""Find labelled images (a folder per class, or a CSV) and decide the train/test/val split.

The split is seeded, stratified per class and decided once, at extraction; it is
recorded per row in the feature store so every later stage judges on the very
same test images.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.errors import UserInputError
from features.extraction import LabeledImages
from features.images import is_image_file
from features.store import SPLIT_NAMES

TRAIN, TEST, VAL = (SPLIT_NAMES.index(n) for n in ("train", "test", "val"))


@dataclass
class Dataset:
    """Labelled images found in a folder or CSV, before any split.

    Attributes
    ----------
    paths : list of str
        Absolute paths, sorted by class then path.
    class_of : list of str
        Class name of each path.
    ignored : list of tuple
        ``(path, reason)`` for files that were not taken (not an image extension).
    source : str
        The folder or CSV the images came from.
    """

    paths: list[str]
    class_of: list[str]
    source: str
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        return sorted(set(self.class_of))

    @property
    def labels(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[c] for c in self.class_of], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        names, counts = np.unique(np.array(self.class_of, dtype=object), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _scan_folder(root: Path) -> Dataset:
    paths: list[str] = []
    classes: list[str] = []
    ignored: list[tuple[str, str]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _is_hidden(entry.name):
            continue
        if entry.is_file():
            ignored.append((entry.path, "not inside a class folder"))
            continue
        if not entry.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for name in sorted(filenames):
                if _is_hidden(name):
                    continue
                full = os.path.abspath(os.path.join(dirpath, name))
                if is_image_file(name):
                    paths.append(full)
                    classes.append(entry.name)
                else:
                    ignored.append((full, "not an image file extension"))
    return Dataset(paths, classes, str(root.resolve()), ignored)


def _read_csv(path: Path) -> Dataset:
    base = path.resolve().parent
    paths: list[str] = []
    classes: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserInputError(f"cannot read CSV {path}: {exc}") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    for number, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UserInputError(
                f"{path}, row {number}: expected 'path,label', got {','.join(row)!r}"
            )
        image = Path(row[0].strip()).expanduser()
        paths.append(str(image if image.is_absolute() else (base / image).resolve()))
        classes.append(row[1].strip())
    return Dataset(paths, classes, str(path.resolve()))


def discover_images(data: str | os.PathLike) -> Dataset:
    """Find the labelled images of a dataset.

    Parameters
    ----------
    data : path-like
        A folder with one sub-folder per class (images found recursively,
        extensions case-insensitive, hidden files ignored), or a CSV file of
        ``path,label`` rows (header optional, relative paths from the CSV's folder).

    Raises
    ------
    UserInputError
        Missing path, no images, or fewer than two classes.
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise UserInputError(
            f"dataset {data} does not exist; pass a folder with one sub-folder per class "
            "or a CSV of path,label"
        )
    if data.is_dir():
        dataset = _scan_folder(data)
        layout = "a folder with one sub-folder of images per class"
    elif data.suffix.lower() == ".csv":
        dataset = _read_csv(data)
        layout = "a CSV with rows of path,label"
    else:
        raise UserInputError(
            f"dataset {data} is a file but not a .csv; pass a folder with one sub-folder "
            "per class or a CSV of path,label"
        )
    if not dataset.paths:
        raise UserInputError(f"no images found in {data}; expected {layout}")
    if len(dataset.label_names) < 2:
        raise UserInputError(
            f"only one class ({dataset.label_names[0]!r}) found in {data}; a classifier "
            "needs at least two classes"
        )
    return dataset


def stratified_split(labels: np.ndarray, *, test_size: float = 0.25, val_size: float = 0.0,
                     seed: int = 42) -> np.ndarray:
    """Assign each row to train, test or val, class by class, reproducibly.

    Each class contributes ``round(n * test_size)`` test rows and
    ``round(n * val_size)`` validation rows (taken from what is not test), but
    always keeps at least one training row.

    Returns
    -------
    numpy.ndarray of uint8
        Codes into :data:`features.store.SPLIT_NAMES`.
    """
    if not 0.0 < test_size < 1.0:
        raise UserInputError(f"test size must be between 0 and 1 (exclusive), got {test_size}")
    if not 0.0 <= val_size < 1.0 or test_size + val_size >= 1.0:
        raise UserInputError(
            f"validation share must be >= 0 and leave room for training "
            f"(test {test_size} + validation {val_size} < 1)"
        )
    labels = np.asarray(labels)
    split = np.full(len(labels), TRAIN, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        n = len(rows)
        n_test = min(round(n * test_size), max(0, n - 1))
        n_val = min(round(n * val_size), max(0, n - 1 - n_test))
        split[rows[:n_test]] = TEST
        split[rows[n_test:n_test + n_val]] = VAL
    return split


def load_dataset(data: str | os.PathLike, *, test_size: float = 0.25, val_size: float = 0.0,
                 seed: int = 42) -> tuple[LabeledImages, Dataset]:
    """Discover a dataset and split it; returns what extraction needs and the raw listing."""
    dataset = discover_images(data)
    labels = dataset.labels
    split = stratified_split(labels, test_size=test_size, val_size=val_size, seed=seed)
    images = LabeledImages(paths=dataset.paths, labels=labels, label_names=dataset.label_names,
                           split=split, source=dataset.source)
    return images, dataset


def dataset_name(data: str | os.PathLike) -> str:
    """A short name for output files: the folder name, or the CSV's stem."""
    path = Path(data).expanduser().resolve()
    return path.stem if path.is_file() else path.name
