import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features.errors import UserInputError
from features.store import FeatureStore, FeatureStoreWriter
from pipeline.reports import collect_reports
from pipeline.workflows import (
    compare_models,
    evaluate_model,
    predict_files,
    train_store,
)
from tests.conftest import REPO_ROOT, TINY_EXTRACT, extract

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


def _saved_files(model_path: Path) -> tuple[bytes, bytes]:
    return model_path.read_bytes(), model_path.with_suffix(".json").read_bytes()


def test_a_refusal_names_each_differing_setting_with_both_values(store):
    store_path, data = store
    train_store(store_path, classifier="logreg", cv=2)
    with pytest.raises(UserInputError) as refused:
        train_store(store_path, classifier="logreg", cv=3, seed=4, grid=[1.0], repeats=2)
    message = str(refused.value)
    assert "cv: 3 here, 2 in the saved model" in message
    assert "seed: 4 here, 0 in the saved model" in message
    assert "grid: [1.0] here, the default in the saved model" in message
    assert "repeats" not in message and "--overwrite" in message and "\n" not in message
    # the same store name extracted again with other settings: other features
    extract(data, out=store_path, overwrite=True, **{**TINY, "pooling": "max"})
    with pytest.raises(UserInputError, match=r"features \(store settings key\): [0-9a-f]{12} "
                                             r"here, [0-9a-f]{12} in the saved model"):
        train_store(store_path, classifier="logreg", cv=2)


def test_class_weight_is_a_model_setting_and_old_sidecars_count_as_unweighted(store):
    store_path, _ = store
    plain = train_store(store_path, classifier="logreg", cv=2)[0]
    # sidecars written before class weights existed do not record them: all rows weighed one
    sidecar = plain.model_path.with_suffix(".json")
    old = json.loads(sidecar.read_text())
    del old["settings"]["class_weight"]
    sidecar.write_text(json.dumps(old))
    assert train_store(store_path, classifier="logreg", cv=2)[0].up_to_date
    saved = _saved_files(plain.model_path)
    with pytest.raises(UserInputError, match="class weight: balanced here, none in the saved"):
        train_store(store_path, classifier="logreg", cv=2, class_weight="balanced")
    assert _saved_files(plain.model_path) == saved
    weighted = train_store(store_path, classifier="logreg", cv=2, class_weight="balanced",
                           overwrite=True)[0]
    assert weighted.report["class_weight"] == "balanced"
    assert "class weight: balanced" in (weighted.report_dir / "summary.md").read_text()
    assert json.loads(sidecar.read_text())["settings"]["class_weight"] == "balanced"
    with pytest.raises(UserInputError, match="--class-weight 'even' is not known"):
        train_store(store_path, classifier="logreg", cv=2, class_weight="even")


def test_repeats_only_change_the_report_so_reruns_need_no_overwrite(store):
    store_path, _ = store
    plain = train_store(store_path, classifier="logreg", cv=2)[0]
    # sidecars of earlier versions recorded repeats among the model's settings
    sidecar = plain.model_path.with_suffix(".json")
    old = json.loads(sidecar.read_text())
    old["settings"]["repeats"] = 0
    sidecar.write_text(json.dumps(old))
    saved = _saved_files(plain.model_path)
    lines = []
    more = train_store(store_path, classifier="logreg", cv=2, repeats=2, log=lines.append)[0]
    assert not more.up_to_date and more.report["repeats"]["n"] == 2
    assert "re-splits" in (more.report_dir / "summary.md").read_text()
    assert not any("searching" in line for line in lines)  # the model was not refitted
    assert _saved_files(plain.model_path) == saved
    # the reverse: a plain rerun keeps the re-splits already reported
    again = train_store(store_path, classifier="logreg", cv=2)[0]
    assert again.up_to_date and again.report["repeats"]["n"] == 2
    # after --overwrite with re-splits, a plain rerun (make train) is up to date too
    replaced = train_store(store_path, classifier="logreg", cv=2, repeats=3, overwrite=True)[0]
    assert replaced.report["repeats"]["n"] == 3
    assert train_store(store_path, classifier="logreg", cv=2)[0].up_to_date
    fewer = train_store(store_path, classifier="logreg", cv=2, repeats=2)[0]
    assert not fewer.up_to_date and fewer.report["repeats"]["n"] == 2


