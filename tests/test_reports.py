import csv
import json

import numpy as np
from PIL import Image

from classifiers.evaluation import evaluate_predictions
from pipeline.reports import (
    collect_reports,
    comparison_row,
    read_report,
    write_comparison,
    write_report,
)


def _evaluation():
    y = np.array([0, 1, 2, 2])
    return evaluate_predictions(y, np.eye(3)[[0, 1, 2, 1]], np.arange(3), ["cat", "dog", "fox"])


def test_report_files(tmp_path):
    ev = _evaluation()
    d = write_report(tmp_path / "m", ev, {"model": "m", "stage": "features", "backbone": "vgg16",
                                          "classifier": "logreg", "chosen": {"C": 10.0},
                                          "fit_seconds": 1.5, "size_bytes": 2048,
                                          "store_name": "s"})
    payload = json.loads((d / "metrics.json").read_text())
    assert payload["test"]["accuracy"] == 0.75
    rows = list(csv.reader((d / "confusion.csv").open()))
    assert rows[0] == ["true \\ predicted", "cat", "dog", "fox"]
    assert rows[3] == ["fox", "0", "1", "1"]
    with Image.open(d / "confusion.png") as img:
        assert img.size[0] > 200
    summary = (d / "summary.md").read_text()
    assert "C=10" in summary and "| fox |" in summary


def test_collect_and_compare(tmp_path):
    ev = _evaluation()
    for name, store in (("a__logreg", "a"), ("b__logreg", "b")):
        write_report(tmp_path / name, ev, {"model": name, "store_name": store})
    assert len(collect_reports(tmp_path)) == 2
    only_a = collect_reports(tmp_path, stores=["x/a.h5"])
    assert [r["model"] for r in only_a] == ["a__logreg"]
    rows = [comparison_row(r) for r in only_a]
    md, csv_path = write_comparison(rows, tmp_path)
    assert "a__logreg" in md.read_text()
    assert next(csv.DictReader(csv_path.open()))["test_accuracy"] == "0.75"


def test_values_are_rounded_for_people():
    from pipeline.reports import format_chosen, format_value

    assert format_chosen({"C": 0.0031622776601683794}) == "C=0.0032"
    assert format_chosen({"C": 10000.0}) == "C=10000"
    assert format_chosen({"alpha": 1e-5, "epochs": 12}) == "alpha=1e-05, epochs=12"
    assert format_value(316.22776601683796, significant=2) == "316"
    assert format_value(1.0, significant=2) == "1"
    assert format_value(None, significant=2, missing="–") == "–"


def test_summary_shows_the_criterion_that_chose_beside_accuracy(tmp_path):
    grid = [0.0031622776601683794, 1.0, 100.0, 10000.0]
    cv = {"param": "C", "grid": grid, "best": 100.0, "rule": "log_loss", "folds": 3,
          "mean_log_loss": [0.9, 0.4, 0.2, 0.35], "mean_accuracy": [0.6, 0.8, 0.85, 0.9]}
    d = write_report(tmp_path / "m", _evaluation(), {"model": "m", "chosen": {"C": 100.0},
                                                     "cv": cv})
    summary = (d / "summary.md").read_text()
    assert "chosen by the least mean held-out log-loss" in summary
    assert "| C | held-out log-loss | held-out accuracy | |" in summary
    # the best accuracy (C=10000) is shown, and beside it the log-loss that chose C=100
    assert "| 100 | 0.2000 | 0.8500 | chosen |" in summary
    assert "| 10000 | 0.3500 | 0.9000 |  |" in summary
    assert "| 0.0032 | 0.9000 |" in summary and "0.0031622776601683794" not in summary


def _paired_model(root, name, right, *, extract=None, classify=0.0, stage="features"):
    """A report on 40 shared test images, right on the first ``right`` of them."""
    y = np.arange(40) % 2
    predicted = np.where(np.arange(40) < right, y, 1 - y)
    ev = evaluate_predictions(y, np.eye(2)[predicted], np.arange(2), ["a", "b"], classify,
                              sample_ids=[f"/img/{i}.png" for i in range(40)])
    info = {"model": name, "stage": stage, "store_name": "d__vgg16", "dataset": "d"}
    if extract is not None:
        info["extraction_images_per_second"] = extract
    write_report(root / name, ev, info)


