"""The ``tlearn`` command line: parse, call one library function, print.

One module per group of commands, each a Typer app merged into :data:`app` (typer's
"one file per command"), listed in --help under its panel: :mod:`~pipeline.cli.data`,
:mod:`~pipeline.cli.stage1`, :mod:`~pipeline.cli.stage2`, :mod:`~pipeline.cli.stage3`,
:mod:`~pipeline.cli.use` and :mod:`~pipeline.cli.auto`. Commands import heavy libraries (TensorFlow,
scikit-learn, h5py...) in their bodies, so that ``tlearn --help`` imports none of them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from features.devices import BACKENDS, select_backend
from features.errors import UserInputError
from pipeline.cli import auto, check, data, stage1, stage2, stage3, use, weights
from pipeline.cli.errors import user_errors as with_user_errors
from pipeline.cli.options import RegistryChoice
from pipeline.cli.output import err_console, plain_output

BACKEND_CHOICE = RegistryChoice("backend", lambda: BACKENDS)

app = typer.Typer(
    name="tlearn",
    help="Transfer learning for image classification: extract CNN features, train linear "
         "classifiers, fine-tune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Rich help, for the panels: a literal '[' in a help text is written '\[' (see
    # pipeline.cli.options), or rich would take '[default: ...]' for a tag and drop it.
    rich_markup_mode="rich",
)
for group in (data, check, stage1, stage2, stage3, use, auto, weights):
    app.add_typer(group.app)


@app.callback()
def _output_options(
    no_color: Annotated[bool, typer.Option(
        "--no-color", help="Plain output: no colours and no live bars, progress as lines "
                           "(also when NO_COLOR is set or output is not a terminal).")]
    = False,
    backend: Annotated[str | None, typer.Option(
        help="Keras backend that computes: tensorflow, jax or torch \\[default: "
             "$KERAS_BACKEND, else tensorflow]; put it before the command.",
        parser=BACKEND_CHOICE, metavar=BACKEND_CHOICE.metavar())] = None,
) -> None:
    plain_output(no_color)
    if backend is not None:
        # Before any command imports Keras, which fixes its backend once per process.
        with_user_errors(select_backend)(backend)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserInputError as exc:  # raised outside a command body (e.g. while importing)
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)
