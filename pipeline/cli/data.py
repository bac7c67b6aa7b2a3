"""Data commands: public datasets to fetch, and growing a dataset with augmented copies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline import catalog
from pipeline.augmentation import augment_folder
from pipeline.cli.errors import user_errors, uses_keras
from pipeline.cli.options import (
    Flip,
    RegistryChoice,
    Rotation,
    Shear,
    Shift,
    Zoom,
    augmentation_options,
    check_seed,
)
from pipeline.cli.output import console, err_console
from pipeline.progress import print_table, progress_bar

PANEL = "Data"
app = typer.Typer()


def _datasets() -> list[str]:
    # read at each use: a dataset registered after start-up is a choice too
    return ["digits", *catalog.REMOTE_DATASETS]


DATASETS = RegistryChoice("dataset", _datasets)


datasets_app = typer.Typer(help="Public datasets in the folder-per-class layout.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets", rich_help_panel=PANEL)


@datasets_app.command("list")
@user_errors
def datasets_list() -> None:
    """The datasets tlearn can fetch, and whether they are already here."""
    table = Table(title="datasets (tlearn datasets fetch NAME)")
    for col in ("name", "classes", "images", "here", "description"):
        table.add_column(col, no_wrap=col == "name")
    for row in catalog.list_datasets():
        table.add_row(row["name"], str(row["classes"]), f"{row['images']:,}",
                      "yes" if row["present"] else "no", row["description"])
    print_table(console, table)


@datasets_app.command("fetch")
@user_errors
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="flowers17, cifar10 or digits.",
                                        parser=DATASETS, metavar=DATASETS.metavar())],
    dest: Annotated[Path | None, typer.Option(
        help="Folder to create \\[default: artifacts/datasets/NAME].")] = None,
) -> None:
    """Download (resumable, checksummed), unpack safely and export to class folders."""
    with progress_bar(f"download {name}", unit="B", console=err_console) as progress:
        path = catalog.fetch_dataset(name, dest, progress=progress)
    console.print(f"{name} is ready in {path}", highlight=False)


@datasets_app.command("digits")
@user_errors
def datasets_digits(
    dest: Annotated[Path | None, typer.Option(
        help="Folder to create \\[default: artifacts/datasets/digits].")] = None,
) -> None:
    """Export scikit-learn's bundled handwritten digits (no download) as PNG class folders."""
    console.print(f"digits are ready in {catalog.export_digits(dest)}", highlight=False)



@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def augment(
    data: Annotated[Path, typer.Argument(help="Dataset folder (one sub-folder per class).")],
    out: Annotated[Path, typer.Option(help="New folder to write (same layout).")],
    per_class: Annotated[int, typer.Option(help="Images per class after growing.")] = 1500,
    seed: Annotated[int, typer.Option(help="Seed of the augmentations.",
                                      callback=check_seed)] = 42,
    link: Annotated[bool, typer.Option(help="Hard-link originals instead of copying.")]
    = False,
    rotation: Rotation = 30.0, shift: Shift = 0.1, shear: Shear = 0.2, zoom: Zoom = 0.2,
    flip: Flip = True,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Grow every class to --per-class images with augmented copies, in a new folder."""
    with progress_bar("augment", console=err_console) as progress:
        counts = augment_folder(
            data, out, per_class=per_class, seed=seed, overwrite=overwrite, link=link,
            config=augmentation_options(False, rotation, shift, shear, zoom, flip),
            progress=progress)
    table = Table(title=f"augmented dataset in {out}")
    for col in ("class", "originals", "augmented", "total"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in counts.items():
        table.add_row(name, str(c["originals"]), str(c["augmented"]),
                      str(c["originals"] + c["augmented"]))
    print_table(console, table)

