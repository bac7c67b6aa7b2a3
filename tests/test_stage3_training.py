"""The resumable training loop: checkpoints that survive SIGKILL, resume across phases."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features.images import load_image
from pipeline.augmentation import AugmentationConfig
from pipeline.stage3 import (
    FinetuneSettings,
    ScratchSettings,
    finetune,
    load_keras_classifier,
    load_split_images,
    scale_to_unit,
    train_from_scratch,
)
from tests.conftest import REPO_ROOT, make_image_folder

# A child process that trains MiniVGGNet and SIGKILLs itself at a chosen moment:
#   batch:E:B         after training batch B of epoch E (mid-epoch)
#   before:NAME:K     just before the K-th file named *NAME* is moved into the training folder
#   after:NAME:K      just after it (e.g. after:state.json:1: right after the first switch)
#   never             runs to the end
# The moments are found by watching os.replace, so they do not depend on how stage 3
# names its files beyond NAME.
# A child process that trains MiniVGGNet and SIGKILLs itself at a chosen moment:
#   batch:E:B         after training batch B of epoch E (mid-epoch)
#   before:NAME:K     just before the K-th file named *NAME* is moved into the training folder
#   after:NAME:K      just after it (e.g. after:state.json:1: right after the first switch)
#   never             runs to the end
# The moments are found by watching os.replace, so they do not depend on how stage 3
# names its files beyond NAME. After every epoch it appends [epoch, optimizer steps] to
# the file $FIT_LOG: an epoch trained on top of a checkpoint that already holds it shows
# as more steps than epochs.
CHILD = r"""
import json, os, signal, sys
from pathlib import Path

import keras
import tensorflow as tf

data, kill, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
when, what, nth = kill.split(":") if kill != "never" else ("never", "", "0")
nth, seen, epoch = int(nth), 0, 0
training = Path(os.environ["TLEARN_ARTIFACTS"]).resolve() / "training"
real_replace, real_fit = os.replace, keras.Model.fit
tf.config.run_functions_eagerly(True)  # tracing would cost more than these tiny epochs


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def replace(src, dst, *args, **kw):
    global seen
    target = Path(dst).resolve()
    hit = training in target.parents and what in target.name
    seen += hit
    if hit and when == "before" and seen == nth:
        die()
    real_replace(src, dst, *args, **kw)
    if hit and when == "after" and seen == nth:
        die()


def fit(model, *args, **kw):
    history = real_fit(model, *args, **kw)
    with open(os.environ["FIT_LOG"], "a") as log:
        log.write(json.dumps([epoch, int(model.optimizer.iterations)]) + "\n")
    return history


def on_batch(epoch_number, batch):
    global epoch
    epoch = epoch_number
    if when == "batch" and epoch_number == int(what) and batch == nth:
        die()


os.replace, keras.Model.fit = replace, fit
from pipeline.augmentation import AugmentationConfig
from pipeline.stage3 import ScratchSettings, train_from_scratch

train_from_scratch(ScratchSettings(data, augmentation=AugmentationConfig(enabled=False),
                                   **kwargs), on_batch=on_batch)
"""

SCRATCH = {"input_size": 16, "epochs": 3, "batch_size": 4, "val_share": 0.2, "patience": 10,
           "workers": 1}


@pytest.fixture
def eager():
    """Run Keras eagerly: tracing costs more than the few batches of these tests."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def run_child(tmp_path: Path, data: Path, artifacts: Path, kill: str):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "TLEARN_ARTIFACTS": str(artifacts), "PYTHONPATH": str(REPO_ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "3", "FIT_LOG": str(tmp_path / "fits.jsonl")}
    return subprocess.run([sys.executable, str(script), str(data), kill, json.dumps(SCRATCH)],
                          env=env, capture_output=True, text=True, timeout=300)


def saved_run(workdir: Path) -> tuple[dict, Path, Path]:
    """The state of the last completed checkpoint, and the model and best weights it names."""
    saved = json.loads((workdir / "state.json").read_text())
    return (saved["state"], workdir / saved["files"]["checkpoint"],
            workdir / saved["files"]["best"])


