"""Save and load classifiers with joblib, guarded by a JSON sidecar.

A pickle runs code when it is loaded: only load files you trust. The sidecar
(``<model>.json``) records the SHA-256 of the joblib file, the library versions
and the metrics; :func:`load_classifier` checks the digest *before* unpickling,
which catches corrupted or swapped files (it is not a signature: whoever can
write both files can forge both).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib

from features.backbones import FeatureSpec, file_digest
from features.errors import UserInputError

SPEC_FIELDS_THAT_MATTER = ("backbone", "layer", "pooling", "input_size", "weights", "feature_dim")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def classifier_versions() -> dict[str, str]:
    import numpy
    import sklearn

    return {"scikit-learn": sklearn.__version__, "numpy": numpy.__version__,
            "joblib": joblib.__version__}


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_classifier(model, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``model`` with joblib and its sidecar, each atomically (no half-written file).

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
    _atomic_write(path, lambda tmp: joblib.dump(model, tmp))
    sidecar = {
        "model": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "kind": getattr(model, "kind", type(model).__name__),
        "feature_spec": getattr(model, "feature_spec_", None),
        "label_names": list(getattr(model, "label_names_", [])),
        "best_params": getattr(model, "best_params_", {}),
        "library_versions": classifier_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
    }
    _atomic_write(sidecar_path(path),
                  lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2, default=str)))
    return path


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise UserInputError(
            f"{side} is missing, so {path} cannot be checked before loading; keep the .json "
            "next to the model, or call load_classifier(path, verify=False) for a file you trust"
        )
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{side} is not valid JSON ({exc}); retrain or restore it") from exc


def load_classifier(path: str | os.PathLike, *, verify: bool = True):
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
        Missing file, digest mismatch (tampered or corrupted), or not a tlearn model.

    Warns
    -----
    UserWarning
        When it was saved with other scikit-learn, numpy or joblib versions.
    """
    from classifiers.estimators import FeatureClassifier

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model {path} does not exist; train one with 'tlearn train'")
    if verify:
        sidecar = read_sidecar(path)
        actual = sha256_file(path)
        if sidecar.get("sha256") != actual:
            raise UserInputError(
                f"{path} does not match the SHA-256 in {sidecar_path(path).name} (tampered or "
                "corrupted); it was not loaded: retrain it or restore the original file"
            )
        saved = sidecar.get("library_versions", {})
        now = classifier_versions()
        differ = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
        if differ:
            detail = ", ".join(f"{k} {a} (now {b})" for k, (a, b) in differ.items())
            warnings.warn(f"{path.name} was saved with {detail}; predictions may differ",
                          UserWarning, stacklevel=2)
    try:
        model = joblib.load(path)
    except Exception as exc:
        raise UserInputError(f"{path} could not be loaded ({exc.__class__.__name__}: {exc})"
                             ) from exc
    if not isinstance(model, FeatureClassifier):
        raise UserInputError(f"{path} holds a {type(model).__name__}, not a tlearn classifier")
    return model


def check_same_features(model, spec: FeatureSpec, where: str = "the store") -> None:
    """Refuse features of another specification than the model was trained on."""
    expected = getattr(model, "feature_spec_", None) or {}
    got = spec.to_dict()
    diffs = [f"{k} {got.get(k)!r} (model: {expected.get(k)!r})"
             for k in SPEC_FIELDS_THAT_MATTER
             if expected and str(expected.get(k)) != str(got.get(k))]
    if not expected and got["feature_dim"] != model.n_features_in_:
        diffs.append(f"feature_dim {got['feature_dim']} (model: {model.n_features_in_})")
    if diffs:
        raise UserInputError(
            f"{where} has other features than the model was trained on: {'; '.join(diffs)}; "
            "extract the images with the model's backbone settings"
        )
