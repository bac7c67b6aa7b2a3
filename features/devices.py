"""The Keras backend that computes (tensorflow, jax or torch) and the device it computes on.

This is the one module that knows about backends and devices: which backend Keras runs
on in this process (:func:`select_backend`, before Keras is imported), importing it
without its start-up noise (:func:`import_keras_quietly`), what computes
(:func:`describe_device`: ``"GPU:0 NVIDIA H100 80GB HBM3, jax"`` or ``"CPU: AMD EPYC
9554 64-Core Processor, 2 cores, AVX-512, tensorflow"``), whether a GPU is there, the
versions to record, thread limits, and whether an exception is the device running out
of memory. Nothing here imports a backend at module import: ``tlearn --help`` stays light.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from features.errors import UserInputError
from features.registries import check_choice

TENSORFLOW, JAX, TORCH = "tensorflow", "jax", "torch"
#: Keras 3's backends tlearn runs on; tensorflow is the default, as Keras' own.
BACKENDS = (TENSORFLOW, JAX, TORCH)
DEFAULT_BACKEND = TENSORFLOW
#: How to install each backend, named when it is missing.
BACKEND_INSTALL = {TENSORFLOW: "pip install tensorflow", JAX: "pip install 'tlearn[jax]'",
                   TORCH: "pip install torch (see pytorch.org for the CUDA build)"}

#: Largest ``max |a - b| / max |b|`` between float32 features of the same images computed
#: by two backends (tests/test_devices.py shows it for EfficientNet-Lite0 with its
#: ImageNet weights, jax against tensorflow and the reference fixture; measured below
#: 2e-6). Within it, float32 features of different backends may be mixed in one store
#: or classified by one model, as those of the two runtimes may.
BACKEND_MIXING_TOLERANCE = 1e-4

FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

# TensorFlow's C++ start-up lines are noise to a user of the library as to one of the CLI.
# Unless the user set the level, warnings and info stay off, also in processes started
# from here (Ray workers); a level of 0 or 1 asks for them, start-up lines included.
_TF_LOGS_ASKED = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2").strip() in ("0", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- the backend --------------------------------------------------------------------------------

def _keras_json_backend() -> str | None:
    """The backend named in Keras' own config file, which Keras reads when the variable is unset."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        return str(json.loads(Path(home, "keras.json").read_text()).get("backend") or "") or None
    except (OSError, ValueError, AttributeError):
        return None


def active_backend() -> str:
    """The backend Keras runs on in this process, or will when it is imported.

    Keras fixes it once per process at import, from ``KERAS_BACKEND``, else its
    ``keras.json``, else tensorflow; this reads the same without importing Keras.
    """
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return (os.environ.get("KERAS_BACKEND", "").strip() or _keras_json_backend()
            or DEFAULT_BACKEND)


def select_backend(name: str | None) -> str:
    """Make ``name`` Keras' backend in this process (None keeps :func:`active_backend`).

    Must run before Keras is imported (``tlearn --backend`` does it first): Keras fixes
    its backend at import. Sets ``KERAS_BACKEND``, so processes started from here
    (Ray workers, subprocesses) use the same backend.

    Raises
    ------
    UserInputError
        For an unknown backend, one whose package is not installed, or another backend
        than the one Keras already runs on in this process.
    """
    if name is None:
        name = active_backend()
    check_choice("backend", name, BACKENDS)
    if importlib.util.find_spec(name) is None:
        raise UserInputError(
            f"backend {name} is not installed; install it with {BACKEND_INSTALL[name]}, or "
            f"choose another with --backend (one of: {', '.join(BACKENDS)})")
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend") and keras.backend.backend() != name:
        raise UserInputError(
            f"Keras already runs on {keras.backend.backend()} in this process and cannot "
            f"switch to {name}; set KERAS_BACKEND={name} before Python starts")
    os.environ["KERAS_BACKEND"] = name
    return name