# A real 'tlearn train' that SIGKILLs itself at a chosen point: "report" when the model and
# its sidecar are saved and the report is about to be written, "save" when the first of
# the model and its sidecar is written and the other is not.
_KILLED_TRAIN = """
import os, signal, sys
from classifiers import persistence
from pipeline import reports

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

writes = []

def second_dies(write):
    def counted(*args, **kwargs):
        writes.append(write)
        if len(writes) == 2:
            die()
        return write(*args, **kwargs)
    return counted

if sys.argv[1] == "report":
    reports.write_report = die
else:
    for name in [n for n in dir(persistence) if n.startswith("atomic_write")]:
        setattr(persistence, name, second_dies(getattr(persistence, name)))
from pipeline.cli import main
sys.argv = ["tlearn", "train", *sys.argv[2:]]
main()
"""


def _killed_train(point: str, *args: str) -> None:
    killed = subprocess.run([sys.executable, "-c", _KILLED_TRAIN, point, *args],
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def test_a_train_killed_before_its_report_resumes_without_refitting(store, artifacts):
    store_path, _ = store
    _killed_train("report", str(store_path), "--cv", "2", "--repeats", "2")
    name = "shapes__vgg16__avg__logreg"
    model_path = artifacts / "classifiers" / f"{name}.joblib"
    assert model_path.with_suffix(".json").exists()
    assert not (artifacts / "reports" / name / "metrics.json").exists()
    saved = _saved_files(model_path)
    lines = []
    resumed = train_store(store_path, cv=2, repeats=2, log=lines.append)[0]
    assert not resumed.up_to_date and resumed.report["repeats"]["n"] == 2
    assert resumed.report["test"]["n_samples"] == 6
    assert (resumed.report_dir / "summary.md").exists()
    # the checked model is kept: a refit would record another fit time in its file
    assert _saved_files(model_path) == saved
    assert not any("searching" in line for line in lines)
    assert train_store(store_path, cv=2, repeats=2)[0].up_to_date
    # killed while replacing it: the old report is not taken for the new model's
    before = saved
    _killed_train("report", str(store_path), "--cv", "3", "--overwrite")
    saved = _saved_files(model_path)
    assert saved != before  # the new model is saved, its report is not
    lines = []
    resumed = train_store(store_path, cv=3, log=lines.append)[0]
    assert not resumed.up_to_date and "repeats" not in resumed.report  # not the old report
    assert _saved_files(model_path) == saved
    assert not any("searching" in line for line in lines)


def test_a_train_killed_between_model_and_sidecar_needs_no_overwrite(store, artifacts):
    from classifiers.persistence import load_classifier, sidecar_path

    store_path, _ = store
    _killed_train("save", str(store_path), "--cv", "2")
    model_path = artifacts / "classifiers" / "shapes__vgg16__avg__logreg.joblib"
    assert model_path.exists() != sidecar_path(model_path).exists()
    outcome = train_store(store_path, cv=2)[0]
    assert not outcome.up_to_date and outcome.report["test"]["n_samples"] == 6
    assert load_classifier(model_path).kind == "logreg"  # checked against its sidecar


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
    other = extract(data, out=tmp_path / "other.h5", **{**TINY, "pooling": "max"})
    with pytest.raises(UserInputError, match="pooling 'max'"):
        evaluate_model(model, other.result.path)


def _store_with(path, labels, split):
    from features.spec import FeatureSpec

    spec = FeatureSpec("vgg16", "block5_pool", "avg", 32, "caffe", "random", "", 4)
    n = len(labels)
    w = FeatureStoreWriter(path, planned_paths=[f"/x/{i}" for i in range(n)],
                           attrs=spec.to_dict(), settings_key="k", feature_dim=4,
                           label_names=["a", "b"])
    w.append(np.random.default_rng(0).random((n, 4)), labels, split, np.arange(n))
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


def test_predict_a_folder_to_csv_streamed_in_batches(tmp_path, store, monkeypatch):
    import csv

    from features import batches
    from pipeline.workflows import write_predictions

    store_path, data = store
    model = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    folder = tmp_path / "to_classify"
    for i, path in enumerate(sorted(data.rglob("*.*"))[:9]):
        (folder / "deep" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        (folder / "deep" / str(i % 2) / path.name).write_bytes(path.read_bytes())
    (folder / "deep" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("skip me")
    sizes = []
    original = batches.decode_batch
    monkeypatch.setattr(batches, "decode_batch",
                        lambda paths, *a: sizes.append(len(paths)) or original(paths, *a))
    seen = []
    out = tmp_path / "pred.csv"
    report = write_predictions(model, [folder], out, top=2, batch_size=4,
                               progress=lambda done, total: seen.append(
                                   (done, total, (tmp_path / "pred.csv.partial").exists())))
    assert max(sizes) <= 4 and sum(sizes) == 10  # streamed, a batch at a time
    assert seen[-1][:2] == (10, 10) and all(partial for _, _, partial in seen)
    assert not (tmp_path / "pred.csv.partial").exists()
    rows = list(csv.DictReader(out.open()))
    from pipeline.datasets import images_to_predict

    assert [r["path"] for r in rows] == images_to_predict([folder])[0]  # input order
    assert len(rows) == 10
    broken = [r for r in rows if r["error"]]
    assert len(broken) == 1 and broken[0]["path"].endswith("broken.jpg")
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] in {"red", "green", "blue"} and len(json.loads(r["top"])) == 2
               for r in good)
    assert {r["score_kind"] for r in good} == {"probability"}
    for r in good:  # the label matches the class folder the image was copied from
        assert r["label"] == Path(r["path"]).name.split("_")[0]
    assert report.errors == [(broken[0]["path"], broken[0]["error"])]
    assert [p for p, _ in report.ignored] == [str(folder / "notes.txt")]
    with pytest.raises(UserInputError, match="already exists"):
        write_predictions(model, [folder], out)


def test_predict_a_csv_of_paths(tmp_path, store):
    from pipeline.workflows import predict_files

    store_path, data = store
    model = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{data / 'green' / 'green_003.PNG'}\nred/red_004.jpg\n")
    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "red_004.jpg").write_bytes((data / "red" / "red_004.jpg").read_bytes())
    results = predict_files(model, [listing])
    assert [r["label"] for r in results] == ["green", "red"]


