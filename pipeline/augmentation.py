"""Data augmentation with Keras preprocessing layers, on the fly (training) or offline (folders).

The defaults are the course's recipe: rotation up to 30 degrees, width and height
shifts of 0.1, shear 0.2, zoom 0.2 and horizontal flips.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from features.devices import set_random_seed
from features.errors import UserInputError
from features.images import ImageDecodeError, load_image
from features.integrity import (
    atomic_write_json,
    is_staging_dir,
    new_staging_dir,
    publish_staging_dir,
)


@dataclass(frozen=True)
class AugmentationConfig:
    """Random transforms applied to training images.

    Attributes
    ----------
    rotation : float
        Maximum rotation in degrees, either way.
    width_shift, height_shift : float
        Maximum shift as a share of the width or height.
    shear : float
        Shear intensity (``keras.layers.RandomShear`` factor).
    zoom : float
        Maximum zoom in or out, as a share.
    horizontal_flip : bool
        Flip left-right half of the time.
    enabled : bool
        False turns every transform off.
    """

    rotation: float = 30.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    shear: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("rotation", "width_shift", "height_shift", "shear", "zoom"):
            value = getattr(self, name)
            if value < 0:
                raise UserInputError(f"augmentation {name} must be >= 0, got {value}")
        if self.width_shift >= 1 or self.height_shift >= 1 or self.zoom >= 1:
            raise UserInputError("augmentation shifts and zoom must be below 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self.enabled and (self.horizontal_flip or any(
            getattr(self, n) > 0 for n in ("rotation", "width_shift", "height_shift",
                                           "shear", "zoom")))


def _symmetric_shear_class():
    import keras

    @keras.saving.register_keras_serializable(package="tlearn")
    class SymmetricShear(keras.layers.RandomShear):
        """Horizontal shear up to ``intensity`` either way.

        Keras' ``RandomShear`` writes its factor as ``[-f, f]`` into its config and
        then refuses that value when loading, so models containing it cannot be
        reloaded; this subclass stores the single intensity instead.
        """

        def __init__(self, intensity: float = 0.2, **kwargs):
            kwargs.pop("x_factor", None)
            kwargs.pop("y_factor", None)
            super().__init__(x_factor=intensity, y_factor=0.0, **kwargs)
            self.intensity = intensity

        def get_config(self):
            config = super().get_config()
            config.pop("x_factor", None)
            config.pop("y_factor", None)
            config["intensity"] = self.intensity
            return config

    return SymmetricShear


_SHEAR_CLASS = None


def register_custom_layers():
    """Register tlearn's Keras layers (needed before loading a training checkpoint)."""
    global _SHEAR_CLASS
    if _SHEAR_CLASS is None:
        _SHEAR_CLASS = _symmetric_shear_class()
    return _SHEAR_CLASS


def symmetric_shear(intensity: float, seed: int):
    return register_custom_layers()(intensity, fill_mode="reflect", seed=seed)


def build_augmentation(config: AugmentationConfig, seed: int = 0):
    """A ``keras.Sequential`` of random layers (identity at inference), or None when off."""
    import keras
    from keras import layers

    if not config.active:
        return None
    stack = []
    if config.rotation > 0:
        stack.append(layers.RandomRotation(config.rotation / 360.0, fill_mode="reflect",
                                           seed=seed))
    if config.width_shift > 0 or config.height_shift > 0:
        stack.append(layers.RandomTranslation(config.height_shift, config.width_shift,
                                              fill_mode="reflect", seed=seed + 1))
    if config.shear > 0:
        stack.append(symmetric_shear(config.shear, seed + 2))
    if config.zoom > 0:
        stack.append(layers.RandomZoom((-config.zoom, config.zoom), fill_mode="reflect",
                                       seed=seed + 3))
    if config.horizontal_flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(stack, name="augmentation")


def _free_name(stem: str, taken: set[str]) -> str:
    """``stem.png``, or ``stem_2.png``... when an original (or earlier copy) has the name."""
    name, n = f"{stem}.png", 1
    while name.lower() in taken:
        n += 1
        name = f"{stem}_{n}.png"
    taken.add(name.lower())
    return name


