import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features.errors import UserInputError
from pipeline.datasets import (
    TEST,
    TRAIN,
    VAL,
    discover_images,
    images_to_predict,
    load_dataset,
    source_dataset_name,
    stratified_split,
)
from tests.conftest import make_image_folder, write_image


def test_folder_discovery_is_recursive_sorted_and_skips_hidden(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3)
    write_image(root / "cat" / "nested" / "deep.JPEG", (1, 2, 3))
    write_image(root / "cat" / ".hidden.jpg", (1, 2, 3))
    write_image(root / ".trash" / "x.jpg", (1, 2, 3))
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")
    (root / "dog" / "readme.txt").write_text("hi")
    ds = discover_images(root)
    assert ds.label_names == ["cat", "dog"]
    assert len(ds.paths) == 7
    assert any(p.endswith("deep.JPEG") for p in ds.paths)
    assert not any("hidden" in p or ".trash" in p for p in ds.paths)
    assert [r for _, r in ds.ignored] == ["not an image file extension"]
    assert ds.paths == sorted(ds.paths)


def test_csv_input_relative_to_csv(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    csv = tmp_path / "d" / "list.csv"
    csv.write_text("path,label\ncat/cat_000.jpg,feline\ndog/dog_000.jpg,canine\n"
                   "cat/cat_001.PNG,feline\n")
    ds = discover_images(csv)
    assert ds.label_names == ["canine", "feline"]
    assert ds.paths[0] == str((root / "cat" / "cat_000.jpg").resolve())


@pytest.mark.parametrize("setup,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
    (lambda p: make_image_folder(p / "one", classes=("only",)), "only one class"),
    (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "not a .csv"),
])
def test_bad_datasets_raise_clear_errors(tmp_path, setup, message):
    with pytest.raises(UserInputError, match=message):
        discover_images(setup(tmp_path))


def test_bad_csv_row(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("a.jpg,cat\nb.jpg\n")
    with pytest.raises(UserInputError, match="row 2"):
        discover_images(csv)


def test_split_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [40, 20, 8])
    split = stratified_split(labels, test_size=0.25, val_size=0.1, seed=3)
    for label, n in ((0, 40), (1, 20), (2, 8)):
        rows = split[labels == label]
        assert (rows == TEST).sum() == round(n * 0.25)
        assert (rows == VAL).sum() == round(n * 0.1)
        assert (rows == TRAIN).sum() >= 1
    assert np.array_equal(split, stratified_split(labels, test_size=0.25, val_size=0.1, seed=3))
    assert not np.array_equal(split, stratified_split(labels, test_size=0.25, val_size=0.1,
                                                      seed=4))


def test_tiny_class_keeps_a_training_row():
    split = stratified_split(np.array([0, 1, 1, 1, 1]), test_size=0.5)
    assert split[0] == TRAIN


@pytest.mark.parametrize("test_size,val_size", [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.2, -0.1)])
def test_split_rejects_bad_shares(test_size, val_size):
    with pytest.raises(UserInputError):
        stratified_split(np.array([0, 1]), test_size=test_size, val_size=val_size)


def test_load_dataset_returns_aligned_arrays(image_folder):
    images, _ds = load_dataset(image_folder, test_size=0.5, seed=0)
    assert len(images) == len(images.labels) == len(images.split) == 12
    assert images.label_names == ["cat", "dog"]
    assert (images.split == TEST).sum() == 6


def test_groups_never_straddle_splits_and_keep_the_class_shares():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    groups = np.concatenate([rng.integers(0, 15, 60), 100 + rng.integers(0, 15, 60)])
    split = stratified_split(labels, test_size=0.25, val_size=0.1, seed=1, groups=groups)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1, f"group {g} is in several splits"
    for label in (0, 1):
        rows = split[labels == label]
        assert (rows == TRAIN).sum() >= 1 and 5 <= (rows == TEST).sum() <= 30


def test_one_group_per_class_stays_in_train():
    split = stratified_split(np.array([0, 0, 0, 1, 1]), test_size=0.5,
                             groups=np.array([7, 7, 7, 1, 2]))
    assert list(split[:3]) == [TRAIN] * 3


