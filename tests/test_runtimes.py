"""Runtimes: OpenVINO against TensorFlow for every backbone, the conversion cache, int8."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from features import runtimes
from features.backbones import BACKBONES
from features.errors import UserInputError
from features.factory import create_extractor
from features.registries import Registry
from features.runtimes import (
    MIXING_TOLERANCE,
    OpenVINONetwork,
    cache_dir,
    compile_extractor,
    get_runtime,
    resolve_runtime,
)
from features.spec import FeatureExtractor, FeatureSpec
from tests.conftest import TINY_EXTRACT, by_weight, make_image_folder

openvino = pytest.importorskip(
    "openvino", reason="OpenVINO is not installed (pip install 'tlearn[openvino]')")


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |b|: the measure MIXING_TOLERANCE bounds."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder for this test alone."""
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "cache"))
    return cache_dir()


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Records every conversion of a Keras model (a cache miss)."""
    calls = []
    real = runtimes.convert_keras

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(runtimes, "convert_keras", counting)
    return calls


def tiny_extractor(filters: int = 4) -> FeatureExtractor:
    """A one-convolution feature network: the cache does not care which network it holds."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)),
                              keras.layers.Conv2D(filters, 3, activation="relu"),
                              keras.layers.GlobalMaxPooling2D()])
    spec = FeatureSpec(backbone="vgg16", layer=f"conv{filters}", pooling="max", input_size=16,
                       preprocessing="x / 255", weights="random", weights_sha256="",
                       feature_dim=filters)
    return FeatureExtractor(spec, model, lambda x: np.asarray(x, np.float32) / 255)


# -- parity: one row per backbone ---------------------------------------------------------------

