import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import LinearSVC

from classifiers import search
from classifiers.search import (
    check_folds,
    fold_layout,
    grid_search,
    pick_best,
    pick_by_log_loss,
    search_and_fit,
    stratified_folds,
    walk_path,
)
from classifiers.solvers import PreconditionedLogisticRegression, RowSlabs
from features.errors import UserInputError


def data(seed=0, n=60, shift=1.5):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(0, 1, (n, 5)) + y[:, None] * shift
    return X, y


def test_scores_shape_and_best_is_the_least_log_loss():
    X, y = data()
    done = []
    result = grid_search(LogisticRegression(), "C", [10, 0.001, 1], X, y, cv=3, repeats=2,
                         rule="log_loss", progress=lambda i, n: done.append((i, n)))
    assert result.grid == [0.001, 1, 10]
    assert result.log_loss.shape == result.accuracy.shape == (3, 6)
    assert result.best_value == result.grid[int(np.argmin(result.mean_log_loss))]
    assert done[-1] == (6, 6)
    assert set(result.to_dict()) >= {"grid", "best", "rule", "mean_accuracy", "fold_accuracy",
                                     "mean_log_loss", "fold_log_loss", "repeats"}


def test_matches_gridsearchcv_scores():
    X, y = data(1)
    grid = [0.01, 0.1, 1.0]
    ours = grid_search(LogisticRegression(max_iter=1000), "C", grid, X, y, cv=3, seed=5)
    ref = GridSearchCV(LogisticRegression(max_iter=1000), {"C": grid},
                       scoring=["accuracy", "neg_log_loss"], refit=False,
                       cv=StratifiedKFold(3, shuffle=True, random_state=5)).fit(X, y)

    def folds(metric):
        return np.column_stack([ref.cv_results_[f"split{f}_test_{metric}"] for f in range(3)])

    # Warm starts stop the solver elsewhere within its tolerance than cold starts, which
    # may flip a near-tied held-out row: at most one of the 20 per fold.
    assert np.abs(ours.accuracy - folds("accuracy")).max() <= 1 / 20 + 1e-9
    np.testing.assert_allclose(ours.log_loss, -folds("neg_log_loss"), rtol=1e-3)


def test_easy_data_no_longer_choose_the_strongest_regularisation():
    # Classes so far apart that every C of the grid classifies every held-out row
    # correctly: accuracy ties everywhere, and the old rule took the grid's end (the
    # flat probabilities of C = 1e-4). Log-loss takes a value whose probabilities are
    # confident, and right.
    X, y = data(2, n=120, shift=6.0)
    grid = np.logspace(-4, 4, 9)
    result = grid_search(PreconditionedLogisticRegression(), "C", grid, X, y, cv=3)
    assert np.all(result.accuracy == 1.0)
    assert pick_best(result.accuracy, regularisation_decreases=True) == 0  # the old choice
    assert 0 < result.best_index < len(grid) - 1
    # by a clear margin, not a rounding difference
    assert result.mean_log_loss[result.best_index] < 0.2 * result.mean_log_loss[0]
    model = PreconditionedLogisticRegression(C=result.best_value).fit(X, y)
    assert model.predict_proba(X).max(axis=1).mean() > 0.95


def test_margin_classifiers_are_scored_after_platt_scaling():
    X, y = data(3)
    result = grid_search(LinearSVC(), "C", [0.001, 0.1, 10], X, y, cv=3, fold_dtype=np.float64,
                         rule="log_loss")
    assert np.isfinite(result.log_loss).all() and len(result.margin_scale) == 3
    assert all(scale > 0 for scale in result.margin_scale)
    assert result.best_value == result.grid[int(np.argmin(result.mean_log_loss))]
    assert result.to_dict()["margin_scale"] == result.margin_scale


def test_probabilistic_models_can_be_scored_by_their_scaled_margins():
    from classifiers.platt import fit_margin_scale, margin_columns, scaled_log_loss

    X, y = data(5, n=90)
    kept = grid_search(PreconditionedLogisticRegression(), "C", [0.01, 1.0], X, y, cv=3)
    scaled = grid_search(PreconditionedLogisticRegression(), "C", [0.01, 1.0], X, y, cv=3,
                         scale_margins=True)
    assert kept.margin_scale is None and len(scaled.margin_scale) == 2
    np.testing.assert_array_equal(kept.accuracy, scaled.accuracy)
    # the held-out log-loss is that of the scaled margins, the scale fitted on all folds
    splits = stratified_folds(y, 3, seed=0)
    folds = [(PreconditionedLogisticRegression(C=0.01).fit(X[tr], y[tr]).decision_function(
        X[te]), y[te]) for tr, te in splits]
    pooled = np.concatenate([margin_columns(d) for d, _ in folds])
    scale = fit_margin_scale(pooled, np.concatenate([t for _, t in folds]))
    assert scaled.margin_scale[0] == pytest.approx(scale, rel=1e-3)
    np.testing.assert_allclose(
        scaled.log_loss[0], [scaled_log_loss(margin_columns(d), t, scale) for d, t in folds],
        rtol=1e-3)
    assert not np.allclose(scaled.log_loss, kept.log_loss, rtol=1e-2)


