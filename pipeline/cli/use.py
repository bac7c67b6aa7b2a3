"""Commands that use a trained model: classify images, serve, export, and the offline demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.errors import user_errors, uses_keras
from pipeline.cli.options import (
    OUTPUT,
    RUNTIME,
    AddressOption,
    EngineOption,
    RuntimeOption,
    WorkersOption,
)
from pipeline.cli.output import (
    announce_device,
    console,
    err_console,
    print_device,
    print_files,
    print_rows,
)
from pipeline.config import DEFAULT_BATCH_SIZE
from pipeline.progress import print_table, progress_bar

PANEL = "Use a model"
app = typer.Typer()


@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def predict(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    images: Annotated[list[Path], typer.Argument(
        help="A folder (images at any depth), a CSV whose first column is image paths, "
             "or image files.")],
    out: Annotated[Path | None, typer.Option(
        help="Write one CSV row per image here (streamed; <out>.partial until done) "
             "instead of printing a table. Columns path, label, score, score_kind, top, "
             "unknown, unknown_score, error; top is a JSON list of \\[label, score] pairs; "
             "unknown is true for an image unlike every trained class (label still names "
             "the best class), empty for models saved without the score.",
        rich_help_panel=OUTPUT)]
    = None,
    top: Annotated[int, typer.Option(help="How many classes to keep per image.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
    = DEFAULT_BATCH_SIZE,
    workers: WorkersOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
    = False,
    runtime: RuntimeOption = None,
    engine: EngineOption = "local",
    address: AddressOption = None,
    coverage: Annotated[float | None, typer.Option(
        help="Accept this share of images of the trained classes as known (the others "
             "'unknown') instead of the coverage the model was trained for.")] = None,
) -> None:
    """Classify images with a saved model; unreadable files are reported, not fatal."""
    from pipeline.workflows import predict_files, write_predictions  # h5py

    if out is not None:

        with progress_bar(f"predict {model.name}", console=err_console) as progress:
            report = write_predictions(model, images, out, top=top, batch_size=batch_size,
                                       workers=workers, overwrite=overwrite, progress=progress,
                                       runtime=runtime, engine=engine, address=address,
                                       coverage=coverage, on_device=announce_device)
        # Rows of unreadable files hold only an error: they are not classified images.
        skipped = (f", skipped {len(report.errors)} unreadable (their rows hold the error)"
                   if report.errors else "")
        console.print(f"wrote {report.out}: {report.rows - len(report.errors)} image(s) "
                      f"classified{skipped} in {report.seconds:.1f}s "
                      f"({report.images_per_second:.1f} img/s)", highlight=False,
                      soft_wrap=True)
        for what, items in (("unreadable", report.errors), ("ignored", report.ignored)):
            print_files(err_console, what, items, f"see {report.out}")
        return
    results = predict_files(model, images, top=top, batch_size=batch_size, workers=workers,
                            runtime=runtime, engine=engine, address=address,
                            coverage=coverage, on_device=announce_device)
    if as_json:
        console.print_json(json.dumps(results))
        return
    kind = next((r["score_kind"] for r in results if "score_kind" in r), "score")
    table = Table(title=f"predictions of {model.name}")
    table.add_column("image", no_wrap=True)
    table.add_column("label")
    table.add_column(kind, justify="right")
    has_unknown = any("unknown" in r for r in results)
    if has_unknown:
        table.add_column("unknown")
    if top > 1:
        table.add_column(f"top {top}")
    for r in results:
        if "error" in r:
            row = [r["path"], "[red]unreadable[/]", "-", *(["-"] * has_unknown), r["error"]]
        else:
            flag = ["[yellow]yes[/]" if r["unknown"] else "no"] if has_unknown else []
            row = [r["path"], r["label"], f"{r['score']:.3f}", *flag,
                   ", ".join(f"{lbl} {s:.3f}" for lbl, s in r["top"])]
        table.add_row(*(row if top > 1 else row[:-1]))
    print_table(console, table)
    if results and not has_unknown and any("label" in r for r in results):
        err_console.print(f"{model.name} has no unknown score (saved before it existed, or "
                          "an sgd model): images of no trained class get the "
                          "nearest class; train it again to flag them", highlight=False)
    failed = [r for r in results if "error" in r]
    if failed:
        err_console.print(f"[yellow]{len(failed)} of {len(results)} image(s) could not be read[/]")



@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def serve(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    host: Annotated[str, typer.Option(
        help="Address to listen on; any but loopback needs a token (TLEARN_TOKEN or "
             "--token-file).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    token_file: Annotated[Path | None, typer.Option(
        help="A file holding the token requests must send (Authorization: Bearer); read "
             "once, chmod 600. Or set TLEARN_TOKEN.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (413 beyond).")]
    = 20.0,
    max_images: Annotated[int, typer.Option(min=1, help="Most images per request.")] = 16,
    max_pixels: Annotated[int, typer.Option(
        min=1, help="Largest image accepted, width x height (decompression bombs).")]
    = 50_000_000,
    max_queued: Annotated[int, typer.Option(
        min=1, help="Most images waiting for the model; beyond, 503 with Retry-After.")]
    = 256,
    max_request_pixels: Annotated[int, typer.Option(
        min=1, help="Most pixels decoded per request (JPEGs decode at reduced scale); "
                    "images beyond are refused and listed.")] = 24_000_000,
    max_uploads: Annotated[int, typer.Option(
        min=1, help="Uploads read and decoded at once; others wait for a slot.")] = 8,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a request's headers, then its body, may take to arrive.")] = 30.0,
    max_connections: Annotated[int, typer.Option(
        min=1, help="Open connections; beyond, new requests get 503.")] = 512,
    batching: Annotated[bool, typer.Option(
        "--batching/--no-batching", help="Share forward passes between requests.",
        rich_help_panel=RUNTIME)] = True,
    runtime: RuntimeOption = None,
) -> None:
    """Serve a model: POST /predict, GET /health, GET /model, /docs and an upload page at /."""
    # pipeline.serving: FastAPI and uvicorn
    from pipeline.serving import ServeLimits, check_limit, check_serve_args, is_loopback, token_from
    from pipeline.serving import serve as run_server

    limits = ServeLimits(
        max_upload_bytes=int(check_limit("--max-upload-mb", max_upload_mb, 0, 4096) * 2**20),
        max_images=max_images, max_pixels=max_pixels, max_request_pixels=max_request_pixels,
        max_queued=max_queued, max_uploads=max_uploads,
        body_timeout=check_limit("--body-timeout", body_timeout, 0, 3600),
        max_connections=max_connections)
    token = token_from(token_file)
    check_serve_args(model, port, host=host, token=token)
    guard = "" if token is None else "; requests need the token"
    if not is_loopback(host):
        guard += " (plain HTTP: put TLS in front for anything public)"
    print_device(runtime)
    console.print(f"loading {model} ... then open http://{host}:{port}/ (Ctrl-C stops){guard}",
                  highlight=False)
    run_server(model, host=host, port=port, batching=batching, runtime=runtime, limits=limits,
               token=token)


@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def export(
    model: Annotated[Path, typer.Argument(help="A saved model (.joblib or .keras).")],
    out: Annotated[Path, typer.Option(help="Folder to write (created).")],
    format: Annotated[str, typer.Option(help="openvino or onnx.")] = "openvino",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """One deployable network, uint8 pixels to scores, runnable without tlearn."""
    from pipeline.export import export_model  # scikit-learn, through the model loaders

    result = export_model(model, out, format=format, overwrite=overwrite)
    console.print(f"wrote {result.out}: {', '.join(result.files)} (input uint8 "
                  f"N x {result.input_size} x {result.input_size} x 3, {result.scores} "
                  f"scores for {len(result.label_names)} classes; see README.md)",
                  highlight=False)



@app.command(rich_help_panel=PANEL)
@user_errors
@uses_keras
def demo(
    limit_per_class: Annotated[int | None, typer.Option(
        help="Use only this many images per digit (quicker).")] = None,
) -> None:
    """The main job, offline, on built-in data: digits -> Lite0 features -> classifiers."""
    from pipeline.workflows import run_demo  # h5py

    with progress_bar("extract efficientnet_lite0", console=err_console) as progress:
        result = run_demo(limit_per_class=limit_per_class, progress=progress,
                          log=lambda line: console.print(line, highlight=False))
    print_rows(result.comparison, "classifiers on digits (test split)")
    best = result.best.report.get("classifier", "") if result.best else ""
    score = next((r["score_kind"] for r in result.predictions if "score_kind" in r), "score")
    table = Table(title=f"a few test images, classified from their files by the best model "
                        f"({best})")
    for col in ("image", "true", "predicted", score):
        table.add_column(col, overflow="fold")
    for truth, r in zip(result.truths, result.predictions, strict=True):
        table.add_row(Path(r["path"]).name, truth, r.get("label", r.get("error", "")),
                      f"{r['score']:.3f}" if "score" in r else "-")
    print_table(console, table)
    shown = result.best or result.outcomes[0]
    console.print(f"reports: {shown.report_dir.parent}; try 'tlearn predict "
                  f"{shown.model_path} IMAGE'", highlight=False)

