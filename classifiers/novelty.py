"""How unlike its training images an image is: the score behind "unknown" predictions.

A classifier always names one of its classes, even for an image of none of them. The
score here is a class-conditional Mahalanobis distance of unit-length features: each row
of features is divided by its Euclidean norm (the direction of the features tells
classes and strangers apart, their length mostly image contrast), then its distance to
the nearest class mean is taken under one covariance shared by the classes (their
within-class deviations pooled). The covariance is a probabilistic-PCA one, the ``rank``
principal axes of the deviations with their variances and one variance for every other
direction (the mean of the rest): it is estimated from a sample of at most ``sample``
training rows, and the model keeps the class means and ``rank`` axes only,
``(classes + rank) x features`` values whatever the number of training images (no
training features are stored). ``bench/unknown.py`` measured it against the top
probability, the same distance of raw features, a full Ledoit-Wolf one, a relative
Mahalanobis distance and the cosine distance to the nearest training features: it
flagged the most strangers at 95 % coverage on all three of its tasks.

The threshold is fitted on held-out folds of the training rows (never on test rows):
each fold is scored by statistics of the other folds, and the threshold is the
``coverage`` quantile of these held-out scores, so that about ``coverage`` of new images
of the trained classes are accepted and the rest of the scores above it flagged unknown.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.errors import UserInputError

DEFAULT_COVERAGE = 0.95
DEFAULT_RANK = 128
DEFAULT_SAMPLE = 2048
QUANTILES = 1001
#: Rows read and scored at a time.
BLOCK = 1024
#: What :func:`pipeline.reports` and ``predict`` call the score.
SCORE_NAME = "mahalanobis_unit"


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
    unit_rows : bool
        Rows are divided by their norm before anything else (False for models saved
        before: their statistics are of raw features).
    """

    means: np.ndarray
    axes: np.ndarray
    axis_variances: np.ndarray
    residual_variance: float
    unit_rows: bool = False

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None, *,
            rank: int = DEFAULT_RANK, sample: int = DEFAULT_SAMPLE, seed: int = 0,
            unit: bool = True) -> FeatureDistance:
        """Statistics of the rows ``rows`` (all by default) of ``X``, labels ``y``.

        ``X`` is read a block of rows at a time (no copy of it is made); sums in float64.
        Rows are divided by their norm first unless ``unit`` is False (the score of
        models saved before, which ``bench/unknown.py`` compares).
        """
        rows_of = unit_rows if unit else (lambda block, dtype: np.asarray(block, dtype))
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        classes, index = np.unique(y[rows], return_inverse=True)
        sums = np.zeros((len(classes), X.shape[1]))
        for start in range(0, len(rows), 4096):
            block = slice(start, start + 4096)
            onehot = np.eye(len(classes))[index[block]]
            sums += onehot.T @ rows_of(X[rows[block]], np.float64)
        means = sums / np.bincount(index, minlength=len(classes))[:, None]
        if len(rows) > sample:
            keep = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
            rows, index = rows[keep], index[keep]
        deviations = rows_of(X[rows], np.float64) - means[index]
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
                   np.maximum(shrunk, residual).astype(np.float32), residual, unit_rows=unit)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to its nearest class mean (per feature).

        Rows are first moved by the mean of the class means, and the part outside the
        axes is taken as a vector, not as a difference of squared lengths: float32 then
        keeps the small distances of known images (the exported network computes the
        same steps, :func:`pipeline.export`).
        """
        terms = self.score_terms()
        # blocks of rows: a few copies of a block of wide features at a time
        return np.concatenate([self._score_block(X[start:start + BLOCK], terms)
                               for start in range(0, len(X), BLOCK)] or [np.empty(0)])

    def _score_block(self, X: np.ndarray, terms: dict[str, np.ndarray]) -> np.ndarray:
        X = unit_rows(X, np.float32) if self.unit_rows else np.asarray(X, np.float32)
        centred = X - terms["centre"]
        projected = centred @ self.axes.T                                 # (n, rank)
        outside = centred - projected @ self.axes                         # (n, features)
        best = None
        for c in range(len(self.means)):
            z = (projected - terms["means_inside"][c]).astype(np.float64)
            r = outside - terms["means_outside"][c]
            d = (z ** 2 / self.axis_variances).sum(axis=1) \
                + np.einsum("ij,ij->i", r, r, dtype=np.float64) / self.residual_variance
            best = d if best is None else np.minimum(best, d)
        return best / self.means.shape[1]

    def score_terms(self) -> dict[str, np.ndarray]:
        """What :meth:`score` computes from the statistics alone (float32): the centre
        (mean of the class means), the class means' coordinates on the axes from it, and
        their parts outside the axes."""
        means = np.asarray(self.means, np.float64)
        axes = np.asarray(self.axes, np.float64)
        centre = means.mean(axis=0)
        inside = (means - centre) @ axes.T
        return {"centre": centre.astype(np.float32),
                "means_inside": inside.astype(np.float32),
                "means_outside": ((means - centre) - inside @ axes).astype(np.float32)}


def unit_rows(X: np.ndarray, dtype: type) -> np.ndarray:
    """The rows of ``X`` as ``dtype``, divided by their Euclidean norm (rows of zeros stay)."""
    X = np.asarray(X, dtype)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    return X / np.maximum(norms, np.finfo(dtype).tiny)[:, None]


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

    def test_report(self, scores: np.ndarray, correct: np.ndarray) -> dict:
        """:meth:`summary` with what the test images say: the share the threshold accepts
        and the risk-coverage curve (:func:`risk_coverage`) of their ``scores`` and
        whether each was classified right (``correct``)."""
        return self.summary() | test_figures(scores, correct, self.threshold)

    def to_json(self) -> dict:
        """The score as JSON values (arrays as base64 of their little-endian bytes, so
        they come back bit for bit): how a stage 3 model's sidecar keeps it."""
        d = self.distance
        return {"name": self.name, "threshold": self.threshold, "coverage": self.coverage,
                "held_out_coverage": self.held_out_coverage,
                "held_out_quantiles": _array_json(self.held_out_quantiles, "<f8"),
                "means": _array_json(d.means, "<f4"), "axes": _array_json(d.axes, "<f4"),
                "axis_variances": _array_json(d.axis_variances, "<f4"),
                "residual_variance": d.residual_variance, "unit_rows": d.unit_rows}

    @classmethod
    def from_json(cls, data: dict) -> UnknownScore:
        """The score :meth:`to_json` wrote."""
        distance = FeatureDistance(_json_array(data["means"]), _json_array(data["axes"]),
                                   _json_array(data["axis_variances"]),
                                   float(data["residual_variance"]), bool(data["unit_rows"]))
        return cls(distance, float(data["threshold"]), float(data["coverage"]),
                   float(data["held_out_coverage"]), _json_array(data["held_out_quantiles"]),
                   str(data["name"]))


