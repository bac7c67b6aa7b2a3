"""The resumable training loop of stage 3: phases of epochs, checkpointed after every epoch.

A checkpoint is a *generation*: after every epoch, the model with its
optimizer state is written to ``checkpoint-<g>.keras`` and, when the validation
loss improved, its weights to ``best-<g>.weights.h5`` (each file atomically and
flushed to disk); then ``state.json`` is replaced by one naming the files of
generation ``g`` with their SHA-256. That replacement is the only moment the
checkpoint changes: a run killed before it resumes from generation ``g - 1``,
one killed after it from ``g``, so no completed epoch is replayed or skipped and
the best weights always belong to the recorded best validation loss. Files of
older generations are removed only after the switch.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError
from features.integrity import atomic_write, atomic_write_json, file_digest
from pipeline.augmentation import register_custom_layers

Log = Callable[[str], None]

STATE_FILE = "state.json"
STATE_FORMAT = 2  # 1 (before generations): checkpoint.keras and best.weights.h5 replaced in place
# Files of any generation, and the temporary files of unfinished writes (".name.xxxx.suffix").
_GENERATION_FILE = re.compile(r"^\.?(checkpoint|best)[-.]|^\.state\.json\.")


@dataclass
class Phase:
    """Some epochs with one optimizer and one set of trainable layers."""

    name: str
    epochs: int
    learning_rate: float
    make_optimizer: Callable[[float], Any] = field(repr=False)
    prepare: Callable[[Any], None] = field(repr=False)  # sets trainable flags on the model


@dataclass
class TrainingState:
    """Where a run stands after its last completed epoch (what ``state.json`` records)."""

    phase_index: int = 0
    epoch_in_phase: int = 0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    learning_rate: float | None = None
    history: list[dict] = field(default_factory=list)
    finished: bool = False


def checkpointed_settings_key(workdir: Path) -> str | None:
    """The settings key of the run checkpointed in ``workdir``, or None when there is none."""
    try:
        saved = json.loads((Path(workdir) / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return saved.get("settings_key") if saved.get("format") == STATE_FORMAT else None


class _Generations:
    """The checkpoint files of one training folder and the ``state.json`` that names them."""

    def __init__(self, workdir: Path, settings_key: str) -> None:
        self.workdir = workdir
        self.settings_key = settings_key
        self.generation = 0
        self.files: dict[str, str] = {}  # "checkpoint"/"best" -> file name
        self.digests: dict[str, str] = {}

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def path(self, role: str) -> Path | None:
        return self.workdir / self.files[role] if role in self.files else None

    def read(self) -> TrainingState | None:
        """The state of the last completed checkpoint, or None for a fresh folder."""
        if not self.state_path.exists():
            return None
        try:
            saved = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{self.state_path} is damaged ({exc}); rerun with --overwrite "
                                 "to start the training again") from exc
        if saved.get("format") != STATE_FORMAT or saved.get("settings_key") != self.settings_key:
            which = "a finished" if saved.get("state", {}).get("finished") else "an unfinished"
            raise UserInputError(
                f"{self.workdir} holds {which} run with other settings or data; rerun with "
                "the same settings to resume it, or with --overwrite to start again"
            )
        self.generation = int(saved["generation"])
        self.files = dict(saved["files"])
        self.digests = dict(saved["sha256"])
        for role, name in self.files.items():
            path = self.workdir / name
            if not path.is_file() or file_digest(path) != self.digests.get(role):
                raise UserInputError(f"{path} is missing or does not match the SHA-256 in "
                                     f"{self.state_path} (corrupted?); rerun with --overwrite "
                                     "to start the training again")
        return TrainingState(**saved["state"])

    def load_model(self) -> Any:
        import keras

        register_custom_layers()  # the checkpoint holds the augmentation block
        return keras.models.load_model(self.path("checkpoint"))

    def commit(self, state: TrainingState, model: Any = None, *, new_best: bool = False) -> None:
        """Write a new generation (when ``model`` is given) and switch ``state.json`` to it."""
        if model is not None:
            generation = self.generation + 1
            files = dict(self.files)
            files["checkpoint"] = f"checkpoint-{generation:06d}.keras"
            atomic_write(self.workdir / files["checkpoint"], model.save, suffix=".keras")
            if new_best:
                files["best"] = f"best-{generation:06d}.weights.h5"
                atomic_write(self.workdir / files["best"], model.save_weights,
                             suffix=".weights.h5")
            digests = {role: (self.digests[role] if name == self.files.get(role)
                              else file_digest(self.workdir / name))
                       for role, name in files.items()}
        else:
            generation, files, digests = self.generation, self.files, self.digests
        atomic_write_json(self.state_path, {
            "format": STATE_FORMAT, "settings_key": self.settings_key,
            "generation": generation, "files": files, "sha256": digests,
            "state": asdict(state)})
        self.generation, self.files, self.digests = generation, files, digests
        self.remove_stale()

    def remove_stale(self) -> None:
        """Delete files of other generations and leftovers of interrupted writes."""
        keep = set(self.files.values())
        for path in self.workdir.iterdir():
            if path.name not in keep and _GENERATION_FILE.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)


def train_phases(build: Callable[[], Any], phases: list[Phase], train_data: Any, val_data: Any,
                 *, workdir: Path, settings_key: str, patience: int = 3, plateau: int = 2,
                 log: Log | None = None, on_batch: Callable[[int, int], None] | None = None,
                 verbose: int = 0) -> tuple[Any, TrainingState]:
    """Train through ``phases`` epoch by epoch, checkpointing after each; resumable.

    Parameters
    ----------
    build : callable
        Returns a fresh, uncompiled model (used when there is nothing to resume).
    phases : list of Phase
    train_data, val_data : keras.utils.PyDataset
    workdir : Path
        Holds ``state.json`` and the checkpoint files it names.
    settings_key : str
        A checkpoint made with another key is not resumed (the way out is ``--overwrite``).
    patience : int
        Epochs without a better validation loss before a phase stops early.
    plateau : int
        Epochs without improvement before the learning rate is halved.
    on_batch : callable, optional
        ``on_batch(epoch_number, batch_index)`` after every training batch (tests use it
        to interrupt a run mid-epoch).

    Returns
    -------
    (keras.Model, TrainingState)
        The model with the best validation weights restored.

    Raises
    ------
    UserInputError
        When ``workdir`` holds a run with another settings key, or damaged checkpoint files.
    """
    import keras

    say = log or (lambda line: None)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = _Generations(workdir, settings_key)
    state = checkpoints.read()
    if state is None:
        model, state = build(), TrainingState()
    else:
        model = checkpoints.load_model()
        # past the last phase (killed before the run was marked finished) nothing is left
        # to train: the loop below only restores the best weights and finishes
        if state.phase_index < len(phases):
            say(f"resuming at phase {phases[state.phase_index].name}, epoch "
                f"{state.epoch_in_phase + 1} (from {checkpoints.path('checkpoint')})")
    checkpoints.remove_stale()

    class BatchHook(keras.callbacks.Callback):
        def __init__(self, epoch_number):
            super().__init__()
            self.epoch_number = epoch_number

        def on_train_batch_end(self, batch, logs=None):
            if on_batch:
                on_batch(self.epoch_number, batch)

    # the early stop is read from the saved state, so a run killed right after the
    # epoch that triggered it does not train one epoch more when resumed
    stop_after = max(patience, 1)
    total_epochs = sum(p.epochs for p in phases)
    epoch_times: list[float] = []
    while state.phase_index < len(phases) and not state.finished:
        phase = phases[state.phase_index]
        if state.epoch_in_phase == 0 or not model.optimizer or not model.compiled:
            phase.prepare(model)
            lr = state.learning_rate or phase.learning_rate
            model.compile(optimizer=phase.make_optimizer(lr),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            state.learning_rate = lr
        while (state.epoch_in_phase < phase.epochs
               and state.epochs_without_improvement < stop_after):
            done_before = sum(p.epochs for p in phases[:state.phase_index])
            epoch_number = done_before + state.epoch_in_phase + 1
            t0 = time.perf_counter()
            fit = model.fit(train_data, validation_data=val_data, epochs=1, verbose=verbose,
                            callbacks=[BatchHook(epoch_number)])
            seconds = time.perf_counter() - t0
            epoch_times.append(seconds)
            metrics = {k: float(v[-1]) for k, v in fit.history.items()}
            record = {"epoch": epoch_number, "phase": phase.name, "seconds": seconds,
                      "learning_rate": float(state.learning_rate), **metrics}
            state.history.append(record)
            state.epoch_in_phase += 1
            improved = metrics["val_loss"] < state.best_val_loss - 1e-6
            if improved:
                state.best_val_loss = metrics["val_loss"]
                state.epochs_without_improvement = 0
            else:
                state.epochs_without_improvement += 1
                if state.epochs_without_improvement % plateau == 0:
                    state.learning_rate = float(state.learning_rate) / 2
                    model.optimizer.learning_rate.assign(state.learning_rate)
            remaining = total_epochs - epoch_number
            say(f"epoch {epoch_number}/{total_epochs} ({phase.name}): loss "
                f"{metrics['loss']:.4f} acc {metrics.get('accuracy', 0):.4f} val_loss "
                f"{metrics['val_loss']:.4f} val_acc {metrics.get('val_accuracy', 0):.4f} "
                f"lr {state.learning_rate:.2g}, {seconds:.0f}s/epoch, at most "
                f"{remaining * float(np.mean(epoch_times)):.0f}s left")
            if state.epochs_without_improvement >= stop_after:
                say(f"early stop of {phase.name}: no better val_loss for {patience} epochs")
            checkpoints.commit(state, model, new_best=improved)
        # next phase starts from the best weights so far, with its own optimizer
        state.phase_index += 1
        state.epoch_in_phase = 0
        state.epochs_without_improvement = 0
        state.learning_rate = None
        if checkpoints.path("best"):
            model.load_weights(checkpoints.path("best"))
        checkpoints.commit(state, model)
    state.finished = True
    if checkpoints.path("best"):
        model.load_weights(checkpoints.path("best"))
    checkpoints.commit(state)
    return model, state
