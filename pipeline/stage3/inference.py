"""Classify image files with a saved stage 3 model (``.keras`` plus its JSON sidecar)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.calibration import apply_temperature
from classifiers.novelty import UnknownScore
from features.devices import backend_versions, import_keras_quietly
from features.errors import UserInputError
from features.integrity import atomic_write_bytes
from features.prediction import ImageScorer
from pipeline.stage3.models import scale_to_unit, with_features


def keras_versions() -> dict[str, str]:
    """Versions of the libraries a saved ``.keras`` model depends on (Keras' backend's)."""
    import_keras_quietly()
    return {**backend_versions(), "numpy": np.__version__}


class KerasImageClassifier:
    """A saved ``.keras`` model with what it needs to classify image files.

    Loaded by :func:`load_keras_classifier`; offers ``predict_images`` like the
    joblib classifiers, so ``tlearn predict`` treats both the same way.
    """

    def __init__(self, model: Any, info: dict, network: Any = None) -> None:
        self.model = model
        self.info = info
        self.label_names_ = list(info["label_names"])
        self.classes_ = np.arange(len(self.label_names_))
        # None for models saved before the score existed
        self.unknown_ = UnknownScore.from_json(info["unknown"]) if info.get("unknown") else None
        # what scores images: the model, with its features too where the score needs them
        # (with_features), or that network compiled for another runtime
        self.network = network if network is not None else (
            model if self.unknown_ is None else with_features(model))

    def _preprocess(self, images: np.ndarray) -> np.ndarray:
        if self.info["preprocessing"] == "scale_to_unit":
            return scale_to_unit(images)
        from features.backbones import get_backbone

        return get_backbone(self.info["backbone"]).preprocess_input(images)

    def class_scores_of_images(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) of RGB uint8 images, then the unknown score
        as one more column when the model has it (:attr:`unknown_`)."""
        from features.spec import predict_in_buckets

        n = len(self.label_names_)
        parts = predict_in_buckets(self.network.predict_on_batch, self._preprocess(images))
        if not parts:
            return np.empty((0, n + (self.unknown_ is not None)))
        out = np.concatenate(parts)
        # the temperature fitted on validation images at training time (1: none)
        probabilities = apply_temperature(out[:, :n], float(self.info.get("temperature", 1.0)))
        if self.unknown_ is None:
            return probabilities
        # the network also gives the features its last layer classifies (with_features)
        return np.column_stack([probabilities, self.unknown_.score(out[:, n:])])

    def image_scorer(self, runtime: str | None = None, coverage: float | None = None
                     ) -> ImageScorer:
        """This model as scores of image pixels, its network run by ``runtime``.

        What :meth:`predict_images`, ``tlearn predict``, ``tlearn serve`` and the
        engines classify images with; ``runtime`` as in
        :func:`features.runtimes.resolve_runtime` (float32). ``coverage``: accept about
        this share of images of the trained classes instead of the coverage the
        "unknown" threshold was fitted for.
        """
        from features.runtimes import TENSORFLOW, compile_keras_model, resolve_runtime

        unknown = self.unknown_
        if coverage is not None and unknown is None:
            raise UserInputError("this model has no unknown score (saved before it existed): "
                                 "train it again to choose a coverage")
        threshold = None if unknown is None else (
            unknown.threshold if coverage is None else unknown.threshold_for(coverage))
        size = int(self.info["input_size"])
        chosen = resolve_runtime(runtime, "float32")
        model = self
        if chosen != TENSORFLOW:
            identity = {"sha256": self.info.get("sha256")}
            if unknown is not None:  # another network than the plain model's
                identity["outputs"] = "scores_and_features"
            network = compile_keras_model(self.network, size, runtime=chosen, identity=identity)
            model = KerasImageClassifier(self.model, self.info, network)
        return ImageScorer(size, model.class_scores_of_images, list(self.label_names_), True,
                           chosen, "float32", threshold)

    def predict_images(self, paths: Sequence[str | os.PathLike], top: int = 1) -> list[dict]:
        """Classify image files (through :meth:`image_scorer`, as ``tlearn predict`` does).

        Returns
        -------
        list of dict
            As :meth:`classifiers.estimators.FeatureClassifier.predict_images`.
        """
        return self.image_scorer().classify_files(paths, top)


def _load_keras_bytes(data: bytes) -> Any:
    """A Keras model from the bytes of a ``.keras`` file.

    ``keras.models.load_model`` takes only a path, so the bytes go to a file in a
    fresh folder that only this user can enter: nobody else can swap it between
    writing and loading.
    """
    import_keras_quietly()
    import keras

    with tempfile.TemporaryDirectory(prefix="tlearn-model-") as private:
        path = atomic_write_bytes(Path(private) / "model.keras", data)
        return keras.models.load_model(path)


def load_keras_classifier(path: str | os.PathLike) -> KerasImageClassifier:
    """Load a ``.keras`` model of stage 3, checked against the SHA-256 in its sidecar.

    The file is read once (:func:`classifiers.persistence.read_verified`) and the
    checked bytes are what Keras loads.

    Raises
    ------
    UserInputError
        Missing model or sidecar, digest mismatch (tampered or corrupted), unreadable model.

    Warns
    -----
    UserWarning
        When it was saved with other Keras, TensorFlow or numpy versions.
    """
    from classifiers.persistence import read_verified

    path = Path(path)
    data, info = read_verified(path, current_versions=keras_versions(),
                               train_command="tlearn finetune",
                               unchecked_way="keras.models.load_model(path)")
    try:
        model = _load_keras_bytes(data)
    except Exception as exc:
        raise UserInputError(f"{path} could not be loaded ({exc.__class__.__name__})") from exc
    return KerasImageClassifier(model, info)
