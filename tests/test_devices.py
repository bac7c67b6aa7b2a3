"""Keras backends, the device line, float16, workers and a device out of memory (features.devices).

Keras fixes its backend once per process, so jax runs in subprocesses, through
``tests/no_tensorflow.py``: ``import tensorflow`` fails there, as on the GPU machines
that have jax or torch and no TensorFlow.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from features import devices
from features.batches import resolve_workers
from features.devices import (
    BACKEND_MIXING_TOLERANCE,
    Device,
    check_precision_on_device,
    is_device_out_of_memory,
    select_backend,
)
from features.errors import UserInputError
from features.store import FeatureStore
from pipeline.cli import app
from tests.conftest import REPO_ROOT, make_image_folder

runner = CliRunner()
HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (pip install "
                                                   "'tlearn[jax]')")
TINY_FLAGS = ["--backbone", "vgg16", "--weights", "none", "--input-size", "32", "--pooling",
              "avg", "--batch-size", "8"]


def run_without_tensorflow(*args, env=None, code=None):
    """``tlearn ARGS`` (or python ``code``) in a fresh process where TensorFlow cannot load."""
    command = ([sys.executable, "-c", "import tests.no_tensorflow\n" + code, *args] if code
               else [sys.executable, str(REPO_ROOT / "tests" / "no_tensorflow.py"), *args])
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                                "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def relative_gap(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


# -- jax, end to end, without TensorFlow --------------------------------------------------------

_LITE0_UNDER_JAX = """
import sys
import numpy as np
import keras
from features.factory import create_extractor
ref = np.load(sys.argv[1])
extractor = create_extractor("efficientnet_lite0", weights="imagenet")
np.savez(sys.argv[2], features=extractor(ref["images_uint8"]), backend=keras.backend.backend(),
         spec_backend=extractor.spec.backend)
