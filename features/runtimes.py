"""Runtimes that run a network: TensorFlow itself, or OpenVINO (converted once, cached on disk).

Every caller (extraction, prediction, serving, stage 3 models) asks this module
for a network behind the interface it already uses, a ``predict_on_batch``
method, wrapped in a :class:`features.spec.FeatureExtractor` for feature
networks. This is the one place that converts, quantizes and caches.

* ``tensorflow``: the Keras model as built (float32, bfloat16 or float16), run by
  the active Keras backend (:mod:`features.devices`: tensorflow, jax or torch; the
  name stays for the stores and models that record it).
* ``openvino``: the same Keras model converted with ``openvino.convert_model``
  and compiled for the CPU with the ``LATENCY`` hint and float32 inference
  precision, or, with ``precision="int8"``, quantized by NNCF post-training
  quantization calibrated on a few hundred of the user's training images.

Converted models live in :func:`cache_dir` (``$TLEARN_CACHE/openvino``, else
``$XDG_CACHE_HOME/tlearn/openvino``, else ``~/.cache/tlearn/openvino``), one
folder per :func:`features.integrity.settings_key` of what decides the network
(feature specification or model digest, precision, calibration images, library
versions). A folder is written under a temporary name and renamed into place
when complete, and holds a manifest with the SHA-256 of its files: an entry
whose files do not match is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from features.devices import Device, compute_device, cpu_device, requires_tensorflow
from features.errors import UserInputError
from features.integrity import atomic_write_json, file_digest, fsync_directory, settings_key
from features.registries import Registry
from features.spec import PRECISIONS, FeatureExtractor, FeatureSpec

TENSORFLOW = "tensorflow"
OPENVINO = "openvino"

#: Largest ``max |openvino - tensorflow| / max |tensorflow|`` of float32 features of
#: the same images, over every backbone (``tests/test_runtimes.py`` shows it; measured
#: values are below 1e-5). Within it, float32 features of the two runtimes may be mixed:
#: a classifier trained on one classifies features of the other.
MIXING_TOLERANCE = 1e-4

#: Training images NNCF calibrates int8 quantization on (its own default is 300).
DEFAULT_CALIBRATION_IMAGES = 300

#: Whether OpenVINO is the default runtime where it is installed. Decided from
#: ``bench/extract.py`` (end-to-end extraction, float32) on the project's CPU: it is
#: True only if OpenVINO was faster than TensorFlow for every backbone measured there.
OPENVINO_IS_DEFAULT = False

_MANIFEST = "manifest.json"
_XML, _BIN = "model.xml", "model.bin"
_INSTALL_HINT = "pip install 'tlearn[openvino]'"


# -- the registry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """A way to run networks.

    Attributes
    ----------
    name : str
        Registry key, the value of ``--runtime`` and of ``FeatureSpec.runtime``.
    precisions : tuple of str
        Compute precisions it offers.
    install : str
        How to install it, named when it is missing.
    package : str or None
        Import name whose presence means the runtime is installed.
    """

    name: str
    precisions: tuple[str, ...]
    install: str = ""
    package: str | None = None
    description: str = field(default="", compare=False)

    def is_available(self) -> bool:
        """Whether its Python package can be imported here."""
        return self.package is None or importlib.util.find_spec(self.package) is not None


RUNTIMES: Registry[Runtime] = Registry("runtime")
RUNTIMES.register(TENSORFLOW, Runtime(TENSORFLOW, PRECISIONS,
                                      description="the Keras model as built, on the active "
                                                  "Keras backend"))
RUNTIMES.register(OPENVINO, Runtime(
    OPENVINO, ("float32", "int8"), install=_INSTALL_HINT, package="openvino",
    description="converted with OpenVINO, cached, LATENCY hint on the CPU"))


def get_runtime(name: str) -> Runtime:
    """The installed runtime ``name``.

    Raises
    ------
    UserInputError
        For an unknown name, or a runtime whose package is not installed.
    """
    runtime = RUNTIMES[name]
    if not runtime.is_available():
        raise UserInputError(
            f"--runtime {name} needs the {runtime.package} package, which is not installed; "
            f"install it with {runtime.install}, or pass --runtime {TENSORFLOW}")
    return runtime


def default_runtime() -> str:
    """The runtime used where none is named (see :data:`OPENVINO_IS_DEFAULT`)."""
    if OPENVINO_IS_DEFAULT and RUNTIMES[OPENVINO].is_available():
        return OPENVINO
    return TENSORFLOW


def resolve_runtime(runtime: str | None, precision: str = "float32") -> str:
    """The runtime to use for ``precision`` when the user named ``runtime`` (or None).

    int8 exists only in OpenVINO, bfloat16 and float16 only in the Keras model as
    built, so with no runtime named those precisions choose it; float32 takes
    :func:`default_runtime`.

    Raises
    ------
    UserInputError
        Unknown or missing runtime, or a precision the runtime does not offer.
    """
    if runtime is None:
        runtime = {"int8": OPENVINO, "bfloat16": TENSORFLOW,
                   "float16": TENSORFLOW}.get(precision, default_runtime())
    chosen = get_runtime(runtime)
    if precision not in chosen.precisions:
        offering = [r.name for r in RUNTIMES.values() if precision in r.precisions]
        fix = (f"pass --runtime {offering[0]}" if offering
               else "choose one of: " + ", ".join(sorted({p for r in RUNTIMES.values()
                                                          for p in r.precisions})))
        raise UserInputError(
            f"precision {precision!r} is not available with --runtime {runtime} (it offers "
            f"{', '.join(chosen.precisions)}); {fix}")
    return runtime


def runtime_device(runtime: str | None, precision: str = "float32") -> Device:
    """What computes a network run by ``runtime`` here: OpenVINO's CPU, or the backend's device."""
    if resolve_runtime(runtime, precision) == OPENVINO:
        return cpu_device(OPENVINO)
    return compute_device()


# -- the cache ----------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Folder of converted OpenVINO models (``$TLEARN_CACHE/openvino`` or the XDG cache)."""
    root = os.environ.get("TLEARN_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "tlearn")
    return Path(root) / OPENVINO


def runtime_versions(*, int8: bool = False) -> dict[str, str]:
    """Versions of the libraries a converted network depends on (part of every cache key)."""
    import keras
    import openvino
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__,
                "openvino": openvino.get_version(), "numpy": np.__version__}
    if int8:
        import nncf

        versions["nncf"] = nncf.__version__
    return versions


