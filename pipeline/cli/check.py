"""``tlearn check``: label issues, near-duplicates, leaks, outliers and balance of a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.errors import user_errors
from pipeline.cli.options import check_seed
from pipeline.cli.output import console
from pipeline.progress import print_table

PANEL = "Data"
app = typer.Typer()
_SHOWN = 5  # findings of each kind printed; the CSV has them all


@app.command(rich_help_panel=PANEL)
@user_errors
def check(
    store: Annotated[Path, typer.Argument(help="Feature store from 'tlearn extract'.")],
    out: Annotated[Path | None, typer.Option(
        help="Write every finding to this CSV (path, issue, score, given_label, "
             "suggested_label, related_path, split); 'tlearn extract --exclude' reads it.")]
    = None,
    seed: Annotated[int, typer.Option(callback=check_seed,
                                      help="Seed of the cross-validation folds.")] = 0,
) -> None:
    """Wrong labels, near-duplicates, leaks, outliers and class balance of a feature store."""
    from pipeline.workflows.check import check_store, write_issues_csv  # scikit-learn, h5py

    report = check_store(store, seed=seed)
    table = Table(title=f"{store}: {report.rows} images")
    for column in ("issue", "found", "top findings (score)"):
        table.add_column(column)
    for issue, count in report.counts().items():
        top = [f for f in report.findings if f.issue == issue][:_SHOWN]
        table.add_row(issue, str(count), "\n".join(
            f"{_short(f.path)} ({f.score:.2f})"
            + (f" {f.given_label} -> {f.suggested_label}" if f.suggested_label else "")
            + (f" ~ {_short(f.related_path)}" if f.related_path else "") for f in top))
    counts = ", ".join(f"{n} {c}" for n, c in report.class_counts.items())
    table.add_row("balance", f"{report.imbalance_ratio:.1f}x",
                  f"{counts}; {report.mixed_label_groups} group(s) of the same image under "
                  "two labels")
    print_table(console, table)
    if out is not None:
        console.print(f"wrote {write_issues_csv(report, out)}", highlight=False)


def _short(path: str) -> str:
    """The last two parts of a path (class folder and file), enough to find it."""
    return os.path.join(*Path(path).parts[-2:])
