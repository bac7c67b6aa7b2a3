"""Write test reports (JSON, markdown, CSV, PNG) and compare the models that have one.

Every stage writes the same ``metrics.json`` layout under
``artifacts/reports/<model-name>/``, which is what ``tlearn compare`` reads.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.evaluation import Evaluation

REPORT_FILE = "metrics.json"
COMPARE_COLUMNS = ("model", "stage", "backbone", "classifier", "test_accuracy", "macro_f1",
                   "rank5", "chosen", "fit_seconds", "predictions_per_second", "size_mb")


def format_chosen(chosen: Any) -> str:
    """``{"C": 1000.0}`` -> ``C=1000``."""
    if isinstance(chosen, dict):
        return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                         for k, v in chosen.items()) or "-"
    return str(chosen) if chosen not in (None, "") else "-"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(directory: str | os.PathLike, evaluation: Evaluation, info: dict[str, Any]
                 ) -> Path:
    """Write ``metrics.json``, ``summary.md``, ``per_class.csv``, ``confusion.csv`` and
    ``confusion.png`` for one model into ``directory``.

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
    directory.mkdir(parents=True, exist_ok=True)
    payload = {**info, "test": evaluation.to_dict()}
    (directory / REPORT_FILE).write_text(json.dumps(payload, indent=2, default=str))

    names = evaluation.label_names
    with (directory / "confusion.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, evaluation.confusion, strict=True):
            writer.writerow([name, *row])
    with (directory / "per_class.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name in names:
            r = evaluation.per_class[name]
            writer.writerow([name, f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                             f"{r['f1-score']:.4f}", int(r["support"])])
    plot_confusion(evaluation.confusion, names, directory / "confusion.png",
                   title=f"{info.get('model', '')}: test accuracy {evaluation.accuracy:.3f}")

    lines = [
        f"# {info.get('model', directory.name)}",
        "",
        f"- stage: {info.get('stage', '')}; backbone: {info.get('backbone', '')}; "
        f"classifier: {info.get('classifier', '')}",
        f"- test images: {evaluation.n_samples}",
        f"- test accuracy: {evaluation.accuracy:.4f}; macro-F1: {evaluation.macro_f1:.4f}; "
        f"rank-1: {evaluation.rank1:.4f}; rank-5: {_fmt(evaluation.rank5)}",
        f"- chosen: {format_chosen(info.get('chosen'))}; "
        f"fit: {_fmt(info.get('fit_seconds'), 2)} s; "
        f"predictions/s: {evaluation.predictions_per_second:,.0f}; "
        f"size: {_fmt((info.get('size_bytes') or 0) / 2**20, 2)} MB",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        r = evaluation.per_class[name]
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['f1-score']:.3f} | {int(r['support'])} |")
    cv = info.get("cv")
    if cv:
        lines += ["", f"Cross-validation ({cv['param']}): " + ", ".join(
            f"{v:g}: {m:.4f}" for v, m in zip(cv["grid"], cv["mean_accuracy"], strict=True))]
    lines += ["", "![confusion matrix](confusion.png)", ""]
    (directory / "summary.md").write_text("\n".join(lines))
    return directory


def read_report(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / REPORT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def comparison_row(report: dict[str, Any]) -> dict[str, Any]:
    test = report.get("test", {})
    return {
        "model": report.get("model", ""),
        "stage": report.get("stage", ""),
        "backbone": report.get("backbone", ""),
        "classifier": report.get("classifier", ""),
        "test_accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "rank5": test.get("rank5"),
        "chosen": format_chosen(report.get("chosen")),
        "fit_seconds": report.get("fit_seconds"),
        "predictions_per_second": test.get("predictions_per_second"),
        "size_mb": (report.get("size_bytes") or 0) / 2**20,
    }


def collect_reports(reports_root: str | os.PathLike, *, stores: list[str] | None = None,
                    models: list[str] | None = None) -> list[dict[str, Any]]:
    """Reports under ``reports_root``, optionally only those of given stores or model files."""
    root = Path(reports_root)
    if not root.is_dir():
        return []
    found = [read_report(d) for d in sorted(p for p in root.iterdir() if p.is_dir())]
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
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / "comparison.csv", directory / "comparison.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COMPARE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    header = "| " + " | ".join(COMPARE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COMPARE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in COMPARE_COLUMNS) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: -(r["test_accuracy"] or 0.0))