@contextlib.contextmanager
def _tensorflow_logs_silenced():
    """File descriptor 2 silenced while TensorFlow's C++ side writes its start-up lines
    (absl, oneDNN, CUDA factories, "failed call to cuInit" on a machine without a GPU):
    they bypass the log level, so only the descriptor stops them. Not when the user asked
    for info or warnings (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1). Python exceptions still
    raise."""
    if _TF_LOGS_ASKED:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow without the log lines it writes before its logging is set up."""
    if "tensorflow" in sys.modules:
        return
    with _tensorflow_logs_silenced():
        tf = importlib.import_module("tensorflow")
        # CUDA is initialised on the first device query or layer, and says so on a machine
        # without a GPU ("failed call to cuInit"): do it now, while the logs are silenced
        tf.config.list_physical_devices("GPU")


def import_keras_quietly() -> None:
    """Import Keras on its backend; TensorFlow (only when it is the backend) quietly.

    Under jax or torch TensorFlow is never imported: the GPU machines that have those
    often have no TensorFlow at all.

    Raises
    ------
    UserInputError
        When the backend's package is not installed.
    """
    backend = select_backend(None)
    if backend == TENSORFLOW:
        _import_tensorflow_quietly()
    importlib.import_module("keras")


def requires_tensorflow(what: str) -> None:
    """Refuse ``what`` (something only TensorFlow does) when another backend is active.

    Raises
    ------
    UserInputError
        One line naming the active backend and the way out.
    """
    backend = active_backend()
    if backend != TENSORFLOW:
        raise UserInputError(
            f"{what} needs the tensorflow backend and this process runs on {backend}; run it "
            "with --backend tensorflow (or KERAS_BACKEND=tensorflow)")


def set_random_seed(seed: int) -> None:
    """Seed Python, numpy and Keras' generators (and torch's), as ``keras.utils.set_random_seed``.

    Under jax or torch, Keras' own function would import TensorFlow wherever it is
    installed, only to seed it too (seconds, and GBs of memory on a GPU): there the same
    seeding is done without it.
    """
    import keras

    if keras.backend.backend() == TENSORFLOW:
        keras.utils.set_random_seed(seed)
        return
    import random

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == TORCH:
        import torch

        torch.manual_seed(seed)


def backend_version(backend: str | None = None) -> str:
    """The installed version of ``backend``'s package (the active backend by default)."""
    backend = backend or active_backend()
    module = importlib.import_module(backend)
    return str(getattr(module, "__version__", "unknown"))


def backend_versions() -> dict[str, str]:
    """``{"keras": ..., <backend>: ...}``: what a model or features computed here depend on."""
    import keras

    backend = keras.backend.backend()
    return {"keras": keras.__version__, backend: backend_version(backend)}


def limit_compute_threads(threads: int) -> None:
    """Run the backend's CPU work in at most ``threads`` threads (a Ray worker's share).

    Possible only before the backend runs anything in this process (a fresh worker);
    later it is left as it is. jax sizes its pools from the CPUs the process may use.
    """
    import contextlib

    threads = max(1, int(threads))
    backend = active_backend()
    if backend == TENSORFLOW:
        import tensorflow as tf

        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == TORCH:
        import torch

        with contextlib.suppress(RuntimeError):
            torch.set_num_threads(threads)


# -- the device ---------------------------------------------------------------------------------

def available_cores() -> int:
    """CPU cores this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_info() -> dict:
    """``{"model", "cpus", "cores_available", "flags": {flag: bool}, "python", "platform"}``."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if model != "unknown" and flags:
                    break
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(), "cores_available": available_cores(),
            "flags": {flag: flag in flags for flag in FLAGS_THAT_MATTER},
            "python": platform.python_version(), "platform": platform.platform()}


def _vector_isa(flags: dict) -> str:
    if flags.get("amx_tile"):
        return "AMX"
    if flags.get("avx512f"):
        return "AVX-512"
    return "AVX2" if flags.get("avx2") else "no AVX2"


