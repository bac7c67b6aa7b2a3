"""Choose a regularisation strength by (repeated) stratified k-fold cross-validation.

Every value of the grid is scored on every held-out fold by log-loss (a proper
scoring rule: it rewards probabilities that mean what they say) and by accuracy.
The value chosen minimises the mean held-out log-loss (:func:`pick_by_log_loss`).
Accuracy is reported beside it, but does not choose: on easy data many values tie
on accuracy, and sending ties to the strongest regularisation, as tlearn did,
gave flat, meaningless probabilities. Over ten re-splits of three Lite0 feature
sets (``bench/calibration.py``) the least log-loss gave higher mean test accuracy
with a smaller spread, lower log-loss and lower calibration error than the old
rule; the one-standard-error rule and repeated k-fold (both available:
``rule="log_loss_1se"``, ``repeats``) did not improve on it there.

Models without probabilities (the linear SVM), and those whose own probabilities
are miscalibrated (one-vs-rest logistic models: ``scale_margins``), are scored
through Platt scaling of their margins (:mod:`classifiers.platt`): one scale per
grid value, fitted on the held-out margins of all folds, which also gives the
final model its probabilities.

Folds run in threads (numpy and the solvers release the GIL), so no worker gets
its own copy of the data. When the rows are laid out with every held-out fold
contiguous (:func:`fold_layout`, as :class:`classifiers.estimators.FeatureClassifier`
does when it makes its own copy of them), a fold's held-out rows are a view and its
training rows at most two slabs of views, which
:class:`classifiers.solvers.PreconditionedLogisticRegression` fits without a
copy; otherwise each fold copies its rows once for the whole walk. Within a
fold the grid is walked from the strongest to the weakest regularisation, each
fit warm-started from the previous one. The final model walks the same path on
all rows up to the chosen value (:func:`walk_path`): cross-validation judged that
procedure, so that is the one that makes the model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from classifiers.platt import fit_margin_scale, margin_columns, scaled_log_loss
from classifiers.solvers import PreconditionedLogisticRegression, RowSlabs, row_weights
from features.errors import UserInputError

#: Probabilities are clipped to [EPS, 1] before the log, as ``sklearn.metrics.log_loss`` does.
EPS = 1e-15

RULES = ("log_loss", "log_loss_1se", "accuracy")
# A fold's training rows are fitted as views when they form at most this many contiguous
# runs (two for every fold of a layout made by fold_layout); more, and they are copied.
_MAX_SLABS = 4

#: Runs the cross-validation folds: ``runner(fold, X, y, splits, n_jobs)`` returns the
#: outcome of ``fold(X=X, y=y, train=train, test=test)`` for every ``(train, test)`` of
#: ``splits``, in order. :func:`thread_folds` runs them here; an engine of ``pipeline``
#: (Ray) runs them elsewhere.
FoldRunner = Callable[..., Iterator]


@dataclass
class SearchResult:
    """Cross-validation scores of a grid.

    Attributes
    ----------
    param : str
        Name of the searched parameter (``C`` or ``alpha``).
    grid : list of float
        Values tried, ascending, in the order of the rows below.
    log_loss : numpy.ndarray of shape (len(grid), splits)
        Mean log-loss of each value on each held-out fold (splits = folds x repeats).
    accuracy : numpy.ndarray of shape (len(grid), splits)
        Accuracy of each value on each held-out fold.
    best_index : int
    rule : str
        How ``best_index`` was chosen: ``"log_loss"`` (the least mean log-loss),
        ``"log_loss_1se"`` (the most regularised value within one standard error of
        it) or ``"accuracy"`` (the best mean accuracy, ties to the strongest
        regularisation: tlearn's rule before, kept for comparison).
    folds, repeats : int
    margin_scale : list of float or None
        For models scored by their scaled margins, the Platt scale fitted at each grid
        value (:func:`classifiers.platt.fit_margin_scale`); None for the others.
    scaled_log_loss : numpy.ndarray of shape (len(grid), splits) or None
        Where :attr:`log_loss` is not that of the probabilities the final model gives
        (``sgd``: its own probabilities choose alpha, its Platt-scaled margins are
        what it predicts), the held-out log-loss of those scaled probabilities (the
        one scale is fitted on the same held-out rows: slightly optimistic); None
        where :attr:`log_loss` already is.
    held_out_predicted : numpy.ndarray of shape (rows,) or None
        The class each training row is given at the chosen value by the model of the
        first k-fold split that held it out: out-of-fold predictions, which paired
        tests compare (the Platt scale moves no argmax); None for out-of-core searches.
    """

    param: str
    grid: list[float]
    log_loss: np.ndarray
    accuracy: np.ndarray
    best_index: int
    rule: str = "log_loss"
    folds: int = 3
    repeats: int = 1
    margin_scale: list[float] | None = field(default=None)
    scaled_log_loss: np.ndarray | None = field(default=None)
    held_out_predicted: np.ndarray | None = field(default=None, repr=False)

    @property
    def best_value(self) -> float:
        return self.grid[self.best_index]

    @property
    def mean_log_loss(self) -> np.ndarray:
        return self.log_loss.mean(axis=1)

    @property
    def mean_accuracy(self) -> np.ndarray:
        return self.accuracy.mean(axis=1)

    def to_dict(self) -> dict:
        return {"param": self.param, "grid": list(self.grid), "best": self.best_value,
                "rule": self.rule, "folds": self.folds, "repeats": self.repeats,
                "mean_log_loss": self.mean_log_loss.tolist(),
                "std_log_loss": self.log_loss.std(axis=1).tolist(),
                "fold_log_loss": self.log_loss.tolist(),
                "mean_accuracy": self.mean_accuracy.tolist(),
                "std_accuracy": self.accuracy.std(axis=1).tolist(),
                "fold_accuracy": self.accuracy.tolist(),
                "margin_scale": self.margin_scale,
                "mean_scaled_log_loss": None if self.scaled_log_loss is None
                else self.scaled_log_loss.mean(axis=1).tolist()}


def check_folds(y: np.ndarray, cv: int) -> None:
    """Raise a clear error when some class has fewer training rows than folds."""
    if cv < 2:
        raise UserInputError(f"cross-validation needs at least 2 folds, got --cv {cv}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) == 0:
        raise UserInputError("the train split has no images to train on")
    if len(classes) == 1:
        raise UserInputError(f"the train split has a single class ({classes[0]}); one class "
                             "cannot train a classifier: add images of another class")
    if counts.min() < cv:
        raise UserInputError(
            f"class {classes[counts.argmin()]} has only {counts.min()} training images, fewer "
            f"than the {cv} cross-validation folds; pass --cv {max(2, counts.min())} or add images"
        )


def pick_best(scores: np.ndarray, regularisation_decreases: bool) -> int:
    """Index of the best mean accuracy; ties go to the most regularised value.

    The rule tlearn used before log-loss (``rule="accuracy"``), kept for comparison.
    """
    means = scores.mean(axis=1)
    best = np.flatnonzero(np.isclose(means, means.max(), rtol=0, atol=1e-12))
    return int(best[0] if regularisation_decreases else best[-1])


def pick_by_log_loss(log_loss: np.ndarray, regularisation_decreases: bool,
                     one_standard_error: bool = False) -> int:
    """Index of the least mean held-out log-loss, or the one-standard-error choice.

    With ``one_standard_error``, the most regularised value whose mean log-loss is
    within one standard error (over the held-out folds) of the least one: the
    simplest model the folds cannot tell from the best. Exact ties go to the most
    regularised value.
    """
    means = log_loss.mean(axis=1)
    best = int(np.flatnonzero(means == means.min())[0 if regularisation_decreases else -1])
    if not one_standard_error or log_loss.shape[1] < 2:
        return best
    se = float(np.std(log_loss[best], ddof=1) / np.sqrt(log_loss.shape[1]))
    close = np.flatnonzero(means <= means[best] + se)
    return int(close[0] if regularisation_decreases else close[-1])


def choose(rule: str, log_loss: np.ndarray, accuracy: np.ndarray,
           regularisation_decreases: bool) -> int:
    """Index chosen by ``rule`` (one of :data:`RULES`) from the held-out scores."""
    if rule == "accuracy":
        return pick_best(accuracy, regularisation_decreases)
    return pick_by_log_loss(log_loss, regularisation_decreases,
                            one_standard_error=rule == "log_loss_1se")


def stratified_folds(y: np.ndarray, cv: int, seed: int, repeats: int = 1
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cv`` stratified folds, ``repeats`` times over, each repeat shuffled by ``seed + r``.

    The first repeat is ``StratifiedKFold(cv, shuffle=True, random_state=seed)``.
    """
    splits = []
    for r in range(repeats):
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed + r)
        splits.extend(splitter.split(np.zeros(len(y)), y))
    return splits


