"""Public datasets the pipeline is usually taught on, exported to the folder-per-class layout.

``digits`` ships with scikit-learn (real scans of handwritten digits, no download);
``flowers17`` and ``cifar10`` are downloaded (resumable, checksummed, safely
extracted) and exported to ``<dest>/<class>/<image>``. A dataset folder is
written under a temporary name and renamed when complete.

``dest`` is often a path the user typed, so nothing tlearn did not create is ever
deleted: a destination must be new, empty, or a dataset folder tlearn finished
earlier (it carries :data:`MARKER`), and a staging folder (``<dest>.partial``, or
:data:`INNER_STAGING` inside an existing empty ``dest``) is only removed when it
carries :data:`features.integrity.STAGING_MARKER`.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from features.errors import UserInputError
from features.integrity import (
    STAGING_MARKER,
    atomic_write_json,
    is_staging_dir,
    new_staging_dir,
    publish_staging_dir,
)
from features.registries import Registry, unknown_choice
from pipeline.config import artifacts_dir
from pipeline.downloads import ProgressCallback, download_file, safe_extract

MARKER = ".tlearn-dataset.json"
INNER_STAGING = ".tlearn-partial"

FLOWERS17_CLASSES = (
    "daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
    "fritillary", "sunflower", "daisy", "colts_foot", "dandelion", "cowslip", "buttercup",
    "windflower", "pansy",
)


def export_numbered_images(extracted: Path, dest: Path, *, folder: str,
                           classes: tuple[str, ...], per_class: int) -> int:
    """Copy ``<folder>/image_0001.jpg``... into class folders, ``per_class`` consecutive each."""
    source = extracted / folder
    files = sorted(p for p in source.glob("image_*.jpg"))
    if len(files) != len(classes) * per_class:
        raise UserInputError(f"expected {len(classes) * per_class} images in {source}, "
                             f"found {len(files)}; the archive is not the expected one")
    for i, path in enumerate(files):
        target = dest / classes[i // per_class] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return len(files)


class _ArrayUnpickler(pickle.Unpickler):
    """Only numpy arrays and plain containers: CIFAR batches need nothing else."""

    _ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"),
                          ("numpy._core.multiarray", "_reconstruct"),
                          ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a dataset batch")


def _read_batch(path: Path) -> dict:
    with path.open("rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


def export_cifar_batches(extracted: Path, dest: Path, *, folder: str = "cifar-10-batches-py"
                         ) -> int:
    """Write every image of the CIFAR-10 python batches as ``<class>/<batch>_<index>.png``."""
    root = extracted / folder
    meta = _read_batch(root / "batches.meta")
    names = [str(n) for n in meta["label_names"]]
    batches = sorted(root.glob("data_batch_*")) + sorted(root.glob("test_batch"))
    if not batches:
        raise UserInputError(f"no CIFAR batches found in {root}; the archive is not CIFAR-10")
    count = 0
    for batch_path in batches:
        batch = _read_batch(batch_path)
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        for i, (pixels, label) in enumerate(zip(data, batch["labels"], strict=True)):
            target = dest / names[label] / f"{batch_path.name}_{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.transpose(1, 2, 0)).save(target)
            count += 1
    return count


@dataclass(frozen=True, kw_only=True)
class RemoteDataset:
    """A dataset downloaded as one archive and exported to class folders."""

    name: str
    description: str
    url: str
    checksum: str
    algorithm: str
    archive_name: str
    export: Callable[[Path, Path], int] = field(repr=False)
    classes: int = 0
    images: int = 0


REMOTE_DATASETS: Registry[RemoteDataset] = Registry("dataset")


def register_dataset(dataset: RemoteDataset) -> RemoteDataset:
    """Add ``dataset`` to :data:`REMOTE_DATASETS` under its name and return it."""
    return REMOTE_DATASETS.register(dataset.name, dataset)


register_dataset(RemoteDataset(
    name="flowers17", description="Oxford Flowers-17: 17 classes x 80 photos",
    url="https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
    checksum="b59a65d8d1a99cd66944d474e1289eab", algorithm="md5",
    archive_name="17flowers.tgz",
    export=lambda src, dst: export_numbered_images(src, dst, folder="jpg",
                                                   classes=FLOWERS17_CLASSES, per_class=80),
    classes=17, images=1360))
register_dataset(RemoteDataset(
    name="cifar10",
    description="CIFAR-10: 10 classes x 6,000 tiny 32x32 images (train and test batches)",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    checksum="c58f30108f718f92721af3b95e74349a", algorithm="md5",
    archive_name="cifar-10-python.tar.gz", export=export_cifar_batches, classes=10,
    images=60000))


def datasets_dir() -> Path:
    return artifacts_dir() / "datasets"


def _is_complete(dest: Path) -> bool:
    return (dest / MARKER).is_file()


def _staging_path(dest: Path) -> Path:
    """Where a dataset is written before it becomes ``dest``.

    Beside a new folder, so that one rename publishes it whole. Inside an existing
    empty one, which is filled rather than replaced: it may be a mount point (a
    rename onto it fails, and its sibling is on another file system) or the shell's
    working directory.
    """
    if dest.is_dir():
        return dest / INNER_STAGING
    return dest.with_name(dest.name + ".partial")


def _check_destination(dest: Path) -> None:
    """Refuse, before any work, a ``dest`` or staging folder that holds files tlearn did not make.

    Raises
    ------
    UserInputError
        ``dest`` is a file, or a folder holding anything but tlearn's own staging
        folder, or the staging folder exists without its tlearn marker.
    """
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise UserInputError(f"{dest} exists and is not a folder; choose a new or empty "
                                 "folder for --dest (nothing was changed)")
        if any(not (entry.name == INNER_STAGING and is_staging_dir(entry))
               for entry in dest.iterdir()):
            raise UserInputError(f"{dest} is not empty and is not a dataset folder tlearn "
                                 "made; choose a new or empty folder for --dest (nothing was "
                                 "changed)")
    staging = _staging_path(dest)
    if (staging.exists() or staging.is_symlink()) and not is_staging_dir(staging):
        raise UserInputError(f"{staging} exists and was not made by tlearn; move it away or "
                             "choose another folder for --dest (nothing was changed)")


def _new_staging(dest: Path) -> Path:
    """An empty staging folder marked as tlearn's, replacing one an interrupted run left."""
    _check_destination(dest)  # again: the folders may have changed during a long download
    return new_staging_dir(_staging_path(dest))


