import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from classifiers.estimators import _lift
from classifiers.rowspace import RowSpaceBasis


def wide_data(n=90, d=1500, k=3, seed=0, noise=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d))
    y = np.arange(n) % k
    X = np.abs(centers[y] + rng.normal(0, noise, (n, d))).astype(np.float32)
    yt = np.arange(45) % k
    Xt = np.abs(centers[yt] + rng.normal(0, noise, (45, d))).astype(np.float32)
    return X, y, Xt


def test_coordinates_preserve_inner_products():
    X, _, Xt = wide_data()
    basis = RowSpaceBasis().fit(X)
    Z = basis.train_coordinates_
    np.testing.assert_allclose(Z @ Z.T, X.astype(np.float64) @ X.T, rtol=1e-4)
    np.testing.assert_allclose(basis.transform(X), Z, rtol=1e-3, atol=1e-3 * np.abs(Z).max())
    # a projection: test rows' inner products with training rows are kept exactly
    np.testing.assert_allclose(basis.transform(Xt) @ Z.T, Xt.astype(np.float64) @ X.T,
                               rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: LogisticRegression(C=0.01, max_iter=5000, tol=1e-10),
    lambda: LinearSVC(C=0.001, max_iter=100_000, tol=1e-10),
    lambda: OneVsRestClassifier(LogisticRegression(C=0.01, max_iter=5000, tol=1e-10)),
], ids=["logreg", "linear_svm", "ovr"])
def test_fit_in_row_space_equals_plain_fit(make):
    X, y, Xt = wide_data()
    plain = make().fit(X.astype(np.float64), y)
    basis = RowSpaceBasis().fit(X)
    short = _lift(make().fit(basis.train_coordinates_, y), basis, X.shape[1])
    scale = np.abs(plain.decision_function(Xt)).max()
    np.testing.assert_allclose(short.decision_function(Xt), plain.decision_function(Xt),
                               atol=1e-4 * scale)
    np.testing.assert_array_equal(short.predict(Xt), plain.predict(Xt))
    assert short.n_features_in_ == X.shape[1]


def test_rank_deficient_data():
    X, _, _ = wide_data(n=30)
    X = np.vstack([X, X[:10]])  # duplicate rows: rank 30 of 40
    basis = RowSpaceBasis().fit(X)
    assert basis.n_components_ == 30
