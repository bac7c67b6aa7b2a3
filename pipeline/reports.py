"""Write test reports (JSON, markdown, CSV, PNG) and compare the models that have one.

Every stage writes the same ``metrics.json`` layout under
``artifacts/reports/<model-name>/``, which is what ``tlearn compare`` reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from classifiers.evaluation import Evaluation
from classifiers.statistics import mcnemar_exact
from features.integrity import atomic_write, atomic_write_json, atomic_write_text
from pipeline.datasets import source_dataset_name

REPORT_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
COMPARE_COLUMNS = ("model", "stage", "backbone", "classifier", "test_images", "test_accuracy",
                   "accuracy_95ci", "balanced_accuracy", "balanced_accuracy_95ci",
                   "resplit_accuracy", "macro_f1", "rank5", "log_loss", "ece",
                   "vs_best_p", "vs_best", "chosen", "fit_seconds", "images_per_second",
                   "extraction_per_second", "predictions_per_second", "size_mb")
# Two models whose McNemar p-value is at least this are "not significantly worse" apart.
SIGNIFICANCE = 0.05


def format_chosen(chosen: Any) -> str:
    """``{"C": 0.0031622776601683794}`` -> ``C=0.0032`` (two significant digits)."""
    if isinstance(chosen, dict):
        return ", ".join(f"{k}={format_value(v, significant=2)}" for k, v in chosen.items()
                         ) or "-"
    return str(chosen) if chosen not in (None, "") else "-"


def format_value(value: Any, digits: int = 4, missing: str = "-", *,
                 significant: int | None = None) -> str:
    """A table cell: floats to ``digits`` places, ``missing`` for None or NaN.

    With ``significant``, numbers keep that many significant digits for people to read
    (``0.0031622776601683794`` -> ``0.0032``, ``10000.0`` -> ``10000``, ``1e-07``), never
    rounding away a digit left of the decimal point.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if significant is not None and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if not 1e-4 <= abs(value) < 1e7:
            return f"{value:.{significant}g}"
        places = max(0, significant - 1 - math.floor(math.log10(abs(value))))
        text = f"{value:.{places}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def plot_confusion(confusion: list[list[int]], label_names: list[str], path: Path,
                   title: str = "") -> Path:
    """Heat map of a confusion matrix with class names and counts, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    n = len(label_names)
    side = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_title(title or "confusion matrix")
    return _save_figure(fig, path)


def _ci(interval) -> str:
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    plt.close(fig)
    return path


def plot_reliability(reliability: dict, ece: float | None, path: Path, title: str = "") -> Path:
    """Reliability diagram: accuracy against mean top probability per bin, with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(reliability["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    used = [i for i, c in enumerate(reliability["counts"]) if c]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.bar(centres[used], [reliability["accuracy"][i] for i in used], width=edges[1] - edges[0],
           edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([reliability["confidence"][i] for i in used],
            [reliability["accuracy"][i] for i in used], "o", color="tab:red",
            label="mean top probability")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    # small: a long model name would otherwise run past the figure's edge
    ax.set_title(f"{title}: ECE {ece:.3f} (15 bins)" if ece is not None else title,
                 fontsize=8)
    hist.bar(centres, reliability["counts"], width=edges[1] - edges[0], edgecolor="black")
    hist.set_xlabel("top probability")
    hist.set_ylabel("images")
    return _save_figure(fig, path)


def plot_mistakes(per_image: dict, path: Path, most: int = 16) -> Path | None:
    """A gallery of up to ``most`` test images the model got wrong, most confident first."""
    wrong = [i for i, (t, p) in enumerate(zip(per_image["true"], per_image["predicted"],
                                              strict=True)) if t != p]
    wrong = [i for i in sorted(wrong, key=lambda i: -per_image["score"][i])
             if os.path.isfile(per_image["id"][i])][:most]
    if not wrong:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(wrong))
    rows = (len(wrong) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong, strict=False):
        try:
            with Image.open(per_image["id"][i]) as img:
                img.thumbnail((256, 256))
                ax.imshow(img.convert("RGB"))
        except OSError:
            continue
        ax.set_title(f"true {per_image['true'][i]}\nsaid {per_image['predicted'][i]} "
                     f"({per_image['score'][i]:.2f})", fontsize=9)
    fig.suptitle("test images the model got wrong (most confident first)")
    return _save_figure(fig, path)


def write_report(directory: str | os.PathLike, evaluation: Evaluation, info: dict[str, Any]
                 ) -> Path:
    """Write one model's test report into ``directory``.

    Files: ``metrics.json`` (written last: a report counts once it is there),
    ``summary.md``, ``per_class.csv``, ``confusion.csv``, ``confusion.png``, and when
    known ``predictions.csv`` (one row per test image, for paired comparisons),
    ``mistakes.png`` (a gallery of errors) and ``reliability.png`` (calibration).

    Parameters
    ----------
    directory : path-like
        Usually ``artifacts/reports/<model-name>``.
    evaluation : Evaluation
        Test metrics.
    info : dict
        Model facts: ``model`` (name), ``stage``, ``backbone``, ``classifier``, ``chosen``
        (hyperparameter), ``cv`` (scores), ``fit_seconds``, ``size_bytes``, ``model_path``...
    """
    directory = Path(directory)
    names = evaluation.label_names
    atomic_write_text(directory / "confusion.csv", _csv_text(
        [["true \\ predicted", *names]]
        + [[name, *row] for name, row in zip(names, evaluation.confusion, strict=True)]))
    atomic_write_text(directory / "per_class.csv", _csv_text(
        [["class", "precision", "recall", "f1", "support"]]
        + [[name, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1-score']:.4f}",
            int(r["support"])] for name, r in ((n, evaluation.per_class[n]) for n in names)]))
    plot_confusion(evaluation.confusion, names, directory / "confusion.png",
                   title=f"{info.get('model', '')}: test accuracy {evaluation.accuracy:.3f}")
    per_image = evaluation.per_image
    if per_image.get("id"):
        atomic_write_text(directory / PREDICTIONS_FILE, _csv_text(
            [["id", "true", "predicted", "score"]]
            + [list(row) for row in zip(per_image["id"], per_image["true"],
                                        per_image["predicted"], per_image["score"],
                                        strict=True)]))
        plot_mistakes(per_image, directory / "mistakes.png")
    if evaluation.reliability:
        plot_reliability(evaluation.reliability, evaluation.ece, directory / "reliability.png",
                         title=info.get("model", ""))

    lines = [
        f"# {info.get('model', directory.name)}",
        "",
        f"- stage: {info.get('stage', '')}; backbone: {info.get('backbone', '')}; "
        f"classifier: {info.get('classifier', '')}"
        + (f"; class weight: {info['class_weight']}" if info.get("class_weight") else ""),
        f"- test images: {evaluation.n_samples}",
        f"- test accuracy: {evaluation.accuracy:.4f} {_ci(evaluation.accuracy_ci)}; "
        f"macro-F1: {evaluation.macro_f1:.4f} {_ci(evaluation.macro_f1_ci)}; "
        f"rank-1: {evaluation.rank1:.4f}; rank-5: {format_value(evaluation.rank5)} "
        f"{_ci(evaluation.rank5_ci)}".rstrip(),
        f"- balanced accuracy (mean per-class recall): "
        f"{format_value(evaluation.balanced_accuracy)} "
        f"{_ci(evaluation.balanced_accuracy_ci)}".rstrip(),
        "  (95 % intervals: Wilson for accuracy and rank-5, bootstrap over test images "
        "for macro-F1 and balanced accuracy)",
        f"- scores: {evaluation.scores}"
        + (f"; log-loss {evaluation.log_loss:.4f}; expected calibration error "
           f"{evaluation.ece:.4f} (15 equal-width bins)" if evaluation.ece is not None
           else " (no probabilities: no log-loss or calibration)"),
        f"- chosen: {format_chosen(info.get('chosen'))}; "
        f"fit: {format_value(info.get('fit_seconds'), 2)} s; "
        f"predictions/s: {evaluation.predictions_per_second:,.0f}; "
        f"size: {format_value((info.get('size_bytes') or 0) / 2**20, 2)} MB",
        f"- images/s from image files: {_speed(info, evaluation)}",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        r = evaluation.per_class[name]
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['f1-score']:.3f} | {int(r['support'])} |")
    unknown = info.get("unknown")
    if unknown:
        accepted = format_value(unknown.get("test_accepted"), 3)
        score = str(unknown["score"])
        unit = ", features divided by their length" if score.endswith("_unit") else ""
        lines += ["", f"Unknown images: a {score.removesuffix('_unit')} distance to the "
                  f"training features (rank {unknown['rank']}{unit}) above "
                  f"{unknown['threshold']:.4g} "
                  f"predicts 'unknown'; the threshold, fitted on held-out folds of the train "
                  f"split for {unknown['coverage']:.0%} coverage, accepts "
                  f"{unknown['held_out_coverage']:.3f} of those and {accepted} of the test "
                  "images"
                  + (f" ({unknown['test_accepted_accuracy']:.3f} of them classified right)."
                     if unknown.get("test_accepted_accuracy") is not None else ".")]
    calibration = info.get("calibration")
    if calibration:
        lines += ["", f"Calibration: {calibration['note']}."]
    rep = info.get("repeats")
    if rep:
        lines += ["", f"Over {rep['n']} seeded re-splits of the train and test rows (same "
                  f"test share, grouped and stratified): test accuracy "
                  f"{rep['accuracy_mean']:.4f} ± {rep['accuracy_std']:.4f} "
                  f"(min {rep['accuracy_min']:.4f}, max {rep['accuracy_max']:.4f}); the "
                  f"recorded split above gave {evaluation.accuracy:.4f}."]
    cv = info.get("cv")
    if cv:
        lines += ["", *_search_table(cv)]
    lines += ["", "![confusion matrix](confusion.png)", ""]
    if evaluation.reliability:
        lines += ["![reliability diagram](reliability.png)", ""]
    if (directory / "mistakes.png").exists():
        lines += ["![some test images it got wrong](mistakes.png)", ""]
    atomic_write_text(directory / "summary.md", "\n".join(lines))
    # Written last: a report counts (read_report) only once all its files are there.
    atomic_write_json(directory / REPORT_FILE, {**info, "test": evaluation.to_dict()})
    return directory


def _speed(info: dict[str, Any], evaluation: Evaluation) -> str:
    """The images-per-second line of ``summary.md``: the whole rate and its two parts."""
    rate = images_per_second({**info, "test": evaluation.to_dict()})
    extract = _rate(info.get("extraction_images_per_second"))
    if _timed_on_files(info):
        return f"{format_value(rate, 0)} (the network on the test images)"
    if extract is None:
        return ("- (the store recorded no extraction rate: extracted before tlearn kept it)"
                if info.get("stage") == "features" else "-")
    return (f"{format_value(rate, 0)} (extraction {extract:,.0f} images/s, then the "
            f"classifier {evaluation.predictions_per_second:,.0f} on their features)")


# What each rule of classifiers.search.choose picks, in words.
_RULE_TEXT = {"log_loss": "the least mean held-out log-loss",
              "log_loss_1se": "the most regularised value within one standard error of the "
                              "least mean held-out log-loss",
              "accuracy": "the best mean held-out accuracy"}


def _search_table(cv: dict[str, Any]) -> list[str]:
    """The cross-validation table of ``summary.md``: the criterion that chose beside accuracy."""
    param, chosen = cv["param"], cv.get("best")
    rule = cv.get("rule", "log_loss")
    losses = cv.get("mean_log_loss") or [None] * len(cv["grid"])
    lines = [f"Cross-validation ({cv.get('folds', '?')} folds): {param} chosen by "
             f"{_RULE_TEXT.get(rule, rule)}.", "",
             f"| {param} | held-out log-loss | held-out accuracy | |", "|---|---|---|---|"]
    for value, loss, accuracy in zip(cv["grid"], losses, cv["mean_accuracy"], strict=True):
        mark = "chosen" if value == chosen else ""
        lines.append(f"| {format_value(value, significant=2)} | {format_value(loss)} | "
                     f"{format_value(accuracy)} | {mark} |")
    return lines


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def read_report(directory: str | os.PathLike, *,
                warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """A report's ``metrics.json`` (with ``report_dir`` added), or None if there is none.

    A damaged file (not UTF-8 JSON, or not a model's metrics) also gives None, said
    through ``warn`` when given: one bad report must not stop the others being read.
    """
    path = Path(directory) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(report, dict) and isinstance(
            report.get("test"), dict) else "not a model's metrics"
    except FileNotFoundError:
        return None  # written last: a report still being written, or not a report folder
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        problem = str(exc)
    if problem is not None:
        if warn:
            warn(f"warning: skipped {path}: damaged ({problem}); train that model again "
                 "with --overwrite, or remove its folder")
        return None
    report["report_dir"] = str(Path(directory))
    return report


def read_prediction_rows(report: dict[str, Any]) -> list[dict[str, str]] | None:
    """The rows (``id, true, predicted, score``) of the report's ``predictions.csv``, or None."""
    path = Path(report.get("report_dir", "")) / PREDICTIONS_FILE
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return None
    if rows and not {"id", "true", "predicted", "score"} <= set(rows[0]):
        return None
    return rows


def read_predictions(report: dict[str, Any]) -> dict[str, bool] | None:
    """Per test image id: whether the model was right, from the report's ``predictions.csv``."""
    rows = read_prediction_rows(report)
    if rows is None:
        return None
    return {row["id"]: row["true"] == row["predicted"] for row in rows}


def report_dataset(report: dict[str, Any]) -> str:
    """The dataset a model was trained on: the name its store or folder recorded.

    Models record ``dataset`` (the name of the image folder or CSV their store or
    split was made from). Reports written before it was recorded fall back on their
    store name, as :func:`pipeline.datasets.source_dataset_name` does without a source.
    """
    if report.get("dataset"):
        return str(report["dataset"])
    return source_dataset_name(None, str(report.get("store_name") or report.get("model") or ""))


def paired_comparison(best: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """McNemar's exact test of ``other`` against ``best`` when both saw the same test images.

    Returns ``{"verdict", "p_value", "paired"}``; models tested on different images
    (another split, another store) are never compared as if paired.
    """
    a, b = read_predictions(best), read_predictions(other)
    if a is None or b is None:
        return {"paired": False, "p_value": None,
                "verdict": "no per-image predictions (trained before they were kept)"}
    if set(a) != set(b):
        return {"paired": False, "p_value": None,
                "verdict": "tested on other images: not comparable pair by pair"}
    ids = sorted(a)
    result = mcnemar_exact(np.array([a[i] for i in ids]), np.array([b[i] for i in ids]))
    return {"paired": True, "p_value": result.p_value,
            "verdict": result.verdict(best.get("model", "best"), other.get("model", "this"))}


def _rate(value: Any) -> float | None:
    """A recorded images-per-second figure, None where it was not recorded (0 or absent)."""
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _timed_on_files(report: dict[str, Any]) -> bool:
    return report.get("stage") in ("finetune", "scratch") or bool(report.get("runtime"))


def images_per_second(report: dict[str, Any]) -> float | None:
    """How many images per second the model classifies from image files, None if unknown.

    A stage 3 network, or a model evaluated on image files with a ``runtime``, was
    timed on the test images themselves. A classifier on stored
    features needs its backbone first: the extraction rate its store recorded and its own
    rate on the test features combine as ``1 / (1/extraction + 1/classifier)``. Reports of
    stores extracted before the rate was recorded have none.
    """
    classify = _rate(report.get("test", {}).get("predictions_per_second"))
    if _timed_on_files(report):
        return classify
    extract = _rate(report.get("extraction_images_per_second"))
    if classify is None or extract is None:
        return None
    return 1.0 / (1.0 / extract + 1.0 / classify)


def comparison_row(report: dict[str, Any]) -> dict[str, Any]:
    test = report.get("test", {})
    return {
        "model": report.get("model", ""),
        "stage": report.get("stage", ""),
        "backbone": report.get("backbone", ""),
        "classifier": report.get("classifier", ""),
        "test_images": test.get("n_samples"),
        "test_accuracy": test.get("accuracy"),
        "accuracy_95ci": _ci(test.get("accuracy_ci")),
        "accuracy_ci": test.get("accuracy_ci"),
        # None in reports written before balanced accuracy: shown as missing
        "balanced_accuracy": test.get("balanced_accuracy"),
        "balanced_accuracy_95ci": _ci(test.get("balanced_accuracy_ci")),
        "balanced_accuracy_ci": test.get("balanced_accuracy_ci"),
        "resplit_accuracy": (f"{report['repeats']['accuracy_mean']:.4f} ± "
                             f"{report['repeats']['accuracy_std']:.4f} "
                             f"(n={report['repeats']['n']})") if report.get("repeats") else "",
        "resplit": (report["repeats"]["accuracy_mean"], report["repeats"]["accuracy_std"],
                    report["repeats"]["n"]) if report.get("repeats") else None,
        "log_loss": test.get("log_loss"),
        "ece": test.get("ece"),
        "macro_f1": test.get("macro_f1"),
        "rank5": test.get("rank5"),
        "chosen": format_chosen(report.get("chosen")),
        "fit_seconds": report.get("fit_seconds"),
        "images_per_second": images_per_second(report),
        "extraction_per_second": _rate(report.get("extraction_images_per_second")),
        "predictions_per_second": _rate(test.get("predictions_per_second")),
        "size_mb": (report.get("size_bytes") or 0) / 2**20,
    }


def collect_reports(reports_root: str | os.PathLike, *, stores: list[str] | None = None,
                    models: list[str] | None = None,
                    warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Reports under ``reports_root``, optionally only those of given stores or model files.

    Damaged reports are left out, each said through ``warn`` (see :func:`read_report`).
    """
    root = Path(reports_root)
    if not root.is_dir():
        return []
    found = [read_report(d, warn=warn) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    return filter_reports([r for r in found if r is not None], stores=stores, models=models)


def filter_reports(reports: list[dict[str, Any]], *, stores: list[str] | None = None,
                   models: list[str] | None = None) -> list[dict[str, Any]]:
    """The reports of models trained on ``stores`` or saved as ``models`` (all if neither)."""
    store_names = {Path(s).stem for s in stores or []}
    model_names = {Path(m).stem for m in models or []}
    return [r for r in reports
            if (not store_names or r.get("store_name") in store_names)
            and (not model_names or r.get("model") in model_names)]


def write_comparison(rows: list[dict[str, Any]], directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.csv``; rows sorted by test accuracy."""
    directory = Path(directory)
    csv_path, md_path = directory / "comparison.csv", directory / "comparison.md"
    atomic_write_text(csv_path, _csv_text(
        [list(COMPARE_COLUMNS)] + [[row.get(c, "") for c in COMPARE_COLUMNS] for row in rows]))
    header = "| " + " | ".join(COMPARE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COMPARE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c)) for c in COMPARE_COLUMNS) + " |")
    advice = recommend(rows)
    if advice:
        lines += ["", advice["text"]]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return md_path, csv_path


def compare_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparison rows, best first, each judged against the best by McNemar's exact test.

    Of models with the same test accuracy the fastest (images per second from files,
    :func:`images_per_second`) comes first: a tie is not broken by the names' order.
    """
    order = sorted(reports, key=lambda r: (-(r.get("test", {}).get("accuracy") or 0.0),
                                           -(images_per_second(r) or 0.0)))
    rows = []
    for i, report in enumerate(order):
        row = comparison_row(report)
        if i == 0:
            row |= {"vs_best_p": None, "vs_best": "best"}
        else:
            paired = paired_comparison(order[0], report)
            row |= {"vs_best_p": paired["p_value"], "vs_best": paired["verdict"]}
        rows.append(row)
    return rows


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Which model to keep: the fastest that is not significantly worse than the best.

    ``rows`` come from :func:`compare_reports` (best first). "Not significantly worse"
    means McNemar's exact test on the same test images gives p >= :data:`SIGNIFICANCE`;
    models tested on other images, or without images-per-second figures, cannot qualify.
    Returns ``{"model", "text"}`` (the text says which and why), None without rows.
    """
    if not rows:
        return None
    best = rows[0]
    peers = [best] + [r for r in rows[1:] if r.get("vs_best_p") is not None
                      and r["vs_best_p"] >= SIGNIFICANCE]
    timed = [r for r in peers if r.get("images_per_second")]
    untimed = [r["model"] for r in peers if not r.get("images_per_second")]
    unknown = (f"; speed not recorded for {', '.join(untimed)} (extracted or trained before "
               "tlearn recorded it)") if untimed and timed else ""
    if not timed:
        return {"model": best["model"], "text": (
            f"Recommended: {best['model']}, the best test accuracy. No images-per-second "
            f"figure is recorded for it or the {len(peers) - 1} model(s) not significantly "
            "worse, so none is chosen for its speed ('tlearn extract --overwrite' and "
            "'tlearn train --overwrite' record it).")}
    cheapest = max(timed, key=lambda r: r["images_per_second"])
    rate = f"{cheapest['images_per_second']:,.0f} images/s"
    if cheapest is best:
        if len(rows) == 1:
            why = "the only model"
        elif len(peers) > 1:
            why = "no model that is not significantly worse is faster"
        else:
            why = "every other model is significantly worse or was tested on other images"
        return {"model": best["model"], "text": (
            f"Recommended: {best['model']} ({rate}), the best test accuracy; {why}"
            f"{unknown}.")}
    if best.get("images_per_second"):
        speed = f"{cheapest['images_per_second'] / best['images_per_second']:.1f}x faster " \
                f"({cheapest['images_per_second']:,.0f} against " \
                f"{best['images_per_second']:,.0f} images/s)"
    else:
        speed = f"{rate} (the best's speed was not recorded)"
    return {"model": cheapest["model"], "text": (
        f"Recommended: {cheapest['model']}, the cheapest model not significantly worse than "
        f"the best, {best['model']} (McNemar p={cheapest['vs_best_p']:.2f} on the same test "
        f"images; accuracy {format_value(cheapest.get('test_accuracy'), 3)} against "
        f"{format_value(best.get('test_accuracy'), 3)}): {speed}{unknown}.")}
