"""Test metrics of a fitted classifier: accuracy, macro-F1, rank-k, per class, confusion."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score


@dataclass
class Evaluation:
    """Metrics of one model on one labelled set.

    Attributes
    ----------
    n_samples : int
    accuracy, macro_f1, rank1 : float
    rank5 : float or None
        Share of rows whose true class is among the 5 best scores; only with more
        than 5 classes (otherwise it is trivially 1).
    per_class : dict
        ``sklearn.metrics.classification_report`` as a dict, keyed by class name.
    confusion : list of list of int
        Rows are true classes, columns predicted, in ``label_names`` order.
    label_names : list of str
    predictions_per_second : float
        Throughput of ``predict`` on these features.
    """

    n_samples: int
    accuracy: float
    macro_f1: float
    rank1: float
    rank5: float | None
    per_class: dict
    confusion: list[list[int]]
    label_names: list[str]
    predictions_per_second: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def top_k_accuracy(scores: np.ndarray, y_index: np.ndarray, k: int) -> float:
    """Share of rows whose true column index is among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == y_index[:, None], axis=1)))


def evaluate_predictions(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                         label_names: list[str], predictions_per_second: float = 0.0
                         ) -> Evaluation:
    """Metrics from class scores (probabilities or decision values), columns in ``classes`` order.

    Shared by every stage, so linear classifiers and fine-tuned networks are
    reported in exactly the same way.
    """
    y_true = np.asarray(y_true)
    position = {c: i for i, c in enumerate(classes)}
    y_index = np.array([position.get(c, -1) for c in y_true])
    y_pred = np.asarray(classes)[np.argmax(scores, axis=1)]
    all_labels = np.arange(len(label_names))
    report = classification_report(y_true, y_pred, labels=all_labels, target_names=label_names,
                                   output_dict=True, zero_division=0)
    return Evaluation(
        n_samples=len(y_true),
        accuracy=float(np.mean(y_pred == y_true)),
        macro_f1=float(f1_score(y_true, y_pred, labels=all_labels, average="macro",
                                zero_division=0)),
        rank1=top_k_accuracy(scores, y_index, 1),
        rank5=top_k_accuracy(scores, y_index, 5) if len(label_names) > 5 else None,
        per_class=report,
        confusion=confusion_matrix(y_true, y_pred, labels=all_labels).tolist(),
        label_names=list(label_names),
        predictions_per_second=predictions_per_second,
    )


def classify_files(paths: Sequence[str | os.PathLike], input_size: int,
                   class_scores: Callable[[np.ndarray], np.ndarray], label_names: Sequence[str],
                   top: int = 1) -> list[dict]:
    """Classify image files with any model given as ``class_scores(uint8 images)``.

    Returns
    -------
    list of dict
        One per path, in order: ``{"path", "label", "score", "top": [(label, score)...]}``,
        or ``{"path", "error"}`` for a file that could not be read.
    """
    from features.images import ImageDecodeError, load_image

    results: list[dict] = []
    images, good = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, input_size))
            good.append(i)
            results.append({})
        except ImageDecodeError as exc:
            results.append({"path": str(path), "error": exc.reason})
    if images:
        scores = np.asarray(class_scores(np.stack(images)))
        for row, i in enumerate(good):
            order = np.argsort(scores[row])[::-1][:max(1, top)]
            ranked = [(label_names[j], float(scores[row, j])) for j in order]
            results[i] = {"path": str(paths[i]), "label": ranked[0][0], "score": ranked[0][1],
                          "top": ranked}
    return results


def evaluate_classifier(model, X: np.ndarray, y: np.ndarray) -> Evaluation:
    """Evaluate a fitted :class:`classifiers.FeatureClassifier` on features and labels."""
    t0 = time.perf_counter()
    scores = model.class_scores(X)
    model.predict(X)
    elapsed = time.perf_counter() - t0
    rate = len(y) / elapsed if elapsed > 0 else float("inf")
    return evaluate_predictions(y, scores, model.classes_, model.label_names_, rate)
