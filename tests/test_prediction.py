import numpy as np

from features.prediction import iter_image_predictions, rank_scores
from tests.conftest import write_image


def test_files_are_scored_in_bounded_batches_and_returned_in_order(tmp_path, broken_files):
    paths = []
    for i in range(7):
        paths.append(write_image(tmp_path / f"img_{i}.png", (10 * i, 0, 0), (12, 9)))
        if i == 3:
            paths.append(broken_files["truncated"])
    seen = []

    def scores(images):
        seen.append(len(images))
        red = images[:, 0, 0, 0].astype(np.float32)
        return np.column_stack([red, 255 - red])

    results = list(iter_image_predictions(paths, 8, scores, ["red", "dark"], top=2,
                                          batch_size=3))
    assert max(seen) <= 3 and sum(seen) == 7
    assert [r["path"] for r in results] == [str(p) for p in paths]
    assert results[4]["error"] == "truncated image"
    good = [r for r in results if "error" not in r]
    assert [r["label"] for r in good] == ["dark"] * 7  # red channel 0..60 < 255 - red
    assert all(len(r["top"]) == 2 and r["top"][0][1] >= r["top"][1][1] for r in good)


def test_rank_scores_best_first():
    assert rank_scores(np.array([0.1, 0.7, 0.2]), ["a", "b", "c"], 2) == [("b", 0.7),
                                                                          ("c", 0.2)]


def test_predictions_keep_order_and_repeated_broken_paths(tmp_path, broken_files):
    good = write_image(tmp_path / "g.png", (1, 2, 3))
    bad = broken_files["truncated"]
    out = list(iter_image_predictions([bad, good, bad], 8,
                                      lambda x: np.tile([0.2, 0.8], (len(x), 1)), ["a", "b"],
                                      top=2))
    assert [r.get("error") for r in out] == ["truncated image", None, "truncated image"]
    assert out[1]["label"] == "b" and out[1]["top"] == [("b", 0.8), ("a", 0.2)]


def test_a_last_unknown_column_flags_images_and_keeps_the_best_label(tmp_path):
    from features.prediction import ImageScorer

    paths = [write_image(tmp_path / f"img_{i}.png", (100 * i, 0, 0), (12, 9)) for i in range(3)]

    def scores(images):
        red = images[:, 0, 0, 0].astype(np.float32)
        # two class columns, then how unlike the training images each one is: the red one
        return np.column_stack([red, 255 - red, red / 100])

    scorer = ImageScorer(8, scores, ["red", "dark"], True, "tensorflow", "float32", 1.5)
    results = scorer.classify_files(paths, top=2)
    assert [r["unknown"] for r in results] == [False, False, True]
    assert [r["label"] for r in results] == ["dark", "dark", "red"]
    assert all(len(r["top"]) == 2 for r in results)  # the unknown score is no class
    np.testing.assert_allclose([r["unknown_score"] for r in results], [0, 1, 2], atol=0.1)
    plain = ImageScorer(8, lambda images: scores(images)[:, :2], ["red", "dark"], True,
                        "tensorflow", "float32")
    assert all("unknown" not in r for r in plain.classify_files(paths))
