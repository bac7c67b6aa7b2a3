import numpy as np
import pytest

from classifiers.estimators import (
    CLASSIFIERS,
    FeatureClassifier,
    StreamingSGDClassifier,
    get_classifier_config,
    resolve_classifier_names,
)
from features.errors import UserInputError
from tests.test_rowspace import wide_data


def tall_data(n=120, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(0, 1, (n, d)) + np.eye(k, d)[y] * 3
    return X.astype(np.float32), y


def test_registry():
    assert set(CLASSIFIERS) == {"logreg", "linear_svm", "ovr", "sgd"}
    assert resolve_classifier_names("all") == list(CLASSIFIERS)
    with pytest.raises(UserInputError, match="unknown classifier 'knn'; choose one of"):
        get_classifier_config("knn")


@pytest.mark.parametrize("kind", ["logreg", "linear_svm", "ovr"])
def test_rowspace_shortcut_gives_the_plain_model(kind):
    X, y, Xt = wide_data(n=60, d=800, noise=2.0)
    grid = [1e-4, 1e-3, 1e-2]
    fast = FeatureClassifier(kind=kind, grid=grid, max_iter=20_000).fit(X, y)
    slow = FeatureClassifier(kind=kind, grid=grid, max_iter=20_000, rowspace=False).fit(X, y)
    assert fast.used_rowspace_ and not slow.used_rowspace_
    assert fast.best_params_ == slow.best_params_
    # Near-constant models (smallest C) have near-tied held-out predictions that the
    # solver's tolerance may flip on either path: allow one of the 20 per fold.
    assert np.abs(fast.search_.scores - slow.search_.scores).max() <= 1 / 20 + 1e-9
    np.testing.assert_array_equal(fast.predict(Xt), slow.predict(Xt))
    d_fast, d_slow = fast.decision_function(Xt), slow.decision_function(Xt)
    np.testing.assert_allclose(d_fast, d_slow, atol=1e-3 * np.abs(d_slow).max())


@pytest.mark.parametrize("kind", list(CLASSIFIERS))
def test_every_family_learns_and_follows_sklearn_api(kind):
    X, y = tall_data()
    model = FeatureClassifier(kind=kind, cv=3, label_names=["a", "b", "c"])
    assert model.fit(X, y) is model
    assert model.score(X, y) > 0.9
    assert list(model.classes_) == [0, 1, 2]
    assert model.label_names_ == ["a", "b", "c"]
    assert model.decision_function(X).shape == (len(y), 3)
    if kind == "linear_svm":
        with pytest.raises(AttributeError, match="decision_function"):
            model.predict_proba(X)
    else:
        np.testing.assert_allclose(model.predict_proba(X).sum(axis=1), 1, rtol=1e-6)
    assert model.n_features_in_ == X.shape[1]
    assert set(model.best_params_) == {"alpha" if kind == "sgd" else "C"}


def test_binary_decision_function_has_two_columns():
    X, y = tall_data(k=2)
    model = FeatureClassifier(kind="linear_svm").fit(X, y)
    assert model.decision_function(X).shape == (len(y), 2)


def test_wrong_width_is_refused():
    X, y = tall_data()
    model = FeatureClassifier().fit(X, y)
    with pytest.raises(UserInputError, match="expects 6"):
        model.predict(np.zeros((2, 7), dtype=np.float32))


def test_nan_features_refused():
    X, y = tall_data()
    X[0, 0] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        FeatureClassifier().fit(X, y)


def test_too_few_rows_per_class_for_folds():
    X, y = tall_data(n=6)
    with pytest.raises(UserInputError, match="fewer than the 3 cross-validation folds"):
        FeatureClassifier(cv=3).fit(X, y)


def test_streaming_sgd_fit_chunks_matches_fit():
    X, y = tall_data(n=300)
    a = StreamingSGDClassifier(alpha=1e-3, epochs=3).fit(X, y)
    b = StreamingSGDClassifier(alpha=1e-3, epochs=3).fit_chunks(
        lambda: [(X[i:i + 1024], y[i:i + 1024]) for i in range(0, len(y), 1024)],
        classes=np.unique(y))
    np.testing.assert_allclose(a.decision_function(X), b.decision_function(X))


def test_fit_is_reproducible():
    X, y = tall_data()
    a = FeatureClassifier(kind="sgd", seed=3).fit(X, y)
    b = FeatureClassifier(kind="sgd", seed=3).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))


def test_shortcut_and_solver_equal_plain_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    X, y, Xt = wide_data(n=60, d=800, noise=2.0)
    ours = FeatureClassifier(kind="logreg", grid=[1e-3]).fit(X, y)
    assert ours.used_rowspace_ and ours.converged_
    plain = LogisticRegression(C=1e-3, max_iter=100_000, tol=1e-10).fit(X.astype(np.float64), y)
    np.testing.assert_array_equal(ours.predict(Xt), plain.predict(Xt))
    np.testing.assert_allclose(ours.predict_proba(Xt), plain.predict_proba(Xt), atol=1e-3)
