import json
import re
import zipfile
from pathlib import Path

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
from features.errors import UserInputError
from features.spec import FeatureSpec

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


OLD_MODELS = Path(__file__).parent / "fixtures" / "models_v0"


@pytest.mark.parametrize("kind", ["logreg", "linear_svm", "sgd"])
def test_models_saved_before_the_restructuring_load_and_predict(tmp_path, kind):
    # The pickles name the modules of commit 1ecc8a7; moving a class must keep them loadable.
    from tests.conftest import make_image_folder

    expected = json.loads((OLD_MODELS / "expected.json").read_text())
    model = load_classifier(OLD_MODELS / f"store__{kind}.joblib")
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=8)
    paths = [str(root / row["image"]) for row in expected[kind]]
    for row, got in zip(expected[kind], model.predict_images(paths, top=2), strict=True):
        assert got["label"] == row["label"]
        assert "unknown" not in got  # saved before the unknown score: none made up
        assert [label for label, _ in got["top"]] == [label for label, _ in row["top"]]
        np.testing.assert_allclose([s for _, s in got["top"]], [s for _, s in row["top"]],
                                   atol=1e-3)
    X = np.random.default_rng(0).normal(size=(3, 1280)).astype("float32")
    np.testing.assert_allclose(model.predict_proba(X),
                               expected[f"{kind}_features"]["predict_proba_seed0"], atol=1e-4)
    assert model.unknown_scores(X) is None and model.predict_unknown(X) is None
    assert model.search_.held_out_predicted is None  # saved before the search kept them


def test_a_file_that_is_no_model_is_named_for_what_it_is(tmp_path):
    # Not "the sidecar is missing, pass verify=False": that would switch the integrity
    # check off for a file that is not a model at all.
    from features.store import FeatureStoreWriter

    store = tmp_path / "x.h5"
    writer = FeatureStoreWriter(store, planned_paths=["/a.jpg", "/b.jpg"],
                                attrs=SPEC.to_dict(), settings_key="k", feature_dim=6,
                                label_names=["a", "b"])
    writer.append(np.zeros((2, 6), np.float32), [0, 1], [0, 0], [0, 1])
    writer.commit(2)
    writer.finalize()
    keras_file = tmp_path / "m.keras"
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
    text = tmp_path / "notes.joblib"
    text.write_text("not a model\n")
    for path, what in ((store, "is a feature store, not a classifier; train one on it"),
                       (keras_file, "is a Keras archive (.keras)"),
                       (text, "is not a classifier saved by tlearn")):
        with pytest.raises(UserInputError, match=re.escape(what)) as caught:
            load_classifier(path)
        assert "verify=False" not in str(caught.value)


@pytest.mark.parametrize("damage", [b"\xff\xfe not utf-8", b"[1,2]", b"null", b"{"])
def test_a_damaged_sidecar_is_named_in_one_error(tmp_path, fitted, damage):
    path = save_classifier(fitted[0], tmp_path / "m.joblib")
    sidecar_path(path).write_bytes(damage)
    with pytest.raises(UserInputError, match=r"m\.json is damaged: .*retrain the model or "
                                             r"restore the \.json"):
        load_classifier(path)
