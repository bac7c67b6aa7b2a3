"""Out-of-core logistic regression: SGD trained chunk by chunk, and its search over alpha.

For feature files larger than memory. Data arrive as a *chunk source*: a callable
that returns a fresh iterable of ``(X, y)`` chunks on each call (one call per pass),
such as the chunks of a :class:`features.FeatureStore` split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from classifiers.platt import StreamingScaleLoss, margin_columns
from classifiers.search import (
    EPS,
    SearchResult,
    check_folds,
    choose,
    stratified_folds,
)
from classifiers.solvers import row_weights

ChunkSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


class StreamingSGDClassifier(ClassifierMixin, BaseEstimator):
    """Standardised logistic-loss SGD trained chunk by chunk (``partial_fit``).

    Parameters
    ----------
    alpha : float, default=1e-4
        L2 regularisation strength.
    epochs : int, default=5
        Passes over the data after the pass that fits the scaler.
    random_state : int, default=0
        Seed of the shuffling within chunks and of SGD.
    class_weight : {None, "balanced"}, default=None
        Weights of each row's loss by its class (scikit-learn's definition, counted on
        all the rows streamed, in the pass that fits the scaler), handed to SGD as the
        per-class weights its ``partial_fit`` takes.

    Attributes
    ----------
    scaler_ : StandardScaler
    sgd_ : SGDClassifier
    classes_ : numpy.ndarray
    n_features_in_ : int
    """

    def __init__(self, alpha: float = 1e-4, epochs: int = 5, random_state: int = 0,
                 class_weight: str | None = None) -> None:
        self.alpha = alpha
        self.epochs = epochs
        self.random_state = random_state
        self.class_weight = class_weight

    def _new_sgd(self, alpha: float, class_weights: dict | None = None) -> SGDClassifier:
        # partial_fit refuses "balanced" (it sees one chunk): the weights come counted
        return SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="optimal",
                             random_state=self.random_state, class_weight=class_weights)

    def fit(self, X: np.ndarray, y: np.ndarray) -> StreamingSGDClassifier:
        X, y = np.asarray(X), np.asarray(y)
        return self.fit_chunks(lambda: array_chunks(X, y), classes=np.unique(y))

    def fit_chunks(self, chunks: ChunkSource, classes: np.ndarray) -> StreamingSGDClassifier:
        """Fit from a chunk source (a callable returning a fresh iterable of ``(X, y)``)."""
        self.classes_ = np.asarray(classes)
        self.scaler_ = StandardScaler()
        counts = np.zeros(len(self.classes_), dtype=np.int64)
        for X, y in chunks():
            self.scaler_.partial_fit(X)
            counts += np.bincount(np.searchsorted(self.classes_, y), minlength=len(counts))
        self.sgd_ = self._new_sgd(self.alpha, class_weight_dict(self.classes_, counts,
                                                                self.class_weight))
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.epochs):
            for X, y in chunks():
                order = rng.permutation(len(y))
                self.sgd_.partial_fit(self.scaler_.transform(X[order]), y[order],
                                      classes=self.classes_)
        self.n_features_in_ = self.scaler_.n_features_in_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sgd_")
        return self.sgd_.decision_function(self.scaler_.transform(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sgd_")
        return self.sgd_.predict_proba(self.scaler_.transform(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "sgd_")
        return self.sgd_.predict(self.scaler_.transform(X))


def array_chunks(X: np.ndarray, y: np.ndarray, rows: int = 1024) -> Iterator:
    """In-memory arrays as a chunk iterable, so they take the same path as a store."""
    for start in range(0, len(y), rows):
        yield X[start:start + rows], y[start:start + rows]


def class_weight_dict(classes: np.ndarray, counts: np.ndarray, class_weight: str | None
                      ) -> dict | None:
    """``{class: weight}`` under ``class_weight`` for classes of ``counts`` rows each."""
    if class_weight is None:
        return None
    index = np.repeat(np.arange(len(classes)), counts)
    per_class = np.zeros(len(classes))
    per_class[index] = row_weights(index, len(classes), class_weight)
    return {c: float(w) for c, w in zip(classes.tolist(), per_class, strict=True)}


def fit_scaler(chunks: ChunkSource) -> StandardScaler:
    """Feature means and variances over one pass of ``chunks``."""
    scaler = StandardScaler()
    for X, _ in chunks():
        scaler.partial_fit(X)
    return scaler


def search_sgd(chunks: ChunkSource, y: np.ndarray, grid: Sequence[float], *, cv: int,
               random_state: int, epochs: int, repeats: int = 1, rule: str = "log_loss",
               scale_margins: bool = False, class_weight: str | None = None) -> SearchResult:
    """Cross-validate ``alpha`` for :class:`StreamingSGDClassifier` in a few passes over the data.

    Every (alpha, fold) model is updated from the same chunk as it streams by, so
    the data are read ``epochs + 2`` times whatever the grid, fold and repeat count.
    The scaler is fitted on the whole train split (means and variances only). Each
    value is scored on the held-out rows by the log-loss of SGD's own probabilities
    and by accuracy, and chosen as :func:`classifiers.search.grid_search` does. With
    ``scale_margins`` a Platt scale is also fitted for each value, on all held-out rows
    as they stream by (:class:`classifiers.platt.StreamingScaleLoss`: no margins kept),
    and the held-out log-loss at that scale is kept as ``scaled_log_loss``: the loss of
    the probabilities the final model gives.

    Unlike the in-memory families, the scaled log-loss does not choose alpha: on
    digits it took weaker regularisation (alpha 0.003 instead of 0.1), whose final
    model, trained on all rows (1.5 times a 3-fold model's SGD steps), was less well
    described by the fold models' scale: test log-loss 0.288 and ECE 0.055, against
    0.263 and 0.028 at alpha 0.1 (one split, ``bench/calibration.py``).

    Parameters
    ----------
    chunks : callable
        Chunk source of the training rows, in the order of ``y``.
    y : array of shape (n_samples,)
        All training labels (to make the folds before streaming).
    grid : sequence of float
        Values of ``alpha``.
    cv, random_state, epochs, repeats : int
        Folds, seed of the folds and of SGD, passes over the data, repetitions of the
        k-fold split.
    rule : {"log_loss", "log_loss_1se", "accuracy"}
    scale_margins : bool, default=False
        Also fit a Platt scale of the margins for each value (``margin_scale``).
    class_weight : {None, "balanced"}, default=None
        Each fold's models weigh their training rows by class, counted on that fold's
        training rows, and the held-out scores weigh the held-out rows the same way,
        counted on the held-out fold (with ``"balanced"`` the held-out accuracy is then
        the balanced accuracy).

    Returns
    -------
    SearchResult
    """
    check_folds(y, cv)
    grid = sorted(float(v) for v in grid)
    classes = np.unique(y)
    splits = stratified_folds(y, cv, random_state, repeats)
    # fold_of[r, i]: the fold of repeat r that holds row i out
    fold_of = np.empty((repeats, len(y)), dtype=np.int64)
    for s, (_, held_out) in enumerate(splits):
        fold_of[s // cv, held_out] = s % cv
    scaler = fit_scaler(chunks)
    template = StreamingSGDClassifier(random_state=random_state)
    y_all = np.searchsorted(classes, y)

    def weights_of(rows):
        return class_weight_dict(classes, np.bincount(y_all[rows], minlength=len(classes)),
                                 class_weight)

    train_weights = [weights_of(train) for train, _ in splits]
    # per split, the weight of each class of its held-out rows (ones without class weights)
    test_weights = [np.ones(len(classes)) if class_weight is None
                    else np.array(list(weights_of(test).values())) for _, test in splits]
    models = {(a, s): template._new_sgd(grid[a], train_weights[s])
              for a in range(len(grid)) for s in range(len(splits))}
    rng = np.random.default_rng(random_state)
    for _ in range(epochs):
        pos = 0
        for X, yc in chunks():
            Xs, folds = scaler.transform(X), fold_of[:, pos:pos + len(yc)]
            pos += len(yc)
            order = rng.permutation(len(yc))
            Xs, yc, folds = Xs[order], yc[order], folds[:, order]
            for (_, s), model in models.items():
                keep = folds[s // cv] != s % cv
                if keep.any():
                    model.partial_fit(Xs[keep], yc[keep], classes=classes)
    correct = np.zeros((len(grid), len(splits)))
    neg_log = np.zeros((len(grid), len(splits)))
    counts = repeats * np.bincount(np.searchsorted(classes, y), minlength=len(classes))
    scale_losses = [StreamingScaleLoss(counts, len(splits)) for _ in grid] \
        if scale_margins else None
    pos = 0
    for X, yc in chunks():
        Xs, folds = scaler.transform(X), fold_of[:, pos:pos + len(yc)]
        pos += len(yc)
        y_index = np.searchsorted(classes, yc)
        for (a, s), model in models.items():
            held = folds[s // cv] == s % cv
            if not held.any():
                continue
            truth = y_index[held]
            weight = test_weights[s][truth]
            proba = model.predict_proba(Xs[held])
            correct[a, s] += np.sum(weight * (proba.argmax(axis=1) == truth))
            neg_log[a, s] += -np.sum(weight * np.log(np.clip(
                proba[np.arange(len(truth)), truth], EPS, 1.0)))
            if scale_losses is not None:
                scale_losses[a].add(margin_columns(model.decision_function(Xs[held])),
                                    truth, s, weight)
    total = np.array([test_weights[s][y_all[te]].sum() for s, (_, te) in enumerate(splits)])
    accuracy, log_loss = correct / total, neg_log / total
    scales = scaled = None
    if scale_losses is not None:
        fitted = [loss.best() for loss in scale_losses]
        scales = [scale for scale, _ in fitted]
        scaled = np.array([summed for _, summed in fitted]) / total
    best = choose(rule, log_loss, accuracy, regularisation_decreases=False)
    return SearchResult("alpha", grid, log_loss, accuracy, best, rule, cv, repeats, scales,
                        scaled)
