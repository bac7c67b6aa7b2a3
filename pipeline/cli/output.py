"""What every command prints with: the two consoles, warnings, and the table of models."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pipeline.progress import make_console, print_table

# One pair for every command module, which imports them by name: each run makes them
# again in place (plain_output), never replaces them.
console = make_console()
err_console = make_console(stderr=True)


def plain_output(no_color: bool) -> None:
    """Make both consoles again for this run, in place, with ``--no-color``.

    In place, as new consoles would read them now: the environment (``NO_COLOR``,
    ``COLUMNS``) and whether output is a terminal.
    """
    console.__dict__.update(make_console(no_color=no_color).__dict__)
    err_console.__dict__.update(make_console(stderr=True, no_color=no_color).__dict__)


def warn(line: str) -> None:
    """One warning line on stderr, printed as written (no markup)."""
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def announce_device(line: str) -> None:
    """``computing on <what computes>`` on stderr (:meth:`features.devices.Device.describe`)."""
    err_console.print(f"computing on {line}", highlight=False, markup=False, soft_wrap=True)


def print_device(runtime: str | None = None) -> None:
    """:func:`announce_device` of what runs a network of ``runtime`` here (imports it)."""
    from features.runtimes import runtime_device

    announce_device(runtime_device(runtime).describe())


def print_files(out: Console, what: str, items: list[tuple[str, str]], more: str) -> None:
    """``what N file(s):`` then the first 20 ``path: reason`` lines."""
    if not items:
        return
    out.print(f"[yellow]{what} {len(items)} file(s):[/]")
    for path, reason in items[:20]:
        out.print(f"  {path}: {reason}", highlight=False, markup=False)
    if len(items) > 20:
        out.print(f"  ... and {len(items) - 20} more ({more})", highlight=False)


# Terminal table: the model name already says backbone and classifier; the markdown and
# CSV files written by 'compare' keep every column.
# Columns with no value in any row (rank-5 below 6 classes, re-splits without --repeats,
# p for a single model) are left out, so the table fits an 80-column terminal.
# Every column (macro-F1, log-loss, speed, size...) is in the comparison's markdown and CSV.
_TERMINAL_COLUMNS = (("model", "model"), ("test_accuracy", "accuracy, 95% CI"),
                     ("balanced_accuracy", "balanced acc., 95% CI"),
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


def print_rows(rows: list[dict], title: str) -> None:
    """The models of ``rows`` (comparison rows) as one terminal table titled ``title``."""
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
            elif key in ("test_accuracy", "balanced_accuracy"):
                ci = row.get("accuracy_ci" if key == "test_accuracy" else
                             "balanced_accuracy_ci")
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

