import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from features.errors import UserInputError
from pipeline.catalog import (
    MARKER,
    RemoteDataset,
    export_cifar_batches,
    export_digits,
    export_numbered_images,
    fetch_dataset,
    list_datasets,
)
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
        "mini", "two classes", f"{base}/flowers.tgz", hashlib.md5(data).hexdigest(), "md5",
        "flowers.tgz", lambda src, dst: export_numbered_images(
            src, dst, folder="jpg", classes=("a", "b"), per_class=2), 2, 4)
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
    spec = RemoteDataset("broken", "", f"{base}/x.tgz", hashlib.md5(data).hexdigest(), "md5",
                         "x.tgz", lambda src, dst: export_numbered_images(
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
