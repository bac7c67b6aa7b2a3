"""Stage 1 commands: images to a feature store (extract), and what a store or network holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from features.backbones import BACKBONE_TABLE_COLUMNS, JOIN, backbone_table
from features.errors import UserInputError
from features.factory import create_extractor
from pipeline.cli.errors import user_errors, uses_keras
from pipeline.cli.options import (
    NETWORK,
    OUTPUT,
    POOLING_CHOICE,
    PRECISION_CHOICE,
    RUNTIME,
    SPLIT,
    AddressOption,
    EngineOption,
    RuntimeOption,
    WorkersOption,
    check_seed,
)
from pipeline.cli.output import announce_device, console, err_console, print_files
from pipeline.config import DEFAULT_BACKBONE, DEFAULT_BATCH_SIZE, DEFAULT_SEED, DEFAULT_TEST_SIZE
from pipeline.progress import print_table, progress_bar

PANEL = "Stage 1: features"
app = typer.Typer()


@app.command(rich_help_panel=PANEL)
@user_errors
def extract(
    data: Annotated[Path, typer.Argument(help="Folder with a sub-folder per class, or a CSV "
                                              "of path,label.")],
    backbone: Annotated[str, typer.Option(
        help="Network from 'tlearn backbones' (its table of backbones), or several joined "
             "by '+', their features concatenated ('tlearn backbones' shows an example).",
        rich_help_panel=NETWORK)]
    = DEFAULT_BACKBONE,
    out: Annotated[Path | None, typer.Option(
        help="Store to write \\[default: <data>__<backbone>.h5 in artifacts/features].",
        rich_help_panel=OUTPUT)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.",
                                               rich_help_panel=RUNTIME)]
    = DEFAULT_BATCH_SIZE,
    pooling: Annotated[str | None, typer.Option(
        help="flatten, avg or max \\[default: the backbone's]; for joined networks one "
             "for all or one each, joined by '+'.", parser=POOLING_CHOICE,
        metavar=POOLING_CHOICE.metavar(),
        rich_help_panel=NETWORK)] = None,
    layer: Annotated[str | None, typer.Option(
        help="Cut the network at this layer (e.g. block4_pool); for joined networks one "
             "each, joined by '+'.", rich_help_panel=NETWORK)] = None,
    taps: Annotated[str | None, typer.Option(
        help="Also append the average-pooled outputs of these layers or blocks, "
             "comma-separated, or 'stages' (efficientnet_lite*: the last block of stages "
             "4-7); for joined networks 'stages' or NETWORK/LAYER.",
        rich_help_panel=NETWORK)] = None,
    mirror: Annotated[bool, typer.Option(
        help="Average each image's features with its left-right mirror's (twice the "
             "compute).", rich_help_panel=NETWORK)] = False,
    weights: Annotated[str, typer.Option(
        help="imagenet, none (random, for tests) or the path of a weights file.",
        rich_help_panel=NETWORK)] = "imagenet",
    input_size: Annotated[int | None, typer.Option(
        help="Side of the square input \\[default: the backbone's].",
        rich_help_panel=NETWORK)] = None,
    precision: Annotated[str, typer.Option(
        help="float32, bfloat16, float16 (a GPU's mixed precision) or int8 (openvino, "
             "calibrated on train images); features are stored as float32.",
        parser=PRECISION_CHOICE,
        metavar=PRECISION_CHOICE.metavar(), rich_help_panel=RUNTIME)]
    = "float32",
    runtime: RuntimeOption = None,
    calibration_images: Annotated[int, typer.Option(
        min=1, help="int8: training images the quantization is calibrated on.",
        rich_help_panel=RUNTIME)] = 300,
    compression: Annotated[str, typer.Option(help="none, lzf or gzip.",
                                             rich_help_panel=OUTPUT)] = "none",
    test_size: Annotated[float, typer.Option(help="Share of each class held out for test.",
                                             rich_help_panel=SPLIT)]
    = DEFAULT_TEST_SIZE,
    val_size: Annotated[float, typer.Option(help="Share of each class for validation.",
                                            rich_help_panel=SPLIT)] = 0.0,
    seed: Annotated[int, typer.Option(callback=check_seed, help="Seed of the split.",
                                      rich_help_panel=SPLIT)]
    = DEFAULT_SEED,
    workers: WorkersOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.",
                                            rich_help_panel=OUTPUT)] = False,
    engine: EngineOption = "local",
    address: AddressOption = None,
    near_duplicates: Annotated[bool, typer.Option(
        help="Keep near-identical images (resized, re-encoded, slightly cropped copies) in "
             "one split, as byte-identical files are.", rich_help_panel=SPLIT)] = True,
    exclude: Annotated[Path | None, typer.Option(
        help="CSV of images to leave out, or relabel (header path\\[,label]), e.g. the "
             "issues.csv of 'tlearn check'.", rich_help_panel=SPLIT)] = None,
) -> None:
    """Stage 1: stream images through a headless pretrained CNN into an HDF5 feature store."""
    # The flags are named as the settings' fields: a new option is a field and its flag.
    options = dict(locals())
    from pipeline.workflows import ExtractSettings, extract_dataset  # h5py, the store's

    settings = ExtractSettings.from_options(options)
    with progress_bar(f"extract {backbone}", console=err_console) as progress:
        report = extract_dataset(settings, progress=progress, on_device=announce_device)
    result = report.result
    if report.grouping is not None and report.grouping.describe():
        console.print(report.grouping.describe(), highlight=False)
    if report.exclusions is not None:
        done = report.exclusions
        console.print(f"{done['file']}: left out {done['excluded']} image(s), relabelled "
                      f"{done['relabelled']}" + (f"; {done['not_found']} listed image(s) are "
                                                 "not in the dataset" if done["not_found"]
                                                 else ""), highlight=False)
    if result.up_to_date:
        console.print(f"{result.path} is up to date ({result.rows} rows); nothing to do "
                      "(--overwrite to extract again)")
        return
    if result.resumed_rows:
        console.print(f"resumed an interrupted run after {result.resumed_rows} rows")
    if result.near_duplicate_groups is not None:
        console.print(f"{result.near_duplicate_groups} near-duplicate group(s) found, each "
                      f"kept in one split ({result.near_duplicates_moved} image(s) moved); "
                      "'tlearn check' lists them", highlight=False)
    console.print(
        f"wrote {result.path}: {result.rows} images x {result.feature_dim} features "
        f"in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s)"
    )
    for what, items in (("skipped", result.skipped), ("ignored", report.ignored)):
        print_files(console, what, items, "see 'tlearn inspect'")




@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def backbones(
    layers: Annotated[str | None, typer.Option(
        help="List the layer names of this backbone (for --layer).")] = None,
) -> None:
    """Table of the backbones tlearn knows, with their feature sizes."""
    if layers:
        if JOIN in layers:
            raise UserInputError(f"list the layers of one network at a time, e.g. "
                                 f"--layers {layers.split(JOIN)[0]}")
        extractor = create_extractor(layers, weights="none", runtime="tensorflow")
        base_layers = extractor.model.layers[:-1]
        table = Table(title=f"layers of {layers}")
        table.add_column("layer")
        table.add_column("output shape")
        for lyr in base_layers:
            table.add_row(lyr.name, str(tuple(lyr.output.shape[1:])))
        print_table(console, table)
        return
    table = Table(title="backbones (feature sizes at the native input size)")
    for col in BACKBONE_TABLE_COLUMNS:
        table.add_column(col, no_wrap=col == "name")
    for row in backbone_table():
        table.add_row(*map(escape, row))
    print_table(console, table)
    console.print(f"Join names with '{JOIN}' (--backbone efficientnet_lite0{JOIN}"
                  "efficientnet_lite2) to concatenate their features: each network sees the "
                  "image at its own input size.", highlight=False)


@app.command(rich_help_panel=PANEL)
@user_errors
def inspect(store: Annotated[Path, typer.Argument(help="A feature store (.h5).")]) -> None:
    """Summary of a feature store: specification, shape, classes, split and skipped files."""
    from features.store import FeatureStore  # h5py

    with FeatureStore(store) as fs:
        attrs = fs.attrs
        rows, dim = fs.shape
        table = Table(title=str(store), show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        table.add_row("rows x features", f"{rows:,} x {dim:,}")
        for key in ("backbone", "layer", "pooling", "taps", "views", "input_size",
                    "preprocessing", "weights", "precision", "backend", "device", "compression",
                    "source", "seed", "test_size", "val_size", "n_near_duplicate_groups",
                    "exclude_file", "n_excluded", "n_relabelled", "created", "fingerprint"):
            if key in attrs:
                table.add_row(key, str(attrs[key]))
        table.add_row("split", ", ".join(f"{k}={v}" for k, v in fs.split_counts().items()))
        labels = fs.labels
        counts = np.bincount(labels, minlength=len(fs.label_names))
        table.add_row("classes", ", ".join(
            f"{n} ({c})" for n, c in zip(fs.label_names, counts, strict=True)))
        table.add_row("skipped", str(len(fs.skipped)))
        if "library_versions" in attrs:
            versions = json.loads(attrs["library_versions"])
            table.add_row("libraries", ", ".join(f"{k} {v}" for k, v in versions.items()))
        print_table(console, table)
        for item in fs.skipped[:50]:
            console.print(f"  skipped {item.path}: {item.reason}", highlight=False)

