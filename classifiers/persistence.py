"""Save and load classifiers with joblib, guarded by a JSON sidecar.

A pickle runs code when it is loaded: only load files you trust. The sidecar
(``<model>.json``) records the SHA-256 of the model file, the library versions
and the metrics. :func:`read_verified` reads a model file once and checks those
very bytes against the sidecar; :func:`load_classifier` (and the ``.keras``
loader of stage 3) deserialise the checked bytes, never the file a second time,
so a file swapped after the check is not loaded. The digest catches corrupted
or swapped files; it is not a signature: whoever can write both files can forge both.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib

from features.errors import UserInputError
from features.integrity import atomic_write_bytes, atomic_write_json, bytes_digest, file_digest
from features.spec import FeatureSpec

if TYPE_CHECKING:
    from classifiers.estimators import FeatureClassifier

SPEC_FIELDS_THAT_MATTER = ("backbone", "layer", "pooling", "input_size", "weights", "feature_dim",
                           "precision", "taps", "views")
# How to load a joblib classifier whose sidecar is missing (named in that error).
UNCHECKED_JOBLIB_LOAD = "load_classifier(path, verify=False)"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def classifier_versions() -> dict[str, str]:
    import numpy
    import sklearn

    return {"scikit-learn": sklearn.__version__, "numpy": numpy.__version__,
            "joblib": joblib.__version__}


def save_classifier(model: FeatureClassifier, path: str | os.PathLike, *,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with joblib and its sidecar, each atomically (no half-written file).

    The sidecar is written first: a run killed between the two writes leaves a sidecar
    without a model, which a rerun of ``tlearn train`` simply trains again, rather than
    a model without a sidecar, which nothing can check and a rerun must refuse.

    Parameters
    ----------
    model : FeatureClassifier
        A fitted classifier.
    path : path-like
        Target ``.joblib`` file.
    metadata : dict, optional
        Extra entries for the sidecar (metrics, store fingerprint, settings).

    Returns
    -------
    Path
    """
    path = Path(path)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    data = buffer.getvalue()
    sidecar = {
        "model": path.name,
        "sha256": bytes_digest(data, "sha256"),
        "size_bytes": len(data),
        "kind": getattr(model, "kind", type(model).__name__),
        "feature_spec": getattr(model, "feature_spec_", None),
        "label_names": list(getattr(model, "label_names_", [])),
        "best_params": getattr(model, "best_params_", {}),
        "library_versions": classifier_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
    }
    atomic_write_json(sidecar_path(path), sidecar)
    atomic_write_bytes(path, data)
    return path


def read_sidecar(path: str | os.PathLike, *, unchecked_way: str = UNCHECKED_JOBLIB_LOAD
                 ) -> dict[str, Any]:
    """The sidecar of the model at ``path``.

    Parameters
    ----------
    unchecked_way : str
        How to load the model without its sidecar, named in the error when it is missing.

    Raises
    ------
    UserInputError
        When the sidecar is missing or damaged (not UTF-8 JSON, or not a JSON object).
    """
    side = sidecar_path(path)
    if not side.is_file():
        raise UserInputError(
            f"{side} is missing, so {path} cannot be checked before loading; keep the .json "
            f"next to the model, or call {unchecked_way} for a file you trust"
        )
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        problem = f"not valid JSON ({exc})"
    else:
        if isinstance(sidecar, dict):
            return sidecar
        problem = f"not a JSON object (it holds {type(sidecar).__name__})"
    raise UserInputError(f"{side} is damaged: {problem}; retrain the model or restore the "
                         ".json saved with it")


