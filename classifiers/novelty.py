"""How unlike its training images an image is: the score behind "unknown" predictions.

A classifier always names one of its classes, even for an image of none of them. The
score here is a class-conditional Mahalanobis distance in feature space: the distance of
a row of features to the nearest class mean, under one covariance shared by the classes
(their within-class deviations pooled). The covariance is a probabilistic-PCA one, the
``rank`` principal axes of the deviations with their variances and one variance for
every other direction (the mean of the rest): it is estimated from a sample of at most
``sample`` training rows, and the model keeps the class means and ``rank`` axes only,
``(classes + rank) x features`` values whatever the number of training images (no
training features are stored). ``bench/unknown.py`` measures it against the top
probability, a Ledoit-Wolf Mahalanobis distance and the nearest training features.

The threshold is fitted on held-out folds of the training rows (never on test rows):
each fold is scored by statistics of the other folds, and the threshold is the
``coverage`` quantile of these held-out scores, so that about ``coverage`` of new images
of the trained classes are accepted and the rest of the scores above it flagged unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.errors import UserInputError

DEFAULT_COVERAGE = 0.95
DEFAULT_RANK = 128
DEFAULT_SAMPLE = 2048
QUANTILES = 1001
#: What :func:`pipeline.reports` and ``predict`` call the score.
SCORE_NAME = "mahalanobis"


@dataclass
class FeatureDistance:
    """Class means and a shared low-rank + isotropic precision of training features.

    Attributes
    ----------
    means : array (classes, features)
    axes : array (rank, features)
        Orthonormal principal axes of the within-class deviations.
    axis_variances : array (rank,)
    residual_variance : float
        Variance of every direction outside ``axes``.
    """

    means: np.ndarray
    axes: np.ndarray
    axis_variances: np.ndarray
    residual_variance: float

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None, *,
            rank: int = DEFAULT_RANK, sample: int = DEFAULT_SAMPLE, seed: int = 0
            ) -> FeatureDistance:
        """Statistics of the rows ``rows`` (all by default) of ``X``, labels ``y``.

        ``X`` is read a block of rows at a time (no copy of it is made); sums in float64.
        """
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        classes, index = np.unique(y[rows], return_inverse=True)
        sums = np.zeros((len(classes), X.shape[1]))
        for start in range(0, len(rows), 4096):
            block = slice(start, start + 4096)
            onehot = np.eye(len(classes))[index[block]]
            sums += onehot.T @ np.asarray(X[rows[block]], np.float64)
        means = sums / np.bincount(index, minlength=len(classes))[:, None]
        if len(rows) > sample:
            keep = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
            rows, index = rows[keep], index[keep]
        deviations = np.asarray(X[rows], np.float64) - means[index]
        dof = max(1, len(rows) - len(classes))
        gram = deviations @ deviations.T if len(rows) < X.shape[1] else None
        variances, axes = _principal_axes(deviations, gram)
        variances = variances / dof
        dim = X.shape[1]
        mean_variance = float(variances.sum()) / dim
        shrinkage = _ledoit_wolf_shrinkage(deviations, gram)
        # at least one direction stays outside the axes, where new images vary unseen
        rank = max(0, min(rank, len(variances), dim - 1))
        # the sample's variance outside the axes, shrunk toward the mean variance as
        # Ledoit-Wolf shrinks the whole covariance: with fewer rows than features the
        # sample has no variance at all in most directions, new images do
        outside = (float(variances.sum()) - float(variances[:rank].sum())) / (dim - rank)
        residual = max((1 - shrinkage) * outside + shrinkage * mean_variance,
                       np.finfo(np.float32).tiny)
        shrunk = (1 - shrinkage) * variances[:rank] + shrinkage * mean_variance
        return cls(means.astype(np.float32), axes[:rank].astype(np.float32),
                   np.maximum(shrunk, residual).astype(np.float32), residual)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to its nearest class mean (per feature)."""
        X = np.asarray(X, np.float32)
        projected = X @ self.axes.T                                   # (n, rank)
        mean_projected = self.means @ self.axes.T                     # (classes, rank)
        square = np.einsum("ij,ij->i", X, X, dtype=np.float64)[:, None] \
            - 2.0 * (X @ self.means.T) + np.einsum("ij,ij->i", self.means, self.means,
                                                   dtype=np.float64)[None, :]
        best = None
        for c in range(len(self.means)):
            z = projected - mean_projected[c]
            inside = np.einsum("ij,ij->i", z, z, dtype=np.float64)
            residual = np.maximum(square[:, c] - inside, 0.0)
            d = (z.astype(np.float64) ** 2 / self.axis_variances).sum(axis=1) \
                + residual / self.residual_variance
            best = d if best is None else np.minimum(best, d)
        return best / self.means.shape[1]


