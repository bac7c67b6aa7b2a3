"""Exact fitting of L2-regularised linear models in the principal axes of the training rows.

For a loss that depends on the data only through ``X @ w`` plus an L2 penalty on
``w``, the optimum satisfies ``w = X.T @ a`` for some ``a``: it lies in the span of
the training rows. With ``X = U S V.T`` (thin SVD, rank r), writing ``w = V z``
turns the problem into the same problem on ``Z = X V = U S`` (n x r) with the same
penalty, because ``||w|| = ||z||``. The columns of ``Z`` are orthogonal, which is
what a diagonal (Jacobi) preconditioner needs to make L-BFGS fast.

When the intercept is not penalised (logistic regression), the intercept's own
optimality condition makes the residuals sum to zero, so ``w = X.T @ a`` with
``sum(a) = 0``: ``w`` lies in the row space of the *centred* rows ``Xc = X - mean``.
Fitting on ``Z = Xc V`` with intercept ``b'`` and setting ``b = b' - mean @ w``
gives the same model again, and the columns of ``Z`` then have zero mean: the
intercept is decoupled from every coefficient as well. This holds for any subset
of the rows (a cross-validation fold) with the same basis and mean, since a
fold's rows lie in the same span. The linear SVM of liblinear penalises its
intercept, so it takes the uncentred basis.

Two ways to the same basis, whichever is smaller:

* fewer rows than columns (25,088 VGG16 features): ``U`` and ``S`` from the
  eigendecomposition of the n x n Gram matrix ``Xc Xc.T``; ``V`` (d x r) is never
  formed and ``X`` is never copied: every product over the ``d`` columns is
  accumulated in float64 from column blocks of ``X`` of about :data:`BLOCK_BYTES`;
* more rows than columns (1,280 pooled features): ``V`` and ``S`` from the
  eigendecomposition of the d x d matrix ``Xc.T Xc`` accumulated from row blocks,
  then ``Z = Xc V`` block by block. With full rank this is only a rotation.

Either way the extra memory is one r x r (or n x n) float64 matrix, ``Z`` and one block.

On pooled features (more rows than columns) the rotation does not pay: centred
features with the same Jacobi-preconditioned solver need about as many L-BFGS
steps as the principal axes (fewer on animals, a third more on flowers5, Lite0),
and the d x d eigendecomposition cost more than those steps and a d x d float64
matrix of memory. :class:`CentredRows` is that case: ``Z = X - mean``, the same
exact shortcut for the intercept without the rotation.

Both take an ``order`` of the rows: ``Z`` is built with its rows in that order,
so that cross-validation can lay every held-out fold out contiguously
(:func:`classifiers.search.fold_layout`) and take each fold's rows as views.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.linalg import eigh
from scipy.linalg.blas import dgemm, dsyrk
from threadpoolctl import threadpool_limits

#: Size of the float64 column blocks the products over all features are accumulated from.
BLOCK_BYTES = 32 << 20
#: Size of the float64 row blocks of the covariance route (more rows than columns), where
#: the d x d matrices dominate and the blocks only need to keep the products efficient.
ROW_BLOCK_BYTES = 4 << 20

# Eigenvalues of a float64 Gram (or covariance) matrix below max(n, d) * eps * _SAFETY
# times the largest are treated as zero. Each entry sums up to max(n, d) products
# (rounding error up to about max(n, d) * eps * lambda_max) and eigh is backward
# stable (error about min(n, d) * eps * lambda_max), so an exactly zero eigenvalue
# comes out at most around max(n, d) * eps * lambda_max; the factor 10 covers the
# constants of both bounds. What is cut has singular values below
# sqrt(10 * max(n, d) * eps) ~ 1e-5 of the largest for 25,088 features: dropping it
# changes the training rows, hence the decision values, by about 1e-5 of their scale
# at most, far below the solvers' tolerances. Keeping it would divide by singular
# values that are rounding noise (Gram route), or fit directions made of it.
_SAFETY = 10.0


def _column_blocks(X: np.ndarray, mean: np.ndarray | None
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, X[:, start:stop] - mean as contiguous float64)`` for blocks of ~BLOCK_BYTES."""
    n, d = X.shape
    step = max(1, BLOCK_BYTES // (8 * max(1, n)))
    for start in range(0, d, step):
        block = np.array(X[:, start:start + step], dtype=np.float64)
        if mean is not None:
            block -= mean[start:start + step]
        yield start, block


def _row_blocks(X: np.ndarray, mean: np.ndarray | None, order: np.ndarray | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, X[order][start:stop] - mean as contiguous float64)`` for blocks of
    ~ROW_BLOCK_BYTES (``order``: all rows in their order if None)."""
    n, d = X.shape
    step = max(1, ROW_BLOCK_BYTES // (8 * max(1, d)))
    for start in range(0, n, step):
        rows = slice(start, start + step) if order is None else order[start:start + step]
        block = np.array(X[rows], dtype=np.float64)
        if mean is not None:
            block -= mean
        yield start, block


def _top_eigenpairs(sym: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvalues above the rounding cut-off (ascending) and their eigenvectors.

    ``sym`` (Fortran order, upper triangle filled) is overwritten. The eigenvectors
    are a view of eigh's (Fortran-ordered) output: the kept ones are its last columns.
    """
    # One thread: OpenBLAS's threads made this eigh 20 times slower on two cores shared
    # with another process (0.25 s -> 5 s for 1,280 x 1,280), and barely faster on idle ones.
    with threadpool_limits(limits=1, user_api="blas"):
        eigvals, eigvecs = eigh(sym, lower=False, overwrite_a=True, check_finite=False)
    cutoff = float(max(eigvals[-1], 0.0) * max(n, d) * np.finfo(np.float64).eps * _SAFETY)
    first = int(np.searchsorted(eigvals, cutoff, side="right"))  # eigh sorts ascending
    return eigvals[first:], eigvecs[:, first:], cutoff


class RowSpaceBasis:
    """Orthonormal principal axes of the (optionally centred) rows of a training matrix.

    Parameters
    ----------
    center : bool, default=False
        Work with ``X - mean``: exact for models whose intercept is not penalised
        (see the module's notes), and better conditioned.
    dtype : numpy dtype, default=numpy.float64
        Type of :attr:`train_coordinates_`. float32 halves the memory and the time of
        every product a solver makes with them; rounding the coordinates perturbs the
        data by no more than storing the features as float32 already did.

    Attributes
    ----------
    n_components_ : int
        Rank r kept.
    singular_values_ : numpy.ndarray of shape (r,)
        Ascending.
    eigenvalue_cutoff_ : float
        Eigenvalues of ``Xc Xc.T`` (or ``Xc.T Xc``) at or below this were treated as zero.
    mean_ : numpy.ndarray of shape (n_features,) or None
        The column means subtracted (float64), None without centring.
    via_gram_ : bool
        True when the basis came from the n x n Gram matrix (fewer rows than columns).
    train_coordinates_ : numpy.ndarray of shape (n, r)
        ``Z = Xc V``, the training rows in the basis, in ``dtype``.
    """

    def __init__(self, center: bool = False, dtype: type = np.float64) -> None:
        self.center = center
        self.dtype = dtype

    def fit(self, X: np.ndarray, order: np.ndarray | None = None) -> RowSpaceBasis:
        """Compute the basis of ``X`` (n x d, float32 or float64); ``X`` is kept by reference.

        ``order`` (a permutation of the rows) orders the rows of
        :attr:`train_coordinates_`; the rows' own order if None.
        """
        X = np.asarray(X)
        n, d = X.shape
        self.mean_ = X.mean(axis=0, dtype=np.float64) if self.center else None
        self.via_gram_ = n < d
        if self.via_gram_:
            # Fortran order so that syrk accumulates in place; only the upper triangle is
            # filled, which is the one eigh reads.
            gram = np.zeros((n, n), order="F")
            for _, block in _column_blocks(X, self.mean_):
                # block.T is a Fortran-ordered view: syrk computes block @ block.T, no copy
                gram = dsyrk(1.0, block.T, beta=1.0, c=gram, trans=1, overwrite_c=1)
            eigvals, self._u, self.eigenvalue_cutoff_ = _top_eigenpairs(gram, n, d)
            del gram
            self.singular_values_ = np.sqrt(eigvals)
            self._v = None
            rows = np.arange(n) if order is None else order
            Z = np.empty((n, len(eigvals)), dtype=self.dtype)
            step = max(1, ROW_BLOCK_BYTES // (8 * max(1, len(eigvals))))
            for start in range(0, n, step):  # no n x r float64 temporary
                Z[start:start + step] = self._u[rows[start:start + step]] * self.singular_values_
            self.train_coordinates_ = Z
        else:
            cov = np.zeros((d, d), order="F")
            for _, block in _row_blocks(X, self.mean_):
                # block is C-ordered n_b x d, so block.T is Fortran d x n_b: syrk gives
                # block.T @ block without a copy.
                cov = dsyrk(1.0, block.T, beta=1.0, c=cov, trans=0, overwrite_c=1)
            eigvals, self._v, self.eigenvalue_cutoff_ = _top_eigenpairs(cov, n, d)
            del cov
            self.singular_values_ = np.sqrt(eigvals)
            self._u = None
            Z = np.empty((n, len(eigvals)), dtype=self.dtype)
            for start, block in _row_blocks(X, self.mean_, order):
                Z[start:start + len(block)] = block @ self._v
            self.train_coordinates_ = Z
        self._X = X
        self.n_features_in_ = d
        self.n_components_ = len(self.singular_values_)
        return self

    def transform(self, X_new: np.ndarray) -> np.ndarray:
        """Coordinates ``(X_new - mean) V`` of new rows (m x r), in float64."""
        X_new = np.asarray(X_new)
        if self._v is not None:
            rows = np.asarray(X_new, dtype=np.float64)
            if self.mean_ is not None:
                rows = rows - self.mean_
            return rows @ self._v
        # (X_new - mean) V = (X_new - mean) Xc.T U / S, accumulated over column blocks
        cross = np.zeros((X_new.shape[0], self._X.shape[0]), order="F")
        for start, block in _column_blocks(self._X, self.mean_):
            stop = start + block.shape[1]
            rows = np.array(X_new[:, start:stop], dtype=np.float64)
            if self.mean_ is not None:
                rows -= self.mean_[start:stop]
            cross = dgemm(1.0, rows.T, block.T, beta=1.0, c=cross, trans_a=1, overwrite_c=1)
        return (cross @ self._u) / self.singular_values_

    def lift(self, coef: np.ndarray) -> np.ndarray:
        """Map coefficients from basis coordinates (k x r) to features (k x d): ``coef V.T``."""
        coef = np.atleast_2d(coef).astype(np.float64)
        if self._v is not None:
            return coef @ self._v.T
        scaled = (coef / self.singular_values_) @ self._u.T  # k x n
        out = np.empty((scaled.shape[0], self._X.shape[1]), dtype=np.float64)
        for start, block in _column_blocks(self._X, self.mean_):
            out[:, start:start + block.shape[1]] = scaled @ block
        return out

    def lift_intercept(self, lifted_coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Intercept on raw features of a model fitted on centred coordinates: ``b - W mean``."""
        if self.mean_ is None:
            return intercept
        return np.asarray(intercept, dtype=np.float64) - lifted_coef @ self.mean_

    def release(self) -> None:
        """Drop the reference to the training matrix (it can then be freed)."""
        self._X = None


class CentredRows:
    """The training rows minus their mean: the intercept decoupled, no rotation.

    The same exact shortcut as :class:`RowSpaceBasis` with ``center=True`` for
    models whose intercept is not penalised, with the identity for the basis: the
    model fitted on ``X - mean`` has the coefficients of the plain one and the
    intercept ``b - W mean``. For more rows than columns (see the module's notes).

    Parameters
    ----------
    dtype : numpy dtype, default=numpy.float32
        Type of :attr:`train_coordinates_`.

    Attributes
    ----------
    mean_ : numpy.ndarray of shape (n_features,)
        The column means (float64).
    n_components_ : int
        The number of features (nothing is dropped).
    train_coordinates_ : numpy.ndarray of shape (n, n_features)
        ``X[order] - mean`` in ``dtype``: tlearn's own copy of the rows, in the order
        the search lays its folds out in.
    """

    def __init__(self, dtype: type = np.float32) -> None:
        self.dtype = dtype

    def fit(self, X: np.ndarray, order: np.ndarray | None = None) -> CentredRows:
        """Centre the rows of ``X`` (taken in ``order``, a permutation, if given)."""
        X = np.asarray(X)
        n, d = X.shape
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        Z = np.empty((n, d), dtype=self.dtype)
        rows = np.arange(n) if order is None else order
        step = max(1, ROW_BLOCK_BYTES // (8 * max(1, d)))
        for start in range(0, n, step):
            # the difference is taken in float64, then rounded once into Z
            block = Z[start:start + step]
            if X.dtype == Z.dtype:
                np.take(X, rows[start:start + step], axis=0, out=block)  # no temporary
                np.subtract(block, self.mean_, out=block, casting="same_kind")
            else:  # one block of X's rows at a time
                np.subtract(X[rows[start:start + step]], self.mean_, out=block,
                            casting="same_kind")
        self.train_coordinates_ = Z
        self.n_features_in_ = self.n_components_ = d
        return self

    def transform(self, X_new: np.ndarray) -> np.ndarray:
        """``X_new - mean`` in float64."""
        return np.asarray(X_new, dtype=np.float64) - self.mean_

    def lift(self, coef: np.ndarray) -> np.ndarray:
        """Coefficients on features: the same ones (float64, k x d)."""
        return np.atleast_2d(coef).astype(np.float64)

    lift_intercept = RowSpaceBasis.lift_intercept

    def release(self) -> None:
        """Nothing is held beyond the coordinates (kept for :class:`RowSpaceBasis`'s interface)."""


def lift_estimator(estimator, basis: RowSpaceBasis | CentredRows):
    """Turn a linear estimator fitted on ``basis`` coordinates into the same one on features.

    ``estimator`` is changed in place and returned: its ``coef_`` and ``intercept_``
    (or those of the binary models of a one-vs-rest wrapper, ``estimators_``) are
    mapped back to the feature space, so that it predicts from raw feature rows.
    """
    n_features = basis.n_features_in_
    for part in getattr(estimator, "estimators_", [estimator]):
        part.coef_ = basis.lift(part.coef_)
        if basis.mean_ is not None:
            part.intercept_ = basis.lift_intercept(part.coef_, part.intercept_)
        part.n_features_in_ = n_features
    estimator.n_features_in_ = n_features
    return estimator
