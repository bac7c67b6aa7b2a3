"""L2 logistic regression by preconditioned L-BFGS: scikit-learn's model, reached faster.

:class:`PreconditionedLogisticRegression` minimises exactly the objective of
``sklearn.linear_model.LogisticRegression`` with an L2 penalty (multinomial for
more than two classes, one logistic for two; intercept not penalised):

    mean_i log_loss(x_i W + b, y_i) + ||W||^2 / (2 C n)

so it converges to the same, unique, model. With ``one_vs_rest=True`` it minimises
the sum of the binary problems of ``OneVsRestClassifier(LogisticRegression())``
instead: they share no variable, so the joint optimum is each binary optimum, and
one L-BFGS run with a single product by ``X`` per step serves all classes.

The difference with scikit-learn is how it gets there. Each coefficient is
rescaled by the inverse square root of its diagonal Hessian estimate before
L-BFGS runs: ``0.25 * ||column||^2 / n + 1 / (C n)`` from a cold start (the
logistic loss curves by 1/4 at most), the curvature of each row at the previous
solution when warm-started along a grid of C. CNN features are
badly conditioned for plain L-BFGS; on coordinates whose columns are orthogonal
(:mod:`classifiers.rowspace`) this Jacobi scaling makes the problem close to
isotropic, and L-BFGS needs a few dozen iterations instead of hundreds.

float32 data stay float32: the products with ``X`` run in single precision (twice
as fast), everything else (the objective, the gradient's accumulation over
classes, L-BFGS) in double. With few classes the products run as one
matrix-vector product per class (:data:`GEMV_CLASSES`), and ``X`` may be a
:class:`RowSlabs`: a cross-validation fold's training rows as views of a few
contiguous slabs of one matrix, so that no fold needs a copy of its rows.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

# Curvature of the logistic loss is at most 1/4: a safe scale for the diagonal estimate.
_CURVATURE = 0.25
# Least curvature a row is credited with when the diagonal is estimated at a warm start:
# a row fitted almost perfectly at one C may not be at the next (weaker) one. 1e-2
# took the fewest L-BFGS steps over the grid on the Lite0 feature sets (1e-3 to 6e-2 tried).
_CURVATURE_FLOOR = 1e-2
# Rows per block when the curvature-weighted column norms are accumulated (the squares
# of a block are a temporary copy: keep it small).
_ROWS_PER_BLOCK = 256
#: Products ``X @ W`` and ``X.T @ G`` with at most this many columns (classes) run as one
#: matrix-vector product per column: OpenBLAS's matrix-matrix kernel is 2 to 3 times
#: slower on such thin products (2,158 x 1,280 float32, one thread, AMD EPYC with
#: AVX-512: 1.1 ms against 0.45 ms for 3 columns, 1.2 against 0.7 for 5); at 8 columns
#: the two were even (0.9 against 1.15 ms one way, 1.2 against 1.2 the other), at 16
#: the matrix-matrix kernel won (1.5 against 2.2).
GEMV_CLASSES = 6
#: Values of ``class_weight`` the families take: every row weighs the same, or scikit-learn's
#: ``"balanced"`` (a class of ``m`` of ``n`` rows weighs ``n / (n_classes * m)``).
CLASS_WEIGHTS = ("balanced",)


def row_weights(y_index: np.ndarray, n_classes: int, class_weight: str | None
                ) -> np.ndarray | None:
    """Weight of each row under ``class_weight``: None (all rows weigh one) or ``"balanced"``.

    ``"balanced"`` is scikit-learn's ``n_samples / (n_classes * bincount(y))``, counted on
    the rows given (a fold's own rows, as scikit-learn does when it fits that fold), so the
    weights of each class sum to ``n / n_classes``.
    """
    if class_weight is None:
        return None
    if class_weight != "balanced":
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    y_index = np.asarray(y_index)
    counts = np.bincount(y_index, minlength=n_classes).astype(np.float64)
    present = np.count_nonzero(counts)  # scikit-learn counts the classes of y itself
    per_class = np.divide(len(y_index), present * counts, out=np.zeros(n_classes),
                          where=counts > 0)
    return per_class[y_index]


class RowSlabs:
    """Rows made of a few contiguous slabs (views) of one matrix, taken in order.

    A cross-validation fold's training rows, when the rows were laid out so that
    every held-out fold is contiguous (:func:`classifiers.search.fold_layout`): the
    solver's products are concatenations (``X @ W``) or sums (``X.T @ G``) over the
    slabs, and no copy of the rows is made.

    Parameters
    ----------
    slabs : sequence of numpy.ndarray
        2-D arrays of one type and width.
    """

    def __init__(self, slabs) -> None:
        self.slabs = [np.asarray(slab) for slab in slabs]
        if not self.slabs or len({(s.dtype, s.shape[1]) for s in self.slabs}) != 1:
            raise ValueError("RowSlabs needs 2-D arrays of one type and width")
        self.shape = (sum(len(s) for s in self.slabs), self.slabs[0].shape[1])
        self.dtype = self.slabs[0].dtype

    def __len__(self) -> int:
        return self.shape[0]


def _slabs(X) -> list[np.ndarray]:
    return X.slabs if isinstance(X, RowSlabs) else [X]


def _times(X, W: np.ndarray) -> np.ndarray:
    """``X @ W`` (n x k) in float64, the product in the type of ``X``."""
    parts = _slabs(X)
    Wt = np.ascontiguousarray(np.asarray(W).T, dtype=parts[0].dtype)  # (k, d)
    if len(Wt) > GEMV_CLASSES:
        return np.concatenate([part @ Wt.T for part in parts]).astype(np.float64)
    out = np.empty((len(Wt), sum(len(p) for p in parts)), dtype=parts[0].dtype)
    for j, column in enumerate(Wt):
        start = 0
        for part in parts:
            np.matmul(part, column, out=out[j, start:start + len(part)])
            start += len(part)
    return out.T.astype(np.float64)


def _transposed_times(X, G: np.ndarray) -> np.ndarray:
    """``X.T @ G`` (d x k) in float64, the product in the type of ``X``."""
    parts = _slabs(X)
    Gt = np.ascontiguousarray(G.T, dtype=parts[0].dtype)  # (k, n)
    out = np.zeros((parts[0].shape[1], len(Gt)))
    start = 0
    for part in parts:
        stop = start + len(part)
        if len(Gt) > GEMV_CLASSES:
            out += part.T @ Gt[:, start:stop].T
        else:
            for j, row in enumerate(Gt):
                out[:, j] += row[start:stop] @ part
        start = stop
    return out


def _weighted_column_squares(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(X * X).T @ weights`` (d x k) in float64, accumulated over blocks of rows."""
    out = np.zeros((X.shape[1], weights.shape[1]))
    offset = 0
    for part in _slabs(X):
        for start in range(0, len(part), _ROWS_PER_BLOCK):
            block = part[start:start + _ROWS_PER_BLOCK]
            rows = weights[offset + start:offset + start + len(block)]
            out += _transposed_times(block * block, rows)
        offset += len(part)
    return out


def _binary_objective(X, sign, reg, p, q, d, k, weights):
    """Loss and gradient (in scaled variables) of k independent binary logistic problems.

    ``sign`` is (n, k) of +-1; k = 1 is plain binary logistic regression. ``weights``:
    (n, 1) or (n, k) row weights of the loss (scikit-learn's sample weights), or 1.
    """
    n = X.shape[0]

    def objective(theta):
        W = p * theta[: d * k].reshape(d, k)
        b = q * theta[d * k:]
        z = _times(X, W) + b
        margin = sign * z
        loss = -np.sum(weights * log_expit(margin)) / n + 0.5 * reg * np.sum(W * W)
        G = -sign * weights * expit(-margin) / n
        dW = _transposed_times(X, G) + reg * W
        return loss, np.concatenate([(p * dW).ravel(), q * G.sum(axis=0)])

    return objective


def _multinomial_objective(X, y_index, reg, p, q, d, k, weights):
    """Loss and gradient (in scaled variables) of multinomial logistic regression, rows
    weighted by ``weights`` ((n, 1), or 1)."""
    n = X.shape[0]
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y_index] = 1.0

    def objective(theta):
        W = p * theta[: d * k].reshape(d, k)
        b = q * theta[d * k:]
        logits = _times(X, W) + b
        lse = logsumexp(logits, axis=1)
        loss = np.sum(np.ravel(weights) * (lse - logits[np.arange(n), y_index])) / n \
            + 0.5 * reg * np.sum(W * W)
        G = weights * (np.exp(logits - lse[:, None]) - onehot) / n
        dW = _transposed_times(X, G) + reg * W
        return loss, np.concatenate([(p * dW).ravel(), q * G.sum(axis=0)])

    return objective


