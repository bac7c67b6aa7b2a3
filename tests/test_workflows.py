import json
import subprocess
import sys

import numpy as np
import pytest

from features.errors import UserInputError
from features.store import FeatureStore, FeatureStoreWriter
from pipeline.workflows import (
    compare_models,
    evaluate_model,
    extract_dataset,
    predict_files,
    train_store,
)
from tests.conftest import REPO_ROOT, TINY_EXTRACT

TINY = TINY_EXTRACT


@pytest.fixture
def store(shapes_store):
    return shapes_store


def test_extract_train_predict_and_load_elsewhere(tmp_path, store):
    store_path, data = store
    outcomes = train_store(store_path, classifier="all", cv=2)
    assert [o.name.split("__")[-1] for o in outcomes] == ["logreg", "linear_svm", "ovr", "sgd"]
    for o in outcomes:
        assert o.model_path.exists() and (o.report_dir / "confusion.png").exists()
        assert o.report["test"]["accuracy"] >= 0.8  # colours are easy even for random weights
    images = [data / "red" / "red_000.jpg", data / "blue" / "blue_001.PNG"]
    results = predict_files(outcomes[0].model_path, images, top=2)
    assert [r["label"] for r in results] == ["red", "blue"]
    assert len(results[0]["top"]) == 2
    # a fresh process that only has joblib and the project installed
    code = (
        "import joblib, json, sys; m = joblib.load(sys.argv[1]); "
        "print(json.dumps([r['label'] for r in m.predict_images(sys.argv[2:])]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(outcomes[0].model_path),
                          *map(str, images)], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={"PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                              "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["red", "blue"]


def test_second_train_is_up_to_date_and_other_settings_need_overwrite(store):
    store_path, _ = store
    first = train_store(store_path, classifier="logreg", cv=2)[0]
    before = first.model_path.read_bytes()
    again = train_store(store_path, classifier="logreg", cv=2)[0]
    assert again.up_to_date
    with pytest.raises(UserInputError, match="--overwrite"):
        train_store(store_path, classifier="logreg", cv=3)
    assert first.model_path.read_bytes() == before
    replaced = train_store(store_path, classifier="logreg", cv=3, overwrite=True)[0]
    assert not replaced.up_to_date


def test_evaluate_and_compare(store, artifacts):
    store_path, _ = store
    train_store(store_path, classifier="logreg", cv=2)
    outcome = evaluate_model(artifacts / "classifiers" / "shapes__vgg16__avg__logreg.joblib",
                             store_path)
    assert outcome.report["test"]["n_samples"] == 6
    rows, md, csv_path = compare_models([store_path])
    assert [r["model"] for r in rows] == ["shapes__vgg16__avg__logreg"]
    assert md.exists() and csv_path.exists()


def test_unreadable_image_is_reported_not_fatal(store, broken_files):
    store_path, data = store
    model = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    results = predict_files(model, [broken_files["truncated"], data / "red" / "red_002.jpg"])
    assert results[0]["error"] == "truncated image"
    assert results[1]["label"] == "red"


def test_model_and_store_mismatch(tmp_path, store):
    store_path, data = store
    model = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    other = extract_dataset(data, out=tmp_path / "other.h5", **{**TINY, "pooling": "max"})
    with pytest.raises(UserInputError, match="pooling 'max'"):
        evaluate_model(model, other.result.path)


def _store_with(path, labels, split):
    from features.backbones import FeatureSpec

    spec = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 4)
    w = FeatureStoreWriter(path, attrs=spec.to_dict(), settings_key="k", feature_dim=4,
                           label_names=["a", "b"])
    n = len(labels)
    w.append(np.random.default_rng(0).random((n, 4)), labels, [f"/x/{i}" for i in range(n)],
             split, np.arange(n))
    w.commit(n)
    return w.finalize()


def test_one_class_or_too_few_images(tmp_path, artifacts):
    one = _store_with(tmp_path / "one.h5", np.zeros(8, int), np.r_[np.zeros(6), np.ones(2)])
    with pytest.raises(UserInputError, match="single class"):
        train_store(one)
    few = _store_with(tmp_path / "few.h5", np.array([0, 0, 1, 1, 1, 1, 0, 1]),
                      np.r_[np.zeros(6), np.ones(2)])
    with pytest.raises(UserInputError, match="fewer than the 3"):
        train_store(few, cv=3)
    assert not (artifacts / "classifiers").exists()
    with FeatureStore(few) as fs:
        assert fs.split_counts()["test"] == 2
