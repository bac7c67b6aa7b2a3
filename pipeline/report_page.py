"""The visual report of a dataset: one self-contained HTML page of every model trained on it.

``artifacts/reports/<dataset>/index.html`` shows the models side by side (a chart of
test accuracy with 95 % intervals and the table of ``tlearn compare``), then the best
model's most confident mistakes as thumbnails, then each model's confusion matrix,
per-class figures, reliability diagram and (stage 3) training curves.

Everything is inside the one file (images as ``data:`` URIs, the chart as inline SVG,
no script): it opens from a disk, an e-mail or a CI artefact without a network, and
its Content-Security-Policy forbids the browser to fetch anything at all.

Why ``<dataset>/`` cannot be a model's folder: model reports are named
``<store-name>__<kind>`` (stage 2) or ``<store-name>__finetune_<backbone>`` /
``__scratch_minivggnet`` (stage 3), and a store name already starts with its dataset,
so a model's folder is always the dataset's name plus at least one ``__<suffix>``.
:func:`write_dataset_report` still refuses a folder that holds a model report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from features.errors import UserInputError
from features.integrity import atomic_write_text
from pipeline.reports import (
    REPORT_FILE,
    collect_reports,
    compare_reports,
    format_value,
    read_prediction_rows,
    recommend,
    report_dataset,
)
from pipeline.templates import read_template

PAGE_FILE = "index.html"
# 'tlearn check STORE --out <page folder>/issues.csv': the findings the Data section shows
ISSUES_FILE = "issues.csv"
FINDINGS_SHOWN = 6
#: Written beside the page by ``tlearn auto``: its candidates, shown in a section.
AUTO_FILE = "auto.json"
# Written into every page: a page that lacks it was not written by tlearn and is never replaced.
GENERATOR = "tlearn report page"
MISTAKES_SHOWN = 24
THUMBNAIL_SIDE = 128
# Above this many classes an HTML confusion table is unreadable: the report's PNG is shown.
TABLE_CLASSES = 20
# Folders under artifacts/reports/ that are not model reports (see pipeline.workflows).
_RESERVED = {"evaluations"}


def dataset_names(reports: list[dict[str, Any]]) -> list[str]:
    """The datasets of ``reports``, sorted (see :func:`pipeline.reports.report_dataset`)."""
    return sorted({report_dataset(r) for r in reports if report_dataset(r)})


def page_path(dataset: str, reports_root: str | os.PathLike) -> Path:
    """``<reports_root>/<dataset>/index.html``."""
    return Path(reports_root) / dataset / PAGE_FILE


def write_dataset_report(dataset: str, reports_root: str | os.PathLike, *,
                         reports: list[dict[str, Any]] | None = None) -> Path:
    """Render the page of ``dataset`` from the model reports under ``reports_root``.

    Parameters
    ----------
    dataset : str
        A dataset name, as recorded by its models (``tlearn report`` lists them).
    reports_root : path-like
        Usually ``artifacts/reports``.
    reports : list of dict, optional
        Reports already read by :func:`pipeline.reports.collect_reports` (read if None).

    Returns
    -------
    Path
        ``<reports_root>/<dataset>/index.html``, written atomically.

    Raises
    ------
    UserInputError
        No report of ``dataset``, a name that is not a plain folder name, a folder that
        is a model's report, or an ``index.html`` there that tlearn did not write.
    """
    root = Path(reports_root)
    if reports is None:
        reports = collect_reports(root)
    mine = [r for r in reports if report_dataset(r) == dataset]
    if not mine:
        known = ", ".join(dataset_names(reports)) or "none"
        raise UserInputError(f"no model reports of dataset {dataset!r} under {root} "
                             f"(datasets with reports: {known}); train a model on it first")
    if (dataset in ("", ".", "..") or dataset in _RESERVED or "/" in dataset
            or os.sep in dataset):
        raise UserInputError(f"dataset name {dataset!r} cannot be a folder under {root}; "
                             "rename the dataset folder and extract it again")
    path = page_path(dataset, root)
    if (path.parent / REPORT_FILE).exists():
        raise UserInputError(f"{path.parent} is the report of a model, not of a dataset; "
                             "rename the dataset folder and extract it again")
    if path.exists() and GENERATOR not in path.read_text(encoding="utf-8", errors="replace"):
        raise UserInputError(f"{path} exists and was not written by tlearn; move it away "
                             "to let 'tlearn report' write the page")
    auto = None
    if (path.parent / AUTO_FILE).is_file():
        try:
            auto = json.loads((path.parent / AUTO_FILE).read_text(encoding="utf-8"))
        except ValueError:
            auto = None  # a damaged record costs the section, not the page
    atomic_write_text(path, render_page(dataset, mine, issues=_read_issues(path.parent),
                                        auto=auto))
    return path


def update_dataset_reports(datasets: list[str], reports_root: str | os.PathLike, *,
                           log: Callable[[str], None] | None = None) -> list[Path]:
    """Rewrite the pages of ``datasets`` after a model of theirs was trained or compared.

    Cheap: nothing is loaded but JSON, CSV, PNG files and a few thumbnails. A page that
    cannot be written is reported through ``log`` and skipped: the model it would show
    is already saved, and ``tlearn report`` says the same error again.
    """
    reports = collect_reports(reports_root)
    written = []
    for dataset in sorted(set(datasets)):
        try:
            written.append(write_dataset_report(dataset, reports_root, reports=reports))
        except UserInputError as exc:
            if log:
                log(f"report page of {dataset} not updated: {exc}")
    return written


# -- rendering ---------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    return _e(format_value(value, digits, missing="–"))


def _ci(interval: list[float] | None, digits: int = 3) -> str:
    return f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else ""


def _png_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def display_names(models: list[str], dataset: str) -> dict[str, str]:
    """Short names for a dataset's page, whose title already is the dataset.

    ``dogcat__efficientnet_lite0__finetune_efficientnet_lite0`` ->
    ``efficientnet_lite0 · finetune``: the dataset prefix goes, and so does a part's
    repetition of an earlier part. Names that would then coincide stay whole.
    """
    short = {}
    for model in models:
        parts = model.split("__")
        if len(parts) > 1 and parts[0] == dataset:
            parts = parts[1:]
        kept: list[str] = []
        for part in parts:
            for earlier in kept:
                if part.endswith("_" + earlier) and len(part) > len(earlier) + 1:
                    part = part[:-len(earlier) - 1]
                    break
            kept.append(part)
        short[model] = " · ".join(kept)
    taken = list(short.values())
    return {m: (name if taken.count(name) == 1 else m) for m, name in short.items()}


def render_page(dataset: str, reports: list[dict[str, Any]],
                issues: list[dict[str, str]] | None = None,
                auto: dict[str, Any] | None = None) -> str:
    """The HTML of a dataset's page (see the module docstring for what it holds).

    ``issues``: the rows of the dataset's issues.csv (``tlearn check``), for the Data
    section; none without them. ``auto``: the ``choice.json`` of ``tlearn auto``, shown
    as a section.
    """
    rows = compare_reports(reports)
    by_model = {r.get("model", ""): r for r in reports}
    ordered = [by_model[row["model"]] for row in rows]
    best = ordered[0]
    names = display_names([row["model"] for row in rows], dataset)
    rows = [{**row, "display": names[row["model"]]} for row in rows]
    parts = [
        _header(dataset, ordered, rows),
        '<section id="models"><h2>Models side by side</h2>',
        '<p class="note">Test accuracy of each model with its 95 % interval (Wilson). '
        "Colour says how it stands against the best, by McNemar's exact test on the test "
        "images both saw.</p>",
        _chart(rows),
        _comparison_table(rows),
        _advice(rows),
        "</section>",
        _auto_section(auto) if auto else "",
        _gallery(best),
        _data_section(issues, best) if issues is not None else "",
        '<section id="details"><h2>Each model</h2>',
        *(_model_section(report, row, open_=i == 0)
          for i, (report, row) in enumerate(zip(ordered, rows, strict=True))),
        "</section>",
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = read_template("report_page.html").format(
        title=_e(f"{dataset}: tlearn report"), generator=GENERATOR,
        style=read_template("report_page.css"))
    return (head
            + "\n".join(parts)
            + f'\n<footer>Written by <code>tlearn report</code> on {generated} from '
            f"the reports in this folder's parent.</footer>\n</main>\n</body>\n</html>\n")


def _header(dataset: str, reports: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    best = reports[0].get("test", {})
    names = best.get("label_names") or []
    shown = ", ".join(_e(n) for n in names[:30]) + (f", … ({len(names) - 30} more)"
                                                     if len(names) > 30 else "")
    sizes = sorted({n for r in reports if (n := r.get("test", {}).get("n_samples"))})
    paired = sum(1 for row in rows[1:] if row.get("vs_best_p") is not None)
    stages = sorted({str(r.get("stage", "")) for r in reports})
    backbones = sorted({str(r.get("backbone") or "") for r in reports} - {""})
    others = len(rows) - 1
    if others == 0:
        pairing = "One model so far."
    elif paired == others:
        pairing = (f"All {others} other model(s) saw the same test images as the best and are "
                   "compared with it image by image.")
    else:
        pairing = (f"{paired} of the {others} other models saw the same test images as the "
                   "best and are compared with it image by image; the others were tested on "
                   "other images (another split or store), so only their intervals compare.")
    return "\n".join([
        f"<header><h1>{_e(dataset)}</h1>",
        '<dl class="facts">',
        f"<dt>classes</dt><dd>{len(names)}: {shown}</dd>",
        f"<dt>test images</dt><dd>{' or '.join(str(s) for s in sizes) or '–'} "
        "(the test split: never used to fit a model or choose its settings)</dd>",
        f"<dt>models</dt><dd>{len(reports)} ({_e(', '.join(stages))}); backbones: "
        f"{_e(', '.join(backbones) or '–')}</dd>",
        f"<dt>best</dt><dd><a href=\"#{_anchor(reports[0])}\">{_e(rows[0]['display'])}"
        f"</a>: test accuracy {_num(best.get('accuracy'))} "
        f"{_ci(best.get('accuracy_ci'))}</dd>",
        f"<dt>pairing</dt><dd>{_e(pairing)}</dd>",
        f"<dt>recommended</dt><dd>{_recommended(rows)}</dd>",
        "</dl></header>",
    ])


def _recommended(rows: list[dict[str, Any]]) -> str:
    """The header's line: the model to keep, linked to the reason under the table."""
    advice = recommend(rows)
    shown = next(r["display"] for r in rows if r["model"] == advice["model"])
    return f'{_e(shown)} (<a href="#recommended">why</a>)'


