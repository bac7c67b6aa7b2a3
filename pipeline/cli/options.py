"""Options several commands share, and choices read from tlearn's registries.

Help texts are rich markup (the help is drawn in panels): a literal ``[`` before a
word is written ``\\[`` ('[default: ...]', 'tlearn[ray]'), or rich takes it for a tag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from features.backbones import JOIN
from features.registries import unknown_choice
from features.runtimes import RUNTIMES
from features.spec import POOLINGS
from pipeline.augmentation import AugmentationConfig
from pipeline.cli.errors import fail


class RegistryChoice:
    """A ``parser`` for an option whose value is a registry's name (or names joined by '+').

    A wrong name is the registry's own line (``unknown runtime 'x'; choose one of: ...;
    did you mean ...?``) with exit code 2. Typer takes custom types only as a parser, so
    the help lists the names through :meth:`metavar`, for registries cheap to import.

    Parameters
    ----------
    what : str
        What a name is, in the error line ("runtime").
    names : callable
        Returns the names; called at each use, so names registered after start-up
        (plugins, tests) count, and a heavy registry is imported only when a command runs.
    joinable : bool, default=False
        Also accept names joined by '+' (one per joined network).
    """

    def __init__(self, what: str, names: Callable[[], Iterable[str]],
                 joinable: bool = False) -> None:
        self.what = what
        self.names = names
        self.joinable = joinable

    def metavar(self) -> str:
        """``[a|b|c]``, as help shows a choice (``[a|b|c][+...]`` when joinable)."""
        return f"[{'|'.join(self.names())}]" + (f"[{JOIN}...]" if self.joinable else "")

    def __call__(self, value: str) -> str:
        choices = list(self.names())
        for part in value.split(JOIN) if self.joinable else [value]:
            if part not in choices:
                fail(str(unknown_choice(self.what, part, choices)))
        return value


def _precisions() -> list[str]:
    return list(dict.fromkeys(p for runtime in RUNTIMES.values() for p in runtime.precisions))


def _engines() -> list[str]:
    from pipeline.engines import ENGINES  # it imports the feature store, and h5py with it

    return ENGINES.names()


RUNTIMES_CHOICE = RegistryChoice("runtime", RUNTIMES.names)
POOLING_CHOICE = RegistryChoice("pooling", lambda: POOLINGS, joinable=True)
PRECISION_CHOICE = RegistryChoice("precision", _precisions)

# numpy, scikit-learn and Keras seeds are unsigned 32-bit integers
MAX_SEED = 2**32 - 1


def check_seed(value: int) -> int:
    """A ``--seed`` callback (not min/max: one error line that gives the whole range)."""
    if not 0 <= value <= MAX_SEED:
        fail(f"--seed must be an integer from 0 to {MAX_SEED}, got {value}")
    return value


def parse_workers(value: str) -> str | int:
    """A ``--workers`` value: ``auto`` or a whole number of at least 1 (one line otherwise)."""
    if value.strip().lower() == "auto":
        return "auto"
    if not value.strip().isdigit() or int(value) < 1:
        fail(f"--workers must be 'auto' or a whole number of at least 1, got {value!r}")
    return int(value)


# Panels of a command's --help, for the commands with many options.
NETWORK, SPLIT, RUNTIME, OUTPUT, ENGINE = "Network", "Split", "Runtime", "Output", "Engine"
TRAINING, AUGMENTATION = "Training", "Augmentation"

RUNTIME_HELP = ("What runs the network: tensorflow or openvino \\[default: openvino where it "
                "is installed and measured faster, else tensorflow; see docs/guide/stage1.md].")
RuntimeOption = Annotated[str | None, typer.Option(
    help=RUNTIME_HELP, parser=RUNTIMES_CHOICE, metavar=RUNTIMES_CHOICE.metavar(),
    rich_help_panel=RUNTIME)]
WorkersOption = Annotated[str, typer.Option(
    help="Image decoding threads, or auto: one per CPU core this process may use.",
    parser=parse_workers, metavar="[auto|N]", rich_help_panel=RUNTIME)]
EngineOption = Annotated[str, typer.Option(
    help="Where the work runs: local, or ray (a Ray cluster; pip install 'tlearn\\[ray]').",
    parser=RegistryChoice("engine", _engines), rich_help_panel=ENGINE)]
AddressOption = Annotated[str | None, typer.Option(
    help="--engine ray: the cluster's head, HOST:PORT \\[default: $RAY_ADDRESS, else a local "
         "Ray started for the run].", rich_help_panel=ENGINE)]


def augmentation_options(no_augment: bool, rotation: float, shift: float, shear: float,
                         zoom: float, flip: bool) -> AugmentationConfig:
    """The augmentation of the options below, as the library takes it."""
    return AugmentationConfig(rotation=rotation, width_shift=shift, height_shift=shift,
                              shear=shear, zoom=zoom, horizontal_flip=flip,
                              enabled=not no_augment)


def training_settings(cls: type, options: dict[str, Any]) -> Any:
    """``cls`` (a stage 3 command's settings) of its flags, named as its fields but for
    the augmentation's."""
    flags = ("no_augment", "rotation", "shift", "shear", "zoom", "flip")
    augmentation = augmentation_options(*(options.pop(flag) for flag in flags))
    return cls(**options, augmentation=augmentation)


AUG_HELP = "Augmentation (on the fly): "
NoAugment = Annotated[bool, typer.Option("--no-augment", help=AUG_HELP + "all off.",
                                         rich_help_panel=AUGMENTATION)]
Rotation = Annotated[float, typer.Option(help=AUG_HELP + "max rotation, degrees.",
                                         rich_help_panel=AUGMENTATION)]
Shift = Annotated[float, typer.Option(help=AUG_HELP + "max width/height shift (share).",
                                      rich_help_panel=AUGMENTATION)]
Shear = Annotated[float, typer.Option(help=AUG_HELP + "shear intensity.",
                                      rich_help_panel=AUGMENTATION)]
Zoom = Annotated[float, typer.Option(help=AUG_HELP + "max zoom (share).",
                                     rich_help_panel=AUGMENTATION)]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help=AUG_HELP + "horizontal flips.",
                                    rich_help_panel=AUGMENTATION)]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per training step.",
                                        rich_help_panel=TRAINING)]
Patience = Annotated[int, typer.Option(help="Early stopping patience (epochs).",
                                       rich_help_panel=TRAINING)]
ValShare = Annotated[float, typer.Option(
    help="Validation share of the train split (when the store has no val split).",
    rich_help_panel=SPLIT)]
FolderTestSize = Annotated[float, typer.Option(help="Test share, for a dataset folder only.",
                                               rich_help_panel=SPLIT)]
Seed = Annotated[int, typer.Option(callback=check_seed,
                                   help="Seed of the split, the weights and augmentation.",
                                   rich_help_panel=SPLIT)]
Restart = Annotated[bool, typer.Option("--overwrite", help="Start again, replacing any model.",
                                       rich_help_panel=OUTPUT)]
