"""The visual report page of a dataset: content, escaping, no external resources, commands."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from classifiers.evaluation import evaluate_predictions
from features.errors import UserInputError
from pipeline.report_page import (
    GENERATOR,
    confident_mistakes,
    write_dataset_report,
)
from pipeline.reports import collect_reports, compare_reports, write_report
from tests.conftest import write_image

HOSTILE = "<script>alert(1)</script>"
LABELS = ["cat", "dog", HOSTILE]


def _model(root: Path, name: str, images: list[Path], truth: list[int],
           wrong: dict[int, tuple[int, float]], *, dataset: str = "pets",
           stage: str = "features", history: bool = False, **info) -> dict:
    """Write a real report: ``wrong`` maps an image index to (predicted label, its score)."""
    n_classes = len(LABELS)
    scores = np.full((len(images), n_classes), 0.1)
    for i, t in enumerate(truth):
        scores[i, t] = 0.8
        if i in wrong:
            predicted, score = wrong[i]
            scores[i] = (1 - score) / (n_classes - 1)
            scores[i, predicted] = score
    evaluation = evaluate_predictions(np.array(truth), scores, np.arange(n_classes), LABELS,
                                      100.0, probabilities=True,
                                      sample_ids=[str(p) for p in images])
    directory = root / name
    if history:
        from pipeline.stage3.history import write_history

        write_history([{"epoch": e, "phase": "warmup" if e < 2 else "finetune",
                        "loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1),
                        "accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.45 + 0.1 * e}
                       for e in range(4)], directory)
    write_report(directory, evaluation, {
        "model": name, "stage": stage, "store_name": f"{dataset}__vgg16", "dataset": dataset,
        "backbone": "vgg16", "classifier": "logreg", "chosen": {"C": 1.0}, "fit_seconds": 0.5,
        "size_bytes": 1000, **info})
    return json.loads((directory / "metrics.json").read_text())


@pytest.fixture
def reports(tmp_path) -> Path:
    """Three models of 'pets' on the same 12 test images (2, 4 and 1 mistakes; the third a
    stage 3 model with training curves) and one model of another dataset."""
    images = []
    for i in range(12):
        name = 'odd "name" <b>.png' if i == 5 else f"img_{i:02d}.jpg"
        images.append(write_image(tmp_path / "data" / f"c{i % 3}" / name,
                                  [(200, 40, 40), (40, 200, 40), (40, 40, 200)][i % 3],
                                  seed=i))
    truth = [i % 3 for i in range(12)]
    root = tmp_path / "reports"
    _model(root, "pets__vgg16__logreg", images, truth, {1: (2, 0.9), 5: (0, 0.6)})
    _model(root, "pets__vgg16__sgd", images, truth,
           {1: (0, 0.7), 2: (1, 0.5), 4: (0, 0.8), 7: (2, 0.55)})
    _model(root, "pets__vgg16__finetune_vgg16", images, truth, {5: (1, 0.95)},
           stage="finetune", history=True)
    _model(root, "birds__vgg16__logreg", images, truth, {}, dataset="birds")
    return root


def _page(reports: Path, dataset: str = "pets") -> str:
    path = write_dataset_report(dataset, reports)
    assert path == reports / dataset / "index.html"
    return path.read_text()


def test_every_model_of_the_dataset_with_its_interval(reports):
    page = _page(reports)
    rows = [re.search(r'data-model="([^"]*)"', g).group(1)
            for g in re.findall(r'<g class="row [^"]*" data-model="[^"]*"', page)]
    # best first, as 'tlearn compare' orders them; the other dataset's model is left out
    assert rows == ["pets__vgg16__finetune_vgg16", "pets__vgg16__logreg", "pets__vgg16__sgd"]
    assert "birds__" not in page
    for name in rows:
        test = json.loads((reports / name / "metrics.json").read_text())["test"]
        lo, hi = test["accuracy_ci"]
        assert lo < test["accuracy"] < hi
        # the interval printed beside the model's line in the chart
        assert f"{test['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]</text>" in page
    assert GENERATOR in page


def test_comparison_rows_and_verdicts_are_those_of_compare(reports):
    page = _page(reports)
    rows = compare_reports([r for r in collect_reports(reports) if r["model"].startswith("pets")])
    assert rows[0]["model"] == "pets__vgg16__finetune_vgg16"
    for row in rows[1:]:
        assert row["vs_best_p"] is not None
        assert row["vs_best"].replace("<", "&lt;") in page
    table = page.split('<table class="compare">')[1].split("</table>")[0]
    assert table.count("<tr class=") == 3


def test_gallery_shows_the_best_models_mistakes_most_confident_first(reports):
    page = _page(reports)
    gallery = page.split('<section id="mistakes">')[1].split("</section>")[0]
    figures = re.findall(r'<figure class="mistake".*?</figure>', gallery)
    assert len(figures) == 1  # the best (fine-tuned) model got one image wrong
    assert "true: <b>&lt;script&gt;alert(1)&lt;/script&gt;</b>" in figures[0]
    assert "said: <b>dog</b> (0.95)" in figures[0]
    assert 'title="' + str(reports.parent / "data" / "c2" / 'odd &quot;name&quot; &lt;b&gt;.png"') \
        in figures[0]
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)"', figures[0]).group(1)
    with Image.open(io.BytesIO(base64.b64decode(uri))) as thumb:
        assert thumb.size == (128, 128)
    logreg = next(r for r in collect_reports(reports) if r["model"] == "pets__vgg16__logreg")
    shown, wrong, unreadable = confident_mistakes(logreg)
    assert (wrong, unreadable) == (2, 0)
    assert [m["score"] for m in shown] == pytest.approx([0.9, 0.6])
    assert [(m["true"], m["predicted"]) for m in shown] == [("dog", HOSTILE), (HOSTILE, "cat")]
    Path(shown[0]["id"]).unlink()
    shown, wrong, unreadable = confident_mistakes(logreg, most=5)
    assert (len(shown), wrong, unreadable) == (1, 2, 1)


def test_sections_per_model_with_confusion_per_class_and_curves(reports):
    page = _page(reports)
    sections = re.findall(r'<details class="model".*?</details>', page, flags=re.S)
    assert len(sections) == 3
    # each section names its model in full (the file names), beside the short name
    by_name = {re.search(r'<code class="full">([^<]*)</code>', s).group(1): s
               for s in sections}
    confusion = json.loads((reports / "pets__vgg16__sgd" / "metrics.json").read_text()
                           )["test"]["confusion"]
    cells = [int(c) for c in re.findall(
        r'<td class="num[^"]*" style="[^"]*">(\d+)</td>',
        by_name["pets__vgg16__sgd"].split('<table class="confusion">')[1].split("</table>")[0])]
    assert cells == [c for row in confusion for c in row]
    assert "Per class, worst F1 first" in by_name["pets__vgg16__sgd"]
    assert 'class="plot curves"' in by_name["pets__vgg16__finetune_vgg16"]
    assert 'class="plot curves"' not in by_name["pets__vgg16__logreg"]
    assert all('class="plot reliability"' in s for s in sections)


def test_user_strings_are_escaped(reports):
    page = _page(reports)
    assert HOSTILE not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'odd "name" <b>' not in page and "odd &quot;name&quot; &lt;b&gt;.png" in page


def test_nothing_is_fetched_from_outside(reports):
    page = _page(reports)
    references = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page, flags=re.I)
    assert references, "the page embeds its images"
    assert all(ref.startswith(("data:", "#")) for ref in references), references
    # base64 payloads may spell anything ('http' included): look outside them
    assert not re.search(r"https?://", re.sub(r"base64,[A-Za-z0-9+/=]+", "", page))
    for forbidden in ("<link", "<script", "@import", "url(", "<iframe", "<object"):
        assert forbidden not in page.lower()
    assert "default-src 'none'" in page  # and the browser is told to fetch nothing


def test_refusals(reports):
    with pytest.raises(UserInputError, match=r"no model reports of dataset 'fish'.*birds, pets"):
        write_dataset_report("fish", reports)
    foreign = reports / "pets" / "index.html"
    foreign.parent.mkdir()
    foreign.write_text("<html>my own notes</html>")
    with pytest.raises(UserInputError, match="not written by tlearn"):
        write_dataset_report("pets", reports)
    assert foreign.read_text() == "<html>my own notes</html>"


def test_train_and_compare_update_the_page(shapes_store, artifacts):
    from pipeline.workflows import compare_models, train_store

    store_path, _ = shapes_store
    train_store(store_path, classifier="logreg", cv=2)
    page = artifacts / "reports" / "shapes" / "index.html"  # the folder the store came from
    assert "shapes__vgg16__avg__logreg" in page.read_text()
    train_store(store_path, classifier="linear_svm", cv=2)
    assert "shapes__vgg16__avg__linear_svm" in page.read_text()
    page.unlink()
    compare_models([])
    assert page.read_text().count('<details class="model"') == 2


def test_stage3_from_a_store_joins_its_datasets_page(shapes_store, artifacts):
    from pipeline.augmentation import AugmentationConfig
    from pipeline.stage3 import ScratchSettings, train_from_scratch
    from pipeline.workflows import train_store

    store_path, _ = shapes_store
    train_store(store_path, classifier="logreg", cv=2)
    result = train_from_scratch(ScratchSettings(
        store_path, input_size=16, epochs=1, batch_size=8, val_share=0.2,
        augmentation=AugmentationConfig(enabled=False)))
    assert result.report["dataset"] == "shapes"
    page = (artifacts / "reports" / "shapes" / "index.html").read_text()
    section = page.split('<code class="full">shapes__vgg16__avg__scratch_minivggnet</code>')[1]
    assert 'class="plot curves"' in section.split("</details>")[0]
    assert "shapes__vgg16__avg__logreg" in page


def test_report_command(reports, monkeypatch, tmp_path):
    from pipeline.cli import app

    runner = CliRunner()
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "empty"))
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 2
    assert result.output.startswith("error: no model reports under") and "Traceback" not in \
        result.output
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(reports.parent))
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(reports / "birds" / "index.html"),
                                     str(reports / "pets" / "index.html")]
    result = runner.invoke(app, ["report", "fish"])
    assert result.exit_code == 2 and "no model reports of dataset 'fish'" in result.output
    # one unknown name among good ones: an error and no page written at all
    for page in reports.glob("*/index.html"):
        page.unlink()
    result = runner.invoke(app, ["report", "birds", "fish"])
    assert result.exit_code == 2 and "'fish'" in result.output and "birds, pets" in result.output
    assert not list(reports.glob("*/index.html"))


def test_many_classes_show_the_confusion_image_not_a_table(tmp_path):
    names = [f"class{i:02d}" for i in range(21)]
    y = np.arange(21).repeat(2)
    scores = np.eye(21)[np.roll(y, 1)]  # some right, most wrong: no matter here
    write_report(tmp_path / "many__vgg16__logreg",
                 evaluate_predictions(y, scores, np.arange(21), names),
                 {"model": "many__vgg16__logreg", "stage": "features", "dataset": "many"})
    page = write_dataset_report("many", tmp_path).read_text()
    section = page.split('<details class="model"')[1]
    assert '<table class="confusion">' not in section
    assert '<img class="plot" src="data:image/png;base64,' in section
    # without sample ids a report keeps row numbers, which are no image files
    assert "kept no image paths, only row numbers" in page
    assert 'class="mistake"' not in page


def test_short_display_names_keep_the_full_name_at_hand(reports):
    from pipeline.report_page import display_names

    assert display_names(["dogcat__efficientnet_lite0__finetune_efficientnet_lite0",
                          "dogcat__efficientnet_lite0__logreg"], "dogcat") == {
        "dogcat__efficientnet_lite0__finetune_efficientnet_lite0": "efficientnet_lite0 · finetune",
        "dogcat__efficientnet_lite0__logreg": "efficientnet_lite0 · logreg"}
    # names that would coincide once shortened stay whole
    assert display_names(["d__x__a", "d__x_a"], "d") == {"d__x__a": "x · a", "d__x_a": "x_a"}
    page = _page(reports)
    chart = page.split('<svg class="chart"')[1].split("</svg>")[0]
    names = re.findall(r'<text class="name"[^>]*>([^<]*)</text>', chart)
    assert names == ["vgg16 · finetune", "vgg16 · logreg", "vgg16 · sgd"]
    assert "<title>pets__vgg16__finetune_vgg16: best</title>" in chart
    table = page.split('<table class="compare">')[1].split("</table>")[0]
    assert '<td class="model" title="pets__vgg16__sgd"><a href="#m-pets__vgg16__sgd">' \
        'vgg16 · sgd</a></td>' in table


def test_page_shows_resplits_speed_and_which_model_to_keep(tmp_path):
    images = [write_image(tmp_path / "data" / f"c{i % 3}" / f"i{i}.png", (9, 9, 9), seed=i)
              for i in range(12)]
    truth = [i % 3 for i in range(12)]
    root = tmp_path / "reports"
    repeats = {"n": 5, "accuracy_mean": 0.95, "accuracy_std": 0.02, "accuracy_min": 0.9,
               "accuracy_max": 0.98}
    _model(root, "pets__vgg16__logreg", images, truth, {}, repeats=repeats,
           extraction_images_per_second=25.0)
    _model(root, "pets__lite0__logreg", images, truth, {1: (2, 0.9)},
           extraction_images_per_second=100.0)
    _model(root, "pets__old__logreg", images, truth, {1: (2, 0.9)})
    page = _page(root)
    table = page.split('<table class="compare">')[1].split("</table>")[0]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert "re-splits" in headers and "images/s" in headers
    rows = re.findall(r"<tr class=.*?</tr>", table)
    assert '0.950 ± 0.020 <span class="ci">(n=5)</span>' in rows[0]
    # 1 / (1/25 + 1/100) and 1 / (1/100 + 1/100); the old store recorded no rate
    assert '<td class="num">20</td>' in rows[0] and '<td class="num">50</td>' in rows[1]
    assert "pets__old__logreg" in rows[2] and '<td class="num">50</td>' not in rows[2]
    advice = page.split('<p class="advice" id="recommended">')[1].split("</p>")[0]
    assert advice.startswith("Recommended: pets__lite0__logreg, the cheapest model not "
                             "significantly worse than the best, pets__vgg16__logreg")
    assert "2.5x faster" in advice
    assert '<dt>recommended</dt><dd>lite0 · logreg (<a href="#recommended">why</a>)' in page


def test_balanced_accuracy_beside_accuracy_and_missing_in_old_reports(reports):
    page = _page(reports)
    test = json.loads((reports / "pets__vgg16__logreg" / "metrics.json").read_text())["test"]
    lo, hi = test["balanced_accuracy_ci"]
    assert "balanced accuracy [95 % CI]" in page
    assert f'{test["balanced_accuracy"]:.3f} <span class="ci">[{lo:.3f}, {hi:.3f}]</span>' in page
    assert f"balanced accuracy {test['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in page
    # a report written before balanced accuracy: its cell says so, the page still renders
    for name in ("pets__vgg16__logreg", "pets__vgg16__sgd", "pets__vgg16__finetune_vgg16"):
        path = reports / name / "metrics.json"
        payload = json.loads(path.read_text())
        del payload["test"]["balanced_accuracy"], payload["test"]["balanced_accuracy_ci"]
        path.write_text(json.dumps(payload))
    page = _page(reports)
    assert "balanced accuracy [95 % CI]" not in page  # no model has one: no empty column
    assert "balanced accuracy –" in page


def test_risk_coverage_curve_with_the_models_threshold(tmp_path):
    from classifiers.novelty import test_figures

    # four test images by unknown score: 0.1 right, 0.2 right, 0.3 wrong, 0.4 wrong;
    # accepting the lowest first gives, by hand, 1/4 at 1.0, 2/4 at 1.0, 3/4 at 2/3,
    # 4/4 at 1/2; a threshold of 0.2 accepts half, all right
    unknown = {"score": "mahalanobis_unit", "rank": 4, "threshold": 0.2, "coverage": 0.95,
               "held_out_coverage": 0.95,
               **test_figures([0.4, 0.1, 0.3, 0.2], [False, True, False, True], 0.2)}
    y = np.array([0, 1, 0, 1])
    write_report(tmp_path / "pets__vgg16__logreg",
                 evaluate_predictions(y, np.eye(2)[[1, 1, 0, 1]], np.arange(2), ["a", "b"]),
                 {"model": "pets__vgg16__logreg", "stage": "features", "dataset": "pets",
                  "unknown": unknown})
    write_report(tmp_path / "pets__vgg16__sgd",
                 evaluate_predictions(y, np.eye(2)[y], np.arange(2), ["a", "b"]),
                 {"model": "pets__vgg16__sgd", "stage": "features", "dataset": "pets"})
    page = write_dataset_report("pets", tmp_path).read_text()
    curves = re.findall(r'<figure class="plot risk-coverage">.*?</figure>', page, flags=re.S)
    assert len(curves) == 1  # the model without the score (an older report) has none
    points = re.search(r'data-points="([^"]*)"', curves[0]).group(1)
    np.testing.assert_allclose([[float(v) for v in p.split(":")] for p in points.split()],
                               [[0.25, 1.0], [0.5, 1.0], [0.75, 2 / 3], [1.0, 0.5]], atol=1e-4)
    marker = re.search(r'<g class="threshold" data-coverage="([^"]*)" '
                       r'data-accuracy="([^"]*)">', curves[0])
    assert (float(marker.group(1)), float(marker.group(2))) == (0.5, 1.0)
    assert "threshold (95% coverage)" in curves[0]
    # the curve is drawn where its points say: x grows with the share accepted, y falls
    # with the accuracy
    pixels = [tuple(map(float, p.split(","))) for p in re.search(
        r'<polyline class="curve" fill="none" points="([^"]*)"', curves[0]).group(1).split()]
    assert [x for x, _ in pixels] == sorted(x for x, _ in pixels)
    assert pixels[0][1] == pixels[1][1] < pixels[2][1] < pixels[3][1]


def test_data_section_shows_checks_findings_and_accuracy_without_flagged_images(reports):
    assert 'id="data"' not in _page(reports)  # no issues.csv beside the page: no section
    data = reports.parent / "data"
    flagged = str(data / "c2" / 'odd "name" <b>.png')  # the best model's one mistake
    with (reports / "pets" / "issues.csv").open("w", newline="") as f:
        csv.writer(f).writerows([
            ["path", "issue", "score", "given_label", "suggested_label", "related_path",
             "split"],
            [flagged, "label", "0.9", HOSTILE, "dog", "", "test"],
            [data / "c0" / "img_00.jpg", "leak", "0.97", "cat", "", data / "c0" / "img_03.jpg",
             "test"]])
    section = _page(reports).split('<section id="data">')[1].split("</section>")[0]
    # 11 of 12 right on all; the 9 test images no finding names: all right
    assert "<b>0.917</b> on all 12 test images, <b>1.000</b> on the 9" in section
    assert "<h3>label: 1</h3>" in section and "<h3>leak: 1</h3>" in section
    assert "likely <b>dog</b>" in section and HOSTILE not in section
    assert len(re.findall(r'<figure class="mistake"', section)) == 2