def test_compare_recommends_the_cheapest_model_not_significantly_worse(tmp_path):
    from pipeline.reports import compare_reports, recommend

    _paired_model(tmp_path, "d__vgg16__logreg", 39, extract=20.0, classify=5000.0)
    _paired_model(tmp_path, "d__vgg16__sgd", 38, extract=20.0, classify=9000.0)
    _paired_model(tmp_path, "d__lite0__logreg", 38, extract=80.0, classify=5000.0)
    _paired_model(tmp_path, "d__old__logreg", 38, classify=5000.0)  # before rates were kept
    _paired_model(tmp_path, "d__tiny__svm", 20, extract=900.0, classify=9000.0)  # much worse
    _paired_model(tmp_path, "d__vgg16__finetune_vgg16", 37, classify=60.0, stage="finetune")
    rows = {r["model"]: r for r in compare_reports(collect_reports(tmp_path))}
    assert rows["d__vgg16__logreg"]["extraction_per_second"] == 20.0
    assert rows["d__vgg16__logreg"]["predictions_per_second"] == 5000.0
    # images from files: the backbone and the classifier one after the other
    assert abs(rows["d__lite0__logreg"]["images_per_second"] - 1 / (1 / 80 + 1 / 5000)) < 1e-9
    assert rows["d__vgg16__finetune_vgg16"]["images_per_second"] == 60.0
    assert rows["d__old__logreg"]["images_per_second"] is None
    assert rows["d__tiny__svm"]["vs_best_p"] < 0.05
    summary = (tmp_path / "d__lite0__logreg" / "summary.md").read_text()
    assert ("images/s from image files: 79 (extraction 80 images/s, then the classifier "
            "5,000 on their features)") in summary
    assert "store recorded no extraction rate" in (tmp_path / "d__old__logreg" / "summary.md"
                                                   ).read_text()
    ordered = compare_reports(collect_reports(tmp_path))
    advice = recommend(ordered)
    assert advice["model"] == "d__lite0__logreg"  # not the faster but significantly worse svm
    best = ordered[0]["model"]
    p = rows["d__lite0__logreg"]["vs_best_p"]
    assert f"the cheapest model not significantly worse than the best, {best}" in advice["text"]
    assert f"p={p:.2f}" in advice["text"] and "4.0x faster" in advice["text"]
    assert "speed not recorded for d__old__logreg" in advice["text"]
    md, csv_path = write_comparison(ordered, tmp_path)
    assert advice["text"] in md.read_text()
    by_model = {r["model"]: r for r in csv.DictReader(csv_path.open())}
    assert by_model["d__old__logreg"]["images_per_second"] == ""
    assert float(by_model["d__vgg16__sgd"]["images_per_second"]) > 0


def test_recommendation_without_any_recorded_speed_keeps_the_best(tmp_path):
    from pipeline.reports import compare_reports, recommend

    _paired_model(tmp_path, "d__a__logreg", 39)
    _paired_model(tmp_path, "d__b__logreg", 38)
    advice = recommend(compare_reports(collect_reports(tmp_path)))
    assert advice["model"] == "d__a__logreg"
    assert "No images-per-second figure is recorded" in advice["text"]


def test_a_tie_at_the_top_goes_to_the_faster_model(tmp_path):
    from pipeline.reports import compare_reports, recommend

    _paired_model(tmp_path, "d__a__logreg", 39, extract=20.0, classify=5000.0)
    _paired_model(tmp_path, "d__b__logreg", 39, extract=80.0, classify=5000.0)
    rows = compare_reports(collect_reports(tmp_path))
    assert [r["model"] for r in rows] == ["d__b__logreg", "d__a__logreg"]
    assert recommend(rows)["text"].startswith("Recommended: d__b__logreg (79 images/s), the "
                                              "best test accuracy; no model that is not "
                                              "significantly worse is faster.")


def test_balanced_accuracy_in_metrics_summary_and_comparison(tmp_path):
    ev = _evaluation()  # recalls cat 1, dog 1, fox 1/2: balanced accuracy 5/6
    d = write_report(tmp_path / "m", ev, {"model": "m", "store_name": "s"})
    test = json.loads((d / "metrics.json").read_text())["test"]
    assert test["balanced_accuracy"] == 5 / 6
    lo, hi = test["balanced_accuracy_ci"]
    assert lo <= 5 / 6 <= hi
    assert f"mean per-class recall): 0.8333 [{lo:.4f}, {hi:.4f}]" in (d / "summary.md").read_text()
    md, csv_path = write_comparison([comparison_row(read_report(d))], tmp_path)
    row = next(csv.DictReader(csv_path.open()))
    assert float(row["balanced_accuracy"]) == 5 / 6
    assert row["balanced_accuracy_95ci"] == f"[{lo:.4f}, {hi:.4f}]"
    assert "balanced_accuracy" in md.read_text().splitlines()[0]


def test_reports_written_before_balanced_accuracy_still_compare(tmp_path):
    d = write_report(tmp_path / "old", _evaluation(), {"model": "old", "store_name": "s"})
    payload = json.loads((d / "metrics.json").read_text())
    for key in ("balanced_accuracy", "balanced_accuracy_ci"):
        del payload["test"][key]
    (d / "metrics.json").write_text(json.dumps(payload))
    row = comparison_row(read_report(d))
    assert row["balanced_accuracy"] is None and row["balanced_accuracy_95ci"] == ""
    md, csv_path = write_comparison([row], tmp_path)
    assert next(csv.DictReader(csv_path.open()))["balanced_accuracy"] == ""
    header, _, cells = md.read_text().splitlines()[:3]
    column = header.split(" | ").index("balanced_accuracy")
    assert cells.split(" | ")[column] == "-"  # the table's mark of a missing value
