import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.calibration import expected_calibration_error
from classifiers.platt import (
    STREAM_SCALES,
    PlattScaledClassifier,
    StreamingScaleLoss,
    fit_margin_scale,
    margin_columns,
    scaled_log_loss,
    scaled_probabilities,
)


def noisy_classes(n=600, k=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(0, 1, (n, 6)) + np.eye(k, 6)[y] * 1.5
    return X, y


def test_the_scale_of_known_sigmoid_margins_is_found():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 2, 20_000)
    y = (rng.random(d.size) < expit(1.7 * d)).astype(int)
    # 20,000 draws pin the slope to a few percent
    assert fit_margin_scale(margin_columns(d), y) == pytest.approx(1.7, rel=0.05)


def test_separated_margins_give_a_finite_scale_and_near_certain_probabilities():
    d = np.r_[np.linspace(-3, -1, 50), np.linspace(1, 3, 50)]
    y = (d > 0).astype(int)
    scale = fit_margin_scale(margin_columns(d), y)
    assert np.isfinite(scale)
    top = scaled_probabilities(margin_columns(d), scale).max(axis=1)
    # Platt's targets: about (50 + 1) / (50 + 2) on average, not 1
    assert 0.9 < top.mean() < 0.999


def test_constant_margins_keep_the_scale_at_one():
    assert fit_margin_scale(np.zeros((10, 3)), np.arange(10) % 3) == 1.0


@pytest.mark.parametrize("k", [2, 3])
def test_probabilities_sum_to_one_and_agree_with_the_margins(k):
    X, y = noisy_classes(k=k)
    model = PlattScaledClassifier(LinearSVC()).fit(X, y)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], model.predict(X))
    margins = model.decision_function(X)
    assert margins.shape == ((len(y),) if k == 2 else (len(y), k))
    if k == 2:  # monotone in the margin, strictly where the margins differ clearly
        order = np.argsort(margins)
        steps = np.diff(proba[order, 1])
        assert np.all(steps[np.diff(margins[order]) > 1e-9] > 0)


def test_as_well_calibrated_as_scikit_learns_platt_scaling():
    # Slope-only scaling keeps predict and predict_proba in agreement; on held-out rows
    # it should be about as good as the full sigmoid of CalibratedClassifierCV.
    X, y = noisy_classes(n=1200, k=3, seed=1)
    train, test = np.arange(800), np.arange(800, 1200)
    ours = PlattScaledClassifier(LinearSVC(), cv=3).fit(X[train], y[train])
    theirs = CalibratedClassifierCV(LinearSVC(), method="sigmoid", ensemble=False,
                                    cv=StratifiedKFold(3, shuffle=True, random_state=0)
                                    ).fit(X[train], y[train])

    def log_loss(p):
        return -np.mean(np.log(p[np.arange(len(test)), y[test]]))

    mine, full = ours.predict_proba(X[test]), theirs.predict_proba(X[test])
    assert log_loss(mine) < log_loss(full) + 0.02
    # 400 rows in 15 bins: ECE itself is noisy to a few hundredths
    assert expected_calibration_error(mine, y[test]) < \
        expected_calibration_error(full, y[test]) + 0.03
    assert scaled_log_loss(margin_columns(ours.decision_function(X[test])), y[test],
                           ours.scale_) == pytest.approx(log_loss(ours.predict_proba(X[test])))


def test_from_fitted_wraps_without_refitting():
    X, y = noisy_classes()
    svm = LinearSVC().fit(X, y)
    model = PlattScaledClassifier.from_fitted(svm, 2.0)
    assert model.estimator_ is svm and model.scale_ == 2.0
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], expit(2.0 * svm.decision_function(X)))


@parametrize_with_checks([PlattScaledClassifier(cv=2)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_the_streamed_scale_is_the_fitted_one_to_the_grid_step():
    X, y = noisy_classes(n=900, k=3, seed=2)
    d = LinearSVC().fit(X, y).decision_function(X) * 0.7
    folds = np.arange(len(y)) % 3
    loss = StreamingScaleLoss(np.bincount(y), n_splits=3)
    for start in range(0, len(y), 100):  # chunks, each with rows of every fold
        rows = np.arange(start, start + 100)
        for s in range(3):
            mine = rows[folds[rows] == s]
            loss.add(d[mine], y[mine], s)
    scale, split_losses = loss.best()
    exact = fit_margin_scale(d, y)
    step = STREAM_SCALES[1] / STREAM_SCALES[0]
    assert exact / step <= scale <= exact * step
    for s in range(3):
        rows = folds == s
        assert split_losses[s] / rows.sum() == pytest.approx(
            scaled_log_loss(d[rows], y[rows], scale), rel=1e-9)