def _advice(rows: list[dict[str, Any]]) -> str:
    """Which model to keep and why (:func:`pipeline.reports.recommend`), with full names."""
    return f'<p class="advice" id="recommended">{_e(recommend(rows)["text"])}</p>'


def _anchor(report: dict[str, Any]) -> str:
    # ids keep to letters, digits, '-' and '_' so the '#' links need no escaping rules
    return "m-" + "".join(c if c.isalnum() or c in "-_" else "-"
                          for c in str(report.get("model", "")))


def _standing(row: dict[str, Any]) -> str:
    """``best``, ``worse`` (really different, p < 0.05), ``tie`` or ``unpaired``."""
    if row.get("vs_best") == "best":
        return "best"
    p = row.get("vs_best_p")
    if p is None:
        return "unpaired"
    return "worse" if p < 0.05 else "tie"


_STANDING_TEXT = {"best": "best", "worse": "really worse than the best (p < 0.05)",
                  "tie": "no real difference from the best", "unpaired": "not paired with "
                  "the best (other test images or no per-image predictions)"}


# Longer display names are cut in the middle in the chart (the whole name is its tooltip).
_NAME_CHARS = 72


def _chart(rows: list[dict[str, Any]]) -> str:
    """An inline SVG: one line per model from the interval's low to high end, a dot at
    the accuracy, the figures written at the right."""
    value_w, row_h, top, bottom = 190, 26, 26, 34
    # room for the longest name (about 7.6 px a character at 13 px), taken from the plot
    # so that the picture keeps its width and its text its size
    longest = max((len(str(r.get("display", r.get("model", ""))))
                   for r in rows), default=0)
    label_w = int(min(_NAME_CHARS * 7.6, max(200, longest * 7.6))) + 12
    plot_w = max(380, 1020 - label_w - value_w)
    width = label_w + plot_w + value_w
    height = top + row_h * len(rows) + bottom
    lows = [(row.get("accuracy_ci") or [row.get("test_accuracy") or 0.0])[0] for row in rows]
    lo = max(0.0, math.floor(min(lows) * 10 - 0.5) / 10) if lows else 0.0
    lo = min(lo, 0.9)
    step = 0.05 if 1.0 - lo <= 0.3 else 0.1

    def x(value: float) -> float:
        return label_w + (value - lo) / (1.0 - lo) * plot_w

    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" aria-label="test accuracy with 95 % intervals">']
    ticks = [lo + i * step for i in range(round((1.0 - lo) / step) + 1)]
    for t in ticks:
        out.append(f'<line class="grid" x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" '
                   f'y2="{height - bottom + 4}"/>')
        out.append(f'<text class="tick" x="{x(t):.1f}" y="{height - bottom + 20}" '
                   f'text-anchor="middle">{t:.2f}</text>')
    out.append(f'<text class="tick" x="{label_w + plot_w / 2:.0f}" y="{top - 10}" '
               'text-anchor="middle">test accuracy</text>')
    for i, row in enumerate(rows):
        y = top + row_h * i + row_h / 2
        acc = row.get("test_accuracy") or 0.0
        ci = row.get("accuracy_ci") or [acc, acc]
        standing = _standing(row)
        name = str(row.get("model", ""))
        short = str(row.get("display", name))
        if len(short) > _NAME_CHARS:
            half = (_NAME_CHARS - 1) // 2
            short = short[:half] + "…" + short[-half:]
        out.append(f'<g class="row {standing}" data-model="{_e(name)}">'
                   f"<title>{_e(name)}: {_e(_STANDING_TEXT[standing])}</title>")
        out.append(f'<text class="name" x="{label_w - 10}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_e(short)}</text>')
        out.append(f'<line class="interval" x1="{x(ci[0]):.1f}" y1="{y:.1f}" '
                   f'x2="{x(ci[1]):.1f}" y2="{y:.1f}"/>')
        for end in ci:
            out.append(f'<line class="cap" x1="{x(end):.1f}" y1="{y - 6:.1f}" '
                       f'x2="{x(end):.1f}" y2="{y + 6:.1f}"/>')
        out.append(f'<circle class="dot" cx="{x(acc):.1f}" cy="{y:.1f}" r="5"/>')
        out.append(f'<text class="value" x="{label_w + plot_w + 12}" y="{y + 4:.1f}">'
                   f"{acc:.3f} {_ci(ci)}</text></g>")
    out.append("</svg>")
    legend = "".join(f'<span class="key {k}"><i></i>{_e(v)}</span>'
                     for k, v in _STANDING_TEXT.items()
                     if any(_standing(r) == k for r in rows))
    return '<figure class="chart-box">' + "".join(out) + f'<figcaption>{legend}</figcaption>' \
        '</figure>'


