"""Benchmark the choice of C: tlearn's search against the rule it replaced, over re-splits.

For each feature store (``efficientnet_lite0`` features of ``animals``, ``flowers5``
and scikit-learn's ``digits``, extracted once into ``artifacts/bench/``), the
store's rows are split again and again, ``stratified_split(labels, test_size=0.25,
seed=s, groups=store.groups)`` for seeds 0, 1, ..., and each split is fitted twice:

* ``new``: ``FeatureClassifier(kind)`` as it is: the least held-out log-loss over
  the family's default grid (half-decades), 3 folds, the final model fitted along
  the folds' warm-start path; ``linear_svm``, ``ovr`` and ``sgd`` get Platt-scaled
  probabilities, the scale fitted on the search's held-out margins;
* ``unscaled`` (``ovr`` and ``sgd`` only): the same search, but with the family's own
  probabilities (binary sigmoids normalised to sum to one), as before their Platt
  scaling (the registry entry with ``platt=False``);
* ``old``: the rule before both: the best held-out *accuracy* over the old decade
  grid (C 1e-4 ... 1e4, alpha 1e-6 ... 1e-1), ties to the strongest regularisation,
  3 folds, then a fit at that value, with the family's own probabilities
  (``linear_svm`` had none then).

Test accuracy, log-loss and expected calibration error (15 bins) are averaged over
the seeds (mean and standard deviation). ``logreg`` runs on every seed; the other
families on the first ``--other-seeds``. Writes ``bench/results/calibration.json``
with the CPU it ran on and the load average (the machine may be shared) beside each
family's figures, and prints a table. ``--merge`` keeps the figures of the sets and
families not run from the existing file. Run: ``.venv/bin/python bench/calibration.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
    from features.settings import NetworkSettings
    from pipeline.catalog import export_digits
    from pipeline.workflows import ExtractSettings, extract_dataset

    out = CACHE / f"{name}.h5"
    if out.exists():
        return out
    dataset = name.removesuffix("-lite0")
    data = export_digits(CACHE / "digits-images") if dataset == "digits" \
        else SHARED / dataset
    extract_dataset(ExtractSettings(data, out=out, test_size=0.25, seed=42,
                                    network=NetworkSettings("efficientnet_lite0")))
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


# Families whose probabilities became Platt-scaled margins after the log-loss search.
SCALED_LATER = ("ovr", "sgd")


@contextlib.contextmanager
def own_probabilities(kind: str):
    """The family as before its Platt scaling: its registry entry with ``platt=False``."""
    from classifiers.registry import CLASSIFIERS

    config = CLASSIFIERS[kind]
    CLASSIFIERS[kind] = dataclasses.replace(config, platt=False)
    try:
        yield
    finally:
        CLASSIFIERS[kind] = config


def fit_rules(kind: str, X, y, Xt, yt, seed: int) -> dict:
    """The new search, the unscaled one and the old rule on one split: test metrics,
    choices, seconds."""
    from classifiers.estimators import FeatureClassifier
    from classifiers.registry import get_classifier_config
    from classifiers.search import pick_best

    param = get_classifier_config(kind).param_name
    out = {}
    t0 = time.perf_counter()
    new = FeatureClassifier(kind=kind, random_state=seed).fit(X, y)
    out["new"] = {**test_metrics(new, Xt, yt, True), "chosen": new.search_.best_value,
                  "seconds": time.perf_counter() - t0}
    own = own_probabilities(kind) if kind in SCALED_LATER else contextlib.nullcontext()
    with own:
        if kind in SCALED_LATER:
            t0 = time.perf_counter()
            unscaled = FeatureClassifier(kind=kind, random_state=seed).fit(X, y)
            out["unscaled"] = {**test_metrics(unscaled, Xt, yt, True),
                               "chosen": unscaled.search_.best_value,
                               "seconds": time.perf_counter() - t0}
        t0 = time.perf_counter()
        old_grid = OLD_ALPHA_GRID if param == "alpha" else OLD_C_GRID
        searched = FeatureClassifier(kind=kind, grid=old_grid, random_state=seed).fit(X, y)
        chosen = searched.search_.grid[pick_best(searched.search_.accuracy,
                                                 regularisation_decreases=param == "C")]
        old = searched if chosen == searched.search_.best_value else FeatureClassifier(
            kind=kind, grid=[chosen], random_state=seed).fit(X, y)
        out["old"] = {**test_metrics(old, Xt, yt, kind != "linear_svm"), "chosen": chosen,
                      "seconds": time.perf_counter() - t0}
    return out


RULE_ORDER = ("old", "unscaled", "new")


def rule_order(item: tuple[str, list]) -> int:
    return RULE_ORDER.index(item[0])


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
    parser.add_argument("--merge", action="store_true",
                        help="keep the figures of the sets and families not run from --out")
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
    if args.merge and args.out.exists():
        results = json.loads(args.out.read_text())["results"]
    for name in args.sets:
        with FeatureStore(ensure_store(name)) as store:
            X, _ = store.load(None)
            labels, groups = store.labels, store.groups
        for kind in args.kinds:
            seeds = args.seeds if kind == "logreg" else args.other_seeds
            runs: dict[str, list] = {}
            load_before = os.getloadavg()
            for seed in range(seeds):
                split = stratified_split(labels, test_size=0.25, seed=seed, groups=groups)
                train, test = split == 0, split == 1
                rules = fit_rules(kind, X[train], labels[train], X[test], labels[test], seed)
                for rule, r in rules.items():
                    runs.setdefault(rule, []).append(r)
                console.print(f"{name} {kind} seed {seed}: " + "; ".join(
                    f"{rule} acc {r['accuracy']:.4f} ECE {r['ece'] or 0:.4f} C {r['chosen']:g}"
                    for rule, r in rules.items()))
            results.setdefault(name, {})[kind] = {
                **{rule: summarise(r) for rule, r in sorted(runs.items(), key=rule_order)},
                "cpu": machine, "load_average": {"before": load_before,
                                                 "after": os.getloadavg()},
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            write(args.out, machine, results)

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
                if rule not in RULE_ORDER:
                    continue  # the cpu, load and date beside the figures
                table.add_row(name, kind, rule, str(s["seeds"]), pm(s["accuracy"], 100, 2),
                              pm(s["log_loss"]), pm(s["ece"]), pm(s["confidence"], 1, 3),
                              " ".join(f"{c:g}" for c in s["chosen"]),
                              f"{s['seconds']['mean']:.1f}")
    console.print(table)
    write(args.out, machine, results)
    console.print(f"wrote {args.out}")


def write(out: Path, machine: dict, results: dict) -> None:
    # after each family too, so that an interrupted run keeps what it measured
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": machine, "test_size": 0.25, "ece_bins": 15,
                               "old_grids": {"C": OLD_C_GRID, "alpha": OLD_ALPHA_GRID},
                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