def test_compare_pairs_models_on_the_same_test_images_only(tmp_path, store, artifacts):
    from pipeline.reports import read_predictions

    store_path, data = store
    train_store(store_path, classifier="logreg", cv=2)
    train_store(store_path, classifier="linear_svm", cv=2)
    other = extract(data, **{**TINY_EXTRACT, "pooling": "max"}, seed=7,
                            out=tmp_path / "other.h5").result.path
    train_store(other, classifier="logreg", cv=2)
    rows, md, _ = compare_models([])
    by_name = {r["model"]: r for r in rows}
    assert rows[0]["vs_best"] == "best"
    for row in rows:
        lo, hi = (float(v) for v in row["accuracy_95ci"].strip("[]").split(","))
        assert lo <= row["test_accuracy"] <= hi
    best_store = rows[0]["model"].rsplit("__", 1)[0]
    for name, row in by_name.items():
        if row is rows[0]:
            continue
        if name.startswith(best_store + "__"):
            assert row["vs_best_p"] is not None and 0 <= row["vs_best_p"] <= 1
            assert "difference" in row["vs_best"] or "really better" in row["vs_best"]
        else:  # another split: never paired
            assert row["vs_best_p"] is None and "other images" in row["vs_best"]
    report = next(r for r in collect_reports(artifacts / "reports")
                  if r["model"] == rows[0]["model"])
    right = read_predictions(report)
    assert len(right) == report["test"]["n_samples"]
    assert all(p.startswith(str(data)) for p in right)
    assert "vs_best" in md.read_text()


def test_repeats_report_the_spread_over_seeded_resplits(store):
    store_path, _ = store
    outcome = train_store(store_path, classifier="logreg", cv=2, repeats=3)[0]
    rep = outcome.report["repeats"]
    assert rep["n"] == 3 and len(rep["per_split"]) == 3
    accuracies = [s["accuracy"] for s in rep["per_split"]]
    assert abs(rep["accuracy_mean"] - np.mean(accuracies)) < 1e-12
    assert rep["accuracy_min"] <= rep["accuracy_mean"] <= rep["accuracy_max"]
    assert rep["recorded_accuracy"] == outcome.report["test"]["accuracy"]
    assert "re-splits" in (outcome.report_dir / "summary.md").read_text()
    # the recorded split's model is the one saved; asking again is up to date
    assert train_store(store_path, classifier="logreg", cv=2, repeats=3)[0].up_to_date


