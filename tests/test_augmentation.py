import hashlib

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
    (tmp_path / "exists").mkdir()
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
