"""Test metrics of a fitted classifier, with 95 % intervals: accuracy, macro-F1, rank-k, per
class, confusion, and (for probabilities) log-loss and calibration."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from classifiers.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from classifiers.statistics import balanced_accuracy, bootstrap_interval, wilson_interval


@dataclass
class Evaluation:
    """Metrics of one model on one labelled set, each with how sure it is.

    Attributes
    ----------
    n_samples : int
    accuracy, macro_f1, rank1 : float
    rank5 : float or None
        Share of rows whose true class is among the 5 best scores; only with more
        than 5 classes (otherwise it is trivially 1).
    balanced_accuracy : float or None
        Mean per-class recall (:func:`classifiers.statistics.balanced_accuracy`): what
        accuracy is when every class weighs the same. None in reports written before it.
    accuracy_ci, macro_f1_ci, rank5_ci, balanced_accuracy_ci : list of float or None
        95 % intervals: Wilson for accuracy and rank-5, a percentile bootstrap over
        the test images (1,000 resamples, seeded) for macro-F1 and balanced accuracy
        (a mean of per-class proportions, which Wilson's interval of one proportion
        does not cover).
    per_class : dict
        ``sklearn.metrics.classification_report`` as a dict, keyed by class name.
    confusion : list of list of int
        Rows are true classes, columns predicted, in ``label_names`` order.
    label_names : list of str
    predictions_per_second : float
        Throughput of ``predict`` on these features.
    scores : {"probability", "decision"}
        What the model's scores are.
    log_loss, ece : float or None
        Log-loss and expected calibration error (15 equal-width bins of the top
        probability); None where the scores are not probabilities.
    reliability : dict or None
        The bins behind ``ece`` (see :func:`classifiers.calibration.reliability_bins`).
    per_image : dict
        ``{"id", "true", "predicted", "score"}`` lists, one entry per image, for paired
        comparisons and the list of mistakes; not part of :meth:`to_dict`.
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
    accuracy_ci: list[float] | None = None
    macro_f1_ci: list[float] | None = None
    rank5_ci: list[float] | None = None
    scores: str = "probability"
    log_loss: float | None = None
    ece: float | None = None
    reliability: dict | None = None
    balanced_accuracy: float | None = None
    balanced_accuracy_ci: list[float] | None = None
    per_image: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("per_image")
        return out


def top_k_accuracy(scores: np.ndarray, y_index: np.ndarray, k: int) -> float:
    """Share of rows whose true column index is among the ``k`` highest scores."""
    return float(np.mean(top_k_hits(scores, y_index, k)))