@dataclass(frozen=True)
class CacheEntry:
    """One converted network in the cache: ``model.xml``, ``model.bin`` and a manifest."""

    key: str
    path: Path

    @property
    def xml(self) -> Path:
        return self.path / _XML

    def is_valid(self) -> bool:
        """The manifest names this key and the SHA-256 of every file matches it."""
        try:
            manifest = json.loads((self.path / _MANIFEST).read_text())
            files = manifest["files"]
            return (manifest.get("key") == self.key and set(files) == {_XML, _BIN}
                    and all(file_digest(self.path / name) == digest
                            for name, digest in files.items()))
        except (OSError, ValueError, KeyError, TypeError):
            return False


def cache_entry(payload: dict[str, Any]) -> CacheEntry:
    """The entry of ``payload`` (whether or not it exists yet)."""
    key = settings_key(payload)
    return CacheEntry(key, cache_dir() / key[:32])


def _remove_tree(path: Path) -> None:
    # Renamed out of the way first, so a half-deleted entry is never seen under its name.
    if not path.exists():
        return
    doomed = path.with_name(f".stale-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def cached_network(payload: dict[str, Any], build: Callable[[], Any]) -> CacheEntry:
    """The cache entry of ``payload``, built with ``build()`` (an ``openvino.Model``) if needed.

    A missing or corrupt entry (a file whose digest differs from the manifest) is
    rebuilt. The new entry is written in a temporary folder beside the others and
    renamed to its final name only once complete, so a failure at any moment leaves
    no entry behind, and a reader never sees half an entry.
    """
    entry = cache_entry(payload)
    if entry.is_valid():
        return entry
    _remove_tree(entry.path)
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.path.parent, prefix=f".building-{entry.path.name}-"))
    try:
        import openvino as ov

        # compress_to_fp16=False: the default would round the weights to float16.
        ov.save_model(build(), str(tmp / _XML), compress_to_fp16=False)
        for name in (_XML, _BIN):
            with open(tmp / name, "rb+") as fh:
                os.fsync(fh.fileno())
        atomic_write_json(tmp / _MANIFEST, {
            "key": entry.key, "payload": payload,
            "files": {name: file_digest(tmp / name) for name in (_XML, _BIN)},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        try:
            os.rename(tmp, entry.path)
        except OSError:
            # Another process finished the same entry first: use it if it is sound.
            if not entry.is_valid():
                raise
        fsync_directory(entry.path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


# -- OpenVINO -----------------------------------------------------------------------------------

_CORE_LOCK = threading.Lock()
_CORE: Any = None
#: Compile options: float32 must stay float32 (the CPU plugin would otherwise choose
#: bfloat16 on CPUs with AVX512-BF16 or AMX); LATENCY measured faster than THROUGHPUT
#: for batches of 32 in one process.
COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}

#: Threads of the networks compiled from now on in this process; None: OpenVINO's own
#: choice (every core). Set by :func:`limit_cpu_threads`.
_CPU_THREADS: int | None = None


def limit_cpu_threads(threads: int) -> None:
    """Compile OpenVINO networks from now on to run in at most ``threads`` threads.

    For a process that shares its machine with others of its kind (a Ray worker given
    one CPU): without it each would start a thread per core of the node, and several
    would fight over the cores. TensorFlow's pools are sized by the caller.
    """
    global _CPU_THREADS
    _CPU_THREADS = max(1, int(threads))


def compile_config() -> dict:
    """:data:`COMPILE_CONFIG`, with the thread limit of :func:`limit_cpu_threads` if set."""
    if _CPU_THREADS is None:
        return dict(COMPILE_CONFIG)
    return {**COMPILE_CONFIG, "INFERENCE_NUM_THREADS": _CPU_THREADS}


def _core():
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


class OpenVINONetwork:
    """A compiled OpenVINO model behind Keras' ``predict_on_batch``.

    One infer request, used under a lock: callers may share the network between
    threads (the serving batcher, the extraction loop), never run it at once.
    """

    def __init__(self, xml: str | os.PathLike) -> None:
        self.xml = Path(xml)
        self._compiled = _core().compile_model(str(xml), "CPU", compile_config())
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the first output for the batch ``x`` (a new array)."""
        with self._lock:
            self._request.infer({0: np.ascontiguousarray(x)})
            return np.array(self._request.get_output_tensor(0).data, copy=True)


def convert_keras(model: Any, input_shape: Sequence[int], dtype: str = "float32"):
    """``openvino.Model`` of a Keras model taking batches of ``input_shape`` (batch dynamic)."""
    import openvino as ov
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], dtype, name="images")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return ov.convert_model(function)


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's info lines and its progress bar (rich, on stdout, with no switch) hidden."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    # redirect_stdout is process-wide: calibration runs before any other output starts.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


# -- calibration --------------------------------------------------------------------------------

def calibration_sample(paths: Sequence[str], train_mask: np.ndarray, count: int,
                       seed: int) -> list[str]:
    """``count`` training images chosen at random with ``seed`` (never a test image).

    Raises
    ------
    UserInputError
        When there is no training image, or ``count`` is below 1.
    """
    if count < 1:
        raise UserInputError(f"--calibration-images must be at least 1, got {count}")
    train = np.flatnonzero(np.asarray(train_mask, dtype=bool))
    if len(train) == 0:
        raise UserInputError("int8 needs training images to calibrate on and the split has "
                             "none; lower --test-size and --val-size")
    chosen = np.random.default_rng(seed).choice(train, size=min(count, len(train)),
                                                replace=False)
    return [str(paths[i]) for i in np.sort(chosen)]


def calibration_digest(paths: Sequence[str]) -> str:
    """SHA-256 over the contents of the calibration images, in order (paths do not count)."""
    digests = []
    for path in paths:
        try:
            digests.append(file_digest(path))
        except OSError as exc:
            raise UserInputError(
                f"calibration image {path} cannot be read ({exc.strerror or exc}); restore it "
                "or extract the int8 features again") from exc
    return settings_key(digests)


def _calibration_batches(paths: Sequence[str], size: int, preprocess) -> list[np.ndarray]:
    from features.batches import iter_decoded_batches

    batches = []
    for batch in iter_decoded_batches(list(paths), size=size, batch_size=16,
                                      preprocess=preprocess):
        batches.extend(batch.x[i:i + 1] for i in range(len(batch.x)))
    if not batches:
        raise UserInputError("none of the calibration images could be read; check the "
                             "training images")
    return batches


# -- feature extractors -------------------------------------------------------------------------

def _feature_payload(spec: FeatureSpec, precision: str, calibration: str,
                     weights_version: str) -> dict[str, Any]:
    base = replace(spec, runtime=TENSORFLOW, precision="float32", calibration="")
    return {"kind": "features", "spec": base.to_dict(), "precision": precision,
            "calibration": calibration, "weights_version": weights_version,
            "versions": runtime_versions(int8=precision == "int8")}


def compile_extractor(extractor: FeatureExtractor, runtime: str | None = None,
                      precision: str | None = None, *,
                      calibration_paths: Sequence[str] | None = None,
                      calibration: str = "", weights_version: str = "") -> FeatureExtractor:
    """``extractor``'s network in ``runtime`` and ``precision``, behind the same interface.

    Parameters
    ----------
    extractor : FeatureExtractor
        A TensorFlow extractor (float32 for OpenVINO; its spec says what it computes).
    runtime : {"tensorflow", "openvino"}, optional
        See :func:`resolve_runtime`.
    precision : str, optional
        ``extractor``'s own precision by default; ``"int8"`` for quantized OpenVINO.
    calibration_paths : sequence of str, optional
        Training images to calibrate int8 on (see :func:`calibration_sample`); needed
        only when the quantized network is not cached yet.
    calibration : str, optional
        Digest the calibration images must have (a model's spec); computed from
        ``calibration_paths`` when empty.
    weights_version : str, optional
        The installed version of the package the weights came from
        (:func:`features.backbones.weights_version`): part of the cache key, so that new
        weights are converted again.

    Returns
    -------
    FeatureExtractor
        With ``spec.runtime``, ``spec.precision`` and ``spec.calibration`` set.

    Raises
    ------
    UserInputError
        Unknown or missing runtime, an unsupported precision, or int8 without
        calibration images (or with other ones than ``calibration`` names).
    """
    spec = extractor.spec
    precision = precision or spec.precision
    runtime = resolve_runtime(runtime, precision)
    if runtime == TENSORFLOW:
        if precision != spec.precision:
            raise UserInputError(f"this extractor computes {spec.precision}, not {precision}; "
                                 "build it with the precision wanted")
        return extractor
    if spec.runtime != TENSORFLOW or spec.precision != "float32":
        raise UserInputError("OpenVINO converts a float32 TensorFlow extractor; build one with "
                             "precision float32")
    requires_tensorflow("--runtime openvino (converting the network to OpenVINO)")
    size = spec.input_size
    float_payload = _feature_payload(spec, "float32", "", weights_version)
    float_entry = cached_network(
        float_payload, lambda: convert_keras(extractor.model, (size, size, 3)))
    entry = float_entry
    if precision == "int8":
        if calibration_paths is not None and not calibration:
            calibration = calibration_digest(calibration_paths)
        if not calibration:
            raise UserInputError("int8 features need calibration images: extract them with "
                                 "--runtime openvino --precision int8 from a dataset")
        payload = _feature_payload(spec, "int8", calibration, weights_version)
        entry = cache_entry(payload)
        if not entry.is_valid():
            if not calibration_paths:
                raise UserInputError(
                    f"the int8 network (calibration {calibration[:12]}) is not in the cache "
                    f"{cache_dir()} and its calibration images are unknown; extract the int8 "
                    "features again, or keep the store the model was trained on")
            if calibration_digest(calibration_paths) != calibration:
                raise UserInputError(
                    "the calibration images of this int8 model changed since it was trained; "
                    "restore them, or extract the int8 features and train again")
            entry = cached_network(payload, lambda: _quantize(
                float_entry, calibration_paths, size, extractor.preprocess_input))
    try:
        network = OpenVINONetwork(entry.xml)
    except RuntimeError as exc:
        if precision != "int8":
            raise
        # NNCF quantizes some networks (EfficientNetV2) into per-channel FakeQuantize
        # nodes that the CPU plugin refuses to compile.
        reason = next((line.strip() for line in reversed(str(exc).splitlines())
                       if line.strip()), exc.__class__.__name__)
        raise UserInputError(
            f"OpenVINO cannot run the int8 network NNCF made of {spec.backbone} ({reason}); "
            "extract it with --runtime openvino --precision float32 instead") from exc
    return FeatureExtractor(
        spec=replace(spec, runtime=OPENVINO, precision=precision,
                     calibration=calibration if precision == "int8" else ""),
        model=network, preprocess_input=extractor.preprocess_input)


def _quantize(float_entry: CacheEntry, paths: Sequence[str], size: int, preprocess):
    import nncf

    batches = _calibration_batches(paths, size, preprocess)
    model = _core().read_model(str(float_entry.xml))
    # PERFORMANCE preset: symmetric int8 ranges, what the CPU plugin runs fastest;
    # fast bias correction keeps the error of the quantized convolutions unbiased.
    with _quiet_nncf():
        return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                             preset=nncf.QuantizationPreset.PERFORMANCE,
                             fast_bias_correction=True)


# -- whole Keras models (stage 3) -----------------------------------------------------------------

def compile_keras_model(model: Any, input_size: int, *, runtime: str | None = None,
                        identity: dict[str, Any]) -> Any:
    """A Keras image model (stage 3) in ``runtime``: itself, or an :class:`OpenVINONetwork`.

    Parameters
    ----------
    model : keras.Model
        Takes preprocessed float32 images of side ``input_size``.
    identity : dict
        What identifies the model's weights (the SHA-256 of its file): part of the cache key.
    """
    runtime = resolve_runtime(runtime, "float32")
    if runtime == TENSORFLOW:
        return model
    requires_tensorflow("--runtime openvino (converting the network to OpenVINO)")
    payload = {"kind": "keras_model", "identity": identity, "input_size": int(input_size),
               "versions": runtime_versions()}
    entry = cached_network(payload, lambda: convert_keras(model, (input_size, input_size, 3)))
    return OpenVINONetwork(entry.xml)