def augment_folder(data: str | os.PathLike, out: str | os.PathLike, *, per_class: int = 1500,
                   config: AugmentationConfig | None = None, seed: int = 42,
                   overwrite: bool = False, link: bool = False,
                   progress=None) -> dict[str, dict[str, int]]:
    """Grow every class folder of ``data`` to ``per_class`` images in a new folder ``out``.

    Originals are copied (or hard-linked with ``link=True``) unchanged, then augmented
    copies of them, taken in turn, are written as PNG until the class reaches
    ``per_class``. Classes that already have more keep all their originals. The
    output is written to ``<out>.partial`` and renamed when complete.

    Returns
    -------
    dict
        Class name -> ``{"originals": n, "augmented": m}``.

    Raises
    ------
    UserInputError
        Missing or invalid dataset, ``out`` inside ``data`` or already present
        (without ``overwrite``), a bad ``per_class``.
    """
    from pipeline.datasets import AUGMENT_MANIFEST, discover_images, read_augment_sources

    config = config or AugmentationConfig()
    data, out = Path(data).resolve(), Path(out).resolve()
    if per_class < 1:
        raise UserInputError(f"--per-class must be at least 1, got {per_class}")
    if out == data or data in out.parents:
        raise UserInputError(f"output {out} is inside the dataset {data}; choose another folder")
    if not data.is_dir():
        raise UserInputError(f"dataset {data} is not a folder with one sub-folder per class")
    made_by_augment = (out / AUGMENT_MANIFEST).is_file()
    empty_folder = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if (out.exists() or out.is_symlink()) and not empty_folder \
            and not (overwrite and made_by_augment):
        if made_by_augment:
            raise UserInputError(f"{out} already exists; pass --overwrite to replace it")
        raise UserInputError(f"{out} already exists and was not made by 'tlearn augment'; "
                             "choose a new folder for --out (nothing was changed)")
    staging = out.with_name(out.name + ".partial")
    if (staging.exists() or staging.is_symlink()) and not is_staging_dir(staging):
        raise UserInputError(f"{staging} exists and was not made by tlearn; move it away or "
                             "choose another --out (nothing was changed)")
    if not config.active:
        raise UserInputError("every transform is off: nothing to augment with")
    dataset = discover_images(data)
    by_class: dict[str, list[Path]] = {}
    for path, name in zip(dataset.paths, dataset.class_of, strict=True):
        by_class.setdefault(name, []).append(Path(path))


    set_random_seed(seed)
    augmenter = build_augmentation(config, seed)
    new_staging_dir(staging)
    counts: dict[str, dict[str, int]] = {}
    copied: dict[Path, str] = {}  # original -> its path in the output, class/relative path
    sources: dict[str, str] = {}  # augmented copy -> the copied original it was made from
    total = sum(max(per_class, len(v)) for v in by_class.values())
    done = 0
    try:
        for name, paths in sorted(by_class.items()):
            target = staging / name
            target.mkdir(parents=True)
            # Originals keep their sub-folders: any flattening of names could make two
            # files one. Lower case: one file system may not tell Cat.jpg from cat.jpg.
            taken = {p.relative_to(data / name).as_posix().lower() for p in paths}
            for path in paths:
                relative = path.relative_to(data / name)
                dest = target / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                copied[path] = f"{name}/{relative.as_posix()}"
                if link:
                    os.link(path, dest)
                else:
                    shutil.copy2(path, dest)
            done += len(paths)
            needed = max(0, per_class - len(paths))
            sources_left = list(paths)  # unreadable originals are copied but not augmented
            k = 0
            while k < needed:
                if not sources_left:
                    raise UserInputError(f"class {name!r} has no readable image to augment")
                source = sources_left[k % len(sources_left)]
                try:
                    # One original decoded at a time, through the reader extraction uses
                    # (EXIF orientation applied, pixel limit enforced): bounded memory.
                    pixels = load_image(source, None)
                except ImageDecodeError:
                    sources_left.remove(source)
                    continue
                batch = pixels[None].astype("float32")
                augmented = np.asarray(augmenter(batch, training=True))[0]
                image = Image.fromarray(np.clip(np.rint(augmented), 0, 255).astype(np.uint8))
                copy_name = _free_name(f"aug_{k:05d}_{source.stem}", taken)
                image.save(target / copy_name)
                sources[f"{name}/{copy_name}"] = copied[source]
                k += 1
                done += 1
                if progress:
                    progress(done, total)
            counts[name] = {"originals": len(paths), "augmented": needed}
        # Augmenting an augmented folder: its copies stay tied to their sources too.
        output_of = {p.resolve(): rel for p, rel in copied.items()}
        for copy, source in read_augment_sources(data).items():
            if Path(copy) in output_of and Path(source) in output_of:
                sources[output_of[Path(copy)]] = output_of[Path(source)]
        # Extraction reads this to keep every copy in its source's split (no leakage).
        atomic_write_json(staging / AUGMENT_MANIFEST, {
            "format": "tlearn-augment", "source_dataset": str(data), "seed": seed,
            "config": config.to_dict(), "sources": sources})
        if made_by_augment:
            shutil.rmtree(out)  # an earlier 'tlearn augment' output, replaced on request
        publish_staging_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


