"""Probabilities for margin classifiers: Platt scaling of the decision values, fitted out of fold.

A linear SVM gives margins, not probabilities. Platt (1999) fits a sigmoid
``1 / (1 + exp(-(a d + b)))`` to held-out margins ``d``; scikit-learn's
``CalibratedClassifierCV(method="sigmoid")`` does this per class and normalises.
tlearn fits the slope only (``b = 0``), one scale ``a`` shared by all classes:

* binary: ``P(classes_[1]) = sigmoid(a d)``, monotone in the margin;
* more classes: ``softmax(a D)`` over the one-vs-rest margins ``D``.

Without the offset the class of the highest probability is always the class of the
highest margin, so ``predict``, ``decision_function`` and ``predict_proba`` agree
(scikit-learn's estimator checks require it), and the probabilities are still
fitted by log-loss. The targets are Platt's: a row of class ``c`` aims at
``(N_c + 1) / (N_c + 2)`` rather than 1, so that perfectly separated held-out
margins give a finite scale.

The same one-parameter scale gives the probabilities of the one-vs-rest logistic
families (``ovr``, ``sgd``). Their own probabilities, one binary sigmoid per class
normalised to sum to one, are underconfident with several overlapping classes: each
other class's model keeps some probability, and normalising takes it from the top
class (``ovr`` on flowers5: mean top probability 0.705 for 76.1 % accuracy). No scale of the
sigmoids fixes that (``sigmoid(a D)`` normalised was worse still); ``softmax(a D)``
of the margins, ``a`` fitted on the held-out folds, did (``bench/calibration.py``).
The out-of-core family cannot keep its held-out margins: :class:`StreamingScaleLoss`
accumulates the loss at a grid of scales as they stream by.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

# The scale is searched over this many orders of magnitude either side of 1 / (margin spread).
_DECADES = 6.0
# Scales tried by StreamingScaleLoss: log-odds margins, so the optimum lies near 1; 0.02
# decade steps (scales 4.7 % apart) move the log-loss by far less than its fold-to-fold spread.
STREAM_SCALES = tuple(float(a) for a in np.logspace(-4, 4, 401))


def margin_columns(decision: np.ndarray) -> np.ndarray:
    """Decision values as one column per class: binary ``d`` becomes ``[0, d]``."""
    decision = np.asarray(decision, dtype=np.float64)
    if decision.ndim == 1:
        return np.column_stack([np.zeros_like(decision), decision])
    return decision


def _platt_targets(y_index: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y_index, minlength=n_classes).astype(np.float64)
    hit, other = _target_weights(y_index, counts)
    targets = np.repeat(other[:, None], n_classes, axis=1)
    targets[np.arange(len(y_index)), y_index] = hit
    return targets


def _target_weights(y_index: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Platt target of each row's true class and of each of its other classes."""
    hit = ((counts + 1) / (counts + 2))[y_index]
    return hit, (1 - hit) / (len(counts) - 1)


