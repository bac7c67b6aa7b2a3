"""Class weights for imbalanced classes: every family fits with them, and so does its search."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from classifiers.estimators import FeatureClassifier
from classifiers.registry import CLASSIFIERS
from classifiers.search import search_and_fit
from classifiers.solvers import PreconditionedLogisticRegression, row_weights
from features.errors import UserInputError


def imbalanced(n_major=300, n_minor=20, d=8, seed=0):
    """Two overlapping classes, the second a small minority: unweighted fits neglect it."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0.0, 1.0, (n_major, d)), rng.normal(0.8, 1.0, (n_minor, d))])
    y = np.repeat([0, 1], [n_major, n_minor])
    return X.astype(np.float32), y


def minority_recall(model, X, y):
    return float(np.mean(model.predict(X[y == 1]) == 1))


def test_balanced_weights_are_sklearns_definition():
    # 6 rows of class 0, 2 of class 1, 2 classes: 8 / (2 * 6) and 8 / (2 * 2)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(row_weights(y, 2, "balanced"), [2 / 3] * 6 + [2.0] * 2)
    assert row_weights(y, 2, None) is None


@pytest.mark.parametrize("kind", list(CLASSIFIERS))
def test_balanced_class_weights_raise_the_minority_recall(kind):
    X, y = imbalanced()
    Xt, yt = imbalanced(seed=1)
    plain = FeatureClassifier(kind=kind, cv=3, n_jobs=1).fit(X, y)
    weighted = FeatureClassifier(kind=kind, cv=3, n_jobs=1, class_weight="balanced").fit(X, y)
    assert minority_recall(weighted, Xt, yt) > minority_recall(plain, Xt, yt) + 0.2


@pytest.mark.parametrize("one_vs_rest", [False, True])
def test_weighted_solver_is_sklearns_weighted_model(one_vs_rest):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    rng = np.random.default_rng(0)
    y = rng.choice(3, 200, p=[0.8, 0.1, 0.1])
    X = rng.normal(size=(200, 5)) + y[:, None]
    ours = PreconditionedLogisticRegression(C=0.5, tol=1e-8, one_vs_rest=one_vs_rest,
                                            class_weight="balanced").fit(X, y)
    theirs = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000, class_weight="balanced")
    if one_vs_rest:
        fitted = OneVsRestClassifier(theirs).fit(X, y)
        coef = np.vstack([e.coef_ for e in fitted.estimators_])
    else:
        coef = theirs.fit(X, y).coef_
    np.testing.assert_allclose(ours.coef_, coef, atol=1e-5)


class RecordingLogistic(PreconditionedLogisticRegression):
    """Records the class_weight every fold's fit runs with."""

    seen: list = []  # noqa: RUF012 (shared on purpose: clones record into one list)

    def fit(self, X, y):
        RecordingLogistic.seen.append(self.class_weight)
        return super().fit(X, y)


def test_search_fits_and_scores_the_folds_with_the_weights():
    X, y = imbalanced()
    RecordingLogistic.seen = []
    result, _, _ = search_and_fit(RecordingLogistic(class_weight="balanced"), "C", [0.01, 1.0],
                                  X, y, cv=3, class_weight="balanced")
    assert RecordingLogistic.seen and set(RecordingLogistic.seen) == {"balanced"}
    plain, _, _ = search_and_fit(PreconditionedLogisticRegression(class_weight="balanced"), "C",
                                 [0.01, 1.0], X, y, cv=3)
    # the same fold models, scored with the held-out rows weighted by class: the weighted
    # held-out accuracy is each fold's balanced accuracy
    assert not np.allclose(result.accuracy, plain.accuracy)
    assert not np.allclose(result.log_loss, plain.log_loss)


def test_held_out_accuracy_of_a_weighted_search_is_each_folds_balanced_accuracy():
    from classifiers.search import stratified_folds

    X, y = imbalanced()
    result, _, _ = search_and_fit(PreconditionedLogisticRegression(class_weight="balanced"),
                                  "C", [1.0], X, y, cv=3, seed=0, class_weight="balanced")
    for s, (train, test) in enumerate(stratified_folds(y, 3, 0)):
        fold = PreconditionedLogisticRegression(class_weight="balanced").fit(X[train], y[train])
        hit = fold.predict(X[test]) == y[test]
        recalls = [hit[y[test] == c].mean() for c in (0, 1)]
        assert result.accuracy[0, s] == pytest.approx(np.mean(recalls))


class FirstClassMargins(ClassifierMixin, BaseEstimator):
    """A margin classifier that always says the first class (as a linear SVM at C -> 0)."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def decision_function(self, X):
        return -np.ones(len(X))


def test_margin_families_score_the_held_out_rows_with_the_weights():
    # Regularised so hard that every fold model predicts one class for every row: unweighted,
    # the held-out accuracy would be that class's share (about 0.94 or 0.06); with each
    # class weighing the same it is exactly 1/2 (its balanced accuracy).
    X, y = imbalanced()
    streamed = FeatureClassifier(kind="sgd", grid=[1e3], cv=3, n_jobs=1,
                                 class_weight="balanced").fit(X, y)
    np.testing.assert_allclose(streamed.search_.accuracy, 0.5)
    # the linear SVM's and one-vs-rest's path: Platt-scaled margins
    scaled, _, _ = search_and_fit(FirstClassMargins(), "C", [1.0], X, y, cv=3,
                                  scale_margins=True, class_weight="balanced")
    np.testing.assert_allclose(scaled.accuracy, 0.5)
    assert scaled.margin_scale is not None


def test_class_weight_is_a_checked_parameter_and_old_models_load():
    with pytest.raises(UserInputError, match="class_weight"):
        FeatureClassifier(class_weight="even").fit(*imbalanced())
    model = FeatureClassifier()
    state = model.__getstate__()
    state.pop("class_weight")
    restored = FeatureClassifier.__new__(FeatureClassifier)
    restored.__setstate__(state)
    assert restored.get_params()["class_weight"] is None
