"""Test metrics of a fitted classifier: accuracy, macro-F1, rank-k, per class, confusion."""

from __future__ import annotations

import time
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


def evaluate_classifier(model, X: np.ndarray, y: np.ndarray) -> Evaluation:
    """Evaluate a fitted :class:`classifiers.FeatureClassifier` on features and labels."""
    t0 = time.perf_counter()
    scores = model.class_scores(X)
    model.predict(X)
    elapsed = time.perf_counter() - t0
    rate = len(y) / elapsed if elapsed > 0 else float("inf")
    return evaluate_predictions(y, scores, model.classes_, model.label_names_, rate)
