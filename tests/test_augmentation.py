import hashlib
from pathlib import Path

import numpy as np
import pytest

from features.errors import UserInputError
from pipeline.augmentation import AugmentationConfig, augment_folder, build_augmentation
from pipeline.datasets import discover_images
from tests.conftest import make_image_folder


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_grows_each_class_and_leaves_originals_untouched(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=3)
    before = _digest(data)
    counts = augment_folder(data, tmp_path / "out", per_class=7, seed=1)
    assert counts == {"cat": {"originals": 3, "augmented": 4},
                      "dog": {"originals": 3, "augmented": 4}}
    assert _digest(data) == before
    out = discover_images(tmp_path / "out")
    assert out.class_counts() == {"cat": 7, "dog": 7}
    copied = _digest(tmp_path / "out")
    assert copied["cat/cat_000.jpg"] == before["cat/cat_000.jpg"]


def test_seeded_and_reproducible(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2)
    augment_folder(data, tmp_path / "a", per_class=4, seed=5)
    augment_folder(data, tmp_path / "b", per_class=4, seed=5)
    augment_folder(data, tmp_path / "c", per_class=4, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_bad_requests(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2)
    with pytest.raises(UserInputError, match="inside the dataset"):
        augment_folder(data, data / "more")
    augment_folder(data, tmp_path / "exists", per_class=3)
    with pytest.raises(UserInputError, match="--overwrite"):
        augment_folder(data, tmp_path / "exists", per_class=3)
    with pytest.raises(UserInputError, match="at least 1"):
        augment_folder(data, tmp_path / "o", per_class=0)
    with pytest.raises(UserInputError, match="must be >= 0"):
        AugmentationConfig(rotation=-1)
    assert not (tmp_path / "o").exists()


def test_layers_follow_the_config():
    aug = build_augmentation(AugmentationConfig())
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["RandomRotation", "RandomTranslation", "SymmetricShear", "RandomZoom",
                     "RandomFlip"]
    assert build_augmentation(AugmentationConfig(enabled=False)) is None
    only_flip = AugmentationConfig(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0)
    assert [type(x).__name__ for x in build_augmentation(only_flip).layers] == ["RandomFlip"]


def test_shear_layer_survives_save_and_load_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    import keras

    from tests.conftest import REPO_ROOT

    model = keras.Sequential([keras.Input((8, 8, 3)), build_augmentation(AugmentationConfig())])
    path = tmp_path / "aug.keras"
    model.save(path)
    code = ("import sys, keras; from pipeline.augmentation import register_custom_layers; "
            "register_custom_layers(); m = keras.models.load_model(sys.argv[1]); "
            "print([type(x).__name__ for x in m.layers[0].layers])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=120,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                              "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-1500:]
    assert "SymmetricShear" in out.stdout


def test_link_mode_hard_links_originals(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2)
    augment_folder(data, tmp_path / "out", per_class=3, link=True)
    original, linked = data / "cat" / "cat_000.jpg", tmp_path / "out" / "cat" / "cat_000.jpg"
    assert linked.stat().st_ino == original.stat().st_ino


def test_augmented_copies_follow_their_source_into_its_split(tmp_path, artifacts):
    """Augment then extract: no copy of a test image may land in train (issue: leakage)."""
    import re

    import numpy as np

    from features.store import FeatureStore
    from tests.conftest import TINY_EXTRACT, extract

    data = make_image_folder(tmp_path / "d", per_class=8)
    augment_folder(data, tmp_path / "aug", per_class=40, seed=3,
                   config=AugmentationConfig(rotation=0, width_shift=0, height_shift=0,
                                             shear=0, zoom=0.1, horizontal_flip=True))
    report = extract(tmp_path / "aug", **TINY_EXTRACT)
    with FeatureStore(report.result.path) as store:
        split_of = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1]: s
                    for p, s in zip(store.paths, store.split, strict=True)}
        split = store.split
    # copies are named aug_<k>_<source stem>.png: pair them by name, not by tlearn's record
    for name, s in split_of.items():
        match = re.match(r"(\w+)/aug_\d+_(.+)\.png$", name)
        if match:
            cls, stem = match.groups()
            source = next(k for k in split_of if k.startswith(f"{cls}/{stem}."))
            assert s == split_of[source], f"{name} is in {s}, its source {source} in another"
    assert report.grouping.augmented == 64
    with FeatureStore(report.result.path) as store:
        groups = store.groups
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    assert set(split) == {"train", "test"}


