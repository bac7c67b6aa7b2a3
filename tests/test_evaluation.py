import numpy as np

from classifiers.evaluation import evaluate_predictions, top_k_accuracy


def test_top_k_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    y = np.array([2, 0, 0])
    assert top_k_accuracy(scores, y, 1) == 1 / 3
    assert top_k_accuracy(scores, y, 2) == 2 / 3
    assert top_k_accuracy(scores, y, 5) == 1.0


def test_evaluate_predictions_fields():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 5)
    scores = rng.random((30, 6))
    scores[np.arange(30), y] += 0.6  # mostly right
    ev = evaluate_predictions(y, scores, np.arange(6), list("abcdef"), 123.0)
    pred = scores.argmax(axis=1)
    assert ev.accuracy == np.mean(pred == y) == ev.rank1
    assert ev.rank5 is not None and ev.rank5 >= ev.rank1
    assert np.array(ev.confusion).sum() == 30
    assert np.trace(np.array(ev.confusion)) == (pred == y).sum()
    assert set(ev.per_class) >= set("abcdef")
    assert ev.predictions_per_second == 123.0


def test_rank5_only_with_more_than_five_classes():
    y = np.array([0, 1, 2])
    ev = evaluate_predictions(y, np.eye(3), np.arange(3), ["a", "b", "c"])
    assert ev.rank5 is None
    assert ev.accuracy == 1.0 and ev.macro_f1 == 1.0


def test_absent_class_in_test_still_reported():
    y = np.array([0, 0, 1])
    ev = evaluate_predictions(y, np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]]), np.arange(3),
                              ["a", "b", "c"])
    assert len(ev.confusion) == 3
    assert ev.per_class["c"]["support"] == 0



def test_intervals_cover_the_estimate_and_shrink_with_more_images():
    from classifiers.statistics import wilson_interval

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    scores = rng.random((120, 3))
    scores[np.arange(120), y] += 0.5
    ev = evaluate_predictions(y, scores, np.arange(3), list("abc"))
    lo, hi = ev.accuracy_ci
    assert lo < ev.accuracy < hi
    assert ev.macro_f1_ci[0] < ev.macro_f1 < ev.macro_f1_ci[1]
    assert np.diff(wilson_interval(90, 100)) > np.diff(wilson_interval(900, 1000))
    # all right on 20 images: the upper bound is 1 but the lower one is not
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] < 0.9


def test_wilson_interval_hand_worked():
    from classifiers.statistics import wilson_interval

    # p = 0.8, n = 100, z = 1.96: centre 0.7888, half-width 0.0813 (textbook values)
    lo, hi = wilson_interval(80, 100)
    assert abs(lo - 0.7112) < 1e-3 and abs(hi - 0.8666) < 1e-3


def test_fast_macro_f1_matches_scikit_learn_under_bootstrap():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    scores = rng.random((200, 5))  # class 4 never true: counted as in scikit-learn
    ev = evaluate_predictions(y, scores, np.arange(5), list("abcde"))
    pred = scores.argmax(axis=1)
    assert abs(ev.macro_f1 - f1_score(y, pred, labels=range(5), average="macro",
                                      zero_division=0)) < 1e-12
    assert ev.macro_f1_ci[0] <= ev.macro_f1 <= ev.macro_f1_ci[1]


def test_expected_calibration_error_hand_worked():
    from classifiers.calibration import expected_calibration_error

    # four images, two bins used: top probability 0.9 (right, right) and 0.6 (right, wrong)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 0, 0, 1])
    # bin of 0.9: accuracy 1.0, gap 0.1; bin of 0.6: accuracy 0.5, gap 0.1 -> ECE 0.1
    assert abs(expected_calibration_error(probs, y) - 0.1) < 1e-12
    ev = evaluate_predictions(y, probs, np.arange(2), ["a", "b"])
    assert ev.scores == "probability" and abs(ev.ece - 0.1) < 1e-12
    assert abs(ev.log_loss - np.mean(-np.log([0.9, 0.9, 0.6, 0.4]))) < 1e-12
    margins = evaluate_predictions(y, probs * 3 - 1, np.arange(2), ["a", "b"])
    assert margins.scores == "decision" and margins.ece is None and margins.log_loss is None


