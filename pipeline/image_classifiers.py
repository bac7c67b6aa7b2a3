"""A saved model of either stage behind one interface: classify images from their pixels.

A stage 2 joblib classifier (its backbone rebuilt from the feature specification)
and a stage 3 ``.keras`` model are both loaded, after their digest is checked, into
an :class:`ImageClassifier`. ``tlearn predict``, ``tlearn serve`` and the demo
classify images through it, so both kinds behave the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError
from features.prediction import ScoreBatches, image_verdict, iter_image_predictions


@dataclass
class ImageClassifier:
    """A loaded classifier of either kind.

    Attributes
    ----------
    name : str
        The model file's stem.
    input_size : int
        Side of the square images it takes.
    label_names : list of str
        Name of each score column.
    scores_are_probabilities : bool
        False where scores are decision values (``linear_svm``).
    info : dict
        What the model's sidecar says about it (public fields only).
    unknown_threshold : float or None
        As :class:`features.prediction.ImageScorer`: set when :meth:`scores` ends with
        the unknown score.
    """

    name: str
    input_size: int
    label_names: list[str]
    scores_are_probabilities: bool
    info: dict[str, Any]
    _scores: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    unknown_threshold: float | None = None

    def scores(self, images: np.ndarray) -> np.ndarray:
        """Scores (n, classes), then the unknown score when the model has one, of RGB
        uint8 images of shape (n, size, size, 3): what serving and engines pass along."""
        return np.asarray(self._scores(images))

    def class_scores(self, images: np.ndarray) -> np.ndarray:
        """Scores (n, classes) of RGB uint8 images of shape (n, size, size, 3)."""
        return self.scores(images)[:, :len(self.label_names)]

    def verdict(self, scores: np.ndarray, top: int) -> dict:
        """Label, score, top (and unknown) of one row of :meth:`scores`."""
        return image_verdict(scores, self.label_names, top, self.unknown_threshold)

    def warm_up(self, max_batch: int) -> None:
        """Compile the network for every batch size it will see (powers of two)."""
        size = 1
        while True:
            self.scores(np.zeros((size, self.input_size, self.input_size, 3), np.uint8))
            if size >= max_batch:
                break
            size = min(max_batch, size * 2)

    def iter_predictions(self, paths: Sequence[str | os.PathLike], *, top: int = 1,
                         batch_size: int = 32, workers: int = 2,
                         score_batches: ScoreBatches | None = None) -> Iterator[dict]:
        """Results for image files, one per path in order, a batch at a time (bounded memory).

        ``score_batches`` computes the scores elsewhere (an engine, see
        :func:`features.prediction.iter_image_predictions`); here by default.
        """
        kind = self.score_kind
        for result in iter_image_predictions(paths, self.input_size, self.scores,
                                             self.label_names, top, batch_size=batch_size,
                                             workers=workers, score_batches=score_batches,
                                             unknown_threshold=self.unknown_threshold):
            yield result if "error" in result else {**result, "score_kind": kind}

    @property
    def score_kind(self) -> str:
        """``"probability"``, or ``"margin"`` for a model without probabilities."""
        return "probability" if self.scores_are_probabilities else "margin"


def load_model_file(model_path: str | os.PathLike):
    """The raw model of a file: a ``FeatureClassifier`` (``.joblib``) or a stage 3 model
    (``.keras``), each checked against its sidecar before loading."""
    path = Path(model_path)
    if path.suffix == ".keras":
        from pipeline.stage3 import load_keras_classifier

        return load_keras_classifier(path)
    if path.suffix != ".joblib":
        raise UserInputError(f"{path} is neither a .joblib classifier nor a .keras model")
    from classifiers.persistence import load_classifier

    return load_classifier(path)


def load_image_classifier(model_path: str | os.PathLike, *, runtime: str | None = None,
                          coverage: float | None = None) -> ImageClassifier:
    """Load a saved model of either stage, ready to classify images (backbone built now).

    The scores are the model's own ``image_scorer(runtime)``, what its
    ``predict_images`` uses too.

    Parameters
    ----------
    model_path : path-like
        A ``.joblib`` classifier or a stage 3 ``.keras`` model, with its sidecar.
    runtime : {"tensorflow", "openvino"}, optional
        What runs the network (:func:`features.runtimes.resolve_runtime` for the
        model's precision by default). A classifier trained on int8 features runs its
        backbone in OpenVINO int8, with the very network its features came from.
    coverage : float, optional
        The share of images of the trained classes to accept as known, instead of the
        one the model's "unknown" threshold was fitted for.

    Raises
    ------
    UserInputError
        As the loaders, or a runtime that cannot compute the model's features.
    """
    from classifiers.persistence import read_sidecar
    from pipeline.stage3 import KerasImageClassifier

    path = Path(model_path)
    model = load_model_file(path)
    scorer = model.image_scorer(runtime, coverage=coverage)
    sidecar = model.info if isinstance(model, KerasImageClassifier) else read_sidecar(path)
    info = public_info(sidecar, path) | {"runtime": scorer.runtime,
                                         "precision": scorer.precision}
    unknown = getattr(model, "__dict__", {}).get("unknown_")
    if unknown is not None:  # the threshold in use, --coverage's where given
        info["unknown"] = unknown.summary() | {
            "threshold": scorer.unknown_threshold,
            "coverage": unknown.coverage if coverage is None else coverage}
    return ImageClassifier(path.stem, scorer.input_size, scorer.label_names,
                           scorer.scores_are_probabilities, info, scorer.class_scores,
                           scorer.unknown_threshold)


def public_info(info: dict, path: Path) -> dict:
    """The sidecar fields worth showing a user (``/model``, reports)."""
    keep = ("kind", "stage", "backbone", "classifier", "feature_spec", "label_names",
            "best_params", "metrics", "input_size", "created", "library_versions")
    out = {k: info[k] for k in keep if k in info}
    if isinstance(out.get("metrics"), dict):
        out["metrics"] = {k: v for k, v in out["metrics"].items()
                          if k in ("accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci",
                                   "rank1", "rank5", "rank5_ci", "n_samples", "scores",
                                   "log_loss", "ece", "balanced_accuracy",
                                   "balanced_accuracy_ci")}
    if "class_weight" in (info.get("settings") or {}):
        out["class_weight"] = info["settings"]["class_weight"]
    out["model"] = path.name
    return out
