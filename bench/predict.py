"""Benchmark ``tlearn predict`` over folders: bounded memory and speed against extraction.

In one run, on ``../shared/datasets/animals`` with ``efficientnet_lite0`` + ``logreg``:

* peak memory (the child's own ``VmHWM``) of one ``tlearn predict MODEL LIST.csv --out
  ...`` process for 300 and for 3,000 images (target: growth < 100 MB);
* images/s of ``tlearn predict`` (library call, same process) against images/s of
  ``tlearn extract`` with the same backbone on the same images (target: >= 0.9).

Prints a table and writes ``bench/results/predict.json`` with the CPU model and flags.
Run: ``.venv/bin/python bench/predict.py [--images 960]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_info, describe, tlearn_peak_rss_mb  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "animals"

def first_images(n: int) -> list[str]:
    """The first n/3 images of each class, in a fixed order."""
    from pipeline.datasets import discover_images

    ds = discover_images(DATA)
    per_class = n // len(ds.label_names)
    out = []
    for name in ds.label_names:
        out += [p for p, c in zip(ds.paths, ds.class_of, strict=True) if c == name][:per_class]
    return out


def peak_rss_mb(model: Path, paths: list[str], tmp: Path) -> float:
    listing = tmp / f"list_{len(paths)}.csv"
    with listing.open("w", newline="") as f:
        csv.writer(f).writerows([[p] for p in paths])
    return tlearn_peak_rss_mb(["predict", str(model), str(listing), "--out",
                               str(tmp / f"pred_{len(paths)}.csv"), "--overwrite"], REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=960, help="images of the speed case")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predict.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/datasets/animals")

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from features.extraction import LabeledImages, extract_features
    from features.settings import NetworkSettings
    from pipeline.workflows import ExtractSettings, extract_dataset, train_store, write_predictions

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["TLEARN_ARTIFACTS"] = str(tmp / "artifacts")
        store = REPO / "artifacts" / "bench" / "animals-lite0.h5"
        if not store.exists():
            store = extract_dataset(ExtractSettings(
                DATA, network=NetworkSettings("efficientnet_lite0"))).result.path
        model = train_store(store, classifier="logreg")[0].model_path

        paths = first_images(args.images)
        images = LabeledImages(paths, np.zeros(len(paths), dtype=np.int64), ["x"],
                               np.zeros(len(paths), dtype=np.uint8), str(DATA))
        # warm both paths once (graph compilation), then time them back to back
        warm = paths[:64]
        extract_features(LabeledImages(warm, np.zeros(64, np.int64), ["x"],
                                       np.zeros(64, np.uint8)), tmp / "warm.h5",
                         NetworkSettings("efficientnet_lite0"), overwrite=True)
        write_predictions(model, warm, tmp / "warm.csv", overwrite=True)
        extraction = extract_features(images, tmp / "speed.h5",
                                      NetworkSettings("efficientnet_lite0"), overwrite=True)
        extract_rate = extraction.images_processed / extraction.seconds
        prediction = write_predictions(model, paths, tmp / "speed.csv", overwrite=True)
        predict_rate = prediction.images_per_second
        peaks = {n: peak_rss_mb(model, first_images(n), tmp) for n in (300, 3000)}

    machine = cpu_info()
    result = {"machine": machine, "backbone": "efficientnet_lite0", "classifier": "logreg",
              "images": len(paths), "extract_images_per_second": extract_rate,
              "predict_images_per_second": predict_rate,
              "predict_over_extract": predict_rate / extract_rate,
              "peak_rss_mb": {str(k): v for k, v in peaks.items()},
              "peak_growth_mb": peaks[3000] - peaks[300]}
    table = Table(title=f"tlearn predict over files ({describe(machine)})")
    for col in ("what", "value"):
        table.add_column(col)
    table.add_row("extract img/s", f"{extract_rate:.1f}")
    table.add_row("predict img/s", f"{predict_rate:.1f}")
    table.add_row("predict / extract", f"{result['predict_over_extract']:.2f}x (target >= 0.9)")
    table.add_row("peak RSS, 300 images", f"{peaks[300]:.0f} MB")
    table.add_row("peak RSS, 3,000 images", f"{peaks[3000]:.0f} MB")
    table.add_row("growth", f"{result['peak_growth_mb']:+.0f} MB (target < 100 MB)")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