def test_byte_identical_files_form_one_group(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6)
    (root / "dog" / "copy_of_cat.jpg").write_bytes((root / "cat" / "cat_000.jpg").read_bytes())
    (root / "cat" / "again.jpg").write_bytes((root / "cat" / "cat_000.jpg").read_bytes())
    images, dataset = load_dataset(root, test_size=0.5, seed=0)
    grouping = dataset.grouping
    assert grouping.duplicates == 2 and grouping.duplicate_groups == 1
    assert grouping.mixed_label_groups == 1
    assert "2 byte-identical file(s) in 1 group(s)" in grouping.describe()
    same = [i for i, p in enumerate(images.paths)
            if p.endswith(("cat_000.jpg", "copy_of_cat.jpg", "again.jpg"))]
    assert len(set(images.groups[same])) == 1
    assert len(set(images.split[same])) == 1


def test_symbolic_link_loop_is_listed_once_and_reported(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)
    ds = discover_images(root)  # hung (or hit the path length limit) before
    assert len(ds.paths) == 4
    assert any("link loop" in reason for _, reason in ds.ignored)


def test_the_dataset_of_a_store_does_not_depend_on_its_csv_still_being_there(tmp_path):
    listing = tmp_path / "pets.csv"
    listing.write_text("a.jpg,cat\n")
    here = source_dataset_name(str(listing), "pets__vgg16")
    listing.unlink()  # moved, or the store trained on another machine
    assert source_dataset_name(str(listing), "pets__vgg16") == here == "pets"
    folder = tmp_path / "photos.v2"
    folder.mkdir()
    assert source_dataset_name(str(folder), "x") == "photos.v2"


@pytest.mark.parametrize("row", ["dog/dog\0_000.jpg,dog", "dog/dog_000.jpg,d\0g"])
def test_a_nul_byte_in_a_csv_row_is_named_in_one_error(tmp_path, row):
    make_image_folder(tmp_path / "d", per_class=2)
    csv = tmp_path / "d" / "list.csv"
    csv.write_text(f"path,label\ncat/cat_000.jpg,cat\n{row}\n")
    with pytest.raises(UserInputError, match=r"list\.csv, row 3: holds a NUL byte"):
        discover_images(csv)


def test_double_underscore_folders_are_classes_and_tool_folders_are_said(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("__background__", "cat"), per_class=2)
    write_image(root / "__MACOSX" / "cat" / "._cat_000.jpg", (1, 2, 3))
    write_image(root / "cat" / "__pycache__" / "x.jpg", (1, 2, 3))
    ds = discover_images(root)
    assert ds.label_names == ["__background__", "cat"]
    assert len(ds.paths) == 4
    assert sorted(ds.ignored) == [
        (str(root / "__MACOSX"), "macOS archive metadata, not images"),
        (str(root / "cat" / "__pycache__"), "Python cache, not images")]


def test_a_nul_byte_in_the_path_column_of_a_csv_to_predict_is_named(tmp_path):
    csv = tmp_path / "todo.csv"
    csv.write_text("path\na.jpg\n\nb\0.jpg\n")
    with pytest.raises(UserInputError, match=r"todo\.csv, row 4: holds a NUL byte"):
        images_to_predict([csv])


def test_a_file_name_that_is_not_utf8_is_passed_over_with_its_reason(tmp_path):
    from pipeline.datasets import NOT_UTF8, images_to_predict

    root = make_image_folder(tmp_path / "d", per_class=3)
    bad = root / "dog" / os.fsdecode(b"bad\xffbytes.jpg")
    write_image(bad, (1, 2, 3))
    images, dataset = load_dataset(root, seed=1)
    assert len(images) == 6 and str(bad) not in images.paths
    assert dataset.ignored == [(str(root / "dog" / "bad\\xffbytes.jpg"), NOT_UTF8)]
    assert len(images.fingerprint()) == 64  # it raised UnicodeEncodeError
    paths, ignored = images_to_predict([root / "dog"])
    assert len(paths) == 3 and [r for _, r in ignored] == [NOT_UTF8]
    paths, ignored = images_to_predict([root / "dog" / "dog_000.jpg", bad])
    assert paths == [str(root / "dog" / "dog_000.jpg")] and [r for _, r in ignored] == [NOT_UTF8]


def test_duplicate_detection_never_opens_a_fifo_or_a_device_named_like_an_image(tmp_path):
    # Special files report size 0, like an empty image: reading a FIFO blocks and
    # /dev/zero never ends, so grouping hung for ever. A child process, to fail, not hang.
    root = make_image_folder(tmp_path / "d", per_class=3)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    os.mkfifo(root / "cat" / "pipe.jpg")
    (root / "dog" / "zeros.jpg").symlink_to("/dev/zero")
    script = ("import sys; from pipeline.datasets import load_dataset; "
              "images, ds = load_dataset(sys.argv[1]); print(len(images), ds.grouping.duplicates)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", script, str(root)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9", "0"]  # listed (extraction skips them, with why)
