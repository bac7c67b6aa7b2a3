"""Choose a regularisation strength by stratified k-fold cross-validation on the train split.

Folds run in threads (numpy and the solvers release the GIL), so no worker gets
its own copy of the data; within a fold the grid is walked from the strongest
to the weakest regularisation, each fit warm-started from the previous one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold

from features.errors import UserInputError


@dataclass
class SearchResult:
    """Cross-validation scores of a grid.

    Attributes
    ----------
    param : str
        Name of the searched parameter (``C`` or ``alpha``).
    grid : list of float
        Values tried, in the order of ``scores`` rows.
    scores : numpy.ndarray of shape (len(grid), folds)
        Accuracy of each value on each held-out fold.
    best_index : int
    """

    param: str
    grid: list[float]
    scores: np.ndarray
    best_index: int

    @property
    def best_value(self) -> float:
        return self.grid[self.best_index]

    @property
    def mean_scores(self) -> np.ndarray:
        return self.scores.mean(axis=1)

    def to_dict(self) -> dict:
        return {"param": self.param, "grid": list(self.grid), "best": self.best_value,
                "mean_accuracy": self.mean_scores.tolist(),
                "std_accuracy": self.scores.std(axis=1).tolist(),
                "fold_accuracy": self.scores.tolist()}


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
    """Index of the best mean score; ties go to the most regularised value (the simpler model)."""
    means = scores.mean(axis=1)
    best = np.flatnonzero(np.isclose(means, means.max(), rtol=0, atol=1e-12))
    return int(best[0] if regularisation_decreases else best[-1])


def stratified_folds(y: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def _fold_scores(estimator, param, grid_sorted, X, y, train, test) -> list[float]:
    est = clone(estimator)
    warm = {k: True for k in est.get_params() if k.split("__")[-1] == "warm_start"}
    if warm:
        est.set_params(**warm)
    scores = []
    for value in grid_sorted:
        est.set_params(**{param: value})
        with warnings.catch_warnings():
            # Extreme grid values often stop at max_iter; CV judges them by their score.
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X[train], y[train])
        scores.append(float(np.mean(est.predict(X[test]) == y[test])))
    return scores


def grid_search(estimator, param: str, grid: Sequence[float], X: np.ndarray, y: np.ndarray, *,
                cv: int = 3, seed: int = 0, n_jobs: int = 1, name: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Score every value of ``grid`` for ``param`` of ``estimator`` by stratified k-fold CV.

    Parameters
    ----------
    estimator : sklearn estimator
        Template; cloned per fold.
    param : str
        Parameter of ``estimator`` to vary (``C``, ``alpha`` or a nested ``estimator__C``).
    grid : sequence of float
    X, y : arrays
        Training data only.
    cv, seed, n_jobs : int
        Folds, shuffling seed, threads.
    name : str, optional
        ``"C"`` (larger = weaker regularisation) or ``"alpha"`` (larger = stronger);
        the last part of ``param`` if None.
    progress : callable, optional
        ``progress(done_folds, cv)``.

    Returns
    -------
    SearchResult
    """
    check_folds(y, cv)
    grid = sorted(float(v) for v in grid)
    if not grid:
        raise UserInputError("the hyperparameter grid is empty; pass at least one value")
    name = name or param.split("__")[-1]
    # Strongest regularisation first, so warm starts move from simple to complex models.
    walk = grid if name == "C" else grid[::-1]
    folds = stratified_folds(y, cv, seed)
    results = []
    runner = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")
    jobs = (delayed(_fold_scores)(estimator, param, walk, X, y, tr, te) for tr, te in folds)
    for i, fold in enumerate(runner(jobs), start=1):
        results.append(fold)
        if progress:
            progress(i, cv)
    scores = np.array(results).T  # (len(walk), cv)
    if walk is not grid:
        scores = scores[::-1]
    return SearchResult(name, grid, scores, pick_best(scores, regularisation_decreases=(
        name == "C")))