def cpu_has_bfloat16(info: dict | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    flags = (info or cpu_info())["flags"]
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


@dataclass(frozen=True)
class Device:
    """What computes: the backend's first accelerator, else the CPU."""

    kind: str  # "GPU" or "CPU"
    name: str
    backend: str
    index: int = 0
    cores: int = 0
    isa: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.kind == "GPU"

    def describe(self) -> str:
        """``GPU:0 NVIDIA H100 80GB HBM3, jax``, or ``CPU: <model>, 2 cores, AVX-512, jax``."""
        if self.is_gpu:
            return f"GPU:{self.index} {self.name}, {self.backend}"
        return f"CPU: {self.name}, {self.cores} cores, {self.isa}, {self.backend}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "backend": self.backend,
                "index": self.index, "line": self.describe()}


def _gpu_name(backend: str) -> str | None:
    """Name of the backend's first GPU, or None when it computes on the CPU."""
    if backend == JAX:
        import jax

        gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
        return gpus[0].device_kind if gpus else None
    if backend == TORCH:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    _import_tensorflow_quietly()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name") or gpus[0].name


def compute_device(backend: str | None = None) -> Device:
    """The device the backend computes on (imports the backend)."""
    backend = backend or select_backend(None)
    name = _gpu_name(backend)
    return Device("GPU", name, backend) if name is not None else cpu_device(backend)


def cpu_device(computes: str) -> Device:
    """This CPU, computing with ``computes`` (a backend, or a runtime such as openvino)."""
    info = cpu_info()
    return Device("CPU", info["model"], computes, cores=info["cores_available"],
                  isa=_vector_isa(info["flags"]))


def describe_device(backend: str | None = None) -> str:
    """One line saying what computes (see :meth:`Device.describe`)."""
    return compute_device(backend).describe()


def check_precision_on_device(precision: str, device: Device | None = None) -> None:
    """Refuse float16 where no GPU computes: a CPU has no fast float16 and rounds for nothing.

    Raises
    ------
    UserInputError
        For float16 on a CPU, suggesting bfloat16 where the CPU computes it natively.
    """
    if precision != "float16":
        return
    device = device or compute_device()
    if device.is_gpu:
        return
    hint = ("this CPU computes bfloat16 natively: pass --precision bfloat16"
            if cpu_has_bfloat16() else "pass --precision float32")
    raise UserInputError(f"--precision float16 needs a GPU and {device.backend} computes on "
                         f"the CPU here; {hint}")


#: Substrings of an out-of-memory error's text, by backend (jax: XLA's status code).
_OOM_TEXT = ("RESOURCE_EXHAUSTED", "out of memory", "OOM when allocating")
_OOM_TYPES = ("ResourceExhaustedError", "OutOfMemoryError")


def is_device_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend saying the device ran out of memory.

    TensorFlow raises ``ResourceExhaustedError``, torch ``torch.OutOfMemoryError``
    (``torch.cuda.OutOfMemoryError``), jax an ``XlaRuntimeError`` whose text starts with
    ``RESOURCE_EXHAUSTED``. Recognised by name and text, so no backend is imported.
    """
    if isinstance(exc, MemoryError):
        return False  # host memory: not something a smaller GPU batch is sure to fix
    if type(exc).__name__ in _OOM_TYPES:
        return True
    text = str(exc)
    return type(exc).__name__ in ("XlaRuntimeError", "JaxRuntimeError", "RuntimeError") and any(
        marker in text for marker in _OOM_TEXT)


def out_of_memory_line(batch_size: int, device: Device) -> str:
    """The one line for ``device`` out of memory at ``batch_size``."""
    smaller = max(1, batch_size // 2)
    who = f"GPU:{device.index} {device.name}" if device.is_gpu else "the CPU"
    return (f"{who} ran out of memory at --batch-size {batch_size}; pass a smaller "
            f"--batch-size (e.g. {smaller}); nothing was published, and the rerun resumes "
            "after the rows already computed")