def fit_margin_scale(columns: np.ndarray, y_index: np.ndarray,
                     weights: np.ndarray | None = None) -> float:
    """The scale ``a`` minimising the log-loss of ``softmax(a * columns)`` against Platt targets.

    Parameters
    ----------
    columns : array of shape (n, n_classes)
        Held-out margins (see :func:`margin_columns`).
    y_index : array of shape (n,)
        Column of each row's true class.
    weights : array of shape (n,), optional
        Weight of each row's loss (class weights); one each by default.
    """
    columns = np.asarray(columns, dtype=np.float64)
    spread = float(np.std(columns))
    if not np.isfinite(spread) or spread == 0:
        return 1.0  # constant margins: every scale gives the same (uniform) probabilities
    targets = _platt_targets(np.asarray(y_index), columns.shape[1])

    # cross-entropy to fixed targets is convex in the scale; search its logarithm
    def loss(log_scale):
        return -np.average(np.sum(targets * log_softmax(np.exp(log_scale) * columns, axis=1),
                                  axis=1), weights=weights)

    centre = -np.log(spread)
    found = minimize_scalar(loss, bounds=(centre - _DECADES * np.log(10),
                                          centre + _DECADES * np.log(10)),
                            method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def scaled_probabilities(columns: np.ndarray, scale: float) -> np.ndarray:
    """``softmax(scale * columns)``, rows summing to one."""
    return softmax(scale * np.asarray(columns, dtype=np.float64), axis=1)


def scaled_log_loss(columns: np.ndarray, y_index: np.ndarray, scale: float,
                    weights: np.ndarray | None = None) -> float:
    """Mean log-loss of ``softmax(scale * columns)`` on the true classes, rows weighted by
    ``weights`` (one each by default)."""
    logp = log_softmax(scale * np.asarray(columns, dtype=np.float64), axis=1)
    return float(-np.average(logp[np.arange(len(y_index)), y_index], weights=weights))


class StreamingScaleLoss:
    """:func:`fit_margin_scale` for held-out margins that arrive in chunks and are not kept.

    The loss of every scale of :data:`STREAM_SCALES` is accumulated chunk by chunk:
    against Platt targets over all splits pooled (what chooses the scale, as
    :func:`fit_margin_scale` does) and against the true class split by split (the
    held-out log-loss at that scale). Memory is a few numbers per scale and split,
    whatever the number of rows.

    Parameters
    ----------
    class_counts : array of shape (n_classes,)
        Rows of each class over all splits pooled (each row once per repeat of the
        k-fold split): the Platt targets depend on them.
    n_splits : int
    """

    def __init__(self, class_counts: np.ndarray, n_splits: int) -> None:
        self.scales = np.asarray(STREAM_SCALES)
        self._counts = np.asarray(class_counts, dtype=np.float64)
        self._platt = np.zeros(len(self.scales))
        self._neg_log = np.zeros((n_splits, len(self.scales)))

    def add(self, columns: np.ndarray, y_index: np.ndarray, split: int,
            weights: np.ndarray | None = None) -> None:
        """Held-out margins (see :func:`margin_columns`) of some rows of ``split``, each
        row's loss weighted by ``weights`` (class weights; one each by default)."""
        columns = np.asarray(columns, dtype=np.float64)
        rows = np.arange(len(y_index))
        weights = np.ones(len(y_index)) if weights is None else np.asarray(weights, float)
        for start in range(0, len(self.scales), 25):  # (25, rows, classes) at a time
            scales = self.scales[start:start + 25]
            logp = log_softmax(scales[:, None, None] * columns[None], axis=2)
            true = logp[:, rows, y_index]
            hit, other = _target_weights(y_index, self._counts)
            self._neg_log[split, start:start + 25] -= (weights * true).sum(axis=1)
            self._platt[start:start + 25] -= (weights * (hit * true + other * (
                logp.sum(axis=2) - true))).sum(axis=1)

    def best(self) -> tuple[float, np.ndarray]:
        """The scale of least pooled loss, and the summed log-loss of each split at it."""
        index = int(np.argmin(self._platt))
        return float(self.scales[index]), self._neg_log[:, index].copy()


class PlattScaledClassifier(ClassifierMixin, BaseEstimator):
    """A margin classifier with probabilities by Platt scaling fitted out of fold.

    Parameters
    ----------
    estimator : classifier with ``decision_function``, default=LinearSVC()
    cv : int, default=3
        Stratified folds whose held-out margins fit the scale (train rows only).
    random_state : int, default=0
        Seed of the folds.

    Attributes
    ----------
    estimator_ : classifier
        ``estimator`` fitted on all rows: ``predict`` and ``decision_function`` are its own.
    scale_ : float
        Probabilities are ``softmax(scale_ * margin_columns(decision_function(X)))``:
        ``sigmoid(scale_ * d)`` for the second class of a binary problem.
    classes_ : numpy.ndarray
    n_features_in_ : int
    """

    def __init__(self, estimator=None, cv: int = 3, random_state: int = 0) -> None:
        self.estimator = estimator
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> PlattScaledClassifier:
        """Fit the scale on held-out margins of ``cv`` folds, then the estimator on all rows."""
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        base = LinearSVC() if self.estimator is None else self.estimator
        self.classes_, y_index = np.unique(y, return_inverse=True)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        held_out = cross_val_predict(clone(base), X, y, cv=folds, method="decision_function")
        self.scale_ = fit_margin_scale(margin_columns(held_out), y_index)
        self.estimator_ = clone(base).fit(X, y)
        return self

    @classmethod
    def from_fitted(cls, estimator, scale: float) -> PlattScaledClassifier:
        """Wrap an already fitted margin classifier with a scale fitted elsewhere."""
        model = cls(estimator=clone(estimator))
        model.estimator_ = estimator
        model.scale_ = float(scale)
        model.classes_ = estimator.classes_
        model.n_features_in_ = estimator.n_features_in_
        return model

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The estimator's margins, unchanged."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The estimator's predictions (the class of the highest margin)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``softmax(scale_ * margins)``, columns in ``classes_`` order."""
        return scaled_probabilities(margin_columns(self.decision_function(X)), self.scale_)
