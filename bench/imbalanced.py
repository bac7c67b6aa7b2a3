"""Benchmark class weights on imbalanced classes: balanced accuracy with and without them.

``efficientnet_lite0`` features (ImageNet, average pooled, 1,280 values) of a subset of
``animals``: the first ``--per-class`` images of each class in name order (300 by default,
to keep the extraction to a minute or two on a shared CPU), split by ``tlearn``'s own
grouped, stratified split (a third to the test split, seed 42), extracted once into
``artifacts/bench/``. Then, for each seed, the *training* rows of one class (``cats`` by
default) are cut to ``--keep`` of them (10 %), chosen at random by the seed; the test split
keeps every class whole, so that its balanced accuracy measures every class on a hundred
images. Each family is fitted on that cut twice, by ``FeatureClassifier(kind,
random_state=seed)`` as ``tlearn train`` fits it: every image alike, and with
``class_weight="balanced"``.

Reported per seed and as the mean over the seeds: test accuracy, balanced accuracy (mean
per-class recall, with its 95 % bootstrap interval) and the recall of the cut class.
Writes ``bench/results/imbalanced.json`` with the CPU it ran on and the load averages
before and after, and prints a table. Run: ``.venv/bin/python bench/imbalanced.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_info, describe  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CACHE = REPO / "artifacts" / "bench"
KINDS = ("logreg", "linear_svm", "ovr", "sgd")


def ensure_store(per_class: int) -> Path:
    """The Lite0 store of the first ``per_class`` images of each animals class."""
    from features.settings import NetworkSettings
    from pipeline.workflows import ExtractSettings, extract_dataset

    out = CACHE / f"animals{per_class}-lite0.h5"
    if out.exists():
        return out
    subset = CACHE / f"animals{per_class}-images"
    for folder in sorted((SHARED / "animals").iterdir()):
        if not folder.is_dir():
            continue
        (subset / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:per_class]:
            link = subset / folder.name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    extract_dataset(ExtractSettings(subset, out=out, test_size=1 / 3, seed=42,
                                    network=NetworkSettings("efficientnet_lite0")))
    return out


def run(store_path: Path, kinds: list[str], seeds: int, cut: str, keep: float) -> dict:
    import numpy as np

    from classifiers.estimators import FeatureClassifier
    from classifiers.evaluation import evaluate_predictions
    from features.store import FeatureStore

    with FeatureStore(store_path) as store:
        X, y = store.load(None)
        train, test = store.split_mask("train"), store.split_mask("test")
        names = list(store.label_names)
    minority = names.index(cut)
    results: dict = {}
    for kind in kinds:
        for weight in (None, "balanced"):
            runs = []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                rows = np.flatnonzero(train & (y == minority))
                dropped = rng.choice(rows, len(rows) - round(keep * len(rows)), replace=False)
                fit_rows = np.setdiff1d(np.flatnonzero(train), dropped)
                model = FeatureClassifier(kind=kind, random_state=seed, class_weight=weight,
                                          label_names=names).fit(X[fit_rows], y[fit_rows])
                ev = evaluate_predictions(y[test], model.class_scores(X[test]), model.classes_,
                                          model.label_names_)
                runs.append({"seed": seed, "train_counts": np.bincount(
                    y[fit_rows], minlength=len(names)).tolist(),
                    "accuracy": ev.accuracy, "balanced_accuracy": ev.balanced_accuracy,
                    "balanced_accuracy_ci": ev.balanced_accuracy_ci,
                    "cut_class_recall": ev.per_class[cut]["recall"],
                    "chosen": model.best_params_})
                print(f"{kind} {weight or 'none'} seed {seed}: balanced accuracy "
                      f"{ev.balanced_accuracy:.3f}, {cut} recall "
                      f"{runs[-1]['cut_class_recall']:.3f}", flush=True)
            summary = {f"{key}_mean": float(np.mean([r[key] for r in runs]))
                       for key in ("accuracy", "balanced_accuracy", "cut_class_recall")}
            results.setdefault(kind, {})[weight or "none"] = summary | {"runs": runs}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--cut", default="cats", help="the class whose training rows are cut")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "imbalanced.json")
    args = parser.parse_args()
    machine = cpu_info()
    print(describe(machine), flush=True)
    store_path = ensure_store(args.per_class)
    load_before = os.getloadavg()
    results = run(store_path, args.kinds.split(","), args.seeds, args.cut, args.keep)
    args.out.write_text(json.dumps({
        "cpu": machine, "load_average": {"before": load_before, "after": os.getloadavg()},
        "dataset": f"animals, first {args.per_class} images per class, test third "
                   f"(seed 42); {args.cut}'s training rows cut to {args.keep:.0%}",
        "backbone": "efficientnet_lite0", "seeds": args.seeds, "results": results},
        indent=2) + "\n")
    print(f"\n| family | class weight | accuracy | balanced accuracy | {args.cut} recall |")
    print("|---|---|---|---|---|")
    for kind, by_weight in results.items():
        for weight, r in by_weight.items():
            print(f"| {kind} | {weight} | {r['accuracy_mean']:.3f} | "
                  f"{r['balanced_accuracy_mean']:.3f} | {r['cut_class_recall_mean']:.3f} |")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