def test_augmented_copy_keeps_the_exif_orientation_of_its_source(tmp_path):
    from PIL import Image

    from features.images import load_image

    data = make_image_folder(tmp_path / "d", per_class=1, size=(40, 20))
    photo = data / "cat" / "phone.jpg"
    img = Image.new("RGB", (60, 30), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed, as phones write it
    img.save(photo, exif=exif)
    augment_folder(data, tmp_path / "aug", per_class=4, seed=0,
                   config=AugmentationConfig(rotation=0, width_shift=0, height_shift=0,
                                             shear=0, zoom=0, horizontal_flip=True))
    upright = load_image(photo, None).shape
    copies = sorted((tmp_path / "aug" / "cat").glob("aug_*_phone.png"))
    assert copies and upright == (60, 30, 3)
    for copy in copies:
        assert np.asarray(Image.open(copy)).shape == upright


def test_overwrite_never_deletes_a_folder_augment_did_not_make(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2)
    photos = make_image_folder(tmp_path / "photos", per_class=1)
    before = _digest(photos)
    with pytest.raises(UserInputError, match="not made by 'tlearn augment'"):
        augment_folder(data, photos, per_class=3, overwrite=True)
    assert _digest(photos) == before
    stray = tmp_path / "out.partial"
    (stray / "keep").mkdir(parents=True)
    (stray / "keep" / "me.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not made by tlearn"):
        augment_folder(data, tmp_path / "out", per_class=3)
    assert (stray / "keep" / "me.txt").read_text() == "mine"
    # an earlier augment output is replaced on request; an empty folder is filled
    augment_folder(data, tmp_path / "aug", per_class=3, seed=1)
    augment_folder(data, tmp_path / "aug", per_class=4, seed=1, overwrite=True)
    assert discover_images(tmp_path / "aug").class_counts() == {"cat": 4, "dog": 4}
    (tmp_path / "empty").mkdir()
    augment_folder(data, tmp_path / "empty", per_class=3)
    assert not any(p.name == ".tlearn-staging" for p in (tmp_path / "empty").rglob("*"))


def test_originals_whose_flattened_names_would_clash_are_all_kept(tmp_path):
    from tests.conftest import write_image

    data = make_image_folder(tmp_path / "d", per_class=2)
    write_image(data / "cat" / "x__y.jpg", (200, 10, 10), seed=1)
    write_image(data / "cat" / "x" / "y.jpg", (10, 10, 200), seed=2)
    # named like the copy (k=1) augment makes of cat_000.jpg: must not be overwritten by it
    write_image(data / "cat" / "aug_00001_cat_000.png", (10, 200, 10), seed=3)
    before = _digest(data)
    counts = augment_folder(data, tmp_path / "out", per_class=8, seed=1)
    assert counts["cat"] == {"originals": 5, "augmented": 3}
    after = _digest(tmp_path / "out")
    for name in ("cat/x__y.jpg", "cat/x/y.jpg", "cat/aug_00001_cat_000.png"):
        assert after[name] == before[name], name
    assert discover_images(tmp_path / "out").class_counts() == {"cat": 8, "dog": 8}


def test_augmenting_an_augmented_folder_keeps_every_copy_with_its_source(tmp_path):
    from pipeline.datasets import group_images, read_augment_sources

    data = make_image_folder(tmp_path / "d", per_class=2)
    augment_folder(data, tmp_path / "a", per_class=4, seed=1)
    augment_folder(tmp_path / "a", tmp_path / "b", per_class=6, seed=2)
    first = read_augment_sources(tmp_path / "a")
    again = read_augment_sources(tmp_path / "b")
    b = tmp_path.resolve() / "b"
    for copy, source in first.items():  # a's copies, now originals of b, keep their source
        moved = lambda p: str(b / Path(p).relative_to(tmp_path.resolve() / "a"))  # noqa: E731
        assert again[moved(copy)] == moved(source)
    dataset = discover_images(b)
    groups = dict(zip(dataset.paths, group_images(dataset).groups, strict=True))
    for copy, source in again.items():
        assert groups[copy] == groups[source], copy
    # two originals per class: every image of b is in one of their two groups
    assert len(set(groups.values())) == 4