def test_mcnemar_exact_hand_worked():
    from classifiers.statistics import mcnemar_exact

    a = np.array([True] * 10 + [False] * 0 + [True] * 50)
    b = np.array([False] * 10 + [True] * 50)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (10, 0)
    assert abs(result.p_value - 2 * 0.5 ** 10) < 1e-12  # exact binomial, two-sided
    assert "really better" in result.verdict("A", "B")
    tie = mcnemar_exact(np.array([True, False, True]), np.array([False, True, True]))
    assert tie.p_value == 1.0 and "no real difference" in tie.verdict()


def test_string_and_sparse_labels_are_reported_under_their_names():
    y = np.array(["cat", "dog", "dog", "cat"])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    ev = evaluate_predictions(y, scores, np.array(["cat", "dog"]), ["cat", "dog"])
    assert ev.accuracy == 0.5 and ev.confusion == [[1, 1], [1, 1]]
    assert ev.per_image["true"] == ["cat", "dog", "dog", "cat"]
    assert ev.per_image["predicted"] == ["cat", "dog", "cat", "dog"]
    sparse = evaluate_predictions(np.array([10, 30]), np.eye(2), np.array([10, 30]), ["a", "b"])
    assert sparse.accuracy == 1.0 and sparse.per_class["b"]["support"] == 1


def test_temperature_scaling_softens_overconfident_probabilities():
    from classifiers.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
    )

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    rng = np.random.default_rng(3)
    n, k = 4000, 4
    logits = rng.normal(0, 1.5, (n, k))
    calibrated = softmax(logits)
    # labels drawn from the calibrated probabilities, so softmax(logits) is the truth
    y = (rng.random(n)[:, None] > calibrated.cumsum(axis=1)).sum(axis=1)
    overconfident = softmax(logits * 4)  # the same ranking, far too sure of itself
    t = fit_temperature(overconfident, y)
    assert 3 < t < 5  # recovers the factor it was sharpened by
    fixed = apply_temperature(overconfident, t)
    np.testing.assert_allclose(fixed, softmax(logits * 4 / t), atol=1e-9)
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    assert expected_calibration_error(fixed, y) < expected_calibration_error(overconfident, y) / 2
    np.testing.assert_array_equal(apply_temperature(overconfident, 1.0), overconfident)


def test_temperature_stays_finite_on_a_perfectly_classified_validation_split():
    # 24 validation images all right and confident (a stage 3 run on animals): the raw
    # log-loss falls towards 0 as T -> 0, which had sent T to the search bound (0.05),
    # making every later score 0 or 1.
    from classifiers.calibration import apply_temperature, fit_temperature

    y = np.repeat(np.arange(3), 8)
    confident = np.full((24, 3), 0.015)
    confident[np.arange(24), y] = 0.97
    t = fit_temperature(confident, y)
    assert t > 0.5
    top = apply_temperature(confident, t).max(axis=1)
    assert np.all(top <= 9 / 10 + 0.02)  # Platt's target for 8 images a class: 9 / 10


def test_balanced_accuracy_hand_worked():
    from classifiers.statistics import balanced_accuracy

    # confusion (rows true, columns predicted):  a: [8, 2]  b: [1, 1]
    # recall a = 8 / 10 = 0.8, recall b = 1 / 2 = 0.5 -> balanced accuracy (0.8 + 0.5) / 2
    # = 0.65, while plain accuracy is (8 + 1) / 12 = 0.75
    y = np.array([0] * 10 + [1] * 2)
    p = np.array([0] * 8 + [1] * 2 + [0, 1])
    assert balanced_accuracy(y, p) == 0.65
    ev = evaluate_predictions(y, np.eye(2)[p], np.arange(2), ["a", "b"])
    assert ev.balanced_accuracy == 0.65 and ev.accuracy == 0.75


def test_balanced_accuracy_interval_covers_it_and_shrinks_with_more_images():
    rng = np.random.default_rng(2)

    def evaluated(n_per_class):
        y = np.repeat([0, 1, 2], [n_per_class * 4, n_per_class, n_per_class])
        scores = rng.random((len(y), 3))
        scores[np.arange(len(y)), y] += 0.45
        return evaluate_predictions(y, scores, np.arange(3), list("abc"))

    small, large = evaluated(20), evaluated(200)
    for ev in (small, large):
        lo, hi = ev.balanced_accuracy_ci
        assert lo < ev.balanced_accuracy < hi
    assert np.diff(large.balanced_accuracy_ci) < np.diff(small.balanced_accuracy_ci)
