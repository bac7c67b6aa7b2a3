"""The consoles the command line prints to, and progress for long work as callbacks.

One place decides how output looks: in a terminal, colours and live bars; piped, logged
or with ``--no-color``/``NO_COLOR``, plain lines that a log keeps whole. Lines are never
wrapped by tlearn (a wrapped path breaks copy and paste): the terminal wraps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``42.1 img/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"- {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


def make_console(*, stderr: bool = False, no_color: bool = False) -> Console:
    """A console for the command line's output (``stderr``: its messages and progress).

    ``no_color`` adds to rich's own rules (``NO_COLOR``, not a terminal).
    """
    return Console(stderr=stderr, no_color=no_color or None, soft_wrap=True)


def is_plain(console: Console) -> bool:
    """Whether ``console`` gets plain lines: not a terminal, or colours switched off."""
    return not console.is_terminal or console.no_color


def print_table(console: Console, table: Table) -> None:
    """``table`` when it fits the console's width, else the same cells as a list.

    A table squeezed below its natural width folds its cells or cuts them with an
    ellipsis; a list of ``header: value`` lines (``key: value`` for a table without
    headers) keeps every value whole.
    """
    unbounded = console.options.update_width(1_000_000)  # the table's natural width
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(table.title)
    rows = zip(*(list(column.cells) for column in table.columns), strict=True)
    for row in rows:
        if table.show_header:
            for column, cell in zip(table.columns, row, strict=True):
                console.print(f"  {column.header}: ", end="", highlight=False)
                console.print(cell, highlight=False)
            console.print()
        else:
            console.print(f"  {row[0]}: ", end="", highlight=False)
            console.print(*row[1:], highlight=False)


def _plain_progress(description: str, unit: str,
                    console: Console) -> Callable[[int, int], None]:
    """``callback(done, total)`` printing a whole line at every tenth of the work."""
    state: dict = {"shown": -1, "start": None, "first": 0}

    def update(done: int, total: int) -> None:
        if state["start"] is None:
            state["start"], state["first"] = time.perf_counter(), done
        tenth = 10 * done // total if total else 0
        if tenth <= state["shown"]:
            return
        state["shown"] = tenth
        line = f"{description}: {done:,}/{total:,} {unit} ({100 * done // max(total, 1)}%)"
        elapsed = time.perf_counter() - state["start"]
        if done >= total and elapsed > 0:
            line += f" in {elapsed:.1f}s ({(done - state['first']) / elapsed:,.1f} {unit}/s)"
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    return update


@contextmanager
def progress_bar(description: str, *, unit: str = "img",
                 console: Console | None = None) -> Iterator:
    """Yield a ``callback(done, total)`` that drives a bar with rate and ETA.

    On a plain console (:func:`is_plain`) the callback prints a line at every tenth of
    the work instead: a bar squeezed into a log's 80 columns shows "1399/1…".
    """
    console = console or make_console(stderr=True)
    if is_plain(console):
        yield _plain_progress(description, unit, console)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(unit), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    # Started on the first update only, so work that turns out to be done already
    # (an up-to-date store) or fails validation shows no empty bar.
    bar = Progress(*columns, console=console, transient=False)
    state: dict = {"task": None}

    def update(done: int, total: int) -> None:
        if state["task"] is None:
            bar.start()
            # Resumed runs start part-way: the rate counts from there, not from zero.
            state["task"] = bar.add_task(description, total=total, completed=done)
        else:
            bar.update(state["task"], total=total, completed=done)
        if total and done >= total and not state.get("stopped"):
            bar.stop()  # finished: later output goes below a complete bar
            state["stopped"] = True

    try:
        yield update
    finally:
        if state["task"] is not None and not state.get("stopped"):
            bar.stop()


@contextmanager
def budget_progress(*, console: Console | None = None) -> Iterator:
    """Yield a ``callback(what, done, total)`` for work under a time budget.

    ``what == "budget"`` drives a bar of the seconds used out of the budget, with the
    time left; anything else a second bar, of the images of the current step. On a
    plain console nothing is drawn: the work's own log lines say the budget left.
    """
    console = console or make_console(stderr=True)
    if is_plain(console):
        yield lambda what, done, total: None
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.fields[detail]}"), console=console, transient=True)
    tasks: dict = {}

    def update(what: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        key = "budget" if what == "budget" else "step"
        if key == "budget":
            detail = f"{done:,} of {total:,} s used, {max(0, total - done):,} s left"
        else:
            detail = f"{done:,}/{total:,} img"
        if key not in tasks:
            tasks[key] = bar.add_task(what, total=total, completed=done, detail=detail)
        bar.update(tasks[key], description="budget" if key == "budget" else what,
                   total=total, completed=done, detail=detail)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()
