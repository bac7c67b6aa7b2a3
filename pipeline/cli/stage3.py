"""Stage 3 commands: fine-tune a pretrained network, or train one from scratch as a baseline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.errors import user_errors, uses_keras
from pipeline.cli.options import (
    NETWORK,
    TRAINING,
    BatchSize,
    Flip,
    FolderTestSize,
    NoAugment,
    Patience,
    Restart,
    Rotation,
    Seed,
    Shear,
    Shift,
    ValShare,
    Zoom,
    training_settings,
)
from pipeline.cli.output import console, print_rows

PANEL = "Stage 3: fine-tuning"
app = typer.Typer()


def _print_stage3(result) -> None:
    from pipeline.reports import comparison_row  # scikit-learn

    print_rows([comparison_row(result.report)], f"{result.name} (test split)")
    console.print(f"{result.model_path}  (report, history.csv, curves.png: {result.report_dir})",
                  highlight=False)


@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def finetune(
    source: Annotated[Path, typer.Argument(help="A feature store (its images, labels and "
                                                "split are reused) or a dataset folder.")],
    backbone: Annotated[str | None, typer.Option(
        help="Network to fine-tune, from 'tlearn backbones' \\[default: the store's "
             "backbone, else efficientnet_lite0].", rich_help_panel=NETWORK)] = None,
    weights: Annotated[str, typer.Option(help="imagenet, none or a weights file.",
                                         rich_help_panel=NETWORK)] = "imagenet",
    input_size: Annotated[int | None, typer.Option(
        help="Side of the square input the network is trained at \\[default: the store's, "
             "else the backbone's].", rich_help_panel=NETWORK)] = None,
    unfreeze: Annotated[str | None, typer.Option(
        help="First layer or block to train in phase 2, or 'all' \\[default: last block].",
        rich_help_panel=NETWORK)]
    = None,
    warmup_epochs: Annotated[int, typer.Option(help="Phase 1: head only, RMSprop.",
                                               rich_help_panel=TRAINING)] = 5,
    finetune_epochs: Annotated[int, typer.Option(help="Phase 2: top of the base too.",
                                                 rich_help_panel=TRAINING)] = 10,
    warmup_lr: Annotated[float, typer.Option(help="Phase 1 learning rate.",
                                             rich_help_panel=TRAINING)] = 1e-3,
    finetune_lr: Annotated[float, typer.Option(help="Phase 2 learning rate (small).",
                                               rich_help_panel=TRAINING)] = 1e-4,
    optimizer: Annotated[str, typer.Option(help="Phase 2: sgd (momentum 0.9) or adam.",
                                           rich_help_panel=TRAINING)] = "sgd",
    head_pooling: Annotated[str, typer.Option(help="avg or flatten.",
                                              rich_help_panel=NETWORK)] = "avg",
    head_units: Annotated[int, typer.Option(help="Units of the new dense layer.",
                                            rich_help_panel=NETWORK)] = 256,
    head_dropout: Annotated[float, typer.Option(help="Dropout of the new head.",
                                                rich_help_panel=NETWORK)] = 0.5,
    batch_size: BatchSize = 32,
    patience: Patience = 3,
    val_share: ValShare = 0.1, test_size: FolderTestSize = 0.25, seed: Seed = 42,
    no_augment: NoAugment = False, rotation: Rotation = 30.0, shift: Shift = 0.1,
    shear: Shear = 0.2, zoom: Zoom = 0.2, flip: Flip = True, overwrite: Restart = False,
) -> None:
    """Stage 3: fine-tune a pretrained backbone under a new head, in two phases."""
    # The flags are named as the settings' fields: a new option is a field and its flag.
    options = dict(locals())
    # pipeline.stage3: scikit-learn, and TensorFlow when it trains
    from pipeline.stage3 import FinetuneSettings, HeadConfig
    from pipeline.stage3 import finetune as run_finetune

    head = HeadConfig(*(options.pop(f"head_{part}") for part in ("pooling", "units", "dropout")))
    settings = training_settings(FinetuneSettings, {**options, "head": head})
    result = run_finetune(settings, log=lambda line: console.print(line, highlight=False),
                          verbose=1 if sys.stdout.isatty() else 0)
    _print_stage3(result)


@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def scratch(
    source: Annotated[Path, typer.Argument(help="A feature store or a dataset folder.")],
    input_size: Annotated[int, typer.Option(help="Side of the input images.",
                                            rich_help_panel=NETWORK)] = 64,
    epochs: Annotated[int, typer.Option(min=1, help="Most training epochs (early stopping "
                                                    "may end sooner).",
                                        rich_help_panel=TRAINING)] = 20,
    learning_rate: Annotated[float, typer.Option(help="SGD, Nesterov momentum 0.9.",
                                                 rich_help_panel=TRAINING)] = 0.01,
    batch_size: BatchSize = 32,
    patience: Patience = 5,
    val_share: ValShare = 0.1, test_size: FolderTestSize = 0.25, seed: Seed = 42,
    no_augment: NoAugment = False, rotation: Rotation = 30.0, shift: Shift = 0.1,
    shear: Shear = 0.2, zoom: Zoom = 0.2, flip: Flip = True, overwrite: Restart = False,
) -> None:
    """Baseline without transfer: MiniVGGNet from random weights on the same split."""
    options = dict(locals())
    from pipeline.stage3 import ScratchSettings, train_from_scratch  # scikit-learn, TensorFlow

    result = train_from_scratch(training_settings(ScratchSettings, options),
                                log=lambda line: console.print(line, highlight=False),
                                verbose=1 if sys.stdout.isatty() else 0)
    _print_stage3(result)