def _relabelled_store(tmp_path, data, labels: dict[str, str]):
    """A store of the images of ``data``'s classes named in ``labels``, each called by its value."""
    listing = tmp_path / "relabelled.csv"
    listing.write_text("path,label\n" + "".join(
        f"{p},{label}\n" for folder, label in labels.items()
        for p in sorted((data / folder).iterdir())))
    return extract(listing, out=tmp_path / "relabelled.h5", test_size=0.5,
                           **TINY).result.path


@pytest.mark.parametrize("runtime", [None, "tensorflow"])
def test_evaluate_refuses_store_classes_the_model_does_not_know(tmp_path, store, runtime):
    store_path, data = store
    model = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    # Numbered among its own names (green 0, zebra 1) the blue and green images get the
    # numbers the model gives blue and green: matched by number they would look right.
    relabelled = _relabelled_store(tmp_path, data, {"blue": "green", "green": "zebra"})
    with pytest.raises(UserInputError, match="does not know the classes zebra"):
        evaluate_model(model, relabelled, runtime=runtime)


def test_evaluate_on_a_store_of_some_of_the_models_classes_matches_them_by_name(
        tmp_path, store):
    import joblib

    store_path, data = store
    model_path = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    subset = _relabelled_store(tmp_path, data, {"green": "green", "red": "red"})
    report = evaluate_model(model_path, subset).report["test"]
    model = joblib.load(model_path)
    with FeatureStore(subset) as fs:
        assert fs.label_names == ["green", "red"]  # numbered 0, 1; the model's are 1, 2
        X, y = fs.load("test")
        truth = np.array(fs.label_names)[y]
    said = np.array(model.label_names_)[np.searchsorted(model.classes_, model.predict(X))]
    assert report["n_samples"] == len(truth)
    assert report["accuracy"] == pytest.approx(np.mean(said == truth))
    assert report["label_names"] == model.label_names_
    assert sum(map(sum, report["confusion"])) == len(truth)


def test_extraction_and_classifier_rates_reach_compare(store):
    from typer.testing import CliRunner

    from pipeline.cli import app

    store_path, _ = store
    with FeatureStore(store_path) as fs:
        extraction = fs.attrs["extraction_images_per_second"]
    assert extraction > 0
    report = train_store(store_path, classifier="logreg", cv=2)[0].report
    assert report["extraction_images_per_second"] == extraction
    rows = compare_models([])[0]
    classify = report["test"]["predictions_per_second"]
    assert rows[0]["images_per_second"] == 1 / (1 / extraction + 1 / classify)
    result = CliRunner().invoke(app, ["compare"])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    assert f"Recommended: {report['model']}" in " ".join(result.output.split())


def test_the_top_column_reads_back_whatever_the_labels_hold(tmp_path):
    import csv

    from pipeline.workflows import write_predictions
    from tests.conftest import save_stage3_model, write_image

    labels = ['a;b', 'c:d', 'e,"f"', "[g]", "h\\i", "ünï"]
    model = save_stage3_model(tmp_path / "awkward.keras", labels)
    images = [write_image(tmp_path / f"img{i}.png", (40 * i, 90, 200), seed=i) for i in range(3)]
    out = tmp_path / "pred.csv"
    write_predictions(model, images, out, top=len(labels))
    expected = {r["path"]: r["top"] for r in predict_files(model, images, top=len(labels))}
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == 3
    for row in rows:
        top = json.loads(row["top"])
        assert sorted(label for label, _ in top) == sorted(labels)
        assert top[0][0] == row["label"]
        assert [label for label, _ in top] == [label for label, _ in expected[row["path"]]]
        assert [s for _, s in top] == pytest.approx([s for _, s in expected[row["path"]]],
                                                    rel=1e-5)


def test_a_damaged_test_row_is_named_with_its_store(store, artifacts):
    import h5py

    store_path, _ = store
    with FeatureStore(store_path) as opened:
        row = int(np.flatnonzero(opened.split_mask("test"))[0])
    with h5py.File(store_path, "r+") as f:  # a flipped exponent bit, as on a failing disk
        f["features"][row, 0] = np.float32(3e37)
    with pytest.raises(UserInputError, match=rf"{store_path.name}: row\(s\) {row} hold NaN, "
                                             "infinite or absurd values"):
        train_store(store_path, classifier="logreg", cv=2)


