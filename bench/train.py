"""Benchmark stage 2: tlearn's logreg search and fit against the classic scikit-learn recipe.

Feature sets (extracted once into ``artifacts/bench/``, reused afterwards):

* ``animals`` and ``flowers5`` with ``efficientnet_lite0`` (ImageNet, average pooled, 1,280);
* ``animals`` with ``vgg16`` at 224 px, flatten (25,088 values), *random* weights in
  bfloat16: for time and memory only, its accuracy means nothing.

For each set, in one run and each in a fresh process:

* ``classic``: ``GridSearchCV(LogisticRegression(), {"C": [0.1, 1, 10, 100, 1000, 10000]},
  cv=3)`` on float64 features, then its test accuracy, with the linear algebra library's
  default threads (both cores);
* ``classic-1-thread``: the same with one thread for the linear algebra, which is
  faster for its thin products when other processes share the cores (pooled sets only:
  on the 25,088-wide set it would take many minutes more);
* ``tlearn``: ``FeatureClassifier("logreg")`` over the same grid and folds count
  (float32; centred features on pooled sets, centred principal axes on the
  25,088-wide one; warm starts; folds as views of one copy of the rows, in two threads);
* ``tlearn-default``: the same with tlearn's default grid, as ``tlearn train`` runs it.

Wall time of search + final fit (loading excluded); peak memory (VmHWM, reset after
loading where the kernel allows it) above the process' memory once the features are
loaded, that is what the recipe allocates beyond the matrices it was given, divided by
the float32 training matrix (and by all the float32 features of the set, train and
test); test accuracy, log-loss and expected calibration error (15 bins). Prints a
table and writes ``bench/results/train.json`` with the CPU it ran on and the load
averages before and after each recipe. Other processes may share the CPU: compare only
ratios within one run. Run: ``.venv/bin/python bench/train.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_info, describe  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CACHE = REPO / "artifacts" / "bench"
CLASSIC_GRID = [0.1, 1, 10, 100, 1000, 10000]
SETS = {
    "animals-lite0": ("animals", "efficientnet_lite0", {"weights": "imagenet"}),
    "flowers5-lite0": ("flowers5", "efficientnet_lite0", {"weights": "imagenet"}),
    "animals-vgg16-random": ("animals", "vgg16", {"weights": "none", "precision": "bfloat16"}),
}
RECIPES = ("classic", "classic-1-thread", "tlearn", "tlearn-default")
SLOW_CLASSIC = {"animals-vgg16-random"}  # classic-1-thread is skipped there


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(recipe: str, store_path: str) -> None:
    """Run one recipe on one store and print a JSON line (in a fresh process)."""
    from contextlib import nullcontext

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from threadpoolctl import threadpool_limits

    from classifiers.calibration import expected_calibration_error
    from classifiers.estimators import FeatureClassifier
    from features.store import FeatureStore

    start_kb = _status_kb("VmRSS")
    with FeatureStore(store_path) as store:
        X_train, y_train = store.load("train")
        X_test, y_test = store.load("test")
        matrix_bytes = store.nbytes
    train_bytes = X_train.nbytes  # float32, as given to the recipe
    # what the recipe allocates beyond the matrices it was given, not the reading
    peak_was_reset = _reset_peak()
    loaded_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if recipe.startswith("classic"):
        limits = threadpool_limits(1, "blas") if recipe == "classic-1-thread" else nullcontext()
        with limits:
            X_train, X_test = X_train.astype(np.float64), X_test.astype(np.float64)
            search = GridSearchCV(LogisticRegression(), {"C": CLASSIC_GRID}, cv=3).fit(
                X_train, y_train)
        chosen = search.best_params_["C"]
        model = search.best_estimator_
    else:
        grid = CLASSIC_GRID if recipe == "tlearn" else None
        model = FeatureClassifier(kind="logreg", grid=grid, cv=3).fit(X_train, y_train)
        chosen = model.best_params_["C"]
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    proba = model.predict_proba(X_test)
    y_index = np.searchsorted(model.classes_, y_test)
    true = np.clip(proba[np.arange(len(y_test)), y_index], 1e-15, 1)
    print("RESULT " + json.dumps({
        "recipe": recipe, "seconds": seconds,
        "test_accuracy": float(np.mean(proba.argmax(axis=1) == y_index)),
        "test_log_loss": float(-np.mean(np.log(true))),
        "test_ece": expected_calibration_error(proba, y_index), "chosen_C": chosen,
        "peak_extra_mb": (peak_kb - loaded_kb) / 1024, "peak_was_reset": peak_was_reset,
        "peak_above_start_mb": (peak_kb - start_kb) / 1024,
        "matrix_mb": matrix_bytes / 2**20, "train_matrix_mb": train_bytes / 2**20,
        "rows": int(len(y_train) + len(y_test)), "features": int(X_train.shape[1]),
    }))


def ensure_store(name: str) -> Path:
    from features.settings import NetworkSettings
    from pipeline.progress import progress_bar
    from pipeline.workflows import ExtractSettings, extract_dataset

    dataset, backbone, options = SETS[name]
    out = CACHE / f"{name}.h5"
    with progress_bar(f"extract {name}") as progress:
        extract_dataset(ExtractSettings(SHARED / dataset, out=out, test_size=0.25, seed=42,
                                        network=NetworkSettings(backbone, **options)),
                        progress=progress)
    return out


def run_recipe(recipe: str, store: Path) -> dict:
    load_before = os.getloadavg()
    proc = subprocess.run([sys.executable, __file__, "--worker", recipe, str(store)],
                          capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{recipe} on {store} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "STORE"), help=argparse.SUPPRESS)
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs ../shared/datasets")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    machine = cpu_info()
    console.print(f"CPU: {describe(machine)}")
    results = {}
    for name in args.sets:
        store = ensure_store(name)
        rows = {}
        for recipe in RECIPES:
            if recipe == "classic-1-thread" and name in SLOW_CLASSIC:
                continue
            rows[recipe] = run_recipe(recipe, store)
            r = rows[recipe]
            console.print(f"{name} {recipe}: {r['seconds']:.2f}s, acc {r['test_accuracy']:.4f}, "
                          f"peak +{r['peak_extra_mb']:.0f} MB (training matrix "
                          f"{r['train_matrix_mb']:.0f} MB), load {r['loadavg_before'][0]:.1f}")
        classic = rows["classic"]
        fastest_classic = min(r["seconds"] for k, r in rows.items() if k.startswith("classic"))
        for r in rows.values():
            r["speedup_vs_classic"] = classic["seconds"] / r["seconds"]
            r["speedup_vs_fastest_classic"] = fastest_classic / r["seconds"]
            r["accuracy_points_vs_classic"] = 100 * (r["test_accuracy"]
                                                     - classic["test_accuracy"])
            r["peak_over_train_matrix"] = r["peak_extra_mb"] / r["train_matrix_mb"]
            r["peak_over_matrix"] = r["peak_extra_mb"] / r["matrix_mb"]
        results[name] = rows

    table = Table(title=f"stage 2: logreg search (3-fold CV) + final fit; {describe(machine)}")
    for col in ("features", "recipe", "rows x cols", "seconds", "speed-up", "vs fastest classic",
                "peak extra MB", "peak / train matrix", "test acc", "Δ acc (pts)", "log-loss",
                "ECE", "C", "load"):
        table.add_column(col, justify="left" if col in ("features", "recipe") else "right")
    for name, rows in results.items():
        for recipe, r in rows.items():
            table.add_row(name, recipe, f"{r['rows']:,} x {r['features']:,}",
                          f"{r['seconds']:.1f}", f"{r['speedup_vs_classic']:.1f}x",
                          f"{r['speedup_vs_fastest_classic']:.1f}x",
                          f"{r['peak_extra_mb']:.0f}", f"{r['peak_over_train_matrix']:.2f}",
                          f"{100 * r['test_accuracy']:.2f}%",
                          f"{r['accuracy_points_vs_classic']:+.2f}",
                          f"{r['test_log_loss']:.4f}", f"{r['test_ece']:.4f}",
                          f"{r['chosen_C']:g}", f"{r['loadavg_before'][0]:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": machine, "cpus": os.cpu_count(),
                                    "grid": CLASSIC_GRID, "results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
