"""Rich progress bars for long work, as callbacks the library functions accept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
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


@contextmanager
def progress_bar(description: str, *, unit: str = "img",
                 console: Console | None = None) -> Iterator:
    """Yield a ``callback(done, total)`` that drives a bar with rate and ETA."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(unit), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    # Started on the first update only, so work that turns out to be done already
    # (an up-to-date store) or fails validation shows no empty bar.
    bar = Progress(*columns, console=console or Console(stderr=True), transient=False)
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
