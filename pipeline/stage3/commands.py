"""The two commands of stage 3: ``tlearn finetune`` and ``tlearn scratch``.

Both train on the split of :mod:`pipeline.stage3.data`, through the resumable
loop of :mod:`pipeline.stage3.training`, then write the model (``.keras``), a
test report in the stage 2 format, the training history and, last, the model's
sidecar: a sidecar that matches its model and settings is what makes a later run
with the same settings report "up to date".
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.calibration import apply_temperature
from classifiers.novelty import UnknownScore, fit_unknown_score
from classifiers.search import stratified_folds
from features.devices import describe_device, set_random_seed
from features.errors import UserInputError
from features.integrity import atomic_write, atomic_write_json, settings_key
from pipeline.augmentation import AugmentationConfig
from pipeline.stage3.data import SplitImages, image_batches_class, load_split_images
from pipeline.stage3.history import write_history
from pipeline.stage3.inference import keras_versions
from pipeline.stage3.models import (
    HeadConfig,
    build_finetune_model,
    build_minivggnet,
    find_unfreeze_index,
    freeze_base,
    scale_to_unit,
    unfreeze_base_from,
    with_features,
    without_augmentation,
)
from pipeline.stage3.training import Log, Phase, checkpointed_settings_key, train_phases


@dataclass
class StageThreeResult:
    """What a stage 3 command produced (or found up to date)."""

    name: str
    model_path: Path
    report_dir: Path
    report: dict
    history: list[dict]


def run_key(settings: dict[str, Any], images: SplitImages) -> str:
    """The key deciding whether a model is up to date and a checkpoint may be resumed.

    It covers the training settings, the data the split came from (the store's own
    key and fingerprint) and the exact split: every train, validation and test
    image with its label, so a store extracted again with another split seed
    neither counts as up to date nor resumes a run trained on the old split.
    """
    return settings_key({"settings": settings, "data": images.fingerprint,
                         "split": images.assignment(), "label_names": images.label_names,
                         "source": images.source})


def _check_training_numbers(*, batch_size: int, patience: int, **rates: float) -> None:
    """Refuse learning rates that are not positive and finite, before any work.

    A negative rate trains uphill and NaN trains nothing, both without a word from Keras.
    """
    for name, rate in rates.items():
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise UserInputError(f"--{name.replace('_', '-')} must be a positive number "
                                 f"(e.g. 1e-3), got {rate}")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    if patience < 0:
        raise UserInputError(f"--patience must be 0 or more epochs, got {patience}")


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when missing or damaged (then it is not up to date)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def _train_and_report(*, kind: str, name: str, images: SplitImages, build: Callable[[], Any],
                      phases: list[Phase], preprocess: Callable[[np.ndarray], np.ndarray],
                      input_size: int, batch_size: int, seed: int, patience: int,
                      overwrite: bool, settings: dict, info: dict, log: Log | None, on_batch,
                      verbose: int, workers: int) -> StageThreeResult:

    from classifiers.evaluation import evaluate_predictions
    from classifiers.persistence import sha256_file, sidecar_path
    from pipeline.config import artifacts_dir, classifiers_dir, reports_dir
    from pipeline.datasets import source_dataset_name
    from pipeline.report_page import update_dataset_reports
    from pipeline.reports import read_report, report_dataset, write_report

    say = log or (lambda line: None)
    model_path = classifiers_dir() / f"{name}.keras"
    report_dir = reports_dir() / name
    workdir = artifacts_dir() / "training" / name
    key = run_key(settings, images)
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    if model_path.exists() and not overwrite:
        previous = _read_json(sidecar_path(model_path))
        report = read_report(report_dir)
        if (previous.get("settings_key") == key and report
                and previous.get("sha256") == sha256_file(model_path)):
            say(f"{model_path} is up to date; nothing to do (--overwrite to train again)")
            return StageThreeResult(name, model_path, report_dir, report,
                                    previous.get("history", []))
        if checkpointed_settings_key(workdir) != key:
            raise UserInputError(f"{model_path} exists and was trained with other settings or "
                                 "data; pass --overwrite to replace it")
        # otherwise this very run was interrupted while writing its outputs: finish them
    set_random_seed(seed)
    batches = image_batches_class()
    train = batches(*images.train, batch_size=batch_size, size=input_size,
                    preprocess=preprocess, shuffle=True, seed=seed, workers=workers)
    val = batches(*images.val, batch_size=batch_size, size=input_size, preprocess=preprocess,
                  shuffle=False, seed=seed, workers=workers)
    test = batches(*images.test, batch_size=batch_size, size=input_size,
                   preprocess=preprocess, shuffle=False, seed=seed, workers=workers)
    counts = images.counts()
    say(f"{name}: {counts['train']} train, {counts['val']} validation, {counts['test']} test "
        f"images, {len(images.label_names)} classes")
    say(f"computing on {describe_device()}")
    t0 = time.perf_counter()
    model, state = train_phases(build, phases, train, val, workdir=workdir, settings_key=key,
                                patience=patience, log=say, on_batch=on_batch, verbose=verbose)
    fit_seconds = sum(r["seconds"] for r in state.history)
    calibration = fit_validation_temperature(model, val, images.val[1])
    say(f"{name}: {calibration['note']}")
    classes = len(images.label_names)
    scored = with_features(model)  # probabilities, then the features they come from
    train_in_order = batches(*images.train, batch_size=batch_size, size=input_size,
                             preprocess=preprocess, shuffle=False, seed=seed, workers=workers)
    unknown = fit_penultimate_score(
        np.asarray(scored.predict(train_in_order, verbose=0))[:, classes:], images.train[1],
        seed, say=lambda line: say(f"{name}: {line}"))
    t1 = time.perf_counter()
    out = np.asarray(scored.predict(test, verbose=0))
    scores = apply_temperature(out[:, :classes], calibration["temperature"])
    rate = counts["test"] / max(time.perf_counter() - t1, 1e-9)
    evaluation = evaluate_predictions(images.test[1], scores, np.arange(classes),
                                      images.label_names, rate, probabilities=True,
                                      sample_ids=list(images.test[0]))
    unknown_info = None if unknown is None else unknown.test_report(
        unknown.score(out[:, classes:]), scores.argmax(axis=1) == np.asarray(images.test[1]))
    atomic_write(model_path, without_augmentation(model).save, suffix=".keras")
    write_history(state.history, report_dir)
    write_report(report_dir, evaluation, {
        "model": name, "stage": kind, "store_name": images.store_name, "store": images.source,
        "dataset": source_dataset_name(images.source, images.store_name),
        "backbone": info.get("backbone", ""), "classifier": info.get("classifier", kind),
        "chosen": {"epochs": len(state.history)}, "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - t0, "size_bytes": model_path.stat().st_size,
        "model_path": str(model_path), "n_train": counts["train"],
        "calibration": calibration, "unknown": unknown_info,
    })
    # the sidecar comes last: it is what marks the model and its report as complete
    atomic_write_json(sidecar_path(model_path), {
        **info, "model": model_path.name, "sha256": sha256_file(model_path),
        "label_names": images.label_names, "input_size": input_size, "settings_key": key,
        "temperature": calibration["temperature"],
        "unknown": None if unknown is None else unknown.to_json(),
        "settings": settings, "history": state.history,
        "size_bytes": model_path.stat().st_size, "library_versions": keras_versions()})
    say(f"{name}: test accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f} "
        f"after {len(state.history)} epochs ({fit_seconds:.0f}s of training)")
    report = read_report(report_dir)
    update_dataset_reports([report_dataset(report)], reports_dir(), log=say)
    return StageThreeResult(name, model_path, report_dir, report, state.history)


def fit_penultimate_score(features: np.ndarray, labels: np.ndarray, seed: int, *,
                          say: Callable[[str], None]) -> UnknownScore | None:
    """The "unknown" score of a stage 3 model: fitted on the features its last layer
    classifies of the train split, its threshold on held-out folds of them (as stage 2,
    :func:`classifiers.novelty.fit_unknown_score`); None, said, where a class has fewer
    than 2 training images to fold."""
    labels = np.asarray(labels)
    folds = min(3, int(np.bincount(labels).min()))
    if folds < 2:
        say("no unknown score: a class has fewer than 2 training images to hold out")
        return None
    score = fit_unknown_score(features, labels, stratified_folds(labels, folds, seed),
                              seed=seed)
    say(f"unknown score above {score.threshold:.4g} (accepts "
        f"{score.held_out_coverage:.3f} of held-out training images)")
    return score


def fit_validation_temperature(model: Any, val_data: Any, val_labels: np.ndarray) -> dict:
    """Temperature scaling fitted on the validation images, kept only where it helps.

    The network's softmax is often over-confident after fine-tuning; one temperature
    fitted on validation (never test) images softens it without changing any ranking.
    It is kept when it lowers the validation log-loss, otherwise the temperature is 1.
    """
    from classifiers.calibration import expected_calibration_error, fit_temperature

    probs = np.asarray(model.predict(val_data, verbose=0), dtype=np.float64)
    y = np.asarray(val_labels)

    def log_loss(p: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))))

    t = fit_temperature(probs, y)
    before, after = log_loss(probs), log_loss(apply_temperature(probs, t))
    kept = after < before - 1e-4
    out = {"temperature": t if kept else 1.0, "fitted_temperature": t,
           "validation_images": len(y), "validation_log_loss_before": before,
           "validation_log_loss_after": after if kept else before,
           "validation_ece_before": expected_calibration_error(probs, y),
           "validation_ece_after": expected_calibration_error(
               apply_temperature(probs, t if kept else 1.0), y)}
    out["note"] = (f"temperature scaling T={t:.2f} fitted on {len(y)} validation images: "
                   f"validation log-loss {before:.4f} -> {after:.4f}, ECE "
                   f"{out['validation_ece_before']:.4f} -> {out['validation_ece_after']:.4f}"
                   if kept else f"temperature scaling (T={t:.2f}) did not lower the validation "
                   "log-loss; scores left as the network gives them")
    return out


@dataclass(frozen=True)
class TrainingSettings:
    """What both stage 3 commands are asked besides their network and schedule.

    Attributes
    ----------
    source : path-like
        A stage 1 store (its images, labels and split are reused) or a dataset folder.
    batch_size : int
        Images per training step.
    patience : int
        Early stopping: epochs without a better validation loss before a phase stops.
    val_share : float
        Share of the training images held out for validation.
    test_size : float
        For a folder: share of each class held out for test (a store has its own split).
    seed : int
        Seed of the split, the weights, the shuffling and the augmentation.
    augmentation : AugmentationConfig
        Random changes of the training images (:mod:`pipeline.augmentation`).
    overwrite : bool
        Train again, replacing a model (and an unfinished run) of other settings.
    workers : int
        Threads decoding images ahead of the network.
    """

    source: str | os.PathLike
    batch_size: int = 32
    patience: int = 3
    val_share: float = 0.1
    test_size: float = 0.25
    seed: int = 42
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    overwrite: bool = False
    workers: int = 2


@dataclass(frozen=True)
class FinetuneSettings(TrainingSettings):
    """Everything ``tlearn finetune`` is asked (:func:`finetune`).

    Attributes
    ----------
    backbone : str, optional
        Network to fine-tune; the store's backbone by default (``efficientnet_lite0``
        for a folder).
    weights : str
        ``"imagenet"``, ``"none"`` (random) or a weights file; a store of random-weight
        features keeps random weights.
    input_size : int, optional
        Side of the square input; the store's, else the backbone's.
    head : HeadConfig
        The new head (pooling, dense units, dropout).
    unfreeze : str, optional
        Phase 2 trains the base from this layer, block prefix or ``"all"``; the
        backbone's last block by default.
    warmup_epochs, finetune_epochs : int
        Epochs of phase 1 (the head alone, RMSprop) and phase 2 (with the base's top).
    warmup_lr, finetune_lr : float
        Learning rates of the two phases.
    optimizer : {"sgd", "adam"}
        Phase 2's optimizer (SGD with momentum 0.9, or Adam).

    Raises
    ------
    UserInputError
        On construction, for an unknown optimizer, no epochs, or a learning rate, batch
        size or patience out of range.
    """

    backbone: str | None = None
    weights: str = "imagenet"
    input_size: int | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    unfreeze: str | None = None
    warmup_epochs: int = 5
    finetune_epochs: int = 10
    warmup_lr: float = 1e-3
    finetune_lr: float = 1e-4
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise UserInputError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if (self.warmup_epochs < 0 or self.finetune_epochs < 0
                or self.warmup_epochs + self.finetune_epochs == 0):
            raise UserInputError("epochs must be >= 0 and at least one phase must have epochs")
        _check_training_numbers(warmup_lr=self.warmup_lr, finetune_lr=self.finetune_lr,
                                batch_size=self.batch_size, patience=self.patience)


@dataclass(frozen=True)
class ScratchSettings(TrainingSettings):
    """Everything ``tlearn scratch`` is asked (:func:`train_from_scratch`).

    Attributes
    ----------
    input_size : int
        Side of the square input of MiniVGGNet (at least 8).
    epochs : int
        Most training epochs (early stopping may end sooner).
    learning_rate : float
        Starting learning rate of SGD with Nesterov momentum 0.9, halved on plateaus.

    Raises
    ------
    UserInputError
        On construction, for no epochs, an input under 8 pixels, or a learning rate,
        batch size or patience out of range.
    """

    patience: int = 5
    input_size: int = 64
    epochs: int = 20
    learning_rate: float = 0.01

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserInputError(f"--epochs must be at least 1, got {self.epochs}")
        if self.input_size < 8:
            raise UserInputError(
                f"--input-size must be at least 8 for MiniVGGNet, got {self.input_size}")
        _check_training_numbers(learning_rate=self.learning_rate, batch_size=self.batch_size,
                                patience=self.patience)


# Where the data comes from and how the run goes: the run key covers the data and its
# split itself, and these never change the model.
_NOT_RECORDED = ("source", "val_share", "test_size", "overwrite", "workers")


def _recorded_settings(settings: TrainingSettings) -> dict[str, Any]:
    """The settings a stage 3 sidecar records and its run key digests, as they always were
    (every field but :data:`_NOT_RECORDED`, head and augmentation as plain dicts): a new
    setting is recorded, and keyed, by itself. The caller adds the defaults it resolved."""
    recorded = {f.name: getattr(settings, f.name) for f in fields(settings)
                if f.name not in _NOT_RECORDED}
    recorded["augmentation"] = settings.augmentation.to_dict()
    if "head" in recorded:
        recorded["head"] = asdict(recorded["head"])
    return recorded


def finetune(settings: FinetuneSettings, *, log: Log | None = None,
             on_batch: Callable[[int, int], None] | None = None,
             verbose: int = 0) -> StageThreeResult:
    """Fine-tune a pretrained backbone under a new head, in two phases, on a store's split.

    Phase 1 (warm-up) trains only the head with RMSprop (``warmup_lr``) on a frozen
    base; phase 2 unfreezes the base from ``unfreeze`` and trains with a small
    learning rate (SGD with momentum 0.9, or Adam). BatchNorm layers stay in
    inference mode throughout. The settings (:class:`FinetuneSettings`) are recorded
    in the model's sidecar with the defaults they resolved to.

    Returns
    -------
    StageThreeResult
    """
    import keras

    from features.networks import build_base_model, finetunable_backbone
    from features.store import FeatureStore

    s = settings
    source, head, augmentation, seed, optimizer = (s.source, s.head, s.augmentation, s.seed,
                                                   s.optimizer)
    store_attrs: dict = {}
    if Path(source).suffix == ".h5":
        with FeatureStore(source) as store:
            store_attrs = store.attrs
    backbone = s.backbone or store_attrs.get("backbone") or "efficientnet_lite0"
    config = finetunable_backbone(backbone)
    weights = s.weights
    if weights == "imagenet" and store_attrs.get("weights") == "random":
        weights = "none"  # a store of random-weight features: keep the experiment consistent
    input_size = int(s.input_size or store_attrs.get("input_size") or config.input_size)
    unfreeze = s.unfreeze or config.default_unfreeze
    images = load_split_images(source, test_size=s.test_size, val_share=s.val_share, seed=seed)

    def build():
        model, _ = build_finetune_model(backbone, len(images.label_names), weights=weights,
                                        input_size=input_size, head=head,
                                        augmentation=augmentation, seed=seed)
        return model

    # --unfreeze is checked before any training (cheap: no weights are loaded)
    find_unfreeze_index(build_base_model(backbone, weights="none", input_size=input_size),
                        unfreeze)

    def second_optimizer(lr):
        if optimizer == "adam":
            return keras.optimizers.Adam(lr)
        return keras.optimizers.SGD(lr, momentum=0.9)

    phases = [p for p in (
        Phase("warmup", s.warmup_epochs, s.warmup_lr, keras.optimizers.RMSprop, freeze_base),
        Phase("finetune", s.finetune_epochs, s.finetune_lr, second_optimizer,
              lambda model: unfreeze_base_from(model, unfreeze)),
    ) if p.epochs > 0]
    recorded = _recorded_settings(s) | {"backbone": backbone, "weights": weights,
                                        "input_size": input_size, "unfreeze": unfreeze}
    name = f"{images.store_name}__finetune_{backbone}"
    info = {"stage": "finetune", "backbone": backbone, "classifier": "finetune",
            "preprocessing": config.preprocessing, "weights": weights}
    return _train_and_report(
        kind="finetune", name=name, images=images, build=build, phases=phases,
        preprocess=config.preprocess_input, input_size=input_size, batch_size=s.batch_size,
        seed=seed, patience=s.patience, overwrite=s.overwrite, settings=recorded, info=info,
        log=log, on_batch=on_batch, verbose=verbose, workers=s.workers)


def train_from_scratch(settings: ScratchSettings, *, log: Log | None = None,
                       on_batch: Callable[[int, int], None] | None = None,
                       verbose: int = 0) -> StageThreeResult:
    """Train MiniVGGNet from random weights on the same split (the no-transfer baseline).

    SGD with Nesterov momentum 0.9 from ``learning_rate``, halved on plateaus; same
    augmentation, early stopping, checkpoints and report format as :func:`finetune`.
    """
    import keras

    s = settings
    input_size, augmentation, seed = s.input_size, s.augmentation, s.seed
    images = load_split_images(s.source, test_size=s.test_size, val_share=s.val_share,
                               seed=seed)

    def build():
        return build_minivggnet(len(images.label_names), input_size=input_size,
                                augmentation=augmentation, seed=seed)

    phases = [Phase("scratch", s.epochs, s.learning_rate,
                    lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
                    lambda model: None)]
    recorded = _recorded_settings(s)
    name = f"{images.store_name}__scratch_minivggnet"
    info = {"stage": "scratch", "backbone": "minivggnet", "classifier": "scratch",
            "preprocessing": "scale_to_unit"}
    return _train_and_report(
        kind="scratch", name=name, images=images, build=build, phases=phases,
        preprocess=scale_to_unit, input_size=input_size, batch_size=s.batch_size, seed=seed,
        patience=s.patience, overwrite=s.overwrite, settings=recorded, info=info, log=log,
        on_batch=on_batch, verbose=verbose, workers=s.workers)
