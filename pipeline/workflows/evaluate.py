"""``tlearn evaluate``, ``compare`` and ``report``: saved models scored and compared."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from classifiers.evaluation import evaluate_predictions
from classifiers.novelty import test_figures
from classifiers.persistence import check_same_features, load_classifier
from features.batches import iter_decoded_batches
from features.errors import UserInputError
from features.store import FeatureStore
from pipeline.config import DEFAULT_BATCH_SIZE, reports_dir
from pipeline.image_classifiers import load_image_classifier
from pipeline.report_page import dataset_names, update_dataset_reports, write_dataset_report
from pipeline.reports import (
    collect_reports,
    compare_reports,
    filter_reports,
    read_report,
    report_dataset,
    write_comparison,
    write_report,
)
from pipeline.workflows.train import (
    TrainOutcome,
    _evaluate_on_store,
    _refuse_unknown_classes,
    unknown_report,
)


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
    model_path = Path(model_path)
    from_images = runtime is not None or model_path.suffix == ".keras"
    with FeatureStore(store_path) as store:
        if from_images:
            evaluation, meta = _evaluate_from_images(model_path, store, split, runtime,
                                                     batch_size, workers)
        else:
            model = load_classifier(model_path)
            check_same_features(model, store.spec, where=str(store_path))
            _refuse_unknown_classes(model.label_names_, store, store.split_mask(split))
            evaluation = _evaluate_on_store(model, store, split)
            meta = {"classifier": model.kind, "chosen": model.best_params_,
                    "backbone": (model.feature_spec_ or {}).get("backbone"),
                    "unknown": unknown_report(model, store, evaluation, split)}
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
        scores.append(model.scores(batch.x))
        seconds += time.perf_counter() - t0
    rate = len(y) / seconds if seconds > 0 else float("inf")
    scores = np.concatenate(scores)
    classes = len(position)
    evaluation = evaluate_predictions(y, scores[:, :classes], np.arange(classes),
                                      list(model.label_names), rate)
    info = model.info
    unknown = None
    if model.unknown_threshold is not None:  # the last column is the unknown score
        unknown = info["unknown"] | test_figures(
            scores[:, classes], scores[:, :classes].argmax(axis=1) == y,
            model.unknown_threshold)
    return evaluation, {"classifier": info.get("classifier") or info.get("kind"),
                        "chosen": info.get("best_params"), "backbone": info.get("backbone")
                        or (info.get("feature_spec") or {}).get("backbone"),
                        "runtime": info["runtime"], "precision": info["precision"],
                        "unknown": unknown}


def compare_models(paths: list[str | Path] | None = None, *,
                   log: Callable[[str], None] | None = None,
                   warn: Callable[[str], None] | None = None) -> tuple[list[dict], Path, Path]:
    """Rows of the comparison table (best first) and the markdown and CSV files written.

    ``paths`` may name stores (``.h5``: their models) or model files (``.joblib``,
    ``.keras``); with none, every report under ``artifacts/reports`` is compared.
    Damaged reports are skipped, each named through ``warn``.
    """
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
