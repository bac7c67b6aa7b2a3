import json

import joblib
import numpy as np
import pytest

from classifiers.estimators import FeatureClassifier
from classifiers.persistence import (
    check_same_features,
    load_classifier,
    save_classifier,
    sidecar_path,
)
from features.backbones import FeatureSpec
from features.errors import UserInputError

SPEC = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 6)


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    X = (rng.normal(0, 1, (60, 6)) + y[:, None]).astype(np.float32)
    model = FeatureClassifier(feature_spec=SPEC.to_dict(), label_names=["a", "b"]).fit(X, y)
    return model, X


def test_roundtrip_and_sidecar(tmp_path, fitted):
    model, X = fitted
    path = save_classifier(model, tmp_path / "m.joblib", metadata={"metrics": {"accuracy": 1}})
    side = json.loads(sidecar_path(path).read_text())
    assert len(side["sha256"]) == 64 and side["kind"] == "logreg"
    assert side["feature_spec"]["backbone"] == "vgg16"
    assert "scikit-learn" in side["library_versions"]
    loaded = load_classifier(path)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.label_names_ == ["a", "b"]
    # plain joblib works too, for users who load it themselves
    np.testing.assert_array_equal(joblib.load(path).predict(X), model.predict(X))
    assert not list(tmp_path.glob("*.tmp"))


def test_tampered_file_is_not_unpickled(tmp_path, fitted):
    path = save_classifier(fitted[0], tmp_path / "m.joblib")
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(UserInputError, match="tampered or corrupted"):
        load_classifier(path)


def test_missing_sidecar_and_missing_file(tmp_path, fitted):
    path = save_classifier(fitted[0], tmp_path / "m.joblib")
    sidecar_path(path).unlink()
    with pytest.raises(UserInputError, match="verify=False"):
        load_classifier(path)
    assert load_classifier(path, verify=False).kind == "logreg"
    with pytest.raises(UserInputError, match="does not exist"):
        load_classifier(tmp_path / "none.joblib")


def test_version_mismatch_warns(tmp_path, fitted):
    path = save_classifier(fitted[0], tmp_path / "m.joblib")
    side = json.loads(sidecar_path(path).read_text())
    side["library_versions"]["scikit-learn"] = "0.1.0"
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.warns(UserWarning, match=r"scikit-learn 0\.1\.0"):
        load_classifier(path)


def test_not_a_tlearn_model(tmp_path):
    path = tmp_path / "other.joblib"
    joblib.dump({"a": 1}, path)
    with pytest.raises(UserInputError, match="not a tlearn classifier"):
        load_classifier(path, verify=False)


def test_other_features_are_refused(fitted):
    model, _ = fitted
    check_same_features(model, SPEC)
    other = FeatureSpec("resnet50", "conv5", "avg", 32, "caffe", "random", "", 2048)
    with pytest.raises(UserInputError, match="backbone 'resnet50'"):
        check_same_features(model, other)


def test_readme_three_lines_api(tmp_path, fitted):
    from classifiers import load_classifier as public_load

    path = save_classifier(fitted[0], tmp_path / "m.joblib")
    assert public_load is load_classifier
    assert public_load(path).label_names_ == ["a", "b"]


def test_loader_unpickles_the_very_bytes_it_verified(tmp_path, fitted, monkeypatch):
    model, X = fitted
    path = save_classifier(model, tmp_path / "m.joblib")
    other = tmp_path / "other.joblib"
    y = np.arange(len(X)) % 2
    joblib.dump(FeatureClassifier(feature_spec=SPEC.to_dict(), label_names=["x", "y"]).fit(X, y),
                other)
    real_load = joblib.load

    def swap_then_load(source, *args, **kwargs):
        # someone replaces the file between the digest check and the unpickling
        path.write_bytes(other.read_bytes())
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(joblib, "load", swap_then_load)
    assert load_classifier(path).label_names_ == ["a", "b"]


@pytest.mark.parametrize("damage", [b"\xff\xfe not utf-8", b"[1,2]", b"null", b"{"])
def test_a_damaged_sidecar_is_named_in_one_error(tmp_path, fitted, damage):
    path = save_classifier(fitted[0], tmp_path / "m.joblib")
    sidecar_path(path).write_bytes(damage)
    with pytest.raises(UserInputError, match=r"m\.json is damaged: .*retrain the model or "
                                             r"restore the \.json"):
        load_classifier(path)
