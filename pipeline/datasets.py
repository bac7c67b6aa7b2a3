"""Find labelled images (a folder per class, or a CSV), group them, and decide the split.

The split is seeded, stratified per class and decided once, at extraction; it is
recorded per row in the feature store so every later stage judges on the very
same test images. It is made **by group**: augmented copies follow the photo they
were made from (``tlearn augment`` records each copy's source) and byte-identical
files form one group, so no test image has a copy in the train split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.errors import UserInputError
from features.extraction import LabeledImages
from features.images import IMAGE_EXTENSIONS, is_image_file
from features.store import SPLIT_NAMES

TRAIN, TEST, VAL = (SPLIT_NAMES.index(n) for n in ("train", "test", "val"))
# Written by 'tlearn augment' at the root of the folder it makes: copy -> source image.
AUGMENT_MANIFEST = ".tlearn-augment.json"


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
    grouping : Grouping or None
        Set by :func:`load_dataset`: which images must share a split.
    exclusions : dict or None
        Set by :func:`load_dataset` given an exclusion file: the file and how many
        images it left out, relabelled, or named without their being here.
    """

    paths: list[str]
    class_of: list[str]
    source: str
    ignored: list[tuple[str, str]] = field(default_factory=list)
    grouping: Grouping | None = None
    exclusions: dict | None = None

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


# Folders that tools leave beside data (a zip made on a Mac, Python): never a class nor
# images, so skipped, and listed with the passed-over files. Other names starting with
# "__" (e.g. __background__) are ordinary classes; tlearn's own files start with ".".
TOOL_FOLDERS = {"__MACOSX": "macOS archive metadata, not images",
                "__pycache__": "Python cache, not images"}


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


NOT_UTF8 = "file name is not valid UTF-8; rename it"