def check_coverage(coverage: float) -> float:
    """``coverage`` if it is a share strictly between 0 and 1, else the one-line error
    ``--coverage`` gets (at train and at predict)."""
    if not 0 < coverage < 1:
        raise UserInputError(f"--coverage must be between 0 and 1 (the share of known "
                             f"images accepted, e.g. 0.95), got {coverage}")
    return coverage


def _ledoit_wolf_shrinkage(deviations: np.ndarray, gram: np.ndarray | None) -> float:
    """scikit-learn's ``ledoit_wolf_shrinkage`` of centred rows, from their Gram matrix
    when there are fewer rows than features (it would build features x features blocks)."""
    if gram is None:
        from sklearn.covariance import ledoit_wolf_shrinkage

        return float(ledoit_wolf_shrinkage(deviations, assume_centered=True))
    n, dim = deviations.shape
    norms = np.diag(gram)
    trace = norms.sum() / n
    mu = trace / dim
    delta_ = float(np.sum(gram ** 2)) / n ** 2
    beta = (float(np.sum(norms ** 2)) / n - delta_) / (dim * n)
    delta = (delta_ - 2.0 * mu * trace + dim * mu ** 2) / dim
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def _principal_axes(deviations: np.ndarray, gram: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values (descending) and right singular vectors of ``deviations``.

    From the eigenvectors of the smaller of its two Gram matrices (``gram``: the rows',
    given when there are fewer rows than columns): a LAPACK SVD of a
    wide matrix (a few hundred rows of 25,088 values) takes tens of seconds, this less
    than one.
    """
    if gram is not None:  # fewer rows than columns
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values = np.maximum(values[order], 0.0)
        keep = values > values[0] * 1e-12 if values[0] > 0 else values > 0
        axes = (vectors[:, order[keep]].T @ deviations) / np.sqrt(values[keep])[:, None]
        return values[keep], axes
    values, vectors = np.linalg.eigh(deviations.T @ deviations)
    order = np.argsort(values)[::-1]
    return np.maximum(values[order], 0.0), vectors[:, order].T


@dataclass
class UnknownScore:
    """A fitted score of how unlike the training images a row of features is, and its
    threshold: rows scoring above ``threshold`` are "unknown".

    Attributes
    ----------
    distance : FeatureDistance
    threshold : float
    coverage : float
        The share of held-out training rows the threshold accepts (its target).
    held_out_coverage : float
        The share of held-out training rows it does accept.
    held_out_quantiles : array (QUANTILES,)
        The held-out scores at evenly spaced levels from 0 to 1: the threshold of
        another coverage (:meth:`threshold_for`) without the training rows.
    name : str
    """

    distance: FeatureDistance
    threshold: float
    coverage: float
    held_out_coverage: float
    held_out_quantiles: np.ndarray
    name: str = SCORE_NAME

    def threshold_for(self, coverage: float) -> float:
        """The threshold accepting about ``coverage`` of held-out training rows."""
        check_coverage(coverage)
        levels = np.linspace(0.0, 1.0, len(self.held_out_quantiles))
        return float(np.interp(coverage, levels, self.held_out_quantiles))

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.distance.score(X)

    def is_unknown(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def summary(self) -> dict:
        """What the report records (metrics.json, summary.md)."""
        return {"score": self.name, "threshold": float(self.threshold),
                "coverage": float(self.coverage),
                "held_out_coverage": float(self.held_out_coverage),
                "rank": len(self.distance.axes)}


def fit_unknown_score(X: np.ndarray, y: np.ndarray,
                      folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
                      coverage: float = DEFAULT_COVERAGE, rank: int = DEFAULT_RANK,
                      seed: int = 0) -> UnknownScore:
    """The score fitted on all of ``(X, y)``, its threshold on the held-out ``folds``.

    ``folds`` are ``(train, held_out)`` row indices of ``X`` whose held-out parts cover
    the rows (the search's stratified folds).
    """
    held_out = np.empty(len(X))
    for train, test in folds:
        distance = FeatureDistance.fit(X, y, train, rank=rank, seed=seed)
        for start in range(0, len(test), 4096):
            held_out[test[start:start + 4096]] = distance.score(X[test[start:start + 4096]])
    threshold = float(np.quantile(held_out, coverage, method="higher"))
    return UnknownScore(FeatureDistance.fit(X, y, rank=rank, seed=seed), threshold,
                        coverage, float(np.mean(held_out <= threshold)),
                        np.quantile(held_out, np.linspace(0.0, 1.0, QUANTILES)))
