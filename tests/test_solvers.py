import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from classifiers.solvers import PreconditionedLogisticRegression
from tests.test_rowspace import assert_same_decisions


def badly_scaled(k, n=150, d=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(0, 1, (n, d)) * np.logspace(-1, 2, d) + np.eye(k, d)[y] * 5
    return X, y


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_same_model_as_scikit_learn(k, C):
    X, y = badly_scaled(k)
    ref = LogisticRegression(C=C, max_iter=100_000, tol=1e-12).fit(X, y)
    ours = PreconditionedLogisticRegression(C=C).fit(X, y)
    assert ours.converged_
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    # both stop at a gradient of 1e-4: decision values agree to a few 1e-4 of their scale
    assert_same_decisions(ours, ref, X, rtol=5e-3)
    assert ours.n_iter_[0] < ref.n_iter_[0]  # the point of preconditioning


def test_float32_input_and_string_labels():
    X, y = badly_scaled(3)
    labels = np.array(["a", "b", "c"])[y]
    model = PreconditionedLogisticRegression().fit(X.astype(np.float32), labels)
    assert set(model.predict(X.astype(np.float32))) <= {"a", "b", "c"}
    assert model.score(X.astype(np.float32), labels) > 0.9


def test_warm_start_reuses_the_solution():
    X, y = badly_scaled(3)
    model = PreconditionedLogisticRegression(C=1.0, warm_start=True).fit(X, y)
    first = model.n_iter_[0]
    model.fit(X, y)
    assert model.n_iter_[0] < first


def test_single_class_refused():
    with pytest.raises(ValueError, match="two classes"):
        PreconditionedLogisticRegression().fit(np.zeros((4, 2)), np.zeros(4))
