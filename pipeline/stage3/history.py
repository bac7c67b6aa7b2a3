"""The training history of stage 3 as ``history.csv`` and ``curves.png``."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

from features.integrity import atomic_write, atomic_write_text


def write_history(history: list[dict], directory: Path) -> tuple[Path, Path]:
    """``history.csv`` and ``curves.png`` (loss and accuracy, train against validation).

    A dashed line marks where one phase (warm-up, fine-tuning) gives way to the next.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = directory / "history.csv", directory / "curves.png"
    keys = sorted({k for row in history for k in row})
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(csv_path, text.getvalue())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        _plot(fig, axes, history)
        atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100),
                     suffix=".png")
    finally:
        plt.close(fig)
    return csv_path, png_path


def _plot(fig, axes, history: list[dict]) -> None:
    epochs = [r["epoch"] for r in history]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [r.get(metric) for r in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [r.get(f"val_{metric}") for r in history], "s-",
                label=f"validation {metric}")
        changes = [r["epoch"] - 0.5 for a, r in itertools.pairwise(history)
                   if a["phase"] != r["phase"]]
        for x in changes:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(metric + (" (dashed line: phase change)" if changes else ""))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
