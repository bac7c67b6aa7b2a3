"""Stage 2 commands: classifiers on a feature store, and their comparison and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from classifiers.novelty import DEFAULT_COVERAGE
from features.devices import import_keras_quietly
from features.errors import UserInputError
from pipeline.cli.errors import user_errors
from pipeline.cli.options import (
    RUNTIMES_CHOICE,
    AddressOption,
    EngineOption,
    RegistryChoice,
    check_seed,
)
from pipeline.cli.output import console, err_console, print_rows, warn

PANEL = "Stage 2: classifiers"
app = typer.Typer()


def _classifiers() -> list[str]:
    from classifiers.registry import CLASSIFIERS  # scikit-learn, seconds to import

    return [*CLASSIFIERS.names(), "all"]


def _class_weights() -> tuple[str, ...]:
    from classifiers.solvers import CLASS_WEIGHTS  # scikit-learn: only when the option is given

    return CLASS_WEIGHTS


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



@app.command(rich_help_panel=PANEL)
@user_errors
def train(
    store: Annotated[Path, typer.Argument(help="Feature store from 'tlearn extract'.")],
    classifier: Annotated[str, typer.Option(
        help="logreg, linear_svm, ovr, sgd or all.",
        parser=RegistryChoice("classifier", _classifiers))] = "logreg",
    cv: Annotated[int, typer.Option(help="Cross-validation folds for choosing C.")] = 3,
    grid: Annotated[str | None, typer.Option(
        help="Comma-separated C values (alpha for sgd) \\[default: log-spaced].")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Threads for the search.")] = 1,
    seed: Annotated[int, typer.Option(callback=check_seed, help="Seed of the folds.")] = 0,
    repeats: Annotated[int, typer.Option(
        min=0, help="Also test on N seeded re-splits of the train+test rows (mean ± std).")]
    = 0,
    coverage: Annotated[float, typer.Option(
        help="Share of new images of the trained classes accepted as known; the others "
             "are predicted 'unknown' (threshold fitted on held-out folds of the train "
             "split).")] = DEFAULT_COVERAGE,
    overwrite: Annotated[bool, typer.Option(help="Replace existing models.")] = False,
    class_weight: Annotated[str | None, typer.Option(
        parser=RegistryChoice("class weight", _class_weights), metavar="[balanced]",
        help="'balanced': weigh each class's images by n / (classes x its count), in the "
             "search and the fit, for imbalanced classes \\[default: all alike].")] = None,
    engine: EngineOption = "local",
    address: AddressOption = None,
) -> None:
    """Stage 2: tune, fit, test and save classifiers on a feature store."""
    from pipeline.reports import comparison_row  # scikit-learn
    from pipeline.workflows import train_store  # h5py

    with err_console.status("training...") as status:
        outcomes = train_store(
            store, classifier=classifier, cv=cv, grid=_parse_grid(grid), jobs=jobs, seed=seed,
            repeats=repeats, overwrite=overwrite, class_weight=class_weight,
            coverage=coverage,
            log=lambda line: (status.update(line), console.print(line)), engine=engine,
            address=address,
        )
    print_rows([comparison_row(o.report) for o in outcomes], f"trained on {store}")
    for o in outcomes:
        console.print(f"{o.model_path}  (report: {o.report_dir}/summary.md)", highlight=False)


@app.command(rich_help_panel=PANEL)
@user_errors
def compare(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Stores (.h5) or models (.joblib, .keras) to compare \\[default: every "
             "report].")]
    = None,
) -> None:
    """One table of every trained model, with 95 % intervals, and which differences are real.

    Each model is tested against the best one with McNemar's exact test on the same
    test images (models tested on other images are not paired).
    """
    from pipeline.reports import recommend  # scikit-learn
    from pipeline.workflows import compare_models  # h5py

    pages: list[str] = []
    rows, md, csv_path = compare_models(paths or [], log=pages.append, warn=warn)
    print_rows(rows, "comparison (test split; * = really different from the best, p < 0.05)")
    for row in rows[1:]:
        console.print(f"- {row['vs_best']}", highlight=False)
    console.print(recommend(rows)["text"], highlight=False)
    console.print(f"written to {md} and {csv_path}", highlight=False)
    for line in pages:
        console.print(line, highlight=False)


@app.command(rich_help_panel=PANEL)
@user_errors
def report(
    datasets: Annotated[list[str] | None, typer.Argument(
        help="Dataset names (as their models record them) \\[default: every dataset].")]
    = None,
) -> None:
    """Write the visual report of each dataset: one self-contained HTML page.

    artifacts/reports/<dataset>/index.html: models side by side with 95 % intervals,
    the best model's most confident mistakes, confusion matrices, per-class figures,
    calibration and stage 3 training curves. train, finetune, scratch and compare
    keep it up to date.
    """
    from pipeline.workflows import write_report_pages  # h5py

    for path in write_report_pages(datasets or [], warn=warn):
        console.print(str(path), highlight=False, soft_wrap=True)


@app.command(rich_help_panel=PANEL)
@user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    store: Annotated[Path, typer.Argument(help="A store with the same feature specification.")],
    split: Annotated[str, typer.Option(help="train, test or val.")] = "test",
    runtime: Annotated[str | None, typer.Option(
        help="Classify the split's image files with the network run by tensorflow or "
             "openvino, instead of scoring the store's features (always so for .keras).",
        parser=RUNTIMES_CHOICE, metavar=RUNTIMES_CHOICE.metavar())]
    = None,
) -> None:
    """Report a saved model on any store of the same feature specification."""
    from pipeline.reports import comparison_row  # scikit-learn
    from pipeline.workflows import evaluate_model  # h5py

    if runtime is not None or model.suffix == ".keras":
        import_keras_quietly()
    outcome = evaluate_model(model, store, split=split, runtime=runtime)
    print_rows([comparison_row(outcome.report)], f"{model.name} on {store} ({split})")
    console.print(f"report: {outcome.report_dir}/summary.md", highlight=False)