class PreconditionedLogisticRegression(ClassifierMixin, BaseEstimator):
    """L2-regularised logistic regression (binary, multinomial or one-vs-rest), preconditioned.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength, as in scikit-learn.
    max_iter : int, default=1000
        L-BFGS iteration limit.
    tol : float, default=1e-4
        Stop when the largest component of the gradient of the (unscaled) objective is
        at most ``tol``: scikit-learn's criterion, so both stop at comparable points.
    warm_start : bool, default=False
        Start from the previous solution when refitting (e.g. along a grid of C).
    one_vs_rest : bool, default=False
        With more than two classes, one binary model per class (the model of
        ``OneVsRestClassifier(LogisticRegression())``, probabilities normalised to sum
        to one as it does) instead of one multinomial model.

    Attributes
    ----------
    coef_ : numpy.ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : numpy.ndarray of shape (1,) or (n_classes,)
    classes_ : numpy.ndarray
    n_iter_ : numpy.ndarray of shape (1,)
    converged_ : bool
    n_features_in_ : int
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4,
                 warm_start: bool = False, one_vs_rest: bool = False,
                 class_weight: str | None = None) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.one_vs_rest = one_vs_rest

    def fit(self, X, y: np.ndarray) -> PreconditionedLogisticRegression:
        """Fit on ``X`` (an array, float32 kept as float32, or :class:`RowSlabs`) and
        labels ``y``; returns self."""
        if not isinstance(X, RowSlabs):
            X = np.asarray(X)
            if X.dtype not in (np.float32, np.float64):
                X = X.astype(np.float64)
        y = np.asarray(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError("PreconditionedLogisticRegression needs at least two classes")
        n, d = X.shape
        k = 1 if len(classes) == 2 else len(classes)
        reg = 1.0 / (self.C * n)
        warm = self.warm_start and getattr(self, "coef_", None) is not None and \
            self.coef_.shape == (k, d)
        if warm:
            # Curvature of each row's loss at the previous solution: along a path of C,
            # well-fitted rows contribute almost nothing to the Hessian, and a diagonal
            # that knows it takes L-BFGS to the next optimum in about 40 % fewer steps.
            z = _times(X, self.coef_.T) + self.intercept_
            fitted = expit(z) if k == 1 or self.one_vs_rest else softmax(z, axis=1)
            curvature = np.maximum(fitted * (1 - fitted), _CURVATURE_FLOOR)
        else:
            curvature = np.full((n, k), _CURVATURE)
        if self.one_vs_rest and k > 1:
            # each binary problem balanced on its own two classes, as
            # OneVsRestClassifier(LogisticRegression(class_weight=...)) does: (n, k)
            weights = None if self.class_weight is None else np.column_stack(
                [row_weights((y_index == c).astype(int), 2, self.class_weight)
                 for c in range(k)])
        else:
            weights = row_weights(y_index, len(classes), self.class_weight)
            weights = None if weights is None else weights[:, None]
        if weights is not None:
            curvature = curvature * weights  # the Hessian's diagonal of the weighted loss
        else:
            weights = 1.0
        p = 1.0 / np.sqrt(_weighted_column_squares(X, curvature) / n + reg)  # (d, k)
        q = 1.0 / np.sqrt(curvature.mean(axis=0))
        scale = np.concatenate([p.ravel(), q])
        x0 = np.zeros(d * k + k)
        if warm:
            x0[: d * k] = (self.coef_.T / p).ravel()
            x0[d * k:] = self.intercept_ / q
        if k == 1:
            sign = np.where(y_index == 1, 1.0, -1.0)[:, None]
            objective = _binary_objective(X, sign, reg, p, q, d, 1, weights)
        elif self.one_vs_rest:
            sign = np.where(y_index[:, None] == np.arange(k), 1.0, -1.0)
            objective = _binary_objective(X, sign, reg, p, q, d, k, weights)
        else:
            objective = _multinomial_objective(X, y_index, reg, p, q, d, k, weights)

        last = {}

        def tracked(theta):
            value, grad = objective(theta)
            last["raw_grad_max"] = float(np.max(np.abs(grad / scale)))
            return value, grad

        def stop_when_converged(intermediate_result):
            # the preconditioned gradient is scaled per coefficient: judge the raw one
            if last.get("raw_grad_max", np.inf) <= self.tol:
                raise StopIteration

        result = minimize(tracked, x0, jac=True, method="L-BFGS-B",
                          callback=stop_when_converged,
                          options={"maxiter": self.max_iter, "gtol": 1e-12,
                                   "ftol": 64 * np.finfo(float).eps, "maxls": 50})
        theta = result.x
        self.coef_ = (p * theta[: d * k].reshape(d, k)).T.copy()
        self.intercept_ = q * theta[d * k:]
        self.classes_ = classes
        self.n_iter_ = np.array([result.nit])
        self.converged_ = last.get("raw_grad_max", np.inf) <= self.tol or bool(result.success)
        self.n_features_in_ = d
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """``X @ coef_.T + intercept_``: shape (n,) for two classes, (n, n_classes) otherwise."""
        check_is_fitted(self, "coef_")
        X = np.asarray(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        scores = _times(X, self.coef_.T) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = expit(scores)
            return np.column_stack([1 - positive, positive])
        if self.one_vs_rest:
            each = expit(scores)
            return each / each.sum(axis=1, keepdims=True)
        return softmax(scores, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Label of the highest decision value."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]
