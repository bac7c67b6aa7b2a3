"""``tlearn auto``: the best recipe for a dataset, chosen on its train split within a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import user_errors, uses_keras
from pipeline.cli.options import check_seed
from pipeline.cli.output import console, err_console
from pipeline.config import DEFAULT_SEED

PANEL = "Automatic choice"
app = typer.Typer()


@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def auto(
    data: Annotated[Path, typer.Argument(help="Folder with a sub-folder per class, or a CSV "
                                              "of path,label.")],
    budget: Annotated[str, typer.Option(
        help="Wall time for the whole search, extraction included: 90s, 20m, 1h30m.")]
    = "20m",
    out: Annotated[Path | None, typer.Option(
        help="Folder of the candidates' stores and choice.json \\[default: "
             "artifacts/auto/<dataset>].")] = None,
    prefer: Annotated[str, typer.Option(
        help="accuracy, or speed: the fastest recipe not significantly worse than the "
             "best (paired test on the same train images).")] = "accuracy",
    exhaustive: Annotated[bool, typer.Option(
        help="No pruning: every candidate on the whole train split, as far as the budget "
             "goes (slow; what the search is measured against).")] = False,
    cv: Annotated[int, typer.Option(help="Cross-validation folds on the train split.")] = 3,
    seed: Annotated[int, typer.Option(callback=check_seed,
                                      help="Seed of the split and the folds.")] = DEFAULT_SEED,
) -> None:
    """Find the best backbone, feature recipe and classifier for DATA within a time budget.

    Candidates are searched by successive halving on subsets of the train split and
    compared by cross-validation only; the test split is used once, on the winner,
    which is saved as 'tlearn extract' and 'tlearn train' save theirs. A rerun reuses
    every store already made.
    """
    from pipeline.progress import budget_progress
    from pipeline.workflows.auto import AutoSettings, parse_budget, run_auto  # h5py

    settings = AutoSettings(data=data, budget_s=parse_budget(budget), out=out, prefer=prefer,
                            exhaustive=exhaustive, cv=cv, seed=seed)
    with budget_progress(console=err_console) as progress:
        result = run_auto(settings, log=lambda line: console.print(
            line, highlight=False, markup=False, soft_wrap=True), progress=progress)
    choice = result.choice
    ci = choice.get("test_accuracy_ci") or [float("nan")] * 2
    console.print(f"choice: {choice['why']}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"test accuracy {choice['test_accuracy']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}] "
                  f"on {choice['test_images']} test images; used {choice['elapsed_s']:.0f}s "
                  f"of {choice['budget_s']:.0f}s", highlight=False)
    console.print(f"model: {result.model_path}\nstore: {result.store_path}\n"
                  f"choice: {result.choice_path}", highlight=False, soft_wrap=True)
