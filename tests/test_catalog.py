import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from features.errors import UserInputError
from features.registries import Registry
from pipeline import catalog
from pipeline.catalog import (
    INNER_STAGING,
    MARKER,
    STAGING_MARKER,
    RemoteDataset,
    export_cifar_batches,
    export_digits,
    export_numbered_images,
    fetch_dataset,
    list_datasets,
)
from pipeline.cli import app
from tests.test_downloads import make_tar, server  # noqa: F401 - fixture


def _jpeg_bytes(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_fetch_numbered_archive_end_to_end(tmp_path, server, artifacts):  # noqa: F811
    base, handler = server
    members = {f"jpg/image_{i:04d}.jpg": _jpeg_bytes((i * 40, 0, 0)) for i in range(1, 5)}
    data = make_tar(members)
    handler.files["/flowers.tgz"] = data
    spec = RemoteDataset(
        name="mini", description="two classes", url=f"{base}/flowers.tgz",
        checksum=hashlib.md5(data).hexdigest(), algorithm="md5", archive_name="flowers.tgz",
        export=lambda src, dst: export_numbered_images(
            src, dst, folder="jpg", classes=("a", "b"), per_class=2), classes=2, images=4)
    dest = fetch_dataset(spec)
    assert sorted(p.name for p in (dest / "a").iterdir()) == ["image_0001.jpg", "image_0002.jpg"]
    assert (dest / MARKER).exists()
    assert not dest.with_name("mini.partial").exists()
    # a second fetch is a no-op (no new request)
    count = len(handler.requests)
    assert fetch_dataset(spec) == dest
    assert len(handler.requests) == count


def test_export_failure_leaves_no_dataset(tmp_path, server, artifacts):  # noqa: F811
    base, handler = server
    data = make_tar({"jpg/image_0001.jpg": _jpeg_bytes((1, 2, 3))})
    handler.files["/x.tgz"] = data
    spec = RemoteDataset(
        name="broken", description="", url=f"{base}/x.tgz",
        checksum=hashlib.md5(data).hexdigest(), algorithm="md5", archive_name="x.tgz",
        export=lambda src, dst: export_numbered_images(
            src, dst, folder="jpg", classes=("a", "b"), per_class=2))
    with pytest.raises(UserInputError, match="expected 4 images"):
        fetch_dataset(spec, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
    assert not (tmp_path / "broken.partial").exists()


def test_cifar_batches_export(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": ["plane", "car"]}, f)
    data = np.zeros((3, 3072), dtype=np.uint8)
    data[1, :1024] = 255  # red image
    with (root / "data_batch_1").open("wb") as f:
        pickle.dump({"data": data, "labels": [0, 1, 1]}, f)
    with (root / "test_batch").open("wb") as f:
        pickle.dump({"data": data[:1], "labels": [0]}, f)
    assert export_cifar_batches(tmp_path, tmp_path / "out") == 4
    red = np.asarray(Image.open(tmp_path / "out" / "car" / "data_batch_1_00001.png"))
    assert red.shape == (32, 32, 3) and red[..., 0].min() == 255 and red[..., 1].max() == 0
    assert len(list((tmp_path / "out" / "plane").iterdir())) == 2


def test_cifar_batch_with_foreign_code_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo hi",))

    with (root / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        export_cifar_batches(tmp_path, tmp_path / "out")


def test_digits_export(tmp_path):
    dest = export_digits(tmp_path / "digits", limit_per_class=3)
    classes = sorted(p.name for p in dest.iterdir() if p.is_dir())
    assert classes == [str(d) for d in range(10)]
    files = list((dest / "7").iterdir())
    assert len(files) == 3
    with Image.open(files[0]) as img:
        assert img.size == (32, 32) and img.mode == "L"


def test_unknown_dataset_and_listing(artifacts):
    with pytest.raises(UserInputError, match="choose one of: digits, flowers17, cifar10"):
        fetch_dataset("mnist")
    names = [row["name"] for row in list_datasets()]
    assert names == ["digits", "flowers17", "cifar10"]


def test_tar_fixture_is_gzip():
    assert tarfile.is_tarfile(io.BytesIO(make_tar({"a": b"b"})))


# -- the destination belongs to the user: tlearn never deletes what it did not make ------------

def _user_folder(root):
    """A folder of the user's own files (nested, one hidden), and its exact contents."""
    (root / "holiday").mkdir(parents=True)
    (root / "holiday" / "beach.jpg").write_bytes(_jpeg_bytes((10, 120, 200)))
    (root / "notes.txt").write_text("do not lose me\n")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root, _snapshot(root)


def _snapshot(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _mini_spec(base, handler) -> RemoteDataset:
    members = {f"jpg/image_{i:04d}.jpg": _jpeg_bytes((i * 40, 0, 0)) for i in range(1, 5)}
    data = make_tar(members)
    handler.files["/mini.tgz"] = data
    return RemoteDataset(
        name="mini", description="two classes", url=f"{base}/mini.tgz",
        checksum=hashlib.md5(data).hexdigest(), algorithm="md5", archive_name="mini.tgz",
        export=lambda src, dst: export_numbered_images(
            src, dst, folder="jpg", classes=("a", "b"), per_class=2), classes=2, images=4)


def test_fetch_refuses_a_non_empty_folder_before_downloading(tmp_path, server, artifacts):  # noqa: F811
    base, handler = server
    photos, before = _user_folder(tmp_path / "photos")
    with pytest.raises(UserInputError, match=r"photos is not empty and is not a dataset folder "
                                             r"tlearn made; choose a new or empty folder"):
        fetch_dataset(_mini_spec(base, handler), photos)
    assert _snapshot(photos) == before
    assert handler.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_digits_refuses_a_non_empty_folder(tmp_path):
    photos, before = _user_folder(tmp_path / "photos")
    with pytest.raises(UserInputError, match="choose a new or empty folder for --dest"):
        export_digits(photos, limit_per_class=1)
    assert _snapshot(photos) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_user_folder_named_like_the_staging_folder_survives(tmp_path):
    # <dest>.partial is where tlearn stages; a folder there it did not make is the user's
    photos, before = _user_folder(tmp_path / "digits.partial")
    with pytest.raises(UserInputError, match=r"digits\.partial exists and was not made by "
                                             r"tlearn; move it away"):
        export_digits(tmp_path / "digits", limit_per_class=1)
    assert _snapshot(photos) == before
    assert not (tmp_path / "digits").exists()


def test_destination_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "digits"
    target.write_text("mine\n")
    with pytest.raises(UserInputError, match="exists and is not a folder"):
        export_digits(target, limit_per_class=1)
    assert target.read_text() == "mine\n"


def test_cli_digits_into_a_user_folder_exits_2_with_one_line(tmp_path, artifacts):
    photos, before = _user_folder(tmp_path / "photos")
    result = CliRunner().invoke(app, ["datasets", "digits", "--dest", str(photos)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {photos} is not empty and is not a dataset folder tlearn made; choose a new "
        "or empty folder for --dest (nothing was changed)"]
    assert _snapshot(photos) == before


def test_cli_fetch_into_a_user_folder_exits_2(tmp_path, server, artifacts, monkeypatch):  # noqa: F811
    base, handler = server
    with_mini = Registry("dataset")
    with_mini.register("mini", _mini_spec(base, handler))
    monkeypatch.setattr(catalog, "REMOTE_DATASETS", with_mini)
    photos, before = _user_folder(tmp_path / "photos")
    result = CliRunner().invoke(app, ["datasets", "fetch", "mini", "--dest", str(photos)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {photos} is not empty")
    assert _snapshot(photos) == before
    assert handler.requests == []


def test_empty_folder_is_filled_in_place_and_a_finished_one_reused(tmp_path, server,  # noqa: F811
                                                                   artifacts):
    base, handler = server
    empty = tmp_path / "empty"
    empty.mkdir()
    inode = empty.stat().st_ino  # the user's folder itself (a mount point, say), not a new one
    assert export_digits(empty, limit_per_class=1) == empty
    assert empty.stat().st_ino == inode
    assert sorted(p.name for p in empty.iterdir()) == [MARKER, *map(str, range(10))]
    marker = (empty / MARKER).read_bytes()
    (empty / "0" / "added-by-user.txt").write_text("kept")
    assert export_digits(empty, limit_per_class=1) == empty  # reused as it is
    assert (empty / MARKER).read_bytes() == marker
    assert (empty / "0" / "added-by-user.txt").read_text() == "kept"

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    inode = fetched.stat().st_ino
    spec = _mini_spec(base, handler)
    assert fetch_dataset(spec, fetched) == fetched
    assert fetched.stat().st_ino == inode
    assert sorted(p.name for p in fetched.iterdir()) == [MARKER, "a", "b"]
    requests = len(handler.requests)
    assert fetch_dataset(spec, fetched) == fetched
    assert len(handler.requests) == requests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "empty", "fetched"]


@pytest.mark.parametrize("inside", [False, True], ids=["beside_new_dest", "inside_empty_dest"])
def test_staging_left_by_an_interrupted_run_is_replaced(tmp_path, inside):
    dest = tmp_path / "digits"
    if inside:
        dest.mkdir()
    staging = dest / INNER_STAGING if inside else tmp_path / "digits.partial"
    (staging / "3").mkdir(parents=True)
    (staging / STAGING_MARKER).touch()
    (staging / "3" / "half-written.png").write_bytes(b"\x89PNG")
    assert export_digits(dest, limit_per_class=1) == dest
    assert not staging.exists()
    assert [p.name for p in (dest / "3").iterdir()] == ["digit_0003.png"]
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, *map(str, range(10))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
