"""Benchmark the choice of C: tlearn's search against the rule it replaced, over re-splits.

For each feature store (``efficientnet_lite0`` features of ``animals``, ``flowers5``
and scikit-learn's ``digits``, extracted once into ``artifacts/bench/``), the
store's rows are split again and again, ``stratified_split(labels, test_size=0.25,
seed=s, groups=store.groups)`` for seeds 0, 1, ..., and each split is fitted twice:

* ``new``: ``FeatureClassifier(kind)`` as it is: the least held-out log-loss over
  the family's default grid (half-decades), 3 folds, the final model fitted along
  the folds' warm-start path; ``linear_svm`` gets Platt-scaled probabilities;
* ``old``: the rule before: the best held-out *accuracy* over the old decade grid
  (C 1e-4 ... 1e4, alpha 1e-6 ... 1e-1), ties to the strongest regularisation,
  3 folds, then a fit at that value (``linear_svm`` had no probabilities then).

Test accuracy, log-loss and expected calibration error (15 bins) are averaged over
the seeds (mean and standard deviation). ``logreg`` runs on every seed; the other
families, slower or secondary, on the first few (``--other-seeds``). Writes
``bench/results/calibration.json`` with the CPU it ran on and prints a table.
Run: ``.venv/bin/python bench/calibration.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_info, describe  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CACHE = REPO / "artifacts" / "bench"
SETS = ("animals-lite0", "flowers5-lite0", "digits-lite0")
KINDS = ("logreg", "ovr", "linear_svm", "sgd")
OLD_C_GRID = [10.0 ** e for e in range(-4, 5)]
OLD_ALPHA_GRID = [10.0 ** e for e in range(-6, 0)]


def ensure_store(name: str) -> Path:
    """The Lite0 store of ``name`` (extracted on first use, like bench/train.py's)."""
    from pipeline.catalog import export_digits
    from pipeline.workflows import extract_dataset

    out = CACHE / f"{name}.h5"
    if out.exists():
        return out
    dataset = name.removesuffix("-lite0")
    data = export_digits(CACHE / "digits-images") if dataset == "digits" \
        else SHARED / dataset
    extract_dataset(data, out=out, backbone="efficientnet_lite0", test_size=0.25, seed=42)
    return out


def test_metrics(model, X, y, probabilities: bool) -> dict:
    import numpy as np

    from classifiers.calibration import expected_calibration_error

    y_index = np.searchsorted(model.classes_, y)
    if not probabilities:
        return {"accuracy": float(np.mean(model.predict(X) == y)), "log_loss": None,
                "ece": None, "confidence": None}
    proba = model.predict_proba(X)
    true = np.clip(proba[np.arange(len(y)), y_index], 1e-15, 1.0)
    return {"accuracy": float(np.mean(proba.argmax(axis=1) == y_index)),
            "log_loss": float(-np.mean(np.log(true))),
            "ece": expected_calibration_error(proba, y_index),
            "confidence": float(proba.max(axis=1).mean())}


def fit_both(kind: str, X, y, Xt, yt, seed: int) -> dict:
    """The new search and the old rule on one split: test metrics, choices, seconds."""
    from classifiers.estimators import FeatureClassifier
    from classifiers.registry import get_classifier_config
    from classifiers.search import pick_best

    param = get_classifier_config(kind).param_name
    t0 = time.perf_counter()
    new = FeatureClassifier(kind=kind, random_state=seed).fit(X, y)
    t1 = time.perf_counter()
    old_grid = OLD_ALPHA_GRID if param == "alpha" else OLD_C_GRID
    searched = FeatureClassifier(kind=kind, grid=old_grid, random_state=seed).fit(X, y)
    chosen = searched.search_.grid[pick_best(searched.search_.accuracy,
                                             regularisation_decreases=param == "C")]
    old = searched if chosen == searched.search_.best_value else FeatureClassifier(
        kind=kind, grid=[chosen], random_state=seed).fit(X, y)
    t2 = time.perf_counter()
    return {
        "new": {**test_metrics(new, Xt, yt, True), "chosen": new.search_.best_value,
                "seconds": t1 - t0},
        "old": {**test_metrics(old, Xt, yt, kind != "linear_svm"), "chosen": chosen,
                "seconds": t2 - t1},
    }


def summarise(runs: list[dict]) -> dict:
    import numpy as np

    out = {"seeds": len(runs)}
    for key in ("accuracy", "log_loss", "ece", "confidence", "seconds"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = ({"mean": float(np.mean(values)), "std": float(np.std(values))}
                    if values else None)
    out["chosen"] = sorted({r["chosen"] for r in runs})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--seeds", type=int, default=10, help="re-splits for logreg")
    parser.add_argument("--other-seeds", type=int, default=3,
                        help="re-splits for the other families")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "calibration.json")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs ../shared/datasets")

    from rich.console import Console
    from rich.table import Table

    from features.store import FeatureStore
    from pipeline.datasets import stratified_split

    console = Console(width=200)
    machine = cpu_info()
    console.print(f"CPU: {describe(machine)}")
    results: dict = {}
    for name in args.sets:
        with FeatureStore(ensure_store(name)) as store:
            X, _ = store.load(None)
            labels, groups = store.labels, store.groups
        for kind in args.kinds:
            seeds = args.seeds if kind == "logreg" else args.other_seeds
            runs: dict[str, list] = {"new": [], "old": []}
            for seed in range(seeds):
                split = stratified_split(labels, test_size=0.25, seed=seed, groups=groups)
                train, test = split == 0, split == 1
                both = fit_both(kind, X[train], labels[train], X[test], labels[test], seed)
                for rule, r in both.items():
                    runs[rule].append(r)
                console.print(f"{name} {kind} seed {seed}: " + "; ".join(
                    f"{rule} acc {r['accuracy']:.4f} C {r['chosen']:g}"
                    for rule, r in both.items()))
            results.setdefault(name, {})[kind] = {rule: summarise(r) for rule, r in runs.items()}

    def pm(s, scale=1.0, digits=4):
        if s is None:
            return "—"
        return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"

    table = Table(title=f"choice of C (alpha): new search vs old rule, re-splits; "
                        f"{describe(machine)}")
    for col in ("features", "model", "rule", "seeds", "test accuracy %", "log-loss", "ECE",
                "mean top prob.", "chosen", "seconds"):
        table.add_column(col, justify="left" if col in ("features", "model", "rule")
                         else "right")
    for name, kinds in results.items():
        for kind, rules in kinds.items():
            for rule, s in rules.items():
                table.add_row(name, kind, rule, str(s["seeds"]), pm(s["accuracy"], 100, 2),
                              pm(s["log_loss"]), pm(s["ece"]), pm(s["confidence"], 1, 3),
                              " ".join(f"{c:g}" for c in s["chosen"]),
                              f"{s['seconds']['mean']:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": machine, "test_size": 0.25,
                                    "old_grids": {"C": OLD_C_GRID, "alpha": OLD_ALPHA_GRID},
                                    "results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