def test_figures(scores: np.ndarray, correct: np.ndarray, threshold: float) -> dict:
    """What the test images say of a threshold on the unknown score: the share it accepts,
    their accuracy, and the risk-coverage curve (:func:`risk_coverage`); ``correct``
    says whether each image was classified right."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    accepted = scores <= threshold
    return {"test_accepted": float(accepted.mean()) if scores.size else None,
            "test_accepted_accuracy": float(correct[accepted].mean()) if accepted.any()
            else None,
            "risk_coverage": risk_coverage(scores, correct)}


def risk_coverage(scores: np.ndarray, correct: np.ndarray, most: int = 101
                  ) -> list[list[float]]:
    """``[share accepted, accuracy of the accepted]`` for every threshold on ``scores``.

    Images are accepted from the lowest score up (the most like the training images
    first); images of equal score are accepted together, so each point is a threshold
    one could set. At most ``most`` points, evenly spread over the shares, the last
    always all images.
    """
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    if scores.size == 0:
        return []
    order = np.argsort(scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(correct[order])
    # the last image of each run of equal scores
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    if len(ends) > most:
        wanted = np.linspace(0, len(ends) - 1, most).round().astype(int)
        ends = ends[np.unique(wanted)]
    accepted = ends + 1
    return [[float(k / len(scores)), float(hits[k - 1] / k)] for k in accepted]


def _array_json(array: np.ndarray, dtype: str) -> dict:
    array = np.ascontiguousarray(array, dtype)
    return {"dtype": dtype, "shape": list(array.shape),
            "base64": base64.b64encode(array.tobytes()).decode("ascii")}


def _json_array(data: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data["base64"]), data["dtype"]).reshape(
        data["shape"]).astype(data["dtype"][1:])


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
        for start in range(0, len(test), BLOCK):
            held_out[test[start:start + BLOCK]] = distance.score(X[test[start:start + BLOCK]])
    threshold = float(np.quantile(held_out, coverage, method="higher"))
    return UnknownScore(FeatureDistance.fit(X, y, rank=rank, seed=seed), threshold,
                        coverage, float(np.mean(held_out <= threshold)),
                        np.quantile(held_out, np.linspace(0.0, 1.0, QUANTILES)))
