import csv
import json

import numpy as np
from PIL import Image

from classifiers.evaluation import evaluate_predictions
from pipeline.reports import collect_reports, comparison_row, write_comparison, write_report


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
