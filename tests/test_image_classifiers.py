"""One path from image files to scores: every entry point answers the same for either kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import save_stage3_model


@pytest.fixture(params=["joblib", "keras"])
def model_and_images(request, shapes_store, tmp_path, broken_files):
    """A saved model of each kind, and image files to classify (one of them broken)."""
    from pipeline.workflows import train_store

    store, data = shapes_store
    if request.param == "joblib":
        path = train_store(store, classifier="logreg", cv=2)[0].model_path
    else:
        path = save_stage3_model(tmp_path / "scratch.keras", ["red", "green", "blue"])
    images = [str(p) for p in sorted(data.rglob("*_00[0-2].*"))]
    return path, [*images[:4], str(broken_files["truncated"]), *images[4:]]


def test_every_entry_point_gives_the_same_scores_for_the_same_images(model_and_images):
    from pipeline.image_classifiers import load_image_classifier, load_model_file
    from pipeline.workflows import predict_files

    path, images = model_and_images
    answers = {
        # the library: load_classifier / load_keras_classifier, then predict_images
        "predict_images": load_model_file(path).predict_images(images, top=3),
        # what tlearn serve, the Ray engine and the export check score with
        "ImageClassifier": list(load_image_classifier(path).iter_predictions(images, top=3)),
        "tlearn predict": predict_files(path, images, top=3),
    }
    reference = answers.pop("predict_images")
    assert [r.get("error") for r in reference] == [None] * 4 + ["truncated image"] + [None] * 5
    for name, results in answers.items():
        assert [r["path"] for r in results] == images, name
        for theirs, mine in zip(results, reference, strict=True):
            assert theirs.get("error") == mine.get("error"), name
            if "error" in mine:
                continue
            assert [label for label, _ in theirs["top"]] == [label for label, _ in mine["top"]]
            np.testing.assert_allclose([s for _, s in theirs["top"]],
                                       [s for _, s in mine["top"]], atol=1e-6, err_msg=name)


def test_public_info_shows_balanced_accuracy_and_the_class_weight():
    from pipeline.image_classifiers import public_info

    info = public_info({"settings": {"class_weight": "balanced", "cv": 3},
                        "metrics": {"accuracy": 0.9, "balanced_accuracy": 0.8,
                                    "balanced_accuracy_ci": [0.7, 0.9], "per_class": {}}},
                       Path("m.joblib"))
    assert info["metrics"] == {"accuracy": 0.9, "balanced_accuracy": 0.8,
                               "balanced_accuracy_ci": [0.7, 0.9]}
    assert info["class_weight"] == "balanced" and "settings" not in info