def test_predict_never_writes_through_a_link_and_passes_over_names_not_utf8(tmp_path, store):
    import csv
    import os

    from pipeline.datasets import NOT_UTF8
    from pipeline.workflows import write_predictions

    store_path, data = store
    model = train_store(store_path, classifier="logreg", cv=2)[0].model_path
    folder = tmp_path / "to_classify"
    folder.mkdir()
    for path in sorted(data.rglob("*.*"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    bad = folder / os.fsdecode(b"bad\xffbytes.jpg")
    bad.write_bytes(next(data.rglob("*.jpg")).read_bytes())
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    target.chmod(0o600)
    out = tmp_path / "pred.csv"
    (tmp_path / "pred.csv.partial").symlink_to(target)
    with pytest.raises(UserInputError, match="not a file tlearn left"):
        write_predictions(model, [folder], out)
    assert target.read_text() == "mine" and target.stat().st_mode & 0o777 == 0o600
    assert not out.exists()
    (tmp_path / "pred.csv.partial").unlink()
    report = write_predictions(model, [folder], out)  # it raised UnicodeEncodeError
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 3 and not any(r["error"] for r in rows)
    assert [r for _, r in report.ignored] == [NOT_UTF8]
    assert not (tmp_path / "pred.csv.lock").exists()


def test_extract_settings_from_flat_options_route_each_to_its_object(tmp_path):
    from features.settings import NetworkSettings
    from pipeline.workflows import ExtractSettings

    settings = ExtractSettings.from_options({"data": tmp_path, "mirror": True, "seed": 3,
                                             "backbone": "vgg16"})
    assert settings.network == NetworkSettings("vgg16", mirror=True) and settings.seed == 3
    with pytest.raises(TypeError, match="mirrored"):
        ExtractSettings.from_options({"data": tmp_path, "mirrored": True})


def test_predict_flags_images_of_no_trained_class(tmp_path, store):
    import csv

    from pipeline.workflows import write_predictions
    from tests.conftest import write_image

    store_path, data = store
    outcome = train_store(store_path, classifier="logreg", cv=2)[0]
    unknown = outcome.report["unknown"]
    assert unknown["coverage"] == 0.95 and unknown["threshold"] > 0
    assert "Unknown images: a mahalanobis distance" in (outcome.report_dir
                                                        / "summary.md").read_text()
    # white, black, grey, yellow, magenta: no trained colour (red, green, blue)
    odd = [write_image(tmp_path / "odd" / f"odd_{i}.png", colour, seed=99 + i)
           for i, colour in enumerate([(255, 255, 255), (0, 0, 0), (128, 128, 128),
                                       (255, 255, 0), (255, 0, 255)])]
    known = sorted(data.rglob("*.*"))
    results = predict_files(outcome.model_path, [*odd, *known])
    assert all(r["unknown"] for r in results[:len(odd)])
    assert all(r["label"] in {"red", "green", "blue"} for r in results)  # still the best class
    assert np.mean([not r["unknown"] for r in results[len(odd):]]) >= 0.6
    out = tmp_path / "pred.csv"
    write_predictions(outcome.model_path, [*odd, known[0]], out)
    rows = list(csv.DictReader(out.open()))
    assert [r["unknown"] for r in rows[:len(odd)]] == ["true"] * len(odd)
    assert rows[-1]["unknown"] in {"true", "false"}
    assert all(float(r["unknown_score"]) > unknown["threshold"] for r in rows[:len(odd)])
    # --coverage at predict: a lower one flags more of the known images
    loose = predict_files(outcome.model_path, known, coverage=0.99)
    strict = predict_files(outcome.model_path, known, coverage=0.3)
    assert sum(r["unknown"] for r in strict) > sum(r["unknown"] for r in loose)


def test_the_train_log_rounds_the_chosen_value_for_people(store, artifacts):
    store_path, _ = store
    lines: list[str] = []
    train_store(store_path, classifier="logreg", cv=2, grid=[0.0031622776601683794],
                log=lines.append)
    (done,) = [line for line in lines if "test accuracy" in line]
    assert "C=0.0032" in done and "0.00316227" not in done