@pytest.mark.parametrize("name", [by_weight(name) for name in sorted(BACKBONES)])
def test_openvino_float32_gives_tensorflow_features_within_the_mixing_tolerance(name):
    config = BACKBONES[name]
    # Small inputs keep conversion quick; "max" pooling keeps the features far from zero.
    step = config.input_size_multiple
    size = -(-max(config.min_input_size, 32) // step) * step
    tf_extractor = create_extractor(name, weights="none", input_size=size, pooling="max")
    ov_extractor = compile_extractor(tf_extractor, "openvino")
    assert isinstance(ov_extractor.model, OpenVINONetwork)
    assert (ov_extractor.spec.runtime, ov_extractor.spec.precision) == ("openvino", "float32")
    assert replace(ov_extractor.spec, runtime="tensorflow") == tf_extractor.spec

    images = random_images(5, size)
    expected = tf_extractor(images)
    got = ov_extractor(images)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.max(np.abs(expected)) > 0  # features that could differ
    assert relative_difference(got, expected) < MIXING_TOLERANCE


def test_stores_of_both_runtimes_agree_and_a_model_of_one_classifies_the_other(
        tmp_path, artifacts):
    from classifiers.persistence import check_same_features, load_classifier
    from features.store import FeatureStore
    from pipeline.workflows import evaluate_model, train_store
    from tests.conftest import extract

    data = make_image_folder(tmp_path / "mix", classes=("red", "green", "blue"), per_class=8)
    tiny = {**TINY_EXTRACT, "pooling": "max"}
    tf_store = extract(data, runtime="tensorflow", **tiny).result.path
    ov_store = extract(data, runtime="openvino", out=tmp_path / "ov.h5",
                               **tiny).result.path
    with FeatureStore(tf_store) as a, FeatureStore(ov_store) as b:
        assert (a.spec.runtime, b.spec.runtime) == ("tensorflow", "openvino")
        assert a.paths == b.paths
        tf_features, ov_features = a.load()[0], b.load()[0]
        assert relative_difference(ov_features, tf_features) < MIXING_TOLERANCE
        assert json.loads(b.attrs["library_versions"])["openvino"] == openvino.get_version()
    model_path = train_store(tf_store, classifier="logreg")[0].model_path
    with FeatureStore(ov_store) as store:
        check_same_features(load_classifier(model_path), store.spec)  # does not raise
    on_tf = evaluate_model(model_path, tf_store).report["test"]
    on_ov = evaluate_model(model_path, ov_store).report["test"]
    assert on_ov["accuracy"] == on_tf["accuracy"]
    # --runtime: the split's files classified again, the backbone run by OpenVINO
    from_files = evaluate_model(model_path, tf_store, runtime="openvino")
    assert from_files.name.endswith("__openvino")
    assert from_files.report["test"]["accuracy"] == on_tf["accuracy"]
    assert from_files.report["test"]["n_samples"] == on_tf["n_samples"]


# -- choosing a runtime --------------------------------------------------------------------------

def test_precisions_choose_their_runtime_and_refuse_the_other():
    assert resolve_runtime(None, "int8") == "openvino"
    assert resolve_runtime(None, "bfloat16") == "tensorflow"
    assert resolve_runtime(None, "float32") == runtimes.default_runtime()
    with pytest.raises(UserInputError, match="pass --runtime openvino"):
        resolve_runtime("tensorflow", "int8")
    with pytest.raises(UserInputError, match="pass --runtime tensorflow"):
        resolve_runtime("openvino", "bfloat16")
    with pytest.raises(UserInputError, match="unknown runtime 'onnx'; choose one of"):
        resolve_runtime("onnx")


def test_without_openvino_the_error_names_the_extra_to_install(monkeypatch, image_folder):
    from typer.testing import CliRunner

    from pipeline.cli import app

    missing = Registry("runtime")
    for name, entry in runtimes.RUNTIMES.items():
        missing.register(name, replace(entry, package="no_such_openvino")
                         if name == "openvino" else entry)
    monkeypatch.setattr(runtimes, "RUNTIMES", missing)
    with pytest.raises(UserInputError, match=r"pip install 'tlearn\[openvino\]'"):
        get_runtime("openvino")
    assert runtimes.default_runtime() == "tensorflow"
    result = CliRunner().invoke(app, ["extract", str(image_folder), "--runtime", "openvino",
                                      "--weights", "none", "--backbone", "vgg16"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'tlearn[openvino]'" in lines[0]


# -- the cache ----------------------------------------------------------------------------------

def entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_converted_network_is_reused_from_the_cache(fresh_cache, conversions):
    extractor = tiny_extractor()
    first = compile_extractor(extractor, "openvino")
    second = compile_extractor(extractor, "openvino")
    assert len(conversions) == 1
    assert first.model.xml == second.model.xml
    [entry] = entries(fresh_cache)
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "model.bin",
                                                       "model.xml"]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["payload"]["spec"]["backbone"] == "vgg16"
    assert manifest["payload"]["versions"]["openvino"] == openvino.get_version()


def test_another_spec_is_another_entry(fresh_cache, conversions):
    compile_extractor(tiny_extractor(), "openvino")
    compile_extractor(tiny_extractor(filters=5), "openvino")
    assert len(conversions) == 2 and len(entries(fresh_cache)) == 2


def test_a_corrupt_entry_is_rebuilt_not_trusted(fresh_cache, conversions):
    extractor = tiny_extractor()
    images = random_images(3, 16)
    compile_extractor(extractor, "openvino")
    [entry] = entries(fresh_cache)
    weights = entry / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    weights.write_bytes(bytes(data))

    rebuilt = compile_extractor(extractor, "openvino")
    assert len(conversions) == 2
    assert runtimes.CacheEntry(json.loads((entry / "manifest.json").read_text())["key"],
                               entry).is_valid()
    assert relative_difference(rebuilt(images), extractor(images)) < MIXING_TOLERANCE


def test_a_failed_conversion_leaves_no_entry_behind(fresh_cache, monkeypatch):
    real_save = openvino.save_model

    def save_half_then_fail(model, path, **kwargs):
        real_save(model, path, **kwargs)
        Path(path).with_suffix(".bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(openvino, "save_model", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        compile_extractor(tiny_extractor(), "openvino")
    assert entries(fresh_cache) == []  # neither an entry nor a temporary folder
    monkeypatch.setattr(openvino, "save_model", real_save)
    assert isinstance(compile_extractor(tiny_extractor(), "openvino").model, OpenVINONetwork)


# -- int8 -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_setup(tmp_path_factory):
    """A float32 and an int8 store of the same images, and a logreg trained on the int8 one.

    Shared by the tests of this module (quantizing takes seconds); none of them changes it.
    """
    from pipeline.workflows import train_store
    from tests.conftest import extract

    tmp = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLEARN_ARTIFACTS", str(tmp / "artifacts"))
        data = make_image_folder(tmp / "q", classes=("red", "green", "blue"), per_class=10)
        int8 = extract(data, runtime="openvino", precision="int8",
                               calibration_images=12, **TINY_EXTRACT).result.path
        float32 = extract(data, out=tmp / "f32.h5", runtime="openvino",
                                  **TINY_EXTRACT).result.path
        model = train_store(int8, classifier="logreg")[0].model_path
    return {"data": data, "int8": int8, "float32": float32, "model": model}


def test_int8_features_are_recorded_and_calibrated_on_train_images_only(int8_setup):
    from features.store import FeatureStore

    with FeatureStore(int8_setup["int8"]) as q, FeatureStore(int8_setup["float32"]) as f:
        spec = q.spec
        assert (spec.runtime, spec.precision) == ("openvino", "int8")
        assert len(spec.calibration) == 64
        calibration = json.loads(q.attrs["calibration_paths"])
        assert len(calibration) == 12
        split_of = dict(zip(q.paths, q.split, strict=True))
        assert {split_of[p] for p in calibration} == {"train"}
        assert runtimes.calibration_digest(calibration) == spec.calibration
        # quantized features are near the float32 ones, and not the same numbers
        quantized, exact = q.load()[0], f.load()[0]
        assert not np.array_equal(quantized, exact)
        assert relative_difference(quantized, exact) < 0.5


def scores_from_files_and_from_store(setup) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the test images classified from their files, and from the int8 store."""
    from classifiers.persistence import load_classifier
    from features.images import load_image
    from features.store import FeatureStore
    from pipeline.image_classifiers import load_image_classifier

    with FeatureStore(setup["int8"]) as store:
        features, _ = store.load("test")
        paths = [p for p, s in zip(store.paths, store.split, strict=True) if s == "test"]
    classifier = load_image_classifier(setup["model"])
    assert (classifier.info["runtime"], classifier.info["precision"]) == ("openvino", "int8")
    images = np.stack([load_image(p, 32) for p in paths])
    return (classifier.class_scores(images),
            load_classifier(setup["model"]).class_scores(features))


def test_a_model_trained_on_int8_features_predicts_with_int8_features(int8_setup):
    from pipeline.image_classifiers import load_image_classifier

    from_files, from_store = scores_from_files_and_from_store(int8_setup)
    assert np.max(np.abs(from_files - from_store)) < 1e-4
    with pytest.raises(UserInputError, match="pass --runtime openvino"):
        load_image_classifier(int8_setup["model"], runtime="tensorflow")


def test_an_int8_network_gone_from_the_cache_is_quantized_again_the_same(
        int8_setup, fresh_cache):
    # fresh_cache is empty: the network is quantized again from the calibration images
    # the store recorded, and must be the one the store's features came from.
    from_files, from_store = scores_from_files_and_from_store(int8_setup)
    assert len(entries(fresh_cache)) == 2  # float32, then int8
    assert np.max(np.abs(from_files - from_store)) < 1e-4


def test_a_saved_int8_model_predicts_images_from_the_library_with_an_empty_cache(
        int8_setup, fresh_cache):
    # The README's path: the model learnt its calibration images when it was fitted, so
    # load_classifier(...).predict_images needs neither the cache nor the store, and
    # answers what tlearn predict answers.
    from classifiers.persistence import load_classifier
    from pipeline.workflows import predict_files

    paths = [str(p) for p in sorted(Path(int8_setup["data"]).rglob("*_00[0-2].*"))]
    store = Path(int8_setup["int8"])
    store.rename(store.with_suffix(".away"))
    try:
        from_library = load_classifier(int8_setup["model"]).predict_images(paths, top=3)
        from_cli = predict_files(int8_setup["model"], paths, top=3)
    finally:
        store.with_suffix(".away").rename(store)
    assert len(entries(fresh_cache)) == 2  # float32, then int8 quantized again
    assert [r["label"] for r in from_library] == [r["label"] for r in from_cli]
    for mine, theirs in zip(from_library, from_cli, strict=True):
        assert [name for name, _ in mine["top"]] == [name for name, _ in theirs["top"]]
        np.testing.assert_allclose([v for _, v in mine["top"]], [v for _, v in theirs["top"]],
                                   atol=1e-6)


@pytest.fixture
def int8_model_saved_before(int8_setup, tmp_path):
    """The int8 model as saved before classifiers learnt their calibration images."""
    from classifiers.persistence import load_classifier, read_sidecar, save_classifier

    model = load_classifier(int8_setup["model"])
    del model.calibration_paths_
    sidecar = read_sidecar(int8_setup["model"])
    return save_classifier(model, tmp_path / "old.joblib",
                           metadata={"store": sidecar["store"]})


def test_an_int8_model_saved_before_finds_its_calibration_images_in_its_store(
        int8_setup, int8_model_saved_before, fresh_cache):
    from classifiers.persistence import load_classifier
    from features.store import FeatureStore

    model = load_classifier(int8_model_saved_before)
    with FeatureStore(int8_setup["int8"]) as store:
        assert model.calibration_paths_ == json.loads(store.attrs["calibration_paths"])
    from_files, from_store = scores_from_files_and_from_store(
        {**int8_setup, "model": int8_model_saved_before})
    assert np.max(np.abs(from_files - from_store)) < 1e-4


def test_an_int8_network_that_cannot_be_rebuilt_says_why(int8_setup, int8_model_saved_before,
                                                         fresh_cache):
    from features.store import FeatureStore
    from pipeline.image_classifiers import load_image_classifier

    store = Path(int8_setup["int8"])
    store.rename(store.with_suffix(".away"))  # the store that recorded the calibration images
    try:
        with pytest.raises(UserInputError, match=r"is not in the cache .* extract the int8 "
                                                 r"features again"):
            load_image_classifier(int8_model_saved_before)
    finally:
        store.with_suffix(".away").rename(store)
    with FeatureStore(int8_setup["int8"]) as opened:
        first = Path(json.loads(opened.attrs["calibration_paths"])[0])
    first.rename(first.with_suffix(".away"))  # a calibration image the model names
    try:
        with pytest.raises(UserInputError, match=rf"calibration image {first} cannot be read"):
            load_image_classifier(int8_setup["model"])
    finally:
        first.with_suffix(".away").rename(first)


def test_int8_and_float32_features_are_not_mixed(int8_setup):
    from pipeline.workflows import evaluate_model

    with pytest.raises(UserInputError, match=r"precision 'float32' \(model: 'int8'\).*"
                                             r"--precision int8 --runtime openvino"):
        evaluate_model(int8_setup["model"], int8_setup["float32"])


def test_int8_is_refused_with_tensorflow(image_folder, artifacts):
    from tests.conftest import extract

    with pytest.raises(UserInputError, match="precision 'int8' is not available with "
                                             "--runtime tensorflow"):
        extract(image_folder, runtime="tensorflow", precision="int8", **TINY_EXTRACT)


# -- stage 3 models and serving -------------------------------------------------------------------

@pytest.fixture
def keras_model(tmp_path):
    """A small convolutional stage 3 ``.keras`` model with its sidecar."""
    from tests.conftest import save_stage3_model

    return save_stage3_model(tmp_path / "scratch.keras", ["a", "b", "c"])


def test_a_stage3_model_runs_in_openvino(keras_model, fresh_cache):
    from pipeline.image_classifiers import load_image_classifier

    images = random_images(5, 16)
    tf_scores = load_image_classifier(keras_model, runtime="tensorflow").class_scores(images)
    ov_model = load_image_classifier(keras_model, runtime="openvino")
    assert ov_model.info["runtime"] == "openvino"
    assert len(entries(fresh_cache)) == 1
    assert np.max(np.abs(ov_model.class_scores(images) - tf_scores)) < 1e-5


def test_a_stage3_model_is_evaluated_on_the_files_of_a_split(keras_model, tmp_path, artifacts):
    from pipeline.workflows import evaluate_model
    from tests.conftest import extract

    data = make_image_folder(tmp_path / "abc", classes=("a", "b", "c"), per_class=4)
    store = extract(data, **TINY_EXTRACT).result.path
    runs = {runtime: evaluate_model(keras_model, store, runtime=runtime).report["test"]
            for runtime in ("tensorflow", "openvino")}
    assert runs["openvino"]["n_samples"] == runs["tensorflow"]["n_samples"] == 3
    assert runs["openvino"]["accuracy"] == runs["tensorflow"]["accuracy"]


def test_the_server_says_which_runtime_answers(keras_model):
    from fastapi.testclient import TestClient

    from pipeline.image_classifiers import load_image_classifier
    from pipeline.serving import create_app

    app = create_app(load_image_classifier(keras_model, runtime="openvino"), max_batch=2)
    info = TestClient(app).get("/model").json()
    assert (info["runtime"], info["precision"]) == ("openvino", "float32")


def test_a_thread_limit_reaches_the_compiled_openvino_network(fresh_cache, monkeypatch):
    # A Ray worker given one CPU must not start a thread per core of its node.
    monkeypatch.setattr(runtimes, "_CPU_THREADS", None)
    runtimes.limit_cpu_threads(1)
    network = compile_extractor(tiny_extractor(), "openvino").model
    assert int(network._compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_taps_and_mirror_run_the_same_in_openvino():
    tf_extractor = create_extractor("efficientnet_lite0", input_size=32,
                                           taps="stages", mirror=True)
    ov_extractor = compile_extractor(tf_extractor, "openvino")
    assert replace(ov_extractor.spec, runtime="tensorflow") == tf_extractor.spec
    images = random_images(3, 32)
    expected = tf_extractor(images)
    assert relative_difference(ov_extractor(images), expected) < MIXING_TOLERANCE


def test_a_joined_backbone_runs_the_same_in_openvino():
    tf_extractor = create_extractor("efficientnet_lite0+efficientnet_lite1",
                                           taps="stages")
    ov_extractor = compile_extractor(tf_extractor, "openvino")
    assert replace(ov_extractor.spec, runtime="tensorflow") == tf_extractor.spec
    images = random_images(2, 240)
    assert relative_difference(ov_extractor(images), tf_extractor(images)) < MIXING_TOLERANCE


@pytest.mark.slow  # NNCF quantization of a whole network: ~1 min each here
@pytest.mark.parametrize("name", ["convnext_tiny", "efficientnetv2_b0"])
def test_int8_of_the_keras_applications_backbones_of_this_decade(name, tmp_path, monkeypatch):
    # ConvNeXt quantizes and runs; NNCF's int8 EfficientNetV2 does not compile on the CPU
    # plugin (per-channel FakeQuantize), which is one line, not a traceback.
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", per_class=4)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    base = create_extractor(name, weights="none", input_size=32, runtime="tensorflow")
    if name == "efficientnetv2_b0":
        with pytest.raises(UserInputError, match="OpenVINO cannot run the int8 network NNCF "
                                                 "made of efficientnetv2_b0") as info:
            compile_extractor(base, "openvino", "int8", calibration_paths=paths)
        assert "\n" not in str(info.value)
        return
    int8 = compile_extractor(base, "openvino", "int8", calibration_paths=paths)
    features = int8(random_images(3, 32))
    assert features.shape == (3, 768) and np.isfinite(features).all()
    assert (int8.spec.runtime, int8.spec.precision) == ("openvino", "int8")