def read_verified(path: str | os.PathLike, *, current_versions: dict[str, str],
                  verify: bool = True, train_command: str = "tlearn train",
                  unchecked_way: str = UNCHECKED_JOBLIB_LOAD) -> tuple[bytes, dict[str, Any]]:
    """The bytes of a saved model, checked against its sidecar, and the sidecar.

    The file is read once: callers deserialise the returned bytes, so what they
    load is exactly what was checked.

    Parameters
    ----------
    path : path-like
        The model file (``.joblib`` or ``.keras``).
    current_versions : dict
        Versions of the libraries that will deserialise it, compared with the
        ``library_versions`` the sidecar recorded.
    verify : bool, default=True
        False skips the sidecar (no digest check, no version warning; ``{}`` is returned).
    train_command : str
        The command named when the file does not exist.
    unchecked_way : str
        How to load without a sidecar, named when the sidecar is missing.

    Returns
    -------
    (bytes, dict)

    Raises
    ------
    UserInputError
        Missing file, missing or unreadable sidecar, digest mismatch.

    Warns
    -----
    UserWarning
        When it was saved with other versions of libraries in ``current_versions``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model {path} does not exist; train one with '{train_command}'")
    if not verify:
        return path.read_bytes(), {}
    sidecar = read_sidecar(path, unchecked_way=unchecked_way)
    data = path.read_bytes()
    if sidecar.get("sha256") != bytes_digest(data, "sha256"):
        raise UserInputError(
            f"{path} does not match the SHA-256 in {sidecar_path(path).name} (tampered or "
            "corrupted); it was not loaded: retrain it or restore the original file"
        )
    saved = sidecar.get("library_versions") or {}
    differ = {k: (saved[k], v) for k, v in current_versions.items()
              if k in saved and saved[k] != v}
    if differ:
        detail = ", ".join(f"{k} {a} (now {b})" for k, (a, b) in differ.items())
        # stacklevel 3: the warning points at whoever called the public loader
        warnings.warn(f"{path.name} was saved with {detail}; predictions may differ",
                      UserWarning, stacklevel=3)
    return data, sidecar


def _what_else(path: Path) -> str | None:
    """Why ``path`` is plainly not a saved classifier (a store, a Keras file...), or None.

    Judged by the first bytes, before the sidecar: a user who passes a store should hear
    that, not be told to switch off the integrity check.
    """
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return None  # missing or unreadable: read_verified says so
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        from features.store import read_store_attrs

        if read_store_attrs(path) is not None:
            return (f"{path} is a feature store, not a classifier; train one on it with "
                    f"'tlearn train {path}' and load the .joblib it writes")
        return (f"{path} is an HDF5 file (a Keras .h5 model or an unfinished store?), not a "
                "classifier saved by tlearn (.joblib)")
    if head.startswith(b"PK\x03\x04"):
        return (f"{path} is a Keras archive (.keras), not a classifier of features; load a "
                "stage 3 model with pipeline.stage3.inference.load_keras_classifier or "
                "pass it to 'tlearn predict'")
    if not head.startswith(b"\x80"):  # joblib.dump writes a pickle, protocol 2 or later
        return (f"{path} is not a classifier saved by tlearn (those are joblib pickles "
                "written by 'tlearn train' or save_classifier)")
    return None


def load_classifier(path: str | os.PathLike, *, verify: bool = True) -> FeatureClassifier:
    """Load a classifier saved by :func:`save_classifier`.

    Parameters
    ----------
    path : path-like
        The ``.joblib`` file. Unpickling runs code: load only trusted files.
    verify : bool, default=True
        Check the SHA-256 recorded in the sidecar before unpickling.

    Returns
    -------
    FeatureClassifier

    Raises
    ------
    UserInputError
        Missing file, digest mismatch (tampered or corrupted), or not a tlearn model
        (a feature store, a Keras file...: the message says which).

    Warns
    -----
    UserWarning
        When it was saved with other scikit-learn, numpy or joblib versions.
    """
    from classifiers.estimators import FeatureClassifier

    path = Path(path)
    other = _what_else(path)
    if other is not None:
        raise UserInputError(other)
    data, sidecar = read_verified(path, current_versions=classifier_versions(), verify=verify)
    try:
        model = joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise UserInputError(f"{path} could not be loaded ({exc.__class__.__name__}: {exc})"
                             ) from exc
    if not isinstance(model, FeatureClassifier):
        raise UserInputError(f"{path} holds a {type(model).__name__}, not a tlearn classifier")
    if getattr(model, "calibration_paths_", None) is None and hasattr(model, "estimator_"):
        model.calibration_paths_ = _store_calibration_paths(model, sidecar)
    return model


def _store_calibration_paths(model: FeatureClassifier, sidecar: dict) -> list[str] | None:
    """The int8 calibration images recorded in the store a model was trained on, if any.

    For models saved before they learnt them at fit time; needed only when the
    quantized network is no longer in the cache. None when the store is gone (the
    runtime then says what to do).
    """
    from features.store import read_store_attrs

    spec = model.feature_spec_ or {}
    if spec.get("precision") != "int8" or not sidecar.get("store"):
        return None
    try:
        attrs = read_store_attrs(sidecar["store"])
    except (OSError, UserInputError):
        return None
    if not attrs or "calibration_paths" not in attrs:
        return None
    return list(json.loads(attrs["calibration_paths"]))


def _extract_option(key: str, value) -> str:
    """The ``tlearn extract`` option that gives spec field ``key`` the value ``value``."""
    if key == "views":
        return "--mirror" if value == "image+mirror" else "--no-mirror"
    if key == "backend":
        return f"--backend {value} (before the command)"
    if key == "taps" and not value:
        return "--taps ''"
    return f"--{key.replace('_', '-')} {value}"


def check_same_features(model, spec: FeatureSpec, where: str = "the store") -> None:
    """Refuse features of another specification than the model was trained on.

    The runtime is not compared: float32 features of TensorFlow and OpenVINO agree
    within ``features.runtimes.MIXING_TOLERANCE`` (tests/test_runtimes.py), nor is the
    Keras backend (``features.devices.BACKEND_MIXING_TOLERANCE``, tests/test_devices.py),
    except for random weights, which each backend draws with its own generator. The
    precision is: int8, bfloat16 and float16 features are other numbers than float32 ones.
    """
    expected = getattr(model, "feature_spec_", None) or {}
    if expected:
        # A model saved before precision was recorded was trained on float32 features.
        expected = FeatureSpec.fill_defaults(expected)
    got = spec.to_dict()
    differing = [k for k in SPEC_FIELDS_THAT_MATTER
                 if expected and str(expected.get(k)) != str(got.get(k))]
    if (expected and "weights" not in differing and got["weights"] == "random"
            and str(expected.get("backend")) != str(got.get("backend"))):
        differing.append("backend")  # seeded random weights are drawn by each backend's own RNG
    diffs = [f"{k} {got.get(k)!r} (model: {expected.get(k)!r})" for k in differing]
    if not expected and got["feature_dim"] != model.n_features_in_:
        diffs.append(f"feature_dim {got['feature_dim']} (model: {model.n_features_in_})")
    if diffs:
        options = " ".join(_extract_option(k, expected[k]) for k in differing
                           if k != "feature_dim")
        if "precision" in differing and expected["precision"] == "int8":
            options += " --runtime openvino"  # int8 exists only there (features.runtimes)
        raise UserInputError(
            f"{where} has other features than the model was trained on: {'; '.join(diffs)}; "
            + (f"extract the images again with {options}" if options
               else "extract the images with the model's backbone settings")
        )
