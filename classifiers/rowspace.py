"""Exact fitting of L2-regularised linear models in the row space of the training data.

For a loss that depends on the data only through ``X @ w`` plus an L2 penalty on
``w``, the optimum satisfies ``w = X.T @ a`` for some ``a``: it lies in the span of
the training rows. With ``X = U S V.T`` (thin SVD, rank r <= n), writing
``w = V z`` turns the problem into the same problem on ``Z = X V = U S`` (n x r)
with the same penalty, because ``||w|| = ||z||``. When there are far fewer rows
than columns (a few thousand images, 25,088 features) this is the same model at a
fraction of the cost, and the same holds for every cross-validation fold, whose
row space is a subspace of the full one.

``U`` and ``S`` come from the eigendecomposition of the Gram matrix ``X X.T``,
so ``V`` (d x r) is never formed and ``X`` is never copied.
"""

from __future__ import annotations

import numpy as np


class RowSpaceBasis:
    """Orthonormal coordinates of the row space of a training matrix.

    Parameters
    ----------
    rtol : float, default=1e-9
        Directions whose squared singular value is below ``rtol`` times the largest
        are dropped (numerically zero).

    Attributes
    ----------
    n_components_ : int
        Rank r kept.
    singular_values_ : numpy.ndarray of shape (r,)
    train_coordinates_ : numpy.ndarray of shape (n, r)
        ``Z = U S``, the training rows in the basis.
    """

    def __init__(self, rtol: float = 1e-9) -> None:
        self.rtol = rtol

    def fit(self, X: np.ndarray) -> RowSpaceBasis:
        """Compute the basis of ``X`` (n x d, float32 or float64); ``X`` is kept by reference."""
        X = np.asarray(X)
        gram = (X @ X.T).astype(np.float64)  # n x n: the only product over all d columns
        eigvals, eigvecs = np.linalg.eigh(gram)
        del gram
        order = np.argsort(eigvals)[::-1]
        eigvals, eigvecs = eigvals[order], eigvecs[:, order]
        keep = eigvals > self.rtol * max(float(eigvals[0]), np.finfo(float).tiny)
        self.singular_values_ = np.sqrt(eigvals[keep])
        self._u = eigvecs[:, keep]
        self._X = X
        self.n_components_ = int(keep.sum())
        self.train_coordinates_ = self._u * self.singular_values_
        return self

    def transform(self, X_new: np.ndarray) -> np.ndarray:
        """Coordinates ``X_new V`` of new rows (m x r), computed as ``X_new X.T U / S``."""
        cross = np.asarray(X_new) @ self._X.T
        return (cross.astype(np.float64) @ self._u) / self.singular_values_

    def lift(self, coef: np.ndarray) -> np.ndarray:
        """Map coefficients from basis coordinates (k x r) to features (k x d): ``coef V.T``."""
        scaled = (np.atleast_2d(coef) / self.singular_values_) @ self._u.T  # k x n
        n, d = self._X.shape
        out = np.empty((scaled.shape[0], d), dtype=np.float64)
        step = max(1, (32 << 20) // (8 * max(1, n)))  # float64 blocks of about 32 MB
        for start in range(0, d, step):
            block = self._X[:, start:start + step].astype(np.float64)
            out[:, start:start + step] = scaled @ block
        return out

    def release(self) -> None:
        """Drop the reference to the training matrix (it can then be freed)."""
        self._X = None