def _finish(staging: Path, dest: Path, info: dict) -> Path:
    atomic_write_json(staging / MARKER, info)
    if staging.parent == dest:
        for entry in staging.iterdir():
            if entry.name not in (MARKER, STAGING_MARKER):
                os.replace(entry, dest / entry.name)
        # last: only with its marker does dest count as a finished dataset
        os.replace(staging / MARKER, dest / MARKER)
        (staging / STAGING_MARKER).unlink()
        staging.rmdir()
    else:
        publish_staging_dir(staging, dest)
    return dest


def fetch_dataset(dataset: str | RemoteDataset, dest: str | os.PathLike | None = None, *,
                  progress: ProgressCallback | None = None) -> Path:
    """Download, verify, extract and export a public dataset to ``dest`` (folder per class).

    A finished dataset folder is left as it is; an interrupted download resumes.

    Raises
    ------
    UserInputError
        Unknown name, network failure, checksum mismatch, or an unsafe archive.
    """
    if isinstance(dataset, str):
        if dataset == "digits":
            return export_digits(dest)
        if dataset not in REMOTE_DATASETS:
            raise unknown_choice("dataset", dataset, ["digits", *REMOTE_DATASETS])
        dataset = REMOTE_DATASETS[dataset]
    dest = Path(dest) if dest else datasets_dir() / dataset.name
    if _is_complete(dest):
        return dest
    _check_destination(dest)
    downloads = artifacts_dir() / "downloads"
    archive = download_file(dataset.url, downloads / dataset.archive_name,
                            checksum=dataset.checksum, algorithm=dataset.algorithm,
                            progress=progress)
    extracted = safe_extract(archive, downloads / f"{dataset.name}.extracted")
    try:
        staging = _new_staging(dest)
    except BaseException:
        shutil.rmtree(extracted, ignore_errors=True)
        raise
    try:
        count = dataset.export(extracted, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(extracted, ignore_errors=True)
    return _finish(staging, dest, {"name": dataset.name, "source": dataset.url,
                                   "images": count})


def export_digits(dest: str | os.PathLike | None = None, *, size: int = 32,
                  limit_per_class: int | None = None) -> Path:
    """Export scikit-learn's bundled handwritten digits (1,797 scans, 8x8) as PNG class folders.

    Parameters
    ----------
    dest : path-like, optional
        Default ``artifacts/datasets/digits``.
    size : int, default=32
        Side of the saved images (upscaled smoothly from 8x8).
    limit_per_class : int, optional
        Keep only the first images of each class (quick trials, tests).
    """
    from sklearn.datasets import load_digits

    dest = Path(dest) if dest else datasets_dir() / "digits"
    if _is_complete(dest):
        return dest
    _check_destination(dest)
    digits = load_digits()
    staging = _new_staging(dest)
    counts: dict[int, int] = {}
    try:
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            if limit_per_class is not None and counts.get(label, 0) >= limit_per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            # 0..16 ink levels, dark ink on white paper like the original scans
            pixels = (255 - image * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(pixels, mode="L").resize((size, size),
                                                           Image.Resampling.BICUBIC)
            target = staging / str(label) / f"digit_{i:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            img.save(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _finish(staging, dest, {"name": "digits", "source": "sklearn.datasets.load_digits",
                                   "images": sum(counts.values())})


def list_datasets() -> list[dict]:
    """Name, description, size and whether it is already under ``artifacts/datasets``."""
    rows = [{"name": "digits", "description": "scikit-learn's handwritten digits: 10 classes, "
             "1,797 scans (bundled, no download)", "classes": 10, "images": 1797,
             "download": "none", "present": _is_complete(datasets_dir() / "digits")}]
    for spec in REMOTE_DATASETS.values():
        rows.append({"name": spec.name, "description": spec.description,
                     "classes": spec.classes, "images": spec.images, "download": spec.url,
                     "present": _is_complete(datasets_dir() / spec.name)})
    return rows
