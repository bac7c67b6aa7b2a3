"""Decode-and-resize rate of tlearn's one image reader, per worker, threads against processes.

What bounds stage one's end-to-end rate on a GPU: the network computes thousands of
images per second there, the CPU decodes a few hundred. Each case decodes the same
files with ``features.images.load_image(path, 224)`` (JPEG draft mode on, bilinear
resize), in 1 and 2 workers (or those given), as threads and as processes:

* ``animals``: the 320-px photos of ``../shared/datasets/animals``;
* ``12mp``: 4000 x 3000 JPEGs of about 3 MB (a phone's), generated into a temporary folder.

The JSON records the CPU (``bench/machine.py``), the load average before and after (the
machine may be shared), and every round; the figure of a case is the median of its
rounds. ``--workers auto`` uses threads when they are as fast as processes here.

    python bench/decode.py [--images 600] [--large 32] [--workers 1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_info, describe  # noqa: E402

from features.images import is_image_file, load_image  # noqa: E402

ANIMALS = REPO.parent / "shared" / "datasets" / "animals"
SIZE = 224
LARGE_SIDE = (4000, 3000)


def animals(count: int) -> list[str]:
    """``count`` animals photos, spread over the classes (sorted, every n-th)."""
    paths = sorted(str(p) for p in ANIMALS.rglob("*") if is_image_file(p))
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def make_large_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` 12-megapixel JPEGs of a phone's size (smooth scene plus sensor noise).

    One scene and one noise field, shifted differently for each file: every file is
    other bytes, and generating 30 takes seconds rather than minutes.
    """
    rng = np.random.default_rng(seed)
    width, height = LARGE_SIDE
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = np.stack([127 + 90 * np.sin(xx / (300 + 40 * c) + yy / (500 + 30 * c) + c)
                      for c in range(3)], axis=-1)
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    paths = []
    for i in range(count):
        dy, dx = (int(v) for v in rng.integers(0, 1000, 2))
        pixels = np.roll(scene, (dy, dx), axis=(0, 1)) + np.roll(noise, (dx, dy), axis=(0, 1))
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _decode_all(paths: list[str]) -> int:
    for path in paths:
        load_image(path, SIZE)
    return len(paths)


def decode_rate(paths: list[str], workers: int, kind: str) -> float:
    """Images per second decoding ``paths`` in ``workers`` threads or processes.

    Files go out in chunks of 8, as batches do; a process pool is started (and its
    workers warmed) before the clock starts, as a long extraction would amortise it.
    """
    chunks = [paths[i:i + 8] for i in range(0, len(paths), 8)]
    pool: Executor = (ThreadPoolExecutor(workers) if kind == "threads"
                      else ProcessPoolExecutor(workers))
    with pool:
        list(pool.map(_decode_all, [paths[:1]] * workers))  # warm: imports, page cache
        t0 = time.perf_counter()
        done = sum(pool.map(_decode_all, chunks))
        return done / (time.perf_counter() - t0)


def run(datasets: dict[str, list[str]], workers: list[int], rounds: int) -> list[dict]:
    rows = []
    for name, paths in datasets.items():
        for _ in range(1):  # the files in the page cache before any timing
            _decode_all(paths[: min(len(paths), 16)])
        for count in workers:
            for kind in ("threads", "processes"):
                rates = [decode_rate(paths, count, kind) for _ in range(rounds)]
                rate = float(np.median(rates))
                rows.append({"images": name, "files": len(paths), "workers": count,
                             "kind": kind, "img_s": rate, "img_s_per_worker": rate / count,
                             "img_s_rounds": rates})
                print(f"{name} ({len(paths)} files) {count} {kind}: {rate:.1f} img/s "
                      f"({rate / count:.1f} per worker; rounds "
                      f"{', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| images | workers | kind | img/s | img/s per worker |",
             "|---|---:|---|---:|---:|"]
    lines += [f"| {r['images']} | {r['workers']} | {r['kind']} | {r['img_s']:.1f} | "
              f"{r['img_s_per_worker']:.1f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="animals photos")
    parser.add_argument("--large", type=int, default=32, help="12-megapixel JPEGs")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode.json")
    args = parser.parse_args()
    machine = cpu_info(device=False)
    workers = [int(w) for w in args.workers.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tlearn-decode-") as tmp:
        datasets = {}
        if ANIMALS.is_dir() and args.images:
            datasets["animals (320 px)"] = animals(args.images)
        if args.large:
            t0 = time.perf_counter()
            datasets["12 MP JPEG"] = make_large_jpegs(Path(tmp), args.large)
            size = np.mean([os.path.getsize(p) for p in datasets["12 MP JPEG"]]) / 1e6
            print(f"generated {args.large} 12-megapixel JPEGs of {size:.1f} MB on average in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        rows = run(datasets, workers, args.rounds)
    result = {"benchmark": "decode", "machine": machine, "cpu": describe(machine),
              "cores_available": machine["cores_available"],
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "reader": "features.images.load_image(path, 224)", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"# Decoding, {describe(machine)}\n\nload average before {load_before}, after "
        f"{result['load_average_after']}\n\n{table(rows)}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