print("TENSORFLOW_LOADED", "tensorflow" in sys.modules)
"""


@needs_jax
@pytest.mark.shared_data
def test_lite0_features_of_jax_and_tensorflow_agree_with_the_reference(lite0_reference,
                                                                       tmp_path):
    from features.factory import create_extractor
    from tests.conftest import LITE0_FIXTURE

    out = tmp_path / "jax.npz"
    shown = run_without_tensorflow(str(LITE0_FIXTURE), str(out), code=_LITE0_UNDER_JAX,
                                   env={"KERAS_BACKEND": "jax"})
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.strip().splitlines()[-1] == "TENSORFLOW_LOADED False"
    under_jax = np.load(out)
    assert str(under_jax["backend"]) == str(under_jax["spec_backend"]) == "jax"
    tensorflow = create_extractor("efficientnet_lite0", weights="imagenet")
    assert tensorflow.spec.backend == "tensorflow"
    under_tf = tensorflow(lite0_reference["images_uint8"])
    reference = lite0_reference["pooled_features"]
    for features in (under_jax["features"], under_tf):
        assert relative_gap(features, reference) <= BACKEND_MIXING_TOLERANCE
    assert relative_gap(under_jax["features"], under_tf) <= BACKEND_MIXING_TOLERANCE


LITE0_FLAGS = ["--backbone", "efficientnet_lite0", "--input-size", "64", "--batch-size", "8"]


@needs_jax
def test_a_store_written_under_jax_records_it_and_mixes_with_tensorflow_ones(tmp_path,
                                                                            artifacts):
    data = make_image_folder(tmp_path / "pets", per_class=4)
    jax_store, tf_store = tmp_path / "jax.h5", tmp_path / "tf.h5"
    shown = run_without_tensorflow("--backend", "jax", "extract", str(data), *LITE0_FLAGS,
                                   "--out", str(jax_store))
    assert shown.returncode == 0, shown.stdout + shown.stderr[-3000:]
    assert shown.stdout.strip().splitlines()[-1] == "TENSORFLOW_LOADED False"
    assert "computing on CPU: " in shown.stderr and shown.stderr.count(", jax") == 1
    made = runner.invoke(app, ["extract", str(data), *LITE0_FLAGS, "--out", str(tf_store)])
    assert made.exit_code == 0, made.output
    with FeatureStore(jax_store) as js, FeatureStore(tf_store) as ts:
        assert (js.spec.backend, ts.spec.backend) == ("jax", "tensorflow")
        assert js.attrs["device"].startswith("CPU: ") and js.attrs["device"].endswith(", jax")
        assert "jax" in json.loads(js.attrs["library_versions"])
        assert list(js.paths) == list(ts.paths)
        assert relative_gap(js.load()[0], ts.load()[0]) <= BACKEND_MIXING_TOLERANCE
    # a classifier of TensorFlow features evaluates features of jax: the spec matches
    trained = runner.invoke(app, ["train", str(tf_store), "--classifier", "logreg", "--cv", "2"])
    assert trained.exit_code == 0, trained.output
    model = artifacts / "classifiers" / "tf__logreg.joblib"
    evaluated = runner.invoke(app, ["evaluate", str(model), str(jax_store)])
    assert evaluated.exit_code == 0, evaluated.output


def test_random_weights_of_another_backend_are_refused_not_mixed():
    from classifiers.persistence import check_same_features
    from features.factory import create_extractor
    from features.spec import FeatureSpec

    spec = create_extractor("vgg16", weights="none", input_size=32, pooling="avg").spec
    model = type("Model", (), {"feature_spec_": spec.to_dict()})()
    jax_random = FeatureSpec(**{**spec.to_dict(), "backend": "jax"})
    with pytest.raises(UserInputError, match=r"backend 'jax' \(model: 'tensorflow'\); extract "
                                             r"the images again with --backend tensorflow"):
        check_same_features(model, jax_random)
    trained = FeatureSpec(**{**spec.to_dict(), "weights": "imagenet"})
    model.feature_spec_ = trained.to_dict()
    check_same_features(model, FeatureSpec(**{**trained.to_dict(), "backend": "jax"}))
    with pytest.raises(UserInputError, match="random weights drawn by jax"):
        create_extractor(jax_random)


@needs_jax
def test_tensorflow_only_paths_are_one_line_under_jax(tmp_path):
    data = make_image_folder(tmp_path / "pets", per_class=2)
    shown = run_without_tensorflow("--backend", "jax", "extract", str(data), *TINY_FLAGS,
                                   "--runtime", "openvino", "--out", str(tmp_path / "o.h5"))
    assert shown.returncode == 2
    assert [ln for ln in shown.stderr.splitlines() if ln.strip()] == [
        "error: --runtime openvino (converting the network to OpenVINO) needs the tensorflow "
        "backend and this process runs on jax; run it with --backend tensorflow (or "
        "KERAS_BACKEND=tensorflow)"]
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed here (its PyPI wheels bring "
                                          "GBs of CUDA); the GPU machines have it")
def test_a_store_written_under_torch_records_it(tmp_path):
    data = make_image_folder(tmp_path / "pets", per_class=2)
    store = tmp_path / "torch.h5"
    shown = run_without_tensorflow("--backend", "torch", "extract", str(data), *TINY_FLAGS,
                                   "--out", str(store))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.strip().splitlines()[-1] == "TENSORFLOW_LOADED False"
    with FeatureStore(store) as fs:
        assert fs.spec.backend == "torch" and fs.attrs["device"].endswith(", torch")


# -- choosing a backend -------------------------------------------------------------------------

def test_an_unknown_or_missing_backend_is_one_line(monkeypatch):
    with pytest.raises(UserInputError, match=r"unknown backend 'jaxx'; .*did you mean jax"):
        select_backend("jaxx")
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserInputError, match=r"backend torch is not installed; install it"):
        select_backend("torch")


def test_keras_cannot_switch_backend_once_imported():
    import keras

    assert devices.active_backend() == keras.backend.backend() == "tensorflow"
    with pytest.raises(UserInputError, match="Keras already runs on tensorflow in this process"):
        select_backend("jax")


def test_the_backend_option_is_one_line_for_a_wrong_name():
    result = runner.invoke(app, ["--backend", "mxnet", "inspect", "x.h5"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: unknown backend 'mxnet'; choose one of: "
                                            "tensorflow, jax, torch")


# -- the device line, float16, workers, out of memory ---------------------------------------------

def test_the_device_line_names_gpu_or_cpu_and_the_backend():
    assert Device("GPU", "NVIDIA H100 80GB HBM3", "jax").describe() == (
        "GPU:0 NVIDIA H100 80GB HBM3, jax")
    assert Device("CPU", "AMD EPYC 9554", "tensorflow", cores=2, isa="AVX-512").describe() == (
        "CPU: AMD EPYC 9554, 2 cores, AVX-512, tensorflow")
    here = devices.compute_device()
    assert here.backend == "tensorflow"
    assert here.cores == (0 if here.is_gpu else len(os.sched_getaffinity(0)))


def test_extract_names_what_computes_and_records_it(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "pets", per_class=2)
    out = tmp_path / "s.h5"
    result = runner.invoke(app, ["extract", str(data), *TINY_FLAGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = devices.describe_device()
    assert f"computing on {line}" in result.stderr
    with FeatureStore(out) as fs:
        assert fs.attrs["device"] == line


@pytest.mark.parametrize("flags, hint", [
    ({"avx512_bf16": True}, "this CPU computes bfloat16 natively: pass --precision bfloat16"),
    ({"avx512_bf16": False, "amx_bf16": False}, "pass --precision float32"),
])
def test_float16_on_a_cpu_is_one_line_naming_the_fix(monkeypatch, flags, hint):
    info = devices.cpu_info()
    monkeypatch.setattr(devices, "cpu_info", lambda: {**info, "flags": {**info["flags"],
                                                                          **flags}})
    cpu = Device("CPU", "x", "tensorflow", cores=2, isa="AVX2")
    with pytest.raises(UserInputError) as err:
        check_precision_on_device("float16", cpu)
    assert str(err.value) == ("--precision float16 needs a GPU and tensorflow computes on the "
                              f"CPU here; {hint}")
    check_precision_on_device("float16", Device("GPU", "g", "jax"))
    check_precision_on_device("bfloat16", cpu)


def test_float16_is_recorded_in_the_spec_where_a_gpu_computes(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "compute_device", lambda backend=None: Device("GPU", "g",
                                                                               "tensorflow"))
    from features.factory import create_extractor

    extractor = create_extractor("vgg16", weights="none", input_size=32, pooling="avg",
                                 precision="float16")
    assert (extractor.spec.precision, extractor.spec.runtime) == ("float16", "tensorflow")
    assert extractor.model.get_layer("block1_conv1").compute_dtype == "float16"
    features = extractor(np.full((2, 32, 32, 3), 100, np.uint8))
    assert features.dtype == np.float32 and features.shape == (2, 512)


def test_extract_float16_on_this_cpu_is_one_line_and_writes_nothing(tmp_path, artifacts):
    if devices.compute_device().is_gpu:
        pytest.skip("a GPU computes here")
    data = make_image_folder(tmp_path / "pets", per_class=2)
    out = tmp_path / "s.h5"
    result = runner.invoke(app, ["extract", str(data), *TINY_FLAGS, "--precision", "float16",
                                 "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(
        "error: --precision float16 needs a GPU and tensorflow computes on the CPU here; ")
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_workers_auto_is_the_cores_this_process_may_use():
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    for bad in (0, "0", "many", -1):
        with pytest.raises(UserInputError, match="--workers must be 'auto' or a whole number"):
            resolve_workers(bad)
    wrong = runner.invoke(app, ["extract", "d", "--workers", "lots"])
    assert wrong.exit_code == 2 and "--workers must be 'auto'" in wrong.output


class XlaRuntimeError(RuntimeError):
    """The type jax raises (jaxlib's XlaRuntimeError), by name."""


class OutOfMemoryError(RuntimeError):
    """The type torch raises (torch.OutOfMemoryError), by name."""


def test_out_of_memory_is_recognised_for_every_backend():
    import tensorflow as tf

    assert is_device_out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert is_device_out_of_memory(XlaRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes."))
    assert is_device_out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert not is_device_out_of_memory(XlaRuntimeError("INVALID_ARGUMENT: shapes"))
    assert not is_device_out_of_memory(ValueError("out of memory"))
    assert not is_device_out_of_memory(MemoryError())


@pytest.mark.parametrize("backend_error", [
    lambda: __import__("tensorflow").errors.ResourceExhaustedError(None, None, "OOM when "
                                                                   "allocating tensor"),
    lambda: XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 2147483648 bytes"),
    lambda: OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_a_device_out_of_memory_is_one_line_and_nothing_is_published(tmp_path, monkeypatch,
                                                                     backend_error):
    from features import extraction
    from features.extraction import extract_features
    from pipeline.datasets import load_dataset

    data = make_image_folder(tmp_path / "pets", per_class=4)
    images, _ = load_dataset(data, test_size=0.25, val_size=0.0, seed=0)
    real = extraction.create_extractor

    def extractor_that_runs_out(*args, **kwargs):
        built = real(*args, **kwargs)
        calls = []

        def predict_on_batch(x):
            calls.append(len(x))
            if len(calls) > 1:  # the first batch fits, the second does not
                raise backend_error()
            return np.zeros((len(x), built.spec.feature_dim), np.float32)

        built.model = type("Model", (), {"predict_on_batch": staticmethod(predict_on_batch)})()
        return built

    monkeypatch.setattr(extraction, "create_extractor", extractor_that_runs_out)
    out = tmp_path / "s.h5"
    from features.settings import NetworkSettings

    with pytest.raises(UserInputError) as err:
        extract_features(images, out, NetworkSettings("vgg16", weights="none", input_size=32,
                                                      pooling="avg"), batch_size=4)
    assert str(err.value) == (
        "the CPU ran out of memory at --batch-size 4; pass a smaller --batch-size (e.g. 2); "
        "nothing was published, and the rerun resumes after the rows already computed")
    assert not out.exists()  # nothing published; the partial file resumes
    monkeypatch.setattr(extraction, "create_extractor", real)
    done = extract_features(images, out, NetworkSettings("vgg16", weights="none",
                                                         input_size=32, pooling="avg"),
                            batch_size=2)
    assert done.resumed_rows == 4 and done.rows == len(images)


@needs_jax
@pytest.mark.slow
def test_bench_gpu_smoke_runs_end_to_end_on_jax_without_tensorflow(tmp_path):
    # An importable 'tensorflow' that fails, first on the path of every process the
    # bench starts: the lent GPU machines have no TensorFlow at all.
    blocker = tmp_path / "blocker" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no TensorFlow on this machine')\n")
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{REPO_ROOT}",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu.py"), "--smoke",
                           "--backends", "jax", "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    assert result["backend"] == "jax" and result["skipped"] == [], result
    assert result["device"]["line"].endswith(", jax") and "tensorflow" not in result["versions"]
    cases = {(r["case"], r.get("images")) for r in result["rows"]}
    assert cases == {("forward", None), ("end_to_end", "320 px"), ("end_to_end", "12 MP"),
                     ("finetune", None)}
    assert all(r["img_s"] > 0 for r in result["rows"] if "img_s" in r)
    assert [e["phase"] for e in next(r for r in result["rows"]
                                     if r["case"] == "finetune")["epochs"]] == ["warmup",
                                                                               "finetune"]