def test_ties_prefer_stronger_regularisation():
    scores = np.array([[0.5, 0.5], [0.9, 0.9], [0.9, 0.9]])
    assert pick_best(scores, regularisation_decreases=True) == 1  # smaller C
    assert pick_best(scores, regularisation_decreases=False) == 2  # larger alpha
    losses = np.array([[0.5, 0.5], [0.1, 0.2], [0.2, 0.1]])
    assert pick_by_log_loss(losses, regularisation_decreases=True) == 1
    assert pick_by_log_loss(losses, regularisation_decreases=False) == 2


def test_one_standard_error_rule_takes_the_simplest_model_the_folds_cannot_tell_apart():
    # means 0.40, 0.30, 0.28 and 0.29; the standard error at the best is 0.02
    losses = np.array([[0.40, 0.40, 0.40, 0.40], [0.30, 0.30, 0.30, 0.30],
                       [0.24, 0.32, 0.24, 0.32], [0.29, 0.29, 0.29, 0.29]])
    assert np.std(losses[2], ddof=1) / 2 == pytest.approx(0.0231, abs=1e-4)
    assert pick_by_log_loss(losses, regularisation_decreases=True) == 2
    # C ascending: 0.30 is within 0.28 + 0.023 and more regularised; 0.40 is not
    assert pick_by_log_loss(losses, True, one_standard_error=True) == 1
    # alpha ascending (larger = stronger): 0.29 is the most regularised within reach
    assert pick_by_log_loss(losses, False, one_standard_error=True) == 3


def test_the_accuracy_rule_is_still_available():
    X, y = data(4)
    result = grid_search(LogisticRegression(), "C", [0.001, 1], X, y, rule="accuracy")
    assert result.rule == "accuracy"
    assert result.best_index == pick_best(result.accuracy, regularisation_decreases=True)
    with pytest.raises(UserInputError, match="rule must be one of log_loss, log_loss_1se"):
        grid_search(LogisticRegression(), "C", [1], X, y, rule="f1")


