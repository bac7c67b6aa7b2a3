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


def test_classify_files_keeps_order_and_repeated_broken_paths(tmp_path, broken_files):
    from classifiers.evaluation import classify_files
    from tests.conftest import write_image

    good = write_image(tmp_path / "g.png", (1, 2, 3))
    bad = broken_files["truncated"]
    out = classify_files([bad, good, bad], 8, lambda x: np.tile([0.2, 0.8], (len(x), 1)),
                         ["a", "b"], top=2)
    assert [r.get("error") for r in out] == ["truncated image", None, "truncated image"]
    assert out[1]["label"] == "b" and out[1]["top"] == [("b", 0.8), ("a", 0.2)]
