"""Benchmark stage 3: feature extraction + logreg vs fine-tuning vs MiniVGGNet from scratch.

On a class-balanced subset of ``../shared/datasets/flowers5`` and of ``animals``, with
``efficientnet_lite0``:

* ``features+logreg``: ``tlearn extract`` then ``tlearn train --classifier logreg``;
* ``finetune``: ``tlearn finetune`` from that store (warm-up, then the last blocks);
* ``scratch``: ``tlearn scratch`` (MiniVGGNet, 64 px) from that store.

All three read the split recorded in the store, so they are tested on the very same
images, and this is repeated for several seeded splits. Prints each stage's accuracy
per seed, its mean and pooled 95 % (Wilson) interval, and per seed McNemar's exact
test of fine-tuning against features + logreg on the paired test images; writes
``bench/results/compare_stages.json`` with the CPU model and flags.
Run: ``.venv/bin/python bench/compare_stages.py [--per-class 160] [--seeds 42 43 44]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TLEARN_ARTIFACTS", str(REPO / "artifacts" / "bench_stages"))

SHARED = REPO.parent / "shared" / "datasets"


def subset_csv(dataset: str, per_class: int, out: Path) -> Path:
    """A CSV listing the first ``per_class`` images of each class."""
    from pipeline.datasets import discover_images

    ds = discover_images(SHARED / dataset)
    taken: dict[str, int] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        for path, label in zip(ds.paths, ds.class_of, strict=True):
            if taken.get(label, 0) < per_class:
                writer.writerow([path, label])
                taken[label] = taken.get(label, 0) + 1
    return out


def run_dataset(dataset: str, per_class: int, seed: int, args, log) -> list[dict]:
    """The three stages on one seeded split of ``dataset``; rows carry report directories."""
    from features.settings import NetworkSettings
    from pipeline.stage3 import FinetuneSettings, ScratchSettings, finetune, train_from_scratch
    from pipeline.workflows import ExtractSettings, extract_dataset, train_store

    listing = subset_csv(dataset, per_class, REPO / "artifacts" / "bench_stages" /
                         f"{dataset}{per_class}.csv")
    store_path = Path(os.environ["TLEARN_ARTIFACTS"]) / "features" / \
        f"{dataset}{per_class}_seed{seed}__efficientnet_lite0.h5"
    rows = []
    t0 = time.perf_counter()
    store = extract_dataset(ExtractSettings(
        listing, network=NetworkSettings("efficientnet_lite0"), seed=seed, out=store_path,
        overwrite=True)).result.path
    outcome = train_store(store, classifier="logreg", overwrite=True)[0]
    rows.append({"dataset": dataset, "seed": seed, "method": "features+logreg",
                 "report": outcome.report, "wall_seconds": time.perf_counter() - t0})
    log(f"{dataset} seed {seed}: features+logreg {outcome.report['test']['accuracy']:.4f}")
    t0 = time.perf_counter()
    tuned = finetune(FinetuneSettings(store, warmup_epochs=args.warmup_epochs, seed=seed,
                                      finetune_epochs=args.finetune_epochs, overwrite=True),
                     log=log)
    rows.append({"dataset": dataset, "seed": seed, "method": "finetune", "report": tuned.report,
                 "wall_seconds": time.perf_counter() - t0, "epochs": len(tuned.history)})
    t0 = time.perf_counter()
    scratch = train_from_scratch(ScratchSettings(store, epochs=args.scratch_epochs, seed=seed,
                                                 overwrite=True), log=log)
    rows.append({"dataset": dataset, "seed": seed, "method": "scratch (MiniVGGNet 64px)",
                 "report": scratch.report, "wall_seconds": time.perf_counter() - t0,
                 "epochs": len(scratch.history)})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per dataset and method: mean accuracy over seeds and the pooled 95 % Wilson interval,
    and per seed McNemar's exact test of fine-tuning against features + logreg."""
    import numpy as np

    from classifiers.statistics import wilson_interval
    from pipeline.reports import paired_comparison

    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == dataset):
            runs = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            accs = [r["report"]["test"]["accuracy"] for r in runs]
            n = sum(r["report"]["test"]["n_samples"] for r in runs)
            right = round(sum(a * r["report"]["test"]["n_samples"]
                              for a, r in zip(accs, runs, strict=True)))
            out.append({"dataset": dataset, "method": method, "seeds": len(runs),
                        "test_images_per_seed": runs[0]["report"]["test"]["n_samples"],
                        "accuracy_per_seed": accs, "accuracy_mean": float(np.mean(accs)),
                        "accuracy_std": float(np.std(accs)),
                        "pooled_95ci": list(wilson_interval(right, n)),
                        "wall_seconds": float(sum(r["wall_seconds"] for r in runs))})
        verdicts = []
        for seed in dict.fromkeys(r["seed"] for r in rows if r["dataset"] == dataset):
            by = {r["method"]: r["report"] for r in rows
                  if r["dataset"] == dataset and r["seed"] == seed}
            if "finetune" in by and "features+logreg" in by:
                verdicts.append({"seed": seed, **paired_comparison(by["features+logreg"],
                                                                   by["finetune"])})
        out.append({"dataset": dataset, "method": "McNemar: finetune vs features+logreg",
                    "per_seed": verdicts})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=160)
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44])
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--scratch-epochs", type=int, default=20)
    parser.add_argument("--datasets", nargs="*", default=["flowers5", "animals"])
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "compare_stages.json")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs ../shared/datasets")

    from machine import cpu_info, describe
    from rich.console import Console
    from rich.table import Table

    console = Console()
    started = time.perf_counter()
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            rows += run_dataset(dataset, args.per_class, seed, args,
                                lambda line: console.print(line, highlight=False))
    summary = summarise(rows)
    machine = cpu_info()
    table = Table(title=f"stages on the same test images ({args.per_class} images per class, "
                        f"{len(args.seeds)} seeded splits, efficientnet_lite0; "
                        f"{describe(machine)})")
    for col in ("dataset", "method", "test images", "accuracy per seed", "mean", "pooled 95%",
                "wall time"):
        table.add_column(col)
    for r in summary:
        if "per_seed" in r:
            for v in r["per_seed"]:
                console.print(f"{r['dataset']} seed {v['seed']}: {v['verdict']}",
                              highlight=False)
            continue
        table.add_row(r["dataset"], r["method"], str(r["test_images_per_seed"]),
                      ", ".join(f"{100 * a:.1f}%" for a in r["accuracy_per_seed"]),
                      f"{100 * r['accuracy_mean']:.2f}%",
                      f"[{100 * r['pooled_95ci'][0]:.1f}, {100 * r['pooled_95ci'][1]:.1f}]",
                      f"{r['wall_seconds']:.0f}s")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["report"] = {"test": {k: r["report"]["test"][k] for k in ("accuracy", "n_samples",
                                                                     "accuracy_ci")},
                       "model": r["report"].get("model")}
    args.out.write_text(json.dumps({"machine": machine, "per_class": args.per_class,
                                    "summary": summary, "rows": rows,
                                    "total_wall_seconds": time.perf_counter() - started,
                                    "settings": vars(args) | {"out": str(args.out)}},
                                   indent=2, default=str))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