def _is_utf8(name: str) -> bool:
    """Whether a name read from the file system is valid UTF-8.

    Python carries undecodable bytes as lone surrogates; such a name cannot be
    written to a store, a CSV or a digest, so it is passed over with a reason.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str) -> str:
    """``path`` with undecodable bytes shown as ``\\xff`` escapes (safe to print or write)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def walk_images(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files below ``folder`` (any depth, sorted), and the files passed over, with why.

    Hidden files and folders are skipped. Links are followed (a folder may link to
    photos elsewhere), but a directory already walked is not entered again, so a
    link loop ends and is reported.
    """
    paths: list[str] = []
    ignored: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = os.stat(dirpath)
        if (here.st_dev, here.st_ino) in visited:
            ignored.append((os.path.abspath(dirpath),
                            "directory already listed (symbolic link loop or repeat)"))
            dirnames[:] = []
            continue
        visited.add((here.st_dev, here.st_ino))
        ignored += [(os.path.abspath(os.path.join(dirpath, d)), TOOL_FOLDERS[d])
                    for d in sorted(dirnames) if d in TOOL_FOLDERS]
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d) and d not in TOOL_FOLDERS)
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            full = os.path.abspath(os.path.join(dirpath, name))
            if not _is_utf8(full):
                ignored.append((printable_path(full), NOT_UTF8))
            elif is_image_file(name):
                paths.append(full)
            else:
                ignored.append((full, "not an image file extension"))
    return paths, ignored


def _scan_folder(root: Path) -> Dataset:
    paths: list[str] = []
    classes: list[str] = []
    ignored: list[tuple[str, str]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _is_hidden(entry.name):
            continue
        if not _is_utf8(entry.path):
            ignored.append((printable_path(entry.path), NOT_UTF8))
            continue
        if entry.name in TOOL_FOLDERS:
            ignored.append((os.path.abspath(entry.path), TOOL_FOLDERS[entry.name]))
            continue
        if entry.is_file():
            ignored.append((entry.path, "not inside a class folder"))
            continue
        if not entry.is_dir():
            continue
        found, passed_over = walk_images(entry.path)
        paths += found
        classes += [entry.name] * len(found)
        ignored += passed_over
    return Dataset(paths, classes, str(root.resolve()), ignored)


def _nul_byte_message(path: Path, number: int) -> str:
    # no file name can hold a NUL byte: the CSV is damaged (or not text)
    return (f"{path}, row {number}: holds a NUL byte, which no path or label can contain; "
            "fix or remove that row")


def _read_csv(path: Path) -> Dataset:
    base = path.resolve().parent
    paths: list[str] = []
    classes: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserInputError(f"cannot read CSV {path}: {exc}") from exc
    first = 1  # rows are numbered as in the file, header included
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows, first = rows[1:], 2
    for number, row in enumerate(rows, start=first):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UserInputError(
                f"{path}, row {number}: expected 'path,label', got {','.join(row)!r}"
            )
        if "\0" in row[0] or "\0" in row[1]:
            raise UserInputError(_nul_byte_message(path, number))
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
        loose = sum(is_image_file(path) for path, _ in dataset.ignored) if data.is_dir() else 0
        if loose:
            raise UserInputError(
                f"{data} holds {loose} image(s) but no class sub-folders; a dataset is a "
                "folder with one sub-folder of images per class (DATA/cat/1.jpg, "
                f"DATA/dog/2.jpg): if {data.name} is one of its classes, pass {data.parent}")
        raise UserInputError(f"no images found in {data}; expected {layout}")
    if len(dataset.label_names) < 2:
        raise UserInputError(
            f"only one class ({dataset.label_names[0]!r}) found in {data}; a classifier "
            "needs at least two classes"
        )
    return dataset


@dataclass(frozen=True)
class Grouping:
    """Which images must share a split, and why.

    Attributes
    ----------
    groups : numpy.ndarray of int64
        Group id of each image: the position of the group's first image.
    augmented : int
        Images recorded by ``tlearn augment`` as copies of another image of the dataset.
    duplicates : int
        Images byte-identical to an earlier image of the dataset.
    duplicate_groups : int
        Groups holding byte-identical files.
    mixed_label_groups : int
        Groups whose images carry different labels (the same photo filed twice).
    """

    groups: np.ndarray
    augmented: int = 0
    duplicates: int = 0
    duplicate_groups: int = 0
    mixed_label_groups: int = 0

    def describe(self) -> str:
        """One line for the user, empty when every image is its own group."""
        parts = []
        if self.duplicates:
            parts.append(f"{self.duplicates} byte-identical file(s) in "
                         f"{self.duplicate_groups} group(s)")
        if self.augmented:
            parts.append(f"{self.augmented} augmented cop(ies) grouped with their source")
        if not parts:
            return ""
        line = "; ".join(parts) + ": each group is kept in one split"
        if self.mixed_label_groups:
            line += (f"; {self.mixed_label_groups} group(s) hold the same image under "
                     "different labels (check them)")
        return line


def read_augment_sources(root: Path) -> dict[str, str]:
    """Absolute path of each augmented copy under ``root`` -> of its source image.

    From the manifest 'tlearn augment' wrote in ``root`` (empty without one).
    """
    manifest = root / AUGMENT_MANIFEST
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        sources = data["sources"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(
            f"{manifest} is damaged ({exc}); run 'tlearn augment' again or delete the file "
            "(augmented copies would then no longer follow their source image)"
        ) from exc
    return {str((root / copy).resolve()): str((root / src).resolve())
            for copy, src in sources.items()}


def _content_digest(path: str) -> str | None:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def group_images(dataset: Dataset) -> Grouping:
    """Group augmented copies with their source and byte-identical files together.

    Only regular files whose size is shared by another file are read (hashed), so
    a dataset without duplicates costs one ``stat`` per file; a FIFO or device
    named like an image (size 0, endless or blocking to read) is never opened.
    """
    n = len(dataset.paths)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    position = {p: i for i, p in enumerate(dataset.paths)}
    augmented = 0
    root = Path(dataset.source)
    if root.is_dir():
        for copy, source in read_augment_sources(root).items():
            if copy in position and source in position:
                union(position[copy], position[source])
                augmented += 1
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, path in enumerate(dataset.paths):
        try:
            info = os.stat(path)
        except OSError:
            continue  # unreadable: extraction skips it with its reason
        if stat.S_ISREG(info.st_mode):
            by_size[info.st_size].append(i)
    duplicates = 0
    duplicate_groups = set()
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, int] = {}
        for i in same_size:
            digest = _content_digest(dataset.paths[i])
            if digest is None:
                continue
            if digest in by_digest:
                union(by_digest[digest], i)
                duplicates += 1
                duplicate_groups.add(by_digest[digest])
            else:
                by_digest[digest] = i
    groups = np.array([find(i) for i in range(n)], dtype=np.int64)
    labels = dataset.labels
    mixed = sum(1 for g in np.unique(groups) if len(np.unique(labels[groups == g])) > 1) \
        if duplicates or augmented else 0
    return Grouping(groups, augmented, duplicates, len({find(g) for g in duplicate_groups}),
                    mixed)


def stratified_split(labels: np.ndarray, *, test_size: float = 0.25, val_size: float = 0.0,
                     seed: int = 42, groups: np.ndarray | None = None) -> np.ndarray:
    """Assign each row to train, test or val, class by class and group by group, reproducibly.

    Each class contributes about ``round(n * test_size)`` test rows and
    ``round(n * val_size)`` validation rows (taken from what is not test), but
    always keeps at least one training row. Rows of one group (``groups``) go to
    the same split; a group counts for the class of its first row. Without
    groups every row is its own group.

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
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} group ids for {len(labels)} labels")
    split = np.full(len(labels), TRAIN, dtype=np.uint8)
    # Groups in order of their first row; each belongs to the class of that row.
    _, first_rows, members = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first_rows, kind="stable")
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, g in enumerate(members):
        rows_of[int(g)].append(row)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        units = [int(g) for g in order if labels[first_rows[g]] == label]
        units = [units[i] for i in rng.permutation(len(units))]
        n = sum(len(rows_of[g]) for g in units)
        n_test = min(round(n * test_size), max(0, n - 1))
        n_val = min(round(n * val_size), max(0, n - 1 - n_test))
        taken_test = taken_val = 0
        for k, g in enumerate(units):
            size = len(rows_of[g])
            last = k == len(units) - 1
            if taken_test < n_test and not (last and taken_test + taken_val == n - size):
                split[rows_of[g]] = TEST
                taken_test += size
            elif taken_val < n_val and not (last and taken_test + taken_val == n - size):
                split[rows_of[g]] = VAL
                taken_val += size
    return split