def fold_layout(splits: Sequence[tuple[np.ndarray, np.ndarray]], cv: int
                ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """An order of the rows in which the first ``cv`` held-out folds are contiguous.

    Parameters
    ----------
    splits : sequence of (train, test) row indices
        As :func:`stratified_folds` makes them; the first ``cv`` test folds partition
        the rows.
    cv : int

    Returns
    -------
    order : numpy.ndarray
        The rows of the first held-out fold, then the second's, and so on: lay the
        data out as ``X[order]``, ``y[order]``.
    splits : list of (train, test)
        The same splits in positions of that layout, sorted: the first repeat's
        held-out folds are one run of rows and its training rows at most two.
    """
    order = np.concatenate([test for _, test in splits[:cv]])
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return order, [(np.sort(position[train]), np.sort(position[test]))
                   for train, test in splits]


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of the contiguous runs of increasing ``rows``."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def _fold_rows(X: np.ndarray, rows: np.ndarray, dtype: np.dtype | None, slabs: bool):
    """``X[rows]``: a view when the rows are one run, :class:`RowSlabs` of views when
    ``slabs`` and they are a few runs, else a copy (in ``dtype``)."""
    if np.dtype(dtype or X.dtype) == X.dtype and len(rows) and np.all(np.diff(rows) > 0):
        runs = _runs(rows)
        if len(runs) == 1:
            return X[runs[0][0]:runs[0][1]]
        if slabs and len(runs) <= _MAX_SLABS:
            return RowSlabs([X[start:stop] for start, stop in runs])
    return _take_rows(X, rows, dtype)


def held_out_log_loss(probabilities: np.ndarray, y_index: np.ndarray,
                      weights: np.ndarray | None = None) -> float:
    """Mean negative log-probability of the true class (columns in class order), rows
    weighted by ``weights`` (one each by default)."""
    true = probabilities[np.arange(len(y_index)), y_index]
    return float(-np.average(np.log(np.clip(true, EPS, 1.0)), weights=weights))


def _take_rows(X: np.ndarray, rows: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """``X[rows]`` as ``dtype``, without a second full-size copy when the type changes."""
    dtype = np.dtype(dtype or X.dtype)
    if dtype == X.dtype:
        return X[rows]
    out = np.empty((len(rows), X.shape[1]), dtype=dtype)
    step = 1024
    for start in range(0, len(rows), step):
        out[start:start + step] = X[rows[start:start + step]]
    return out


def walk_order(grid: Sequence[float], name: str) -> list[float]:
    """The grid from the strongest regularisation to the weakest (C ascending, alpha descending).

    Warm starts then move from simple models to complex ones.
    """
    grid = sorted(grid)
    return grid if name == "C" else grid[::-1]


def warm_startable(estimator) -> bool:
    """Whether ``estimator`` (or the one it wraps) has a ``warm_start`` parameter."""
    return any(k.split("__")[-1] == "warm_start" for k in estimator.get_params())


def walk_path(estimator, param: str, walk: Sequence[float], X: np.ndarray, y: np.ndarray
              ) -> Iterator[tuple[float, object, list]]:
    """Fit a clone of ``estimator`` at each value of ``walk`` in turn.

    Yields ``(value, fitted estimator, warnings of that fit)`` after each fit (the
    same object each time). Each fit is warm-started from the previous one where
    the estimator can be. The final model is fitted along the same path as the folds
    were, so that cross-validation judged the very procedure that makes it: with
    weak regularisation the objective is so flat that a solver's tolerance is met at
    points that depend on where it started. Convergence warnings are collected, not
    shown: extreme grid values often stop at max_iter, and CV judges them by their
    scores.
    """
    est = clone(estimator)
    if warm_startable(est):
        est.set_params(**{k: True for k in est.get_params() if k.split("__")[-1] == "warm_start"})
    for value in walk:
        est.set_params(**{param: value})
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ConvergenceWarning)
            est.fit(X, y)
        yield value, est, seen


def _fold_scores(estimator, param: str, walk: Sequence[float], X: np.ndarray, y: np.ndarray,
                 classes: np.ndarray, train: np.ndarray, test: np.ndarray,
                 dtype: np.dtype | None, scale_margins: bool = False,
                 class_weight: str | None = None
                 ) -> tuple[list[float], list[float], list[np.ndarray], list[np.ndarray]]:
    """Accuracy, log-loss (NaN where margins get scaled), held-out margins and the index
    of the class predicted for each held-out row, along ``walk``.

    With ``class_weight`` (which ``estimator`` fits with too) the held-out rows weigh as
    their class, counted on the held-out fold: ``"balanced"`` accuracy is then the
    balanced accuracy, and every class counts as much in the log-loss.
    """
    # Views of the fold's rows where they are contiguous, else one copy for the whole
    # walk (not one per grid value).
    slabs = isinstance(estimator, PreconditionedLogisticRegression)
    X_train, X_test = _fold_rows(X, train, dtype, slabs), _fold_rows(X, test, dtype, False)
    y_index = np.searchsorted(classes, y[test])
    weights = row_weights(y_index, len(classes), class_weight)
    accuracy, log_loss, margins, predicted = [], [], [], []
    for _, fitted, _ in walk_path(estimator, param, walk, X_train, y[train]):
        if not scale_margins and hasattr(fitted, "predict_proba"):
            proba = fitted.predict_proba(X_test)
            log_loss.append(held_out_log_loss(proba, y_index, weights))
        else:
            proba = margin_columns(fitted.decision_function(X_test))
            log_loss.append(float("nan"))
            margins.append(proba)
        predicted.append(proba.argmax(axis=1).astype(np.int32))
        accuracy.append(float(np.average(predicted[-1] == y_index, weights=weights)))
    return accuracy, log_loss, margins, predicted


def single_threaded_blas():
    """Context in which the linear algebra library runs one thread.

    A solver's products have one column per class (``X @ W``, ``X.T @ G``): too thin
    to share among threads. On two cores, OpenBLAS's threads made them 3 to 6 times
    slower than one thread (more so when other processes use the cores), and the
    folds, in threads of their own, already fill the cores.
    """
    return threadpool_limits(limits=1, user_api="blas")


def concurrent_jobs(n_jobs: int | None, n_splits: int) -> int:
    """Threads for ``n_splits`` folds: ``n_jobs``, or the CPU count when None."""
    wanted = (os.cpu_count() or 1) if n_jobs is None else int(n_jobs)
    if wanted < 0:  # joblib's convention: -1 is every CPU
        wanted = max(1, (os.cpu_count() or 1) + 1 + wanted)
    return max(1, min(wanted, n_splits))


def thread_folds(fold: Callable, X: np.ndarray, y: np.ndarray,
                 splits: Sequence[tuple[np.ndarray, np.ndarray]], n_jobs: int | None
                 ) -> Iterator:
    """The local fold runner: ``n_jobs`` threads sharing ``X`` (see :data:`FoldRunner`)."""
    tasks = (delayed(fold)(X=X, y=y, train=tr, test=te) for tr, te in splits)
    return Parallel(n_jobs=concurrent_jobs(n_jobs, len(splits)), prefer="threads",
                    return_as="generator")(tasks)


def grid_search(estimator, param: str, grid: Sequence[float], X: np.ndarray, y: np.ndarray,
                **options) -> SearchResult:
    """Score every value of ``grid`` by repeated stratified k-fold, without a final fit.

    Same parameters as :func:`search_and_fit`.
    """
    return search_and_fit(estimator, param, grid, X, y, refit=False, **options)[0]


def search_and_fit(estimator, param: str, grid: Sequence[float], X: np.ndarray, y: np.ndarray,
                   *, cv: int = 3, repeats: int = 1, seed: int = 0, n_jobs: int | None = 1,
                   name: str | None = None, rule: str = "log_loss",
                   fold_dtype: np.dtype | None = None, refit: bool = True,
                   scale_margins: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   fold_runner: FoldRunner | None = None,
                   splits: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                   class_weight: str | None = None,
                   ) -> tuple[SearchResult, object | None, list]:
    """Score every value of ``grid`` for ``param`` of ``estimator`` by repeated stratified k-fold,
    and fit the chosen model on all rows.

    Parameters
    ----------
    estimator : sklearn estimator
        Template; cloned per fold. Scored by ``predict_proba`` if it has one (and
        ``scale_margins`` is False), otherwise by Platt scaling of its ``decision_function``.
    param : str
        Parameter of ``estimator`` to vary (``C``, ``alpha`` or a nested ``estimator__C``).
    grid : sequence of float
    X, y : arrays
        Training data only.
    cv, repeats, seed : int
        Folds, repetitions of the k-fold split (each shuffled differently), seed.
    n_jobs : int or None
        Folds fitted at once, in threads; None: one per CPU. Each thread holds one
        fold's training rows (views where they are contiguous, see :func:`fold_layout`,
        else a copy); the linear algebra runs single-threaded
        (:func:`single_threaded_blas`).
    name : str, optional
        ``"C"`` (larger = weaker regularisation) or ``"alpha"`` (larger = stronger);
        the last part of ``param`` if None.
    rule : {"log_loss", "log_loss_1se", "accuracy"}
        How the value is chosen (see :class:`SearchResult`).
    fold_dtype : numpy dtype, optional
        Type of each fold's copy of its rows (float64 for solvers that would convert
        on every fit, such as liblinear's); the type of ``X`` if None.
    refit : bool, default=True
        Fit the chosen value on all rows, along the folds' path up to it
        (:func:`walk_path`; a single fit for estimators that cannot warm-start).
    scale_margins : bool, default=False
        Score by Platt scaling of the margins even where the estimator has
        probabilities of its own; the scales are in ``SearchResult.margin_scale``.
    progress : callable, optional
        ``progress(done_splits, cv * repeats)``.
    fold_runner : callable, optional
        What runs the folds (:data:`FoldRunner`); :func:`thread_folds` by default.
        The final fit always runs here.
    splits : sequence of (train, test) row indices, optional
        The folds, ``cv * repeats`` of them, e.g. :func:`stratified_folds` moved to a
        :func:`fold_layout`; ``stratified_folds(y, cv, seed, repeats)`` if None.
    class_weight : {None, "balanced"}, optional
        How the held-out rows weigh in the scores (and the Platt scales), as the
        estimator weighs its training rows (its own ``class_weight``, which the caller
        sets to the same value): each fold counted on its own rows.

    Returns
    -------
    (SearchResult, fitted estimator or None, warnings of its fit)
    """
    check_folds(y, cv)
    if rule not in RULES:
        raise UserInputError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    grid = sorted(float(v) for v in grid)
    if not grid:
        raise UserInputError("the hyperparameter grid is empty; pass at least one value")
    name = name or param.split("__")[-1]
    walk = walk_order(grid, name)
    classes = np.unique(y)
    splits = list(splits) if splits is not None else stratified_folds(y, cv, seed, repeats)
    fold = partial(_fold_scores, estimator, param, walk, classes=classes, dtype=fold_dtype,
                   scale_margins=scale_margins, class_weight=class_weight)
    results = []
    with single_threaded_blas():
        for outcome in (fold_runner or thread_folds)(fold, X, y, splits, n_jobs):
            results.append(outcome)
            if progress:
                progress(len(results), len(splits))
        order = slice(None) if walk == grid else slice(None, None, -1)
        accuracy = np.array([r[0] for r in results]).T[order]  # (len(grid), splits)
        log_loss = np.array([r[1] for r in results]).T[order]
        scales = None
        if np.isnan(log_loss).any():
            log_loss, scales = _platt_log_loss(results, splits, y, classes, len(grid), order,
                                               class_weight)
        best = choose(rule, log_loss, accuracy, regularisation_decreases=name == "C")
        # the first k-fold split holds every row out once
        predicted = np.empty(len(y), np.int32)
        at_best = walk.index(grid[best])
        for (_, test), outcome in zip(splits[:cv], results[:cv], strict=True):
            predicted[test] = outcome[3][at_best]
        result = SearchResult(name, grid, log_loss, accuracy, best, rule, cv, repeats, scales,
                              held_out_predicted=classes[predicted])
        final, caught = None, []
        if refit:
            path = walk[:at_best + 1] if warm_startable(estimator) \
                else [grid[best]]
            *_, (_, final, caught) = walk_path(estimator, param, path, X, y)
    return result, final, caught


def _platt_log_loss(results, splits, y, classes, n_values, order, class_weight=None):
    """Held-out log-loss of margin classifiers after Platt scaling, and the scales.

    One scale per grid value, fitted on the held-out margins of every fold pooled
    (each row is held out once per repeat), then applied fold by fold; rows weighted
    by ``class_weight`` counted on their held-out fold, as :func:`_fold_scores` does.
    """
    y_index = np.searchsorted(classes, y)
    tests = [te for _, te in splits]
    weights = [row_weights(y_index[te], len(classes), class_weight) for te in tests]
    pooled_weights = None if class_weight is None else np.concatenate(weights)
    log_loss = np.empty((n_values, len(splits)))
    scales = []
    for walk_pos in range(n_values):
        margins = [r[2][walk_pos] for r in results]
        pooled = np.concatenate(margins)
        truth = np.concatenate([y_index[te] for te in tests])
        scale = fit_margin_scale(pooled, truth, pooled_weights)
        scales.append(scale)
        log_loss[walk_pos] = [scaled_log_loss(m, y_index[te], scale, w)
                              for m, te, w in zip(margins, tests, weights, strict=True)]
    return log_loss[order], list(np.array(scales)[order].tolist())
