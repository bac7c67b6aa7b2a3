"""Benchmark stage 3: feature extraction + logreg vs fine-tuning vs MiniVGGNet from scratch.

On a class-balanced subset of ``../shared/datasets/flowers5`` and of ``animals`` (sized
so the whole run stays within an hour on 2 CPU cores), with ``efficientnet_lite0``:

* ``features+logreg``: ``tlearn extract`` then ``tlearn train --classifier logreg``;
* ``finetune``: ``tlearn finetune`` from that store (warm-up, then the last blocks);
* ``scratch``: ``tlearn scratch`` (MiniVGGNet, 64 px) from that store.

All three read the split recorded in the store, so they are tested on the very same
images. Prints a table of test accuracy and wall time and writes
``bench/results/compare_stages.json``. Run: ``.venv/bin/python bench/compare_stages.py``.
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


def run_dataset(dataset: str, per_class: int, args, log) -> list[dict]:
    from pipeline.finetune import finetune, train_from_scratch
    from pipeline.workflows import extract_dataset, train_store

    listing = subset_csv(dataset, per_class, REPO / "artifacts" / "bench_stages" /
                         f"{dataset}{per_class}.csv")
    rows = []
    t0 = time.perf_counter()
    store = extract_dataset(listing, backbone="efficientnet_lite0", overwrite=True).result.path
    outcome = train_store(store, classifier="logreg", overwrite=True)[0]
    rows.append({"dataset": dataset, "method": "features+logreg",
                 "test_accuracy": outcome.report["test"]["accuracy"],
                 "test_images": outcome.report["test"]["n_samples"],
                 "wall_seconds": time.perf_counter() - t0})
    log(f"{dataset}: features+logreg {rows[-1]['test_accuracy']:.4f} "
        f"in {rows[-1]['wall_seconds']:.0f}s")

    t0 = time.perf_counter()
    tuned = finetune(store, warmup_epochs=args.warmup_epochs,
                     finetune_epochs=args.finetune_epochs, overwrite=True, log=log)
    rows.append({"dataset": dataset, "method": "finetune",
                 "test_accuracy": tuned.report["test"]["accuracy"],
                 "test_images": tuned.report["test"]["n_samples"],
                 "wall_seconds": time.perf_counter() - t0, "epochs": len(tuned.history),
                 "seconds_per_epoch": {p: sum(r["seconds"] for r in tuned.history
                                              if r["phase"] == p)
                                       / max(1, sum(r["phase"] == p for r in tuned.history))
                                       for p in ("warmup", "finetune")}})
    t0 = time.perf_counter()
    scratch = train_from_scratch(store, epochs=args.scratch_epochs, overwrite=True, log=log)
    rows.append({"dataset": dataset, "method": "scratch (MiniVGGNet 64px)",
                 "test_accuracy": scratch.report["test"]["accuracy"],
                 "test_images": scratch.report["test"]["n_samples"],
                 "wall_seconds": time.perf_counter() - t0, "epochs": len(scratch.history)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=240)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--scratch-epochs", type=int, default=30)
    parser.add_argument("--datasets", nargs="*", default=["flowers5", "animals"])
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "compare_stages.json")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs ../shared/datasets")

    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = []
    for dataset in args.datasets:
        rows += run_dataset(dataset, args.per_class, args,
                            lambda line: console.print(line, highlight=False))
    table = Table(title=f"stages on the same test images ({args.per_class} images per class, "
                        "efficientnet_lite0, 2 CPUs)")
    for col in ("dataset", "method", "test images", "test accuracy", "wall time"):
        table.add_column(col, justify="right" if col in ("test images", "test accuracy",
                                                         "wall time") else "left")
    for r in rows:
        table.add_row(r["dataset"], r["method"], str(r["test_images"]),
                      f"{100 * r['test_accuracy']:.2f}%", f"{r['wall_seconds']:.0f}s")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"per_class": args.per_class, "rows": rows,
                                    "settings": vars(args) | {"out": str(args.out)}},
                                   indent=2, default=str))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