def top_k_hits(scores: np.ndarray, y_index: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's true column index is among its ``k`` highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return np.any(top == y_index[:, None], axis=1)


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(scores.size and scores.min() >= 0 and scores.max() <= 1
                and np.allclose(scores.sum(axis=1), 1, atol=1e-4))


def evaluate_predictions(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                         label_names: list[str], predictions_per_second: float = 0.0, *,
                         probabilities: bool | None = None,
                         sample_ids: list[str] | None = None) -> Evaluation:
    """Metrics from class scores (probabilities or decision values), columns in ``classes`` order.

    Shared by every stage, so linear classifiers and fine-tuned networks are
    reported in exactly the same way.

    Parameters
    ----------
    y_true : array of shape (n,)
    scores : array of shape (n, len(classes))
    classes : array
        The label of each score column.
    label_names : list of str
        Class names, indexed by label.
    predictions_per_second : float
    probabilities : bool, optional
        Whether ``scores`` are probabilities (then log-loss and calibration are
        reported); guessed from the scores when None.
    sample_ids : list of str, optional
        One id per row (the image path), kept for paired comparisons.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes)
    if len(classes) != len(label_names):
        raise ValueError(f"{len(classes)} score columns but {len(label_names)} class names")
    position = {c: i for i, c in enumerate(classes.tolist())}
    # Everything below works on column positions, so labels of any type (strings,
    # non-contiguous integers) are reported under their names.
    y_index = np.array([position.get(c, -1) for c in y_true.tolist()], dtype=np.int64)
    p_index = np.argmax(scores, axis=1).astype(np.int64)
    all_labels = np.arange(len(label_names))
    report = classification_report(y_index, p_index, labels=all_labels,
                                   target_names=list(label_names), output_dict=True,
                                   zero_division=0)
    n = len(y_true)
    correct = p_index == y_index
    top5 = top_k_hits(scores, y_index, 5) if len(label_names) > 5 else None

    k = len(label_names)

    def macro_f1(t, p):
        # 2TP / (2TP + FP + FN) per class from one bincount: the same value as
        # f1_score(average="macro", zero_division=0) over all labels, fast enough to
        # bootstrap a thousand times.
        t, p = np.asarray(t, np.int64), np.asarray(p, np.int64)
        inside = (t >= 0) & (t < k) & (p >= 0) & (p < k)
        cm = np.bincount(t[inside] * k + p[inside], minlength=k * k).reshape(k, k)
        tp = np.diag(cm).astype(np.float64)
        denom = cm.sum(axis=0) + cm.sum(axis=1)
        return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)))

    if probabilities is None:
        probabilities = _looks_like_probabilities(scores)
    log_loss_value = ece = reliability = None
    if probabilities and n:
        # columns cover every class the model knows; rows of unknown labels are left out
        known = y_index >= 0
        clipped = np.clip(scores[known], 1e-15, 1.0)
        log_loss_value = float(-np.mean(np.log(clipped[np.arange(known.sum()),
                                                        y_index[known]])))
        ece = expected_calibration_error(scores[known], y_index[known], ECE_BINS)
        reliability = reliability_bins(scores[known], y_index[known], ECE_BINS).to_dict()
    return Evaluation(
        n_samples=n,
        accuracy=float(np.mean(correct)) if n else 0.0,
        macro_f1=float(f1_score(y_index, p_index, labels=all_labels, average="macro",
                                zero_division=0)),
        rank1=top_k_accuracy(scores, y_index, 1),
        rank5=float(np.mean(top5)) if top5 is not None else None,
        per_class=report,
        confusion=confusion_matrix(y_index, p_index, labels=all_labels).tolist(),
        label_names=list(label_names),
        predictions_per_second=predictions_per_second,
        accuracy_ci=list(wilson_interval(int(correct.sum()), n)),
        macro_f1_ci=list(bootstrap_interval(macro_f1, y_index, p_index)),
        rank5_ci=list(wilson_interval(int(top5.sum()), n)) if top5 is not None else None,
        scores="probability" if probabilities else "decision",
        log_loss=log_loss_value,
        ece=ece,
        reliability=reliability,
        # unknown labels (-1) are left out: their recall is not a class of the model's
        balanced_accuracy=balanced_accuracy(y_index[y_index >= 0], p_index[y_index >= 0]),
        balanced_accuracy_ci=list(bootstrap_interval(
            balanced_accuracy, y_index[y_index >= 0], p_index[y_index >= 0])),
        per_image={"id": list(sample_ids) if sample_ids is not None else [str(i)
                                                                         for i in range(n)],
                   "true": [label_names[i] if i >= 0 else str(t)
                            for i, t in zip(y_index, y_true.tolist(), strict=True)],
                   "predicted": [label_names[i] for i in p_index],
                   "score": scores.max(axis=1).tolist() if n else []},
    )


def evaluate_classifier(model, X: np.ndarray, y: np.ndarray) -> Evaluation:
    """Evaluate a fitted :class:`classifiers.FeatureClassifier` on features and labels."""
    t0 = time.perf_counter()
    scores = model.class_scores(X)
    model.predict(X)
    elapsed = time.perf_counter() - t0
    rate = len(y) / elapsed if elapsed > 0 else float("inf")
    return evaluate_predictions(y, scores, model.classes_, model.label_names_, rate)
