"""Stage 3: fine-tune a pretrained backbone, or train a small CNN from scratch, on the same split.

Both read the images, labels and split that stage 1 recorded in a feature store (or
split a dataset folder the same way), so every stage is judged on the very same
test images, and both write a test report in the stage 2 format.

Training runs epoch by epoch under :func:`train_phases`: after every epoch the
model (with its optimizer state) and a small ``state.json`` are saved, so an
interrupted run resumes from the last completed epoch when rerun with the same
settings. Early stopping watches the validation loss and the best weights are kept.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import UserInputError
from features.images import ImageDecodeError, load_image
from pipeline.augmentation import AugmentationConfig, build_augmentation, register_custom_layers

Log = Callable[[str], None]


# -- data ---------------------------------------------------------------------------------------

@dataclass
class SplitImages:
    """Image paths with labels for train, validation and test, and the class names."""

    label_names: list[str]
    train: tuple[list[str], np.ndarray]
    val: tuple[list[str], np.ndarray]
    test: tuple[list[str], np.ndarray]
    source: str
    store_name: str

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train[0]), "val": len(self.val[0]), "test": len(self.test[0])}


def _carve_validation(paths: list[str], labels: np.ndarray, share: float, seed: int):
    from pipeline.datasets import TEST, stratified_split

    if not 0 < share < 1:
        raise UserInputError(f"validation share must be between 0 and 1, got {share}")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2 or round(counts[counts > 0].min() * share) < 1:
        raise UserInputError(
            f"too few training images for a validation share of {share}: the smallest class "
            f"has {counts[counts > 0].min()}; add images or pass a larger --val-share"
        )
    codes = stratified_split(labels, test_size=share, seed=seed)
    take = codes == TEST
    keep = ~take
    return ([p for p, k in zip(paths, keep, strict=True) if k], labels[keep]), \
        ([p for p, t in zip(paths, take, strict=True) if t], labels[take])


def images_from_store(store_path: str | os.PathLike, *, val_share: float = 0.1, seed: int = 42
                      ) -> SplitImages:
    """The images, labels and recorded split of a stage 1 store.

    The validation images come from the store's ``val`` split when it has one,
    otherwise from a stratified share of the train split (never from test).

    Raises
    ------
    UserInputError
        When images listed in the store have moved or vanished (they are listed).
    """
    from features.store import FeatureStore

    with FeatureStore(store_path) as store:
        paths = store.paths
        labels = store.labels
        split = store.split
        names = store.label_names
        source = str(store.attrs.get("source", ""))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = "; ".join(missing[:5])
        raise UserInputError(
            f"{len(missing)} of {len(paths)} images recorded in {store_path} are missing "
            f"(moved or deleted?): {shown}{' ...' if len(missing) > 5 else ''}; restore them "
            "or extract the dataset again"
        )

    def part(name):
        rows = np.flatnonzero(split == name)
        return [paths[i] for i in rows], labels[rows]

    train, val, test = part("train"), part("val"), part("test")
    if len(val[0]) == 0:
        train, val = _carve_validation(*train, val_share, seed)
    if len(test[0]) == 0:
        raise UserInputError(f"{store_path} has no test images; extract with --test-size > 0")
    return SplitImages(names, train, val, test, source, Path(store_path).stem)


def images_from_folder(data: str | os.PathLike, *, test_size: float = 0.25,
                       val_share: float = 0.1, seed: int = 42) -> SplitImages:
    """Split a dataset folder (or CSV) exactly as ``tlearn extract`` would, plus validation."""
    from pipeline.datasets import TEST, TRAIN, dataset_name, load_dataset

    images, _ = load_dataset(data, test_size=test_size, seed=seed)
    paths = list(images.paths)

    def part(code):
        rows = np.flatnonzero(images.split == code)
        return [paths[i] for i in rows], images.labels[rows]

    train, val = _carve_validation(*part(TRAIN), val_share, seed)
    return SplitImages(list(images.label_names), train, val, part(TEST), images.source,
                       dataset_name(data))


def load_split_images(source: str | os.PathLike, *, test_size: float = 0.25,
                      val_share: float = 0.1, seed: int = 42) -> SplitImages:
    """A store (``.h5``) or a dataset folder/CSV."""
    if Path(source).suffix == ".h5":
        return images_from_store(source, val_share=val_share, seed=seed)
    return images_from_folder(source, test_size=test_size, val_share=val_share, seed=seed)


def _image_batches_class():
    import keras

    class ImageBatches(keras.utils.PyDataset):
        """Batches of decoded, resized and preprocessed images, decoded by worker threads."""

        def __init__(self, paths, labels, *, batch_size, size, preprocess, shuffle, seed,
                     workers=2):
            super().__init__(workers=workers, use_multiprocessing=False)
            self.paths, self.labels = list(paths), np.asarray(labels)
            self.batch_size, self.size, self.preprocess = batch_size, size, preprocess
            self.shuffle = shuffle
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(self.paths))
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return math.ceil(len(self.paths) / self.batch_size)

        def __getitem__(self, index):
            rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            try:
                images = np.stack([load_image(self.paths[i], self.size) for i in rows])
            except ImageDecodeError as exc:
                raise UserInputError(f"{exc.path} can no longer be read ({exc.reason}); "
                                     "restore it or extract the dataset again") from exc
            return self.preprocess(images), self.labels[rows]

        def on_epoch_end(self):
            if self.shuffle:
                self.rng.shuffle(self.order)

    return ImageBatches


# -- models -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadConfig:
    """The new top: pooling -> Dense(units, ReLU) -> Dropout -> softmax."""

    pooling: str = "avg"
    units: int = 256
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.pooling not in ("avg", "flatten"):
            raise UserInputError(f"unknown head pooling {self.pooling!r}; choose avg or flatten")
        if self.units < 1 or not 0 <= self.dropout < 1:
            raise UserInputError("head units must be >= 1 and dropout in [0, 1)")


def find_unfreeze_index(base, name: str) -> int:
    """Index of the first layer of ``base`` to train: exact name, or first name with that prefix.

    ``"all"`` unfreezes everything (index 0).
    """
    import difflib

    if name == "all":
        return 0
    names = [layer.name for layer in base.layers]
    if name in names:
        return names.index(name)
    prefixed = [i for i, n in enumerate(names) if n.startswith(name)]
    if prefixed:
        return prefixed[0]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see 'tlearn backbones --layers'"
    raise UserInputError(f"--unfreeze {name!r} is not a layer of {base.name}; {hint} "
                         "(or pass --unfreeze all)")


def build_finetune_model(backbone: str, n_classes: int, *, weights: str = "imagenet",
                         input_size: int | None = None, head: HeadConfig | None = None,
                         augmentation: AugmentationConfig | None = None, seed: int = 0):
    """Backbone without its top (called in inference mode, so BatchNorm statistics stay
    fixed) under a new dense head, with augmentation layers in front.

    Returns
    -------
    (keras.Model, keras.Model)
        The whole model and its base (for freezing and unfreezing).
    """
    import keras
    from keras import layers

    from features.backbones import build_base_model, get_backbone

    head = head or HeadConfig()
    size = int(input_size or get_backbone(backbone).input_size)
    base = build_base_model(backbone, weights=weights, input_size=size)
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    augmenter = build_augmentation(augmentation or AugmentationConfig(), seed)
    if augmenter is not None:
        x = augmenter(x)
    x = base(x, training=False)
    x = (layers.GlobalAveragePooling2D(name="head_pool") if head.pooling == "avg"
         else layers.Flatten(name="head_flatten"))(x)
    x = layers.Dense(head.units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(head.dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_finetune"), base


def build_minivggnet(n_classes: int, *, input_size: int = 64,
                     augmentation: AugmentationConfig | None = None, seed: int = 0):
    """MiniVGGNet: two CONV-RELU-BN x2 -> POOL -> DROPOUT blocks (32, 64), Dense 512, softmax."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    augmenter = build_augmentation(augmentation or AugmentationConfig(), seed)
    if augmenter is not None:
        x = augmenter(x)
    for block, filters in enumerate((32, 64), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", name=f"block{block}_conv{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, name="fc")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.Dropout(0.5, name="fc_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="minivggnet")


def without_augmentation(model):
    """The same network for inference, sharing weights, minus the augmentation block.

    The random layers are the identity at inference; dropping them makes the saved
    model loadable by plain Keras, with nothing of tlearn imported.
    """
    import keras

    layers = [layer for layer in model.layers[1:] if layer.name != "augmentation"]
    if len(layers) == len(model.layers) - 1:
        return model
    inputs = keras.Input(model.input_shape[1:], name="image")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def scale_to_unit(images: np.ndarray) -> np.ndarray:
    """Preprocessing of the from-scratch network: pixels / 255."""
    return np.asarray(images, dtype=np.float32) / 255.0


# -- the resumable training loop ----------------------------------------------------------------

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
    phase_index: int = 0
    epoch_in_phase: int = 0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    learning_rate: float | None = None
    history: list[dict] = field(default_factory=list)
    finished: bool = False


def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def train_phases(build: Callable[[], Any], phases: list[Phase], train_data, val_data, *,
                 workdir: Path, settings_key: str, patience: int = 3, plateau: int = 2,
                 log: Log | None = None, on_batch: Callable[[int, int], None] | None = None,
                 verbose: int = 0):
    """Train through ``phases`` epoch by epoch, checkpointing after each; resumable.

    Parameters
    ----------
    build : callable
        Returns a fresh, uncompiled model (used when there is nothing to resume).
    phases : list of Phase
    train_data, val_data : keras.utils.PyDataset
    workdir : Path
        Holds ``checkpoint.keras``, ``best.weights.h5`` and ``state.json``.
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
    """
    import keras

    say = log or (lambda line: None)
    workdir.mkdir(parents=True, exist_ok=True)
    state_path, checkpoint = workdir / "state.json", workdir / "checkpoint.keras"
    best_path = workdir / "best.weights.h5"
    state = TrainingState()
    model = None
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("settings_key") != settings_key:
            raise UserInputError(
                f"{workdir} holds an unfinished run with other settings; rerun with the same "
                "settings to resume it, or with --overwrite to start again"
            )
        state = TrainingState(**saved["state"])
        if checkpoint.exists():
            register_custom_layers()  # the checkpoint holds the augmentation block
            model = keras.models.load_model(checkpoint)
            say(f"resuming at phase {phases[state.phase_index].name}, epoch "
                f"{state.epoch_in_phase + 1} (from {checkpoint})")
    if model is None:
        model = build()
        state = TrainingState()

    class BatchHook(keras.callbacks.Callback):
        def __init__(self, epoch_number):
            super().__init__()
            self.epoch_number = epoch_number

        def on_train_batch_end(self, batch, logs=None):
            if on_batch:
                on_batch(self.epoch_number, batch)

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
        stop_phase = False
        while state.epoch_in_phase < phase.epochs and not stop_phase:
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
            if metrics["val_loss"] < state.best_val_loss - 1e-6:
                state.best_val_loss = metrics["val_loss"]
                state.epochs_without_improvement = 0
                model.save_weights(best_path)
            else:
                state.epochs_without_improvement += 1
                if state.epochs_without_improvement % plateau == 0:
                    state.learning_rate = float(state.learning_rate) / 2
                    model.optimizer.learning_rate.assign(state.learning_rate)
                if state.epochs_without_improvement >= patience:
                    stop_phase = True
            remaining = total_epochs - epoch_number
            say(f"epoch {epoch_number}/{total_epochs} ({phase.name}): loss "
                f"{metrics['loss']:.4f} acc {metrics.get('accuracy', 0):.4f} val_loss "
                f"{metrics['val_loss']:.4f} val_acc {metrics.get('val_accuracy', 0):.4f} "
                f"lr {state.learning_rate:.2g}, {seconds:.0f}s/epoch, at most "
                f"{remaining * float(np.mean(epoch_times)):.0f}s left")
            if stop_phase:
                say(f"early stop of {phase.name}: no better val_loss for {patience} epochs")
            _checkpoint(model, checkpoint, state, state_path, settings_key)
        # next phase starts from the best weights so far, with its own optimizer
        state.phase_index += 1
        state.epoch_in_phase = 0
        state.epochs_without_improvement = 0
        state.learning_rate = None
        if best_path.exists():
            model.load_weights(best_path)
        _checkpoint(model, checkpoint, state, state_path, settings_key)
    state.finished = True
    if best_path.exists():
        model.load_weights(best_path)
    _save_json(state_path, {"settings_key": settings_key, "state": asdict(state)})
    return model, state


def _checkpoint(model, checkpoint: Path, state: TrainingState, state_path: Path,
                settings_key: str) -> None:
    tmp = checkpoint.with_name("checkpoint.tmp.keras")
    model.save(tmp)
    os.replace(tmp, checkpoint)
    _save_json(state_path, {"settings_key": settings_key, "state": asdict(state)})


# -- outputs ------------------------------------------------------------------------------------

def write_history(history: list[dict], directory: Path) -> tuple[Path, Path]:
    """``history.csv`` and ``curves.png`` (loss and accuracy, train against validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = directory / "history.csv", directory / "curves.png"
    keys = sorted({k for row in history for k in row})
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [r.get(metric) for r in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [r.get(f"val_{metric}") for r in history], "s-",
                label=f"validation {metric}")
        changes = [r["epoch"] - 0.5 for a, r in itertools.pairwise(history)
                   if a["phase"] != r["phase"]]
        for x in changes:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(metric + (" (dashed line: phase change)" if changes else ""))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


class KerasImageClassifier:
    """A saved ``.keras`` model with what it needs to classify image files.

    Loaded by :func:`load_keras_classifier`; offers ``predict_images`` like the
    joblib classifiers, so ``tlearn predict`` treats both the same way.
    """

    def __init__(self, model, info: dict) -> None:
        self.model = model
        self.info = info
        self.label_names_ = list(info["label_names"])
        self.classes_ = np.arange(len(self.label_names_))

    def _preprocess(self, images: np.ndarray) -> np.ndarray:
        if self.info["preprocessing"] == "scale_to_unit":
            return scale_to_unit(images)
        from features.backbones import get_backbone

        return get_backbone(self.info["backbone"]).preprocess_input(images)

    def class_scores_of_images(self, images: np.ndarray) -> np.ndarray:
        from features.backbones import predict_in_buckets

        parts = predict_in_buckets(self.model.predict_on_batch, self._preprocess(images))
        return np.concatenate(parts) if parts else np.empty((0, len(self.label_names_)))

    def predict_images(self, paths, top: int = 1) -> list[dict]:
        from classifiers.evaluation import classify_files

        return classify_files(paths, int(self.info["input_size"]), self.class_scores_of_images,
                              self.label_names_, top)


def load_keras_classifier(path: str | os.PathLike) -> KerasImageClassifier:
    """Load a ``.keras`` model of stage 3 after checking the SHA-256 in its sidecar."""
    import keras

    from classifiers.persistence import read_sidecar, sha256_file

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model {path} does not exist; train one with 'tlearn finetune'")
    info = read_sidecar(path)
    if info.get("sha256") != sha256_file(path):
        raise UserInputError(f"{path} does not match the SHA-256 in its sidecar (tampered or "
                             "corrupted); it was not loaded")
    try:
        model = keras.models.load_model(path)
    except Exception as exc:
        raise UserInputError(f"{path} could not be loaded ({exc.__class__.__name__})") from exc
    return KerasImageClassifier(model, info)


# -- the two commands ---------------------------------------------------------------------------

@dataclass
class StageThreeResult:
    name: str
    model_path: Path
    report_dir: Path
    report: dict
    history: list[dict]


def _settings_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _run(*, kind: str, name: str, images: SplitImages, build, phases: list[Phase],
         preprocess, input_size: int, batch_size: int, seed: int, patience: int,
         overwrite: bool, settings: dict, info: dict, log: Log | None, on_batch, verbose: int,
         workers: int) -> StageThreeResult:
    import keras

    from classifiers.evaluation import evaluate_predictions
    from classifiers.persistence import sha256_file
    from pipeline.config import artifacts_dir, classifiers_dir, reports_dir
    from pipeline.reports import read_report, write_report

    say = log or (lambda line: None)
    model_path = classifiers_dir() / f"{name}.keras"
    workdir = artifacts_dir() / "training" / name
    key = _settings_key({**settings, "images": images.counts(), "label_names":
                         images.label_names, "source": images.source})
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    if model_path.exists() and not overwrite:
        side = model_path.with_suffix(".json")
        previous = json.loads(side.read_text()) if side.exists() else {}
        if previous.get("settings_key") == key and read_report(reports_dir() / name):
            say(f"{model_path} is up to date; nothing to do (--overwrite to train again)")
            return StageThreeResult(name, model_path, reports_dir() / name,
                                    read_report(reports_dir() / name),
                                    previous.get("history", []))
        raise UserInputError(f"{model_path} exists and was trained with other settings; "
                             "pass --overwrite to replace it")
    keras.utils.set_random_seed(seed)
    batches = _image_batches_class()
    train = batches(*images.train, batch_size=batch_size, size=input_size,
                    preprocess=preprocess, shuffle=True, seed=seed, workers=workers)
    val = batches(*images.val, batch_size=batch_size, size=input_size, preprocess=preprocess,
                  shuffle=False, seed=seed, workers=workers)
    test = batches(*images.test, batch_size=batch_size, size=input_size,
                   preprocess=preprocess, shuffle=False, seed=seed, workers=workers)
    counts = images.counts()
    say(f"{name}: {counts['train']} train, {counts['val']} validation, {counts['test']} test "
        f"images, {len(images.label_names)} classes")
    t0 = time.perf_counter()
    model, state = train_phases(build, phases, train, val, workdir=workdir, settings_key=key,
                                patience=patience, log=say, on_batch=on_batch, verbose=verbose)
    fit_seconds = sum(r["seconds"] for r in state.history)
    t1 = time.perf_counter()
    scores = np.asarray(model.predict(test, verbose=0))
    rate = counts["test"] / max(time.perf_counter() - t1, 1e-9)
    evaluation = evaluate_predictions(images.test[1], scores, np.arange(len(images.label_names)),
                                      images.label_names, rate)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(f".{model_path.stem}.tmp.keras")
    without_augmentation(model).save(tmp)
    os.replace(tmp, model_path)
    sidecar = {**info, "model": model_path.name, "sha256": sha256_file(model_path),
               "label_names": images.label_names, "input_size": input_size,
               "settings_key": key, "settings": settings, "history": state.history,
               "size_bytes": model_path.stat().st_size,
               "library_versions": {"keras": keras.__version__}}
    _save_json(model_path.with_suffix(".json"), sidecar)
    report_dir = reports_dir() / name
    write_history(state.history, report_dir)
    write_report(report_dir, evaluation, {
        "model": name, "stage": kind, "store_name": images.store_name, "store": images.source,
        "backbone": info.get("backbone", ""), "classifier": info.get("classifier", kind),
        "chosen": {"epochs": len(state.history)}, "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - t0, "size_bytes": model_path.stat().st_size,
        "model_path": str(model_path), "n_train": counts["train"],
    })
    say(f"{name}: test accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f} "
        f"after {len(state.history)} epochs ({fit_seconds:.0f}s of training)")
    return StageThreeResult(name, model_path, report_dir, read_report(report_dir),
                            state.history)


def finetune(source: str | os.PathLike, *, backbone: str | None = None,
             weights: str = "imagenet", input_size: int | None = None,
             head: HeadConfig | None = None, unfreeze: str | None = None,
             warmup_epochs: int = 5, finetune_epochs: int = 10, warmup_lr: float = 1e-3,
             finetune_lr: float = 1e-4, optimizer: str = "sgd", batch_size: int = 32,
             patience: int = 3, val_share: float = 0.1, test_size: float = 0.25,
             seed: int = 42, augmentation: AugmentationConfig | None = None,
             overwrite: bool = False, workers: int = 2, log: Log | None = None,
             on_batch=None, verbose: int = 0) -> StageThreeResult:
    """Fine-tune a pretrained backbone under a new head, in two phases, on a store's split.

    Phase 1 (warm-up) trains only the head with RMSprop (``warmup_lr``) on a frozen
    base; phase 2 unfreezes the base from ``unfreeze`` (a layer name, a block prefix
    or ``"all"``; the backbone's last block by default) and trains with a small
    learning rate (SGD with momentum 0.9, or Adam). BatchNorm layers stay in
    inference mode throughout.

    Parameters
    ----------
    source : path-like
        A stage 1 store (its images, labels and split are reused) or a dataset folder.
    backbone : str, optional
        Defaults to the store's backbone (``efficientnet_lite0`` for a folder).

    Returns
    -------
    StageThreeResult
    """
    import keras

    from features.backbones import get_backbone
    from features.store import FeatureStore

    if optimizer not in ("sgd", "adam"):
        raise UserInputError(f"unknown optimizer {optimizer!r}; choose sgd or adam")
    if warmup_epochs < 0 or finetune_epochs < 0 or warmup_epochs + finetune_epochs == 0:
        raise UserInputError("epochs must be >= 0 and at least one phase must have epochs")
    store_attrs: dict = {}
    if Path(source).suffix == ".h5":
        with FeatureStore(source) as store:
            store_attrs = store.attrs
    backbone = backbone or store_attrs.get("backbone") or "efficientnet_lite0"
    config = get_backbone(backbone)
    if weights == "imagenet" and store_attrs.get("weights") == "random":
        weights = "none"  # a store of random-weight features: keep the experiment consistent
    input_size = int(input_size or store_attrs.get("input_size") or config.input_size)
    head = head or HeadConfig()
    augmentation = augmentation or AugmentationConfig()
    unfreeze = unfreeze or config.default_unfreeze
    images = load_split_images(source, test_size=test_size, val_share=val_share, seed=seed)

    def build():
        model, _ = build_finetune_model(backbone, len(images.label_names), weights=weights,
                                        input_size=input_size, head=head,
                                        augmentation=augmentation, seed=seed)
        return model

    # validate --unfreeze before any training (cheap: no weights loaded)
    from features.backbones import build_base_model

    find_unfreeze_index(build_base_model(backbone, weights="none", input_size=input_size),
                        unfreeze)

    def base_of(model):
        return next(layer for layer in model.layers
                    if isinstance(layer, keras.Model) and layer.name != "augmentation")

    def freeze_all(model):
        base_of(model).trainable = False

    def unfreeze_top(model):
        base = base_of(model)
        base.trainable = True
        start = find_unfreeze_index(base, unfreeze)
        for i, layer in enumerate(base.layers):
            # BatchNorm stays frozen: its statistics come from ImageNet, not small batches
            layer.trainable = i >= start and not isinstance(
                layer, keras.layers.BatchNormalization)

    def second_optimizer(lr):
        if optimizer == "adam":
            return keras.optimizers.Adam(lr)
        return keras.optimizers.SGD(lr, momentum=0.9)

    phases = [p for p in (
        Phase("warmup", warmup_epochs, warmup_lr, keras.optimizers.RMSprop, freeze_all),
        Phase("finetune", finetune_epochs, finetune_lr, second_optimizer, unfreeze_top),
    ) if p.epochs > 0]
    settings = {"backbone": backbone, "weights": weights, "input_size": input_size,
                "head": asdict(head), "unfreeze": unfreeze, "warmup_epochs": warmup_epochs,
                "finetune_epochs": finetune_epochs, "warmup_lr": warmup_lr,
                "finetune_lr": finetune_lr, "optimizer": optimizer, "batch_size": batch_size,
                "patience": patience, "seed": seed, "augmentation": augmentation.to_dict()}
    name = f"{images.store_name}__finetune_{backbone}"
    info = {"stage": "finetune", "backbone": backbone, "classifier": "finetune",
            "preprocessing": config.preprocessing, "weights": weights}
    return _run(kind="finetune", name=name, images=images, build=build, phases=phases,
                preprocess=config.preprocess_input, input_size=input_size,
                batch_size=batch_size, seed=seed, patience=patience, overwrite=overwrite,
                settings=settings, info=info, log=log, on_batch=on_batch, verbose=verbose,
                workers=workers)


def train_from_scratch(source: str | os.PathLike, *, input_size: int = 64, epochs: int = 20,
                       learning_rate: float = 0.01, batch_size: int = 32, patience: int = 5,
                       val_share: float = 0.1, test_size: float = 0.25, seed: int = 42,
                       augmentation: AugmentationConfig | None = None, overwrite: bool = False,
                       workers: int = 2, log: Log | None = None, on_batch=None,
                       verbose: int = 0) -> StageThreeResult:
    """Train MiniVGGNet from random weights on the same split (the no-transfer baseline).

    SGD with Nesterov momentum 0.9 from ``learning_rate``, halved on plateaus; same
    augmentation, early stopping, checkpoints and report format as :func:`finetune`.
    """
    import keras

    if epochs < 1:
        raise UserInputError(f"--epochs must be at least 1, got {epochs}")
    if input_size < 8:
        raise UserInputError(f"--input-size must be at least 8 for MiniVGGNet, got {input_size}")
    augmentation = augmentation or AugmentationConfig()
    images = load_split_images(source, test_size=test_size, val_share=val_share, seed=seed)

    def build():
        return build_minivggnet(len(images.label_names), input_size=input_size,
                                augmentation=augmentation, seed=seed)

    phases = [Phase("scratch", epochs, learning_rate,
                    lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
                    lambda model: None)]
    settings = {"input_size": input_size, "epochs": epochs, "learning_rate": learning_rate,
                "batch_size": batch_size, "patience": patience, "seed": seed,
                "augmentation": augmentation.to_dict()}
    name = f"{images.store_name}__scratch_minivggnet"
    info = {"stage": "scratch", "backbone": "minivggnet", "classifier": "scratch",
            "preprocessing": "scale_to_unit"}
    return _run(kind="scratch", name=name, images=images, build=build, phases=phases,
                preprocess=scale_to_unit, input_size=input_size, batch_size=batch_size,
                seed=seed, patience=patience, overwrite=overwrite, settings=settings,
                info=info, log=log, on_batch=on_batch, verbose=verbose, workers=workers)
