"""``tlearn weights fetch``: carry pretrained weights to a machine without internet access."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import user_errors, uses_keras
from pipeline.cli.output import console

PANEL = "Weights"
app = typer.Typer()
weights = typer.Typer(
    help="Pretrained weights for machines without internet access: fetch them on a "
         "connected machine, copy the folder, pass --weights PATH.",
    no_args_is_help=True)
app.add_typer(weights, name="weights", rich_help_panel=PANEL)


@weights.command()
@user_errors
@uses_keras
def fetch(
    backbone: Annotated[str, typer.Argument(help="The backbone whose ImageNet weights to get.")],
    dest: Annotated[Path, typer.Option(
        help="Folder that receives <backbone>/ with the weights and their SHA-256 manifest.")]
    = Path("weights"),
) -> None:
    """Download a backbone's ImageNet weights (needs internet) into DEST/<backbone>/."""
    from features.weights import MANIFEST
    from features.weights_fetch import fetch_weights

    manifest = fetch_weights(backbone, dest)
    folder = dest / manifest["backbone"]
    console.print(
        f"wrote {folder} ({', '.join(manifest['files'])}; SHA-256 in {MANIFEST}); on the "
        f"offline machine pass --backbone {manifest['backbone']} "
        f"--weights {folder / manifest['weights']}", highlight=False, soft_wrap=True)
