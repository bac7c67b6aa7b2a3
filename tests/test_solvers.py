import numpy as np
import pytest
from scipy.special import log_expit, logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from classifiers import solvers
from classifiers.solvers import PreconditionedLogisticRegression, RowSlabs
from tests.test_rowspace import assert_same_decisions


def badly_scaled(k, n=150, d=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(0, 1, (n, d)) * np.logspace(-1, 2, d) + np.eye(k, d)[y] * 5
    return X, y


def rank_deficient(k, n=150, seed=0):
    """Columns that repeat others, and a constant one: the optimum is still unique."""
    X, y = badly_scaled(k, n=n, d=20, seed=seed)
    return np.hstack([X, X[:, :5], 2 * X[:, 5:8], np.full((n, 1), 3.0)]), y


def objective(coef, intercept, X, y, C, one_vs_rest=False):
    """scikit-learn's L2 logistic objective: mean loss + ||W||^2 / (2 C n)."""
    coef, n = np.atleast_2d(coef), len(y)
    z = X @ coef.T + intercept
    classes, y_index = np.unique(y, return_inverse=True)
    if coef.shape[0] == 1:
        loss = -np.mean(log_expit(np.where(y_index == 1, 1, -1) * z[:, 0]))
    elif one_vs_rest:
        sign = np.where(y_index[:, None] == np.arange(len(classes)), 1, -1)
        loss = -np.sum(log_expit(sign * z)) / n
    else:
        loss = np.mean(logsumexp(z, axis=1) - z[np.arange(n), y_index])
    return loss + np.sum(coef * coef) / (2 * C * n)


def plain_objective(model, X, y, C, one_vs_rest):
    if isinstance(model, OneVsRestClassifier):
        coef = np.vstack([e.coef_ for e in model.estimators_])
        intercept = np.concatenate([e.intercept_ for e in model.estimators_])
        return objective(coef, intercept, X, y, C, one_vs_rest)
    return objective(model.coef_, model.intercept_, X, y, C, one_vs_rest)


def plain(C, one_vs_rest):
    model = LogisticRegression(C=C, max_iter=100_000, tol=1e-12)
    return OneVsRestClassifier(model) if one_vs_rest else model


@pytest.mark.parametrize("data", [badly_scaled, rank_deficient])
@pytest.mark.parametrize("one_vs_rest", [False, True])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_same_model_as_scikit_learn(data, one_vs_rest, k, C):
    X, y = data(k)
    ref = plain(C, one_vs_rest).fit(X, y)
    ours = PreconditionedLogisticRegression(C=C, one_vs_rest=one_vs_rest).fit(X, y)
    assert ours.converged_
    # the same objective, reached to the solver's tolerance (the reference is solved
    # much further, so it may only be lower, and by little)
    ours_value = objective(ours.coef_, ours.intercept_, X, y, C, one_vs_rest)
    ref_value = plain_objective(ref, X, y, C, one_vs_rest)
    assert ref_value - 1e-9 <= ours_value <= ref_value + 1e-5 * max(1.0, abs(ref_value))
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    # both stop at a gradient of 1e-4: decision values agree to a few 1e-4 of their scale
    assert_same_decisions(ours, ref, X, rtol=5e-3)
    if not one_vs_rest:
        assert ours.coef_.shape == ref.coef_.shape
        assert ours.n_iter_[0] < ref.n_iter_[0]  # the point of preconditioning


def test_float32_input_and_string_labels():
    X, y = badly_scaled(3)
    labels = np.array(["a", "b", "c"])[y]
    model = PreconditionedLogisticRegression().fit(X.astype(np.float32), labels)
    assert set(model.predict(X.astype(np.float32))) <= {"a", "b", "c"}
    assert model.score(X.astype(np.float32), labels) > 0.9
    # single-precision products reach the float64 optimum to the solver's tolerance
    exact = PreconditionedLogisticRegression().fit(X, labels)
    value32 = objective(model.coef_, model.intercept_, X, y, 1.0)
    value64 = objective(exact.coef_, exact.intercept_, X, y, 1.0)
    assert abs(value32 - value64) <= 1e-5 * abs(value64)


def test_warm_start_reuses_the_solution():
    X, y = badly_scaled(3)
    model = PreconditionedLogisticRegression(C=1.0, warm_start=True).fit(X, y)
    first = model.n_iter_[0]
    model.fit(X, y)
    assert model.n_iter_[0] < first


@pytest.mark.parametrize("one_vs_rest", [False, True])
def test_warm_starts_along_a_grid_reach_the_cold_optima_in_fewer_steps(one_vs_rest):
    X, y = badly_scaled(3, n=300)
    # Up to C = 10: beyond it these classes are separable and the objective so flat that
    # points meeting the gradient tolerance differ visibly in value (for scikit-learn too).
    grid = np.logspace(-3, 1, 5)
    warm = PreconditionedLogisticRegression(warm_start=True, one_vs_rest=one_vs_rest)
    warm_steps = cold_steps = 0
    for C in grid:
        warm.set_params(C=C).fit(X, y)
        cold = PreconditionedLogisticRegression(C=C, one_vs_rest=one_vs_rest).fit(X, y)
        warm_steps, cold_steps = warm_steps + warm.n_iter_[0], cold_steps + cold.n_iter_[0]
        assert warm.converged_ and cold.converged_
        value = objective(cold.coef_, cold.intercept_, X, y, C, one_vs_rest)
        assert abs(objective(warm.coef_, warm.intercept_, X, y, C, one_vs_rest) - value) \
            <= 1e-5 * max(1.0, value)
        np.testing.assert_allclose(warm.predict_proba(X), cold.predict_proba(X), atol=1e-3)
    assert warm_steps < 0.8 * cold_steps


@pytest.mark.parametrize("gemv_classes", [8, 0])  # a product per class, or one per matrix
@pytest.mark.parametrize("one_vs_rest", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_slabs_of_rows_give_the_model_of_the_rows_they_stand_for(k, one_vs_rest, gemv_classes,
                                                                 monkeypatch):
    # A fold's training rows as views of two slabs of one matrix (no copy): the same
    # problem as on those rows stacked, hence the same optimum, on data of full rank
    # and not, for both ways of computing the products.
    monkeypatch.setattr(solvers, "GEMV_CLASSES", gemv_classes)
    for X, y in (badly_scaled(k, n=180), rank_deficient(k, n=180)):
        X = X.astype(np.float32)
        slabs = RowSlabs([X[:50], X[110:]])
        stacked = np.vstack([X[:50], X[110:]])
        y_rows = np.concatenate([y[:50], y[110:]])
        assert slabs.shape == stacked.shape and len(slabs) == 120
        ours = PreconditionedLogisticRegression(C=0.1, one_vs_rest=one_vs_rest).fit(slabs,
                                                                                    y_rows)
        ref = plain(0.1, one_vs_rest).fit(stacked.astype(np.float64), y_rows)
        assert ours.converged_
        X64 = stacked.astype(np.float64)
        value = objective(ours.coef_, ours.intercept_, X64, y_rows, 0.1, one_vs_rest)
        ref_value = plain_objective(ref, X64, y_rows, 0.1, one_vs_rest)
        assert ref_value - 1e-9 <= value <= ref_value + 1e-5 * max(1.0, abs(ref_value))
        assert_same_decisions(ours, ref, X64, rtol=5e-3)
        # fitted on rows it never saw in full, it predicts arrays as usual
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-3)


def test_slabs_must_share_type_and_width():
    with pytest.raises(ValueError, match="one type and width"):
        RowSlabs([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="one type and width"):
        RowSlabs([np.zeros((2, 3)), np.zeros((2, 3), np.float32)])


def test_single_class_refused():
    with pytest.raises(ValueError, match="two classes"):
        PreconditionedLogisticRegression().fit(np.zeros((4, 2)), np.zeros(4))
