"""Images whose given label their features contradict: confident learning, out of fold.

Every row's class probabilities come from a logistic model that never saw it
(k-fold over the whole store, a group's rows in one fold so a copy cannot vouch
for its photo). A row is a label issue when confident learning (Northcutt et al.
2021, as cleanlab's ``find_label_issues``: per-class thresholds, the mean probability
of a class on its own rows) puts it off the diagonal of the confident joint, or when
another class is simply more probable (cleanlab's ``find_predicted_neq_given``).
Findings are ranked by self-confidence, how improbable the given label is (cleanlab's
``self_confidence``): it recalled more planted flips than the normalized margin
``p[suggested] - p[given]`` on flowers5 (65 % against 51 % of 2 % flipped among the top
2x findings) and as many on animals (bench/check.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from classifiers.estimators import FeatureClassifier
from classifiers.solvers import PreconditionedLogisticRegression
from features.errors import UserInputError


@dataclass(frozen=True)
class LabelIssues:
    """Rows whose given label the out-of-fold probabilities doubt, most doubtful first.

    Attributes
    ----------
    rows : numpy.ndarray of int64
        Flagged rows, by decreasing ``score``.
    score : numpy.ndarray of float
        ``1 - p[given]`` of each flagged row, in 0..1 (higher: surer).
    suggested : numpy.ndarray of int64
        The class each flagged row more likely belongs to.
    probabilities : numpy.ndarray, shape (rows, classes)
        Out-of-fold probabilities of every row.
    C : float
        Regularisation the probabilities were computed with (chosen by held-out log-loss).
    """

    rows: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    probabilities: np.ndarray
    C: float


def out_of_fold_probabilities(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
                              *, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, float]:
    """Class probabilities of every row from a model fitted on the other folds.

    The regularisation is chosen once, by the held-out log-loss of
    :class:`classifiers.FeatureClassifier`'s search over all rows; ``y`` holds class
    indices 0..k-1.
    """
    n_classes = int(y.max()) + 1
    smallest = int(np.bincount(y, minlength=n_classes).min())
    if smallest < 2:
        raise UserInputError("a class has fewer than 2 images: label issues need at least 2 "
                             "per class (add images or leave that class out)")
    folds = min(folds, smallest)
    chosen = FeatureClassifier(kind="logreg", cv=min(3, folds), random_state=seed).fit(X, y)
    C = float(chosen.best_params_["C"])
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = np.zeros((len(y), n_classes), dtype=np.float64)
    mean = X.mean(axis=0)
    for train, held_out in splitter.split(X, y, groups):
        model = PreconditionedLogisticRegression(C=C).fit(X[train] - mean, y[train])
        probabilities[np.ix_(held_out, model.classes_)] = model.predict_proba(X[held_out] - mean)
    return probabilities, C


def rank_label_issues(probabilities: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(rows, score, suggested)`` of the rows flagged, surest first.

    Flagged: the rows the confident joint puts off its diagonal (the most probable of
    the classes at or above their threshold is not the given one) and the rows whose
    most probable class is not the given one. Suggested: that class. Score: one minus
    the self-confidence, ``1 - p[given]``.
    """
    n, k = probabilities.shape
    np.arange(n)
    # a class's threshold: how probable it is, on average, for its own rows
    thresholds = np.array([probabilities[y == c, c].mean() if np.any(y == c) else 1.0
                           for c in range(k)])
    above = np.where(probabilities >= thresholds, probabilities, -np.inf)
    confident = above.argmax(axis=1)
    confident_issue = np.isfinite(above.max(axis=1)) & (confident != y)
    predicted = probabilities.argmax(axis=1)
    suggested = np.where(confident_issue, confident, predicted)
    flagged = np.flatnonzero(confident_issue | (predicted != y))
    score = 1.0 - probabilities[flagged, y[flagged]]
    order = np.argsort(-score, kind="stable")
    return flagged[order], score[order], suggested[flagged[order]]


def find_label_issues(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, *,
                      folds: int = 5, seed: int = 0) -> LabelIssues:
    """Rows whose label the other rows' model contradicts (module docstring)."""
    probabilities, C = out_of_fold_probabilities(X, y, groups, folds=folds, seed=seed)
    rows, score, suggested = rank_label_issues(probabilities, y)
    return LabelIssues(rows, score, suggested, probabilities, C)