def _auto_section(auto: dict[str, Any]) -> str:
    """``tlearn auto``'s candidates: cross-validated accuracy with its interval against
    images per second (an SVG, speed on a log scale), the winner marked, and why."""
    shown = [c for c in auto.get("candidates", [])
             if c.get("cv_accuracy") is not None and c.get("images_per_second")
             and c.get("status") != "promoted"]
    if not shown:
        return ""
    width, height, left, right, top, bottom = 900, 360, 60, 20, 34, 40
    rates = [math.log10(c["images_per_second"]) for c in shown]
    lows = [c["cv_accuracy_ci"][0] for c in shown]
    r0, r1 = min(rates) - 0.1, max(rates) + 0.1
    a0 = max(0.0, math.floor(min(lows) * 20) / 20)

    def x(rate: float) -> float:
        return left + (math.log10(rate) - r0) / (r1 - r0) * (width - left - right)

    def y(acc: float) -> float:
        return top + (1.0 - acc) / max(1e-9, 1.0 - a0) * (height - top - bottom)

    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" aria-label="cross-validated accuracy against images per second">',
           f'<text class="tick" x="{width / 2:.0f}" y="{height - 8}" text-anchor="middle">'
           "images per second (log scale)</text>",
           f'<text class="tick" x="4" y="{top - 6}">CV accuracy</text>']
    for t in (a0 + 0.05 * i for i in range(round((1.0 - a0) / 0.05) + 1)):
        out.append(f'<text class="tick" x="4" y="{y(t) + 4:.1f}">{t:.2f}</text>')
    for c in shown:
        acc, (lo, hi), rate = c["cv_accuracy"], c["cv_accuracy_ci"], c["images_per_second"]
        recipe = c["recipe"]
        name = f"{recipe['name']} + {recipe['classifier']}"
        winner = c.get("status") == "winner"
        out.append(f'<g class="row {"best" if winner else "same"}" data-status="'
                   f'{_e(c.get("status"))}"><title>{_e(name)}: {acc:.3f} {_ci([lo, hi])}, '
                   f'{rate:.1f} img/s, {_e(c.get("status"))} on {c.get("cv_rows")} train '
                   "images</title>"
                   f'<line class="interval" x1="{x(rate):.1f}" y1="{y(lo):.1f}" '
                   f'x2="{x(rate):.1f}" y2="{y(hi):.1f}"/>'
                   f'<circle class="dot" cx="{x(rate):.1f}" cy="{y(acc):.1f}" '
                   f'r="{7 if winner else 4}"/>'
                   + (f'<text class="value" x="{x(rate) - 12:.1f}" y="{y(acc) + 4:.1f}" '
                      f'text-anchor="end">winner: {_e(name)}</text>' if winner else "")
                   + "</g>")
    out.append("</svg>")
    skipped = [c for c in auto.get("candidates", []) if c.get("status") == "skipped"]
    for_time = sum(1 for c in skipped if c.get("estimate_s") is not None)
    return "\n".join([
        '<section id="auto"><h2>tlearn auto: the candidates</h2>',
        f'<p class="note">Each candidate\'s accuracy cross-validated on the train split '
        f"(95 % interval) against its measured images per second; the larger dot is the "
        f"choice. Budget {_num(auto.get('budget_s'), 0)} s, used "
        f"{_num(auto.get('elapsed_s'), 0)} s; {for_time} candidate(s) skipped for want of "
        f"time, {len(skipped) - for_time} for want of weights on this machine.</p>",
        '<figure class="chart-box">' + "".join(out) + "</figure>",
        f'<p class="advice">{_e(auto.get("why", ""))}; test accuracy '
        f"{_num(auto.get('test_accuracy'))} {_ci(auto.get('test_accuracy_ci'))}.</p>",
        "</section>"])