@pytest.mark.usefixtures("eager")
def test_sigkill_at_any_moment_resumes_after_the_last_completed_epoch(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", per_class=8)
    reference_dir = tmp_path / "reference"
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(reference_dir))
    reference = train_from_scratch(ScratchSettings(
        data, augmentation=AugmentationConfig(enabled=False), **SCRATCH))
    assert [r["epoch"] for r in reference.history] == [1, 2, 3]

    artifacts = tmp_path / "killed"
    kills = [
        "after:.keras:1",       # epoch 1's model written, its best weights and state not yet
        "after:state.json:1",   # right after the switch to epoch 1, before cleaning up
        "batch:2:1",            # mid-epoch 2: nothing of it saved yet
        "before:state.json:1",  # epoch 2 fully written but not switched to
        "after:state.json:3",   # epochs 2, 3 and the end of the phase switched, not finished
    ]
    for kill in kills:
        child = run_child(tmp_path, data, artifacts, kill)
        assert child.returncode == -signal.SIGKILL, f"{kill}: {child.stderr[-3000:]}"
    child = run_child(tmp_path, data, artifacts, "never")
    assert child.returncode == 0, child.stderr[-3000:]

    workdir = artifacts / "training" / "data__scratch_minivggnet"
    state, checkpoint, best = saved_run(workdir)
    history = state["history"]
    # every epoch exactly once, in order, as in the run that was never interrupted
    assert [(r["epoch"], r["phase"]) for r in history] == \
        [(r["epoch"], r["phase"]) for r in reference.history]
    # every epoch, in every run, started from a checkpoint holding exactly the epochs
    # before it: none was trained twice into the weights
    images = load_split_images(data, val_share=SCRATCH["val_share"])
    steps_per_epoch = math.ceil(len(images.train[0]) / SCRATCH["batch_size"])
    fits = [json.loads(line) for line in (tmp_path / "fits.jsonl").read_text().splitlines()]
    # epochs 1 and 2 were trained twice: by runs killed before switching to them
    assert [epoch for epoch, _ in fits] == [1, 1, 2, 2, 3]
    assert all(steps == epoch * steps_per_epoch for epoch, steps in fits), fits
    # only the files of the last generation are left (no temporary or stale files)
    assert sorted(p.name for p in workdir.iterdir()) == \
        sorted(["state.json", checkpoint.name, best.name])
    # the saved model holds the best weights: its validation loss is the best recorded one
    assert state["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in history))
    model = load_keras_classifier(artifacts / "classifiers" / "data__scratch_minivggnet.keras")
    paths, labels = images.val
    pixels = scale_to_unit(np.stack([load_image(p, SCRATCH["input_size"]) for p in paths]))
    model.model.compile(loss="sparse_categorical_crossentropy")  # the loss fit reported
    val_loss = model.model.evaluate(pixels, labels, verbose=0, return_dict=True)["loss"]
    assert val_loss == pytest.approx(state["best_val_loss"], rel=1e-3, abs=1e-5)


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing below catches it."""


@pytest.mark.usefixtures("eager")
def test_killed_after_the_last_warmup_epoch_resumes_with_phase_two(tmp_path, artifacts,
                                                                   monkeypatch):
    import keras

    data = make_image_folder(tmp_path / "data", per_class=6)
    # warm-up at a learning rate of 1e-9 moves the head by far less than the 1e-6 of
    # val_loss an improvement needs, so patience 1 stops it after epoch 2: that is the
    # last warm-up epoch, not epoch 3 (a rate of 0 is refused as a user mistake)
    kwargs = {"backbone": "efficientnet_lite0", "weights": "none", "input_size": 32,
              "warmup_epochs": 3, "finetune_epochs": 1, "warmup_lr": 1e-9,
              "finetune_lr": 0.05, "patience": 1, "batch_size": 4, "val_share": 0.2,
              "unfreeze": "block6a", "augmentation": AugmentationConfig(enabled=False),
              "workers": 1}
    real_replace = os.replace
    switches = []

    def replace(src, dst, *args, **kw):
        real_replace(src, dst, *args, **kw)
        if Path(dst).name == "state.json":
            switches.append(dst)
            if len(switches) == 2:  # the state after warm-up epoch 2 is on disk
                raise Killed

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        finetune(FinetuneSettings(data, **kwargs))
    monkeypatch.setattr(os, "replace", real_replace)
    workdir = artifacts / "training" / "data__finetune_efficientnet_lite0"
    state, _, _ = saved_run(workdir)
    assert [r["epoch"] for r in state["history"]] == [1, 2]

    trained = []
    result = finetune(FinetuneSettings(data, **kwargs),
                      on_batch=lambda epoch, batch: trained.append(epoch))
    assert set(trained) == {4}  # straight into phase 2, epoch 1 (epoch 4 overall)
    assert [(r["epoch"], r["phase"]) for r in result.history] == \
        [(1, "warmup"), (2, "warmup"), (4, "finetune")]
    assert result.history[:2] == state["history"]
    assert result.history[2]["learning_rate"] == pytest.approx(0.05)
    _, checkpoint, _ = saved_run(workdir)
    model = keras.models.load_model(checkpoint)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert model.optimizer.momentum == pytest.approx(0.9)
    # phase 2 trains the base from the --unfreeze layer up, BatchNorm excepted ...
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    names = [layer.name for layer in base.layers]
    start = next(i for i, name in enumerate(names) if name.startswith("block6a"))
    for i, layer in enumerate(base.layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        if layer.weights:  # a reloaded layer without weights (the input) says trainable
            assert layer.trainable == (i >= start and not is_batchnorm), layer.name
    # ... and BatchNorm statistics are still those the network was built with
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(layer.moving_mean.numpy(), 0)
            np.testing.assert_array_equal(layer.moving_variance.numpy(), 1)