#: The columns of the issues.csv 'tlearn check' writes (:mod:`pipeline.workflows.check`).
ISSUE_COLUMNS = ("path", "issue", "score", "given_label", "suggested_label", "related_path",
                 "split")
#: Columns an exclusion file may have: ``path`` and ``label`` (a new class for the
#: image; empty: leave it out), or those of an issues.csv.
EXCLUSION_COLUMNS = ("label", *ISSUE_COLUMNS)


@dataclass(frozen=True)
class Exclusions:
    """What an exclusion file asks of the next extraction.

    Attributes
    ----------
    source : str
        The file, resolved.
    relabel : dict
        Absolute image path -> its new class.
    drop : set of str
        Absolute image paths left out.
    """

    source: str
    relabel: dict[str, str]
    drop: set[str]


def read_exclusions(path: str | os.PathLike) -> Exclusions:
    """Read a CSV of images to leave out or relabel (header ``path[,label]``, or an issues.csv).

    Relative paths are from the CSV's folder. A row with a non-empty ``label`` moves
    the image to that class; any other row leaves it out.

    Raises
    ------
    UserInputError
        An unreadable file, no ``path`` column, or a column tlearn does not know.
    """
    path = Path(path).expanduser()
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [(c or "").strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserInputError(f"cannot read exclusion file {path}: {exc}") from exc
    expected = "expected a header of path[,label], or the issues.csv of 'tlearn check'"
    if not rows:
        raise UserInputError(f"exclusion file {path} lists no images; {expected}")
    unknown = [c for c in header if c not in EXCLUSION_COLUMNS]
    if "path" not in header or unknown:
        what = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown \
            else "no 'path' column"
        raise UserInputError(f"exclusion file {path} has {what}; {expected}")
    base = path.resolve().parent
    relabel: dict[str, str] = {}
    drop: set[str] = set()
    for number, row in enumerate(rows, start=2):
        name = (row.get("path") or "").strip()
        if not name:
            continue
        if "\0" in name or "\0" in (row.get("label") or ""):
            raise UserInputError(_nul_byte_message(path, number))
        image = os.path.abspath(base / Path(name).expanduser())
        label = (row.get("label") or "").strip()
        if label:
            relabel[image] = label
        else:
            drop.add(image)
    return Exclusions(str(path.resolve()), relabel, drop - set(relabel))


def apply_exclusions(dataset: Dataset, exclusions: Exclusions) -> dict[str, int]:
    """Leave out or relabel ``dataset``'s listed images in place; counts of what was done.

    Paths match as written or once links are resolved. Returns ``excluded``,
    ``relabelled`` and ``not_found`` (listed images that are not in the dataset).
    """
    def known(image: str) -> str | None:
        return image if image in position else real.get(os.path.realpath(image))

    position = {p: i for i, p in enumerate(dataset.paths)}
    real = {os.path.realpath(p): p for p in dataset.paths}
    drop = {known(p) for p in exclusions.drop} - {None}
    relabel = {known(p): label for p, label in exclusions.relabel.items()}
    not_found = sum(known(p) is None for p in (*exclusions.drop, *exclusions.relabel))
    relabel.pop(None, None)
    for image, label in relabel.items():
        dataset.class_of[position[image]] = label
    keep = [i for i, p in enumerate(dataset.paths) if p not in drop]
    dataset.paths[:] = [dataset.paths[i] for i in keep]
    dataset.class_of[:] = [dataset.class_of[i] for i in keep]
    if len(set(dataset.class_of)) < 2:
        raise UserInputError(f"{exclusions.source} leaves fewer than two classes; a "
                             "classifier needs at least two: list fewer images")
    return {"excluded": len(drop), "relabelled": len(relabel), "not_found": not_found}


def load_dataset(data: str | os.PathLike, *, test_size: float = 0.25, val_size: float = 0.0,
                 seed: int = 42, exclude: str | os.PathLike | None = None
                 ) -> tuple[LabeledImages, Dataset]:
    """Discover a dataset, leave out or relabel what ``exclude`` lists, group and split it.

    Returns what extraction needs and the raw listing (with its ``grouping`` set, and
    ``exclusions``: the counts of :func:`apply_exclusions`, when ``exclude`` is given).
    """
    dataset = discover_images(data)
    if exclude is not None:
        exclusions = read_exclusions(exclude)
        dataset.exclusions = {"file": exclusions.source,
                              **apply_exclusions(dataset, exclusions)}
    labels = dataset.labels
    grouping = group_images(dataset)
    split = stratified_split(labels, test_size=test_size, val_size=val_size, seed=seed,
                             groups=grouping.groups)
    images = LabeledImages(paths=dataset.paths, labels=labels, label_names=dataset.label_names,
                           split=split, source=dataset.source, groups=grouping.groups)
    dataset.grouping = grouping
    return images, dataset


def images_to_predict(inputs: list[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files named by ``tlearn predict``'s inputs, in order.

    Parameters
    ----------
    inputs : list of path-like
        One folder (images at any depth, as ``extract`` finds them), one CSV whose
        first column holds image paths (header ``path`` optional, relative paths from
        the CSV's folder), or image files.

    Returns
    -------
    (paths, ignored)
        Absolute paths to classify, and ``(path, reason)`` of what was passed over.

    Raises
    ------
    UserInputError
        No inputs, a missing input, or nothing to classify.
    """
    if not inputs:
        raise UserInputError("no images given; pass a folder, a CSV of paths or image files")
    ignored: list[tuple[str, str]] = []
    first = Path(inputs[0]).expanduser()
    if len(inputs) == 1 and first.is_dir():
        paths, ignored = walk_images(first)
    elif len(inputs) == 1 and first.suffix.lower() == ".csv" and first.is_file():
        paths = _read_path_column(first)
    else:
        paths = []
        for item in inputs:
            path = Path(item).expanduser()
            if not _is_utf8(str(path)):
                ignored.append((printable_path(str(path)), NOT_UTF8))
                continue
            if path.is_dir():
                raise UserInputError(f"{path} is a folder; pass one folder alone, or files")
            if not path.exists():
                raise UserInputError(f"{path} does not exist; check the path")
            paths.append(str(path.resolve()))
    if not paths:
        raise UserInputError(f"no images found in {printable_path(str(first))}; expected "
                             f"image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths, ignored


def _read_path_column(path: Path) -> list[str]:
    base = path.resolve().parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            # numbered as in the file, header and blank rows included
            rows = [(number, row) for number, row in enumerate(csv.reader(f), start=1)
                    if row and row[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserInputError(f"cannot read CSV {path}: {exc}") from exc
    if rows and rows[0][1][0].strip().lower() == "path":
        rows = rows[1:]
    out = []
    for number, row in rows:
        if "\0" in row[0]:
            raise UserInputError(_nul_byte_message(path, number))
        image = Path(row[0].strip()).expanduser()
        out.append(str(image if image.is_absolute() else (base / image).resolve()))
    return out


def dataset_name(data: str | os.PathLike) -> str:
    """A short name for output files: the folder name, or the CSV's stem."""
    path = Path(data).expanduser().resolve()
    return path.stem if path.is_file() else path.name


def source_dataset_name(source: str | None, store_name: str) -> str:
    """The dataset of a store or split: the name of the folder or CSV it was made from.

    ``source`` is what a store records (the resolved folder or CSV); without one, the
    first ``__``-separated piece of ``store_name``, the dataset of a store written at
    its default path (``<dataset>__<backbone>...``).
    """
    if not source:
        return store_name.split("__")[0]
    path = Path(source)
    if path.exists():
        return dataset_name(path)
    # moved, or trained on another machine: decide by the name, as dataset_name did then
    return path.stem if path.suffix.lower() in (".csv", ".tsv", ".txt") else path.name
