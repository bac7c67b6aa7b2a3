"""Stage 2: ``tlearn train``, classifiers tuned, fitted, tested and saved on a feature store."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone

from classifiers.estimators import FeatureClassifier, check_feature_values
from classifiers.evaluation import evaluate_predictions
from classifiers.novelty import DEFAULT_COVERAGE, check_coverage
from classifiers.persistence import load_classifier, read_sidecar, save_classifier, sidecar_path
from classifiers.registry import resolve_classifier_names
from classifiers.search import check_folds
from classifiers.solvers import CLASS_WEIGHTS
from features.errors import UserInputError
from features.store import FeatureStore
from pipeline.config import classifiers_dir, reports_dir
from pipeline.datasets import TEST, source_dataset_name, stratified_split
from pipeline.engines import open_engine
from pipeline.report_page import update_dataset_reports
from pipeline.reports import (
    REPORT_FILE,
    format_chosen,
    read_report,
    report_dataset,
    write_report,
)


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
    scores, labels, seconds = [], [], 0.0
    for rows, X, y in store.iter_chunks(split):
        check_feature_values(X, str(store.path), rows)  # names the store and its rows
        t0 = time.perf_counter()
        scores.append(model.class_scores(X))
        seconds += time.perf_counter() - t0
        labels.append(y)
    return np.concatenate(scores), np.concatenate(labels), seconds


def _evaluate_on_store(model, store, split: str):
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
    names = store.label_names
    unknown = sorted({names[c] for c in np.unique(store.labels[rows])} - set(known))
    if unknown:
        raise UserInputError(f"the model does not know the classes {', '.join(unknown)} of "
                             f"{store.path}; evaluate it on a store of its own classes")


# The settings that decide the saved model, with the name a refusal gives each. Any other
# setting (``repeats``) only changes the report: a rerun that changes it rewrites the report
# from the saved model instead of refitting it or asking for --overwrite.
_MODEL_SETTINGS = {"kind": "classifier", "cv": "cv", "grid": "grid", "seed": "seed",
                   "class_weight": "class weight",
                   "store_settings_key": "features (store settings key)",
                   "coverage": "coverage"}
# What a setting was before sidecars recorded it: models saved then weighed every row alike.
_UNRECORDED_DEFAULTS = {"class_weight": None}


def _setting_text(key: str, value) -> str:
    if value is None:
        return "the default" if key == "grid" else "none"
    if key == "store_settings_key":
        return str(value)[:12]  # a SHA-256: its start tells two stores apart
    return str(value)


def _model_settings_differences(saved: dict, wanted: dict) -> list[str]:
    """``"cv: 3 here, 2 in the saved model"`` for each model setting that differs.

    Sidecars written before the split also hold ``repeats``: it is not compared.
    Settings added since (:data:`_UNRECORDED_DEFAULTS`) count as what they were then.
    ``coverage`` is not compared where unrecorded (models saved before the unknown
    score): such a model is kept, and ``predict`` says it has no unknown score.
    """
    saved = _UNRECORDED_DEFAULTS | saved
    return [f"{label}: {_setting_text(key, wanted[key])} here, "
            f"{_setting_text(key, saved[key]) if key in saved else 'unrecorded'} "
            "in the saved model"
            for key, label in _MODEL_SETTINGS.items()
            if (key not in saved and key != "coverage")
            or (key in saved and saved[key] != wanted[key])]


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
    name, kind, cv = model_path.stem, settings["kind"], settings["cv"]
    say(f"{name}: searching {'alpha' if kind == 'sgd' else 'C'} with {cv}-fold CV "
        f"on {store.split_counts()['train']} training images")
    model = FeatureClassifier(kind=kind, grid=settings["grid"], cv=cv,
                              random_state=settings["seed"], n_jobs=jobs,
                              class_weight=settings["class_weight"],
                              coverage=settings["coverage"])
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


def unknown_report(model, store, evaluation, split: str = "test") -> dict | None:
    """The unknown score of ``model`` for the report: its threshold, the share of the
    store's ``split`` images it accepts (the threshold was fitted on the train split
    only) and their risk-coverage curve (``evaluation``: of the same images, in store
    order); None for a model without it."""
    score = getattr(model, "unknown_", None)
    if score is None:
        return None
    parts = [score.score(X) for _, X, _ in store.iter_chunks(split)]
    images = evaluation.per_image
    correct = np.array(images["true"], dtype=object) == np.array(images["predicted"],
                                                                 dtype=object)
    return score.test_report(np.concatenate(parts) if parts else np.empty(0), correct)


def _write_train_report(model, evaluation, store, store_path: Path, model_path: Path,
                        report_dir: Path, repeats: int, say: Callable[[str], None]) -> dict:
    """Write the report of a saved model (with ``repeats`` re-splits) and return it."""
    name, store_name, attrs = model_path.stem, store_path.stem, store.attrs
    info = {
        "model": name, "stage": "features", "store": str(store_path.resolve()),
        "store_name": store_name,
        "dataset": source_dataset_name(attrs.get("source"), store_name),
        "backbone": attrs.get("backbone"),
        "layer": attrs.get("layer"), "pooling": attrs.get("pooling"),
        "classifier": model.kind, "class_weight": model.class_weight,
        "chosen": model.best_params_,
        "cv": model.search_.to_dict(), "fit_seconds": model.fit_seconds_,
        "rowspace_shortcut": model.used_rowspace_,
        "solver_space": getattr(model, "solver_space_", None),  # sgd has none
        "converged": model.converged_,
        "n_train": store.split_counts()["train"], "model_path": str(model_path),
        "size_bytes": model_path.stat().st_size,
        "extraction_images_per_second": attrs.get("extraction_images_per_second"),
        "unknown": unknown_report(model, store, evaluation),
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
        f"{evaluation.macro_f1:.4f}, {format_chosen(info['chosen'])}, "
        f"fit {model.fit_seconds_:.1f}s")
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
    coverage: float = DEFAULT_COVERAGE,
    overwrite: bool = False,
    class_weight: str | None = None,
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
    coverage : float, default=0.95
        Share of new images of the trained classes the "unknown" threshold accepts,
        fitted on held-out folds of the train split (:mod:`classifiers.novelty`); images
        scoring above it are predicted "unknown".
    overwrite : bool, default=False
        Retrain even when a model with these settings exists, replacing it.
    class_weight : {None, "balanced"}, default=None
        Weights of the training rows by class, in the search's folds and the final fit
        (:class:`classifiers.FeatureClassifier`): a model setting, so a rerun with
        another value is refused unless ``overwrite``.
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
    say = log or (lambda line: None)
    if repeats < 0:
        raise UserInputError(f"--repeats must be 0 or more, got {repeats}")
    if class_weight not in (None, *CLASS_WEIGHTS):
        raise UserInputError(f"--class-weight {class_weight!r} is not known; use "
                             f"{' or '.join(CLASS_WEIGHTS)}, or leave it out (every image "
                             "weighs the same)")
    check_coverage(coverage)
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
                        "class_weight": class_weight,
                        "store_settings_key": store.attrs.get("settings_key"),
                        "coverage": coverage}
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