def test_repeats_reshuffle_and_the_first_is_the_plain_k_fold():
    y = np.arange(30) % 3
    splits = stratified_folds(y, 3, seed=7, repeats=2)
    assert len(splits) == 6
    plain = list(StratifiedKFold(3, shuffle=True, random_state=7).split(np.zeros(30), y))
    for (a, b), (c, d) in zip(splits[:3], plain, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    for r in range(2):  # each repeat holds every row out exactly once
        held = np.sort(np.concatenate([te for _, te in splits[3 * r:3 * r + 3]]))
        np.testing.assert_array_equal(held, np.arange(30))
    assert not all(np.array_equal(splits[i][1], splits[i + 3][1]) for i in range(3))


FITTED_ON: list[np.ndarray] = []


class Recorder(ClassifierMixin, BaseEstimator):
    """Predicts the majority class and records which array each fit was given."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        FITTED_ON.append(X)  # the array itself: an id could be reused once it is freed
        self.classes_ = np.unique(y)
        self.majority_ = np.bincount(np.searchsorted(self.classes_, y)).argmax()
        return self

    def predict_proba(self, X):
        proba = np.full((len(X), len(self.classes_)), 0.1 / (len(self.classes_) - 1))
        proba[:, self.majority_] = 0.9
        return proba


def test_each_fold_copies_its_rows_once_for_the_whole_grid():
    X, y = data(5)
    FITTED_ON.clear()
    grid_search(Recorder(), "C", [0.1, 1, 10, 100], X, y, cv=3, n_jobs=1)
    # 3 folds x 4 values, but one training array per fold
    assert len(FITTED_ON) == 12
    firsts = FITTED_ON[::4]
    assert firsts[0] is not firsts[1] and firsts[1] is not firsts[2]
    for fold in range(3):
        assert all(X is firsts[fold] for X in FITTED_ON[4 * fold:4 * fold + 4])
    FITTED_ON.clear()


def test_fold_layout_makes_every_held_out_fold_one_run():
    y = np.arange(61) % 2
    splits = stratified_folds(y, 3, seed=4, repeats=2)
    order, laid_out = fold_layout(splits, 3)
    assert sorted(order) == list(range(61))
    start = 0
    for (train, test), (train_at, test_at) in zip(splits, laid_out, strict=True):
        # the same rows, in positions of the layout
        assert sorted(order[train_at]) == sorted(train) and sorted(order[test_at]) == sorted(test)
        if start < 61:  # the first repeat: one run held out, at most two to train on
            np.testing.assert_array_equal(test_at, np.arange(start, start + len(test)))
            assert len(search._runs(train_at)) <= 2
            start += len(test)
    assert start == 61


class SlabRecorder(PreconditionedLogisticRegression):
    """Records what each fit was given."""

    def fit(self, X, y):
        FITTED_ON.append(X)
        return super().fit(X, y)


@pytest.mark.parametrize("repeats", [1, 2])
def test_laid_out_folds_are_fitted_on_views_with_the_same_scores(repeats):
    X, y = data(9, n=90)
    X = X.astype(np.float32)
    grid = [0.01, 1, 100]
    plain = grid_search(PreconditionedLogisticRegression(), "C", grid, X, y, repeats=repeats,
                        seed=3)
    splits = stratified_folds(y, 3, seed=3, repeats=repeats)
    order, laid_out = fold_layout(splits, 3)
    Xo = X[order]
    FITTED_ON.clear()
    ours = grid_search(SlabRecorder(), "C", grid, Xo, y[order], repeats=repeats,
                       splits=laid_out, n_jobs=1)
    # no fold of the first split copied its rows: views (one run) or slabs of views
    for fitted in FITTED_ON[:3 * len(grid)]:
        parts = fitted.slabs if isinstance(fitted, RowSlabs) else [fitted]
        assert all(part.base is Xo for part in parts)
    assert any(isinstance(fitted, RowSlabs) for fitted in FITTED_ON)
    FITTED_ON.clear()
    # the same rows in another order: the same problems, scores to the solver's tolerance
    np.testing.assert_allclose(ours.log_loss, plain.log_loss, rtol=1e-3)
    assert np.abs(ours.accuracy - plain.accuracy).max() <= 1 / 30 + 1e-9


def test_folds_in_threads_give_the_same_scores():
    X, y = data(6, n=90)
    grid = [0.01, 1, 100]
    one = grid_search(PreconditionedLogisticRegression(), "C", grid, X, y, repeats=2, n_jobs=1)
    two = grid_search(PreconditionedLogisticRegression(), "C", grid, X, y, repeats=2, n_jobs=2)
    np.testing.assert_allclose(one.log_loss, two.log_loss, rtol=1e-6)
    assert search.concurrent_jobs(None, 6) == min(6, search.os.cpu_count() or 1)
    assert search.concurrent_jobs(-1, 1) == 1 and search.concurrent_jobs(4, 2) == 2


def test_the_final_model_walks_the_folds_path_up_to_the_chosen_value():
    X, y = data(7, n=90)
    grid = [0.001, 0.01, 0.1, 1, 10]
    result, final, _ = search_and_fit(PreconditionedLogisticRegression(), "C", grid, X, y)
    assert result.best_value == final.C and final.warm_start
    path = grid[:grid.index(result.best_value) + 1]
    *_, (_, again, _) = walk_path(PreconditionedLogisticRegression(), "C", path, X, y)
    np.testing.assert_array_equal(final.coef_, again.coef_)  # the same steps, in the same order
    # an estimator that cannot warm-start is fitted once, at the chosen value
    result, svm, _ = search_and_fit(LinearSVC(), "C", grid, X, y, fold_dtype=np.float64)
    plain = LinearSVC(C=result.best_value).fit(X, y)
    np.testing.assert_allclose(svm.coef_, plain.coef_, rtol=1e-12)


@pytest.mark.parametrize("y,cv,message", [
    (np.array([0, 0, 1, 1, 1]), 3, "only 2 training images.*--cv 2"),
    (np.zeros(9), 3, r"single class \(0.0\); one class cannot train"),
    (np.zeros(0), 3, "no images"),
    (np.array([0, 1] * 5), 1, "at least 2 folds"),
])
def test_check_folds_messages(y, cv, message):
    with pytest.raises(UserInputError, match=message):
        check_folds(y, cv)


def test_empty_grid():
    X, y = data()
    with pytest.raises(UserInputError, match="empty"):
        grid_search(LogisticRegression(), "C", [], X, y)


class ParityModel(ClassifierMixin, BaseEstimator):
    """Predicts class 1 (probability 0.7) for every row when ``int(C)`` is odd, class 0
    otherwise: its held-out predictions say which value of the grid made them."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        p = 0.7 if int(self.C) % 2 else 0.3
        return np.tile([1 - p, p], (len(X), 1))


@pytest.mark.parametrize("name", ["C", "alpha"])
@pytest.mark.parametrize("repeats", [1, 2])
def test_held_out_predictions_are_those_of_the_chosen_value(name, repeats):
    # two thirds of the rows are class 1: the odd value (3) has the least log-loss; it
    # is second in the grid and third in the walk of alpha (descending)
    X = np.zeros((60, 2))
    y = np.array([0, 1, 1] * 20)
    result = grid_search(ParityModel(), "C", [2, 3, 4, 6], X, y, cv=3, repeats=repeats,
                         name=name)
    assert result.best_value == 3
    assert result.held_out_predicted.tolist() == [1] * 60
    # and as labels, not positions
    labels = np.array(["cat", "dog"])[y]
    result = grid_search(ParityModel(), "C", [2, 3, 4, 6], X, labels, cv=3, name=name)
    assert result.held_out_predicted.tolist() == ["dog"] * 60
