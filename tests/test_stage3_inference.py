"""Loading a stage 3 ``.keras`` model: checked against its sidecar, then loaded from those bytes."""

import json

import numpy as np
import pytest

from classifiers.persistence import sha256_file, sidecar_path
from features.errors import UserInputError
from pipeline.stage3 import keras_versions, load_keras_classifier


def tiny_model(n_classes: int):
    import keras

    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(n_classes, activation="softmax")])


@pytest.fixture
def saved(tmp_path):
    """A ``.keras`` model with the sidecar stage 3 writes beside it."""
    path = tmp_path / "m.keras"
    tiny_model(2).save(path)
    sidecar = {"model": path.name, "sha256": sha256_file(path), "label_names": ["a", "b"],
               "input_size": 8, "preprocessing": "scale_to_unit", "backbone": "minivggnet",
               "library_versions": keras_versions()}
    sidecar_path(path).write_text(json.dumps(sidecar))
    return path


def test_loads_and_classifies(saved):
    model = load_keras_classifier(saved)
    assert model.label_names_ == ["a", "b"]
    scores = model.class_scores_of_images(np.zeros((3, 8, 8, 3), np.uint8))
    assert scores.shape == (3, 2)


def test_a_file_swapped_after_the_check_is_not_what_gets_loaded(saved, tmp_path, monkeypatch):
    import keras

    other = tmp_path / "other.keras"
    tiny_model(3).save(other)
    real_load = keras.models.load_model

    def swap_then_load(source, *args, **kwargs):
        # someone replaces the model between the digest check and the loading
        saved.write_bytes(other.read_bytes())
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(keras.models, "load_model", swap_then_load)
    model = load_keras_classifier(saved)
    assert model.model.output_shape[-1] == 2  # the checked model, not the swapped one


def test_tampered_model_is_refused(saved):
    saved.write_bytes(saved.read_bytes() + b"x")
    with pytest.raises(UserInputError, match="tampered or corrupted"):
        load_keras_classifier(saved)


def test_missing_sidecar_says_how_to_load_it_anyway(saved):
    sidecar_path(saved).unlink()
    with pytest.raises(UserInputError, match=r"m\.json is missing.*keras\.models\.load_model"):
        load_keras_classifier(saved)


def test_other_keras_and_tensorflow_versions_warn(saved):
    side = json.loads(sidecar_path(saved).read_text())
    side["library_versions"].update({"keras": "2.0.0", "tensorflow": "1.15.0"})
    sidecar_path(saved).write_text(json.dumps(side))
    with pytest.warns(UserWarning, match=r"keras 2\.0\.0 \(now .*\), tensorflow 1\.15\.0"):
        load_keras_classifier(saved)


def test_the_temperature_fitted_at_training_is_applied_to_every_score(saved):
    from classifiers.calibration import apply_temperature

    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    raw = load_keras_classifier(saved).class_scores_of_images(images)
    info = json.loads(sidecar_path(saved).read_text())
    sidecar_path(saved).write_text(json.dumps({**info, "temperature": 3.0}))
    softened = load_keras_classifier(saved).class_scores_of_images(images)
    np.testing.assert_allclose(softened, apply_temperature(raw, 3.0), atol=1e-6)
    assert np.all(softened.max(axis=1) <= raw.max(axis=1) + 1e-9)
