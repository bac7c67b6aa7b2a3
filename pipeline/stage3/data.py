"""The images stage 3 trains on: a store's recorded split (or a folder split the same way).

Validation images come from the store's ``val`` split when it has one, otherwise
from a stratified share of the train split, never from the test images. Batches
are decoded by worker threads through a Keras ``PyDataset``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError
from features.images import ImageDecodeError, load_image

Part = tuple[list[str], np.ndarray]


@dataclass
class SplitImages:
    """Image paths with labels for train, validation and test, and the class names.

    Attributes
    ----------
    fingerprint : dict
        What identifies the data the split was made from: a store's ``settings_key``
        and ``fingerprint`` attributes, or the fingerprint of a folder's images.
    """

    label_names: list[str]
    train: Part
    val: Part
    test: Part
    source: str
    store_name: str
    fingerprint: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train[0]), "val": len(self.val[0]), "test": len(self.test[0])}

    def assignment(self) -> dict[str, list[tuple[str, int]]]:
        """Every ``(path, label)`` of each part: two splits are the same only if these are."""
        return {name: [(p, int(y)) for p, y in zip(paths, labels, strict=True)]
                for name, (paths, labels) in
                (("train", self.train), ("val", self.val), ("test", self.test))}


def split_off_validation(paths: list[str], labels: np.ndarray, share: float, seed: int,
                         groups: np.ndarray | None = None) -> tuple[Part, Part]:
    """``(train, validation)``: a stratified ``share`` of each class becomes validation.

    With ``groups`` (the store's), augmented copies and duplicates of one image stay
    on the same side, so validation never judges a copy of a training image.

    Raises
    ------
    UserInputError
        When ``share`` is not in (0, 1) or leaves a class without a validation image.
    """
    from pipeline.datasets import TRAIN, stratified_split

    if not 0 < share < 1:
        raise UserInputError(f"validation share must be between 0 and 1, got {share}")
    counts = np.bincount(labels)
    smallest = counts[counts > 0].min()
    if smallest < 2 or round(smallest * share) < 1:
        raise UserInputError(
            f"too few training images for a validation share of {share}: the smallest class "
            f"has {smallest}; add images or pass a larger --val-share"
        )
    # stratified_split holds out ``test_size`` of each class; here the held-out rows
    # (everything it does not keep for training) are the validation images
    kept_for_training = stratified_split(labels, test_size=share, seed=seed,
                                         groups=groups) == TRAIN
    is_validation = ~kept_for_training

    def part(mask: np.ndarray) -> Part:
        return [p for p, m in zip(paths, mask, strict=True) if m], labels[mask]

    return part(kept_for_training), part(is_validation)


def images_from_store(store_path: str | os.PathLike, *, val_share: float = 0.1, seed: int = 42
                      ) -> SplitImages:
    """The images, labels and recorded split of a stage 1 store.

    The validation images come from the store's ``val`` split when it has one,
    otherwise from a stratified share of the train split (never from test).

    Raises
    ------
    UserInputError
        When images listed in the store have moved or vanished (they are listed).
    """
    from features.store import FeatureStore

    with FeatureStore(store_path) as store:
        paths = store.paths
        labels = store.labels
        split = store.split
        groups = store.groups
        names = store.label_names
        attrs = store.attrs
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = "; ".join(missing[:5])
        raise UserInputError(
            f"{len(missing)} of {len(paths)} images recorded in {store_path} are missing "
            f"(moved or deleted?): {shown}{' ...' if len(missing) > 5 else ''}; restore them "
            "or extract the dataset again"
        )

    def part(name: str) -> Part:
        rows = np.flatnonzero(split == name)
        return [paths[i] for i in rows], labels[rows]

    train, val, test = part("train"), part("val"), part("test")
    if len(val[0]) == 0:
        train, val = split_off_validation(*train, val_share, seed,
                                          groups=groups[split == "train"])
    if len(test[0]) == 0:
        raise UserInputError(f"{store_path} has no test images; extract with --test-size > 0")
    fingerprint = {k: str(attrs.get(k, "")) for k in ("settings_key", "fingerprint")}
    return SplitImages(names, train, val, test, str(attrs.get("source", "")),
                       Path(store_path).stem, fingerprint)


def images_from_folder(data: str | os.PathLike, *, test_size: float = 0.25,
                       val_share: float = 0.1, seed: int = 42) -> SplitImages:
    """Split a dataset folder (or CSV) exactly as ``tlearn extract`` would, plus validation."""
    from pipeline.datasets import TEST, TRAIN, dataset_name, load_dataset

    images, _ = load_dataset(data, test_size=test_size, seed=seed)
    paths = list(images.paths)

    def part(code: int) -> Part:
        rows = np.flatnonzero(images.split == code)
        return [paths[i] for i in rows], images.labels[rows]

    train, val = split_off_validation(*part(TRAIN), val_share, seed,
                                      groups=images.group_ids[images.split == TRAIN])
    return SplitImages(list(images.label_names), train, val, part(TEST), images.source,
                       dataset_name(data), {"fingerprint": images.fingerprint()})


def load_split_images(source: str | os.PathLike, *, test_size: float = 0.25,
                      val_share: float = 0.1, seed: int = 42) -> SplitImages:
    """A store (``.h5``) or a dataset folder/CSV."""
    if Path(source).suffix == ".h5":
        return images_from_store(source, val_share=val_share, seed=seed)
    return images_from_folder(source, test_size=test_size, val_share=val_share, seed=seed)


def image_batches_class() -> Any:
    """The ``PyDataset`` class of image batches (defined on first use: it imports Keras)."""
    import keras

    class ImageBatches(keras.utils.PyDataset):
        """Batches of decoded, resized and preprocessed images, decoded by worker threads."""

        def __init__(self, paths, labels, *, batch_size, size, preprocess, shuffle, seed,
                     workers=2):
            super().__init__(workers=workers, use_multiprocessing=False)
            self.paths, self.labels = list(paths), np.asarray(labels)
            self.batch_size, self.size, self.preprocess = batch_size, size, preprocess
            self.shuffle = shuffle
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(self.paths))
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return math.ceil(len(self.paths) / self.batch_size)

        def __getitem__(self, index):
            rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            try:
                images = np.stack([load_image(self.paths[i], self.size) for i in rows])
            except ImageDecodeError as exc:
                raise UserInputError(f"{exc.path} can no longer be read ({exc.reason}); "
                                     "restore it or extract the dataset again") from exc
            return self.preprocess(images), self.labels[rows]

        def on_epoch_end(self):
            if self.shuffle:
                self.rng.shuffle(self.order)

    return ImageBatches