_TABLE_COLUMNS = (("model", "model"), ("stage", "stage"), ("test_images", "test images"),
                  ("test_accuracy", "accuracy [95 % CI]"),
                  ("balanced_accuracy", "balanced accuracy [95 % CI]"),
                  ("resplit", "re-splits"),
                  ("macro_f1", "macro-F1"), ("rank5", "rank-5"), ("log_loss", "log-loss"),
                  ("ece", "ECE"), ("vs_best_p", "p vs best"),
                  ("images_per_second", "images/s"), ("chosen", "chosen"),
                  ("fit_seconds", "fit s"))
_TABLE_TITLES = {
    "resplit": "test accuracy over the seeded re-splits of --repeats: mean ± standard "
               "deviation (number of re-splits)",
    "balanced_accuracy": "mean recall of the classes: every class counts the same however "
                         "many test images it has (95 % interval: bootstrap over the test "
                         "images; – in reports written before it)",
    "images_per_second": "images classified per second from the image files: the "
                         "extraction rate and the classifier's together (– where not recorded)",
}


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    """The rows of ``tlearn compare`` (:func:`pipeline.reports.compare_reports`)."""
    columns = [(k, h) for k, h in _TABLE_COLUMNS
               if k == "model" or any(r.get(k) not in (None, "") for r in rows)]
    if len({r.get("test_images") for r in rows}) == 1:  # then the header says it once
        columns = [(k, h) for k, h in columns if k != "test_images"]
    out = ['<div class="table-box"><table class="compare"><thead><tr>'
           + "".join(f'<th title="{_e(_TABLE_TITLES[k])}">{_e(h)}</th>' if k in _TABLE_TITLES
                     else f"<th>{_e(h)}</th>" for k, h in columns)
           + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key == "model":
                # a joined backbone's name may break after its '+'
                short = _e(row.get("display", value)).replace("+", "+<wbr>")
                cells.append(f'<td class="model" title="{_e(value)}"><a '
                             f'href="#{_anchor(row)}">{short}</a></td>')
            elif key == "resplit" and value:
                cells.append(f'<td class="num">{_num(value[0])} ± {_num(value[1])} '
                             f'<span class="ci">(n={value[2]})</span></td>')
            elif key == "images_per_second" and value is not None:
                cells.append(f'<td class="num">{_e(f"{value:,.0f}")}</td>')
            elif key in ("test_accuracy", "balanced_accuracy"):
                ci = row.get("accuracy_ci" if key == "test_accuracy" else
                             "balanced_accuracy_ci")
                cells.append(f'<td class="num">{_num(value)} '
                             f'<span class="ci">{_ci(ci)}</span></td>')
            elif key == "vs_best_p":
                star = " *" if value is not None and value < 0.05 else ""
                cells.append(f'<td class="num">{"–" if value is None else f"{value:.2g}"}'
                             f"{star}</td>")
            elif key == "fit_seconds":
                cells.append(f'<td class="num">{_num(value, 1)}</td>')
            elif isinstance(value, float):
                cells.append(f'<td class="num">{_num(value)}</td>')
            else:
                cells.append(f"<td>{_num(value) if value not in (None, '') else '–'}</td>")
        out.append(f'<tr class="{_standing(row)}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    verdicts = [f"<li>{_e(row['vs_best'])}</li>" for row in rows[1:] if row.get("vs_best")]
    if verdicts:
        out.append('<p class="note">Against the best (* : p &lt; 0.05):</p>'
                   f'<ul class="verdicts">{"".join(verdicts)}</ul>')
    return "\n".join(out)


def _thumbnail(path: str) -> str | None:
    """A small JPEG ``data:`` URI of an image, decoded by the one image reader."""
    from PIL import Image

    from features.images import ImageDecodeError, load_image

    if not os.path.isabs(path):  # a row number, not a file (never read from the cwd)
        return None
    try:
        pixels = load_image(path, THUMBNAIL_SIDE)
    except ImageDecodeError:
        return None
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def confident_mistakes(report: dict[str, Any], most: int = MISTAKES_SHOWN
                       ) -> tuple[list[dict[str, Any]], int, int]:
    """The ``most`` most confident wrong test predictions whose image can still be read.

    Returns ``(shown, wrong, unreadable)``: each shown entry has ``id``, ``true``,
    ``predicted``, ``score`` and ``thumbnail`` (a data URI); ``wrong`` counts every
    mistake, ``unreadable`` the mistakes skipped because their file is gone or broken.
    """
    rows = read_prediction_rows(report) or []
    wrong = [r for r in rows if r["true"] != r["predicted"]]

    def score(r: dict[str, str]) -> float:
        try:
            return float(r["score"])
        except ValueError:
            return -math.inf

    shown, unreadable = [], 0
    for r in sorted(wrong, key=lambda r: -score(r)):
        if len(shown) == most:
            break
        uri = _thumbnail(r["id"])
        if uri is None:
            unreadable += 1
            continue
        shown.append({**r, "score": score(r), "thumbnail": uri})
    return shown, len(wrong), unreadable


def _gallery(best: dict[str, Any]) -> str:
    test = best.get("test", {})
    head = ('<section id="mistakes"><h2>Most confident mistakes of the best model</h2>'
            f'<p class="note">{_e(best.get("model"))} ')
    if read_prediction_rows(best) is None:
        return head + ("kept no per-image predictions (trained before they were recorded): "
                       "train it again to see its mistakes.</p></section>")
    shown, wrong, unreadable = confident_mistakes(best)
    kind = "probability" if test.get("scores") == "probability" else "margin"
    if not wrong:
        return head + "got every test image right.</p></section>"
    if not shown:
        ids = [r["id"] for r in read_prediction_rows(best) or []]
        why = ("but none of their files can be read any more (moved or deleted?)."
               if any(os.path.isabs(i) for i in ids) else
               "but its report kept no image paths, only row numbers.")
        return head + _e(f"got {wrong} of {test.get('n_samples', '?')} test images wrong, "
                         + why) + "</p></section>"
    which = f"the {len(shown)} it was surest of are" if len(shown) < wrong else "all are"
    text = (f"got {wrong} of {test.get('n_samples', '?')} test images wrong; {which} "
            f"shown, most confident first (score: its {kind} for the predicted class)."
            + (f" {unreadable} image(s) could no longer be read and are left out."
               if unreadable else ""))
    figures = []
    for m in shown:
        name = os.path.basename(m["id"])
        figures.append(
            f'<figure class="mistake" title="{_e(m["id"])}">'
            f'<img src="{m["thumbnail"]}" width="{THUMBNAIL_SIDE}" height="{THUMBNAIL_SIDE}" '
            f'alt="{_e(name)}">'
            f'<figcaption><span class="true">true: <b>{_e(m["true"])}</b></span>'
            f'<span class="said">said: <b>{_e(m["predicted"])}</b> '
            f'({m["score"]:.2f})</span><span class="file">{_e(name)}</span></figcaption>'
            "</figure>")
    return head + _e(text) + '</p><div class="gallery">' + "".join(figures) \
        + "</div></section>"


def _read_issues(folder: Path) -> list[dict[str, str]] | None:
    try:
        with (folder / ISSUES_FILE).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return rows if rows and {"path", "issue", "score"} <= set(rows[0]) else None


def _data_section(issues: list[dict[str, str]], best: dict[str, Any]) -> str:
    """Top findings of each kind of 'tlearn check', and the best model's test accuracy
    with the flagged test images set aside."""
    flagged = {r["path"] for r in issues} | {r.get("related_path", "") for r in issues
                                            if r["issue"] == "leak"}
    rows = read_prediction_rows(best) or []
    kept = [r for r in rows if r["id"] not in flagged]
    accuracy = ""
    if rows and kept:
        plain = sum(r["true"] == r["predicted"] for r in rows) / len(rows)
        clean = sum(r["true"] == r["predicted"] for r in kept) / len(kept)
        accuracy = (f"<p>Test accuracy of {_e(best.get('model'))}: <b>{plain:.3f}</b> on all "
                    f"{len(rows)} test images, <b>{clean:.3f}</b> on the {len(kept)} that no "
                    "finding names.</p>")
    parts = ['<section id="data"><h2>Data</h2>',
             f'<p class="note">What <code>tlearn check</code> found ({ISSUES_FILE} beside '
             "this page), the surest first.</p>", accuracy]
    for issue in ("leak", "label", "near_duplicate", "outlier"):
        found = [r for r in issues if r["issue"] == issue]
        parts.append(f"<h3>{_e(issue.replace('_', ' '))}: {len(found)}</h3>")
        figures = []
        for r in found[:FINDINGS_SHOWN]:
            uri = _thumbnail(r["path"])
            if uri is None:
                continue
            said = (f"given <b>{_e(r.get('given_label', ''))}</b>"
                    + (f", likely <b>{_e(r['suggested_label'])}</b>"
                       if r.get("suggested_label") else ""))
            figures.append(
                f'<figure class="mistake" title="{_e(r["path"])}">'
                f'<img src="{uri}" width="{THUMBNAIL_SIDE}" height="{THUMBNAIL_SIDE}" '
                f'alt="{_e(os.path.basename(r["path"]))}"><figcaption>'
                f'<span class="said">{said} ({_e(r["score"])})</span>'
                f'<span class="file">{_e(os.path.basename(r["path"]))}</span>'
                + (f'<span class="file">~ {_e(os.path.basename(r["related_path"]))}</span>'
                   if r.get("related_path") else "") + "</figcaption></figure>")
        if figures:
            parts.append('<div class="gallery">' + "".join(figures) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _confusion(report: dict[str, Any]) -> str:
    test = report.get("test", {})
    names, matrix = test.get("label_names") or [], test.get("confusion") or []
    if len(names) > TABLE_CLASSES:
        uri = _png_uri(Path(report.get("report_dir", "")) / "confusion.png")
        return (f'<img class="plot" src="{uri}" alt="confusion matrix">' if uri
                else '<p class="note">no confusion matrix image</p>')
    out = ['<div class="confusion-box"><p class="caption">Confusion: rows true, columns '
           "said; shade = share of the row</p>"
           '<table class="confusion"><thead><tr><th class="corner">true \\ said</th>'
           + "".join(f'<th class="pred" title="{_e(n)}">{_e(n)}</th>' for n in names)
           + "</tr></thead><tbody>"]
    for name, counts in zip(names, matrix, strict=False):
        total = max(1, sum(counts))
        cells = []
        for j, count in enumerate(counts):
            share = count / total
            colour = "#fff" if share > 0.55 else "#111"
            diagonal = " diag" if names[j] == name else ""
            cells.append(f'<td class="num{diagonal}" style="background:rgba(31,90,170,'
                         f'{share:.3f});color:{colour}">{count}</td>')
        out.append(f'<tr><th title="{_e(name)}">{_e(name)}</th>{"".join(cells)}</tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def _per_class(report: dict[str, Any]) -> str:
    test = report.get("test", {})
    per_class = test.get("per_class") or {}
    names = [n for n in test.get("label_names") or [] if n in per_class]
    names.sort(key=lambda n: per_class[n].get("f1-score", 0.0))
    out = ['<table class="per-class"><caption>Per class, worst F1 first</caption><thead><tr>'
           "<th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
           "</tr></thead><tbody>"]
    for n in names:
        r = per_class[n]
        out.append(f"<tr><th>{_e(n)}</th><td class=\"num\">{_num(r.get('precision'))}</td>"
                   f"<td class=\"num\">{_num(r.get('recall'))}</td>"
                   f"<td class=\"num\">{_num(r.get('f1-score'))}</td>"
                   f"<td class=\"num\">{int(r.get('support', 0))}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _risk_coverage(unknown: dict[str, Any] | None) -> str:
    """An inline SVG of the risk-coverage curve of the unknown score on the test images:
    the accuracy of the images accepted against the share accepted (from the most like
    the training images), the model's threshold marked; '' for reports without it."""
    points = (unknown or {}).get("risk_coverage")
    if not points:
        return ""
    width, height, left, right, top, bottom = 380, 260, 52, 16, 24, 40
    lo = min(0.9, math.floor(min(a for _, a in points) * 10) / 10)

    def xy(share: float, accuracy: float) -> tuple[float, float]:
        return (left + share * (width - left - right),
                top + (1.0 - accuracy) / (1.0 - lo) * (height - top - bottom))

    out = [f'<svg class="chart risk-coverage" role="img" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" aria-label="accuracy of the accepted test '
           'images against the share accepted">']
    for i in range(6):
        gx, _ = xy(i / 5, lo)
        _, gy = xy(0.0, lo + (1.0 - lo) * i / 5)
        out.append(f'<line class="grid" x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" '
                   f'y2="{height - bottom}"/><text class="tick" x="{gx:.1f}" '
                   f'y="{height - bottom + 15}" text-anchor="middle">{i / 5:.1f}</text>')
        out.append(f'<line class="grid" x1="{left}" y1="{gy:.1f}" x2="{width - right}" '
                   f'y2="{gy:.1f}"/><text class="tick" x="{left - 6}" y="{gy + 4:.1f}" '
                   f'text-anchor="end">{lo + (1.0 - lo) * i / 5:.2f}</text>')
    out.append(f'<text class="tick" x="{(left + width - right) / 2:.0f}" y="{height - 6}" '
               'text-anchor="middle">share of test images accepted</text>'
               f'<text class="tick" x="{left}" y="{top - 10}">accuracy of those accepted'
               "</text>")
    data = " ".join(f"{c:.4g}:{a:.4g}" for c, a in points)
    pixels = " ".join("{:.1f},{:.1f}".format(*xy(c, a)) for c, a in points)
    out.append(f'<polyline class="curve" fill="none" points="{pixels}" '
               f'data-points="{data}"/>')
    share, accuracy = unknown.get("test_accepted"), unknown.get("test_accepted_accuracy")
    if share is not None and accuracy is not None:
        mx, my = xy(share, accuracy)
        coverage = unknown.get("coverage")
        label = f"threshold{f' ({coverage:.0%} coverage)' if coverage else ''}"
        out.append(f'<g class="threshold" data-coverage="{share:.4g}" '
                   f'data-accuracy="{accuracy:.4g}"><title>{_e(label)}: accepts '
                   f"{share:.3f} of the test images, {accuracy:.3f} of them right</title>"
                   f'<circle class="dot" cx="{mx:.1f}" cy="{my:.1f}" r="5"/>'
                   f'<text class="value" x="{mx + (-8 if mx > width / 2 else 8):.1f}" '
                   f'y="{max(my - 9, top + 10):.1f}" text-anchor='
                   f'"{"end" if mx > width / 2 else "start"}">{_e(label)}</text></g>')
    out.append("</svg>")
    return ('<figure class="plot risk-coverage">' + "".join(out) + "<figcaption>Risk-"
            "coverage: accuracy of the test images accepted as known against their share, "
            "accepting the most like the training images first; the dot is the model's "
            "'unknown' threshold</figcaption></figure>")


def _model_section(report: dict[str, Any], row: dict[str, Any], *, open_: bool) -> str:
    test = report.get("test", {})
    directory = Path(report.get("report_dir", ""))
    facts = [f"stage {_e(report.get('stage', ''))}",
             f"backbone {_e(report.get('backbone') or '–')}",
             f"classifier {_e(report.get('classifier') or '–')}",
             f"chosen {_e(row.get('chosen', '–'))}",
             f"{test.get('n_samples', '?')} test images",
             f"accuracy {_num(test.get('accuracy'))} {_ci(test.get('accuracy_ci'))}",
             f"macro-F1 {_num(test.get('macro_f1'))} {_ci(test.get('macro_f1_ci'))}",
             f"balanced accuracy {_num(test.get('balanced_accuracy'))} "
             f"{_ci(test.get('balanced_accuracy_ci'))}".rstrip()]
    if test.get("ece") is not None:
        facts.append(f"log-loss {_num(test.get('log_loss'))}, ECE {_num(test.get('ece'))}")
    plots = []
    for file, alt, caption in (("curves.png", "training curves",
                                "Training curves (train against validation)"),
                               ("reliability.png", "reliability diagram",
                                "Reliability: accuracy against confidence")):
        uri = _png_uri(directory / file)
        if uri:
            plots.append(f'<figure class="plot {file.split(".")[0]}"><img src="{uri}" '
                         f'alt="{alt}"><figcaption>{caption}</figcaption></figure>')
    if test.get("scores") != "probability":
        plots.append('<p class="note">Scores are margins, not probabilities: no '
                     "reliability diagram.</p>")
    plots.append(_risk_coverage(report.get("unknown")))
    return "\n".join([
        f'<details class="model" id="{_anchor(report)}"{" open" if open_ else ""}>',
        f'<summary><span class="mname">{_e(row.get("display", ""))}</span> '
        f'<span class="badge {_standing(row)}">{_num(test.get("accuracy"))}</span> '
        f'<code class="full">{_e(report.get("model", ""))}</code></summary>',
        f'<p class="facts-line">{" · ".join(facts)}</p>',
        f'<div class="tables">{_confusion(report)}{_per_class(report)}</div>',
        f'<div class="plots">{"".join(plots)}</div>',
        "</details>",
    ])
