"""Benchmark ``tlearn check`` and the near-duplicate grouping of ``tlearn extract``.

``efficientnet_lite0`` features (ImageNet weights, average pooled, 1,280 values) of
``animals`` and ``flowers5``, extracted once into ``/tmp/tlearn-bench-check``. Planted
problems, seeded:

* **near-duplicate copies**: 1 % of the images copied with a crop of 3-8 % of each side
  (at a random offset), resized 0.5-0.8x and re-encoded as JPEG of quality 50-70; their
  pixel signatures are recorded like the photos'. Reported per threshold of
  :func:`features.neighbours.near_duplicate_pairs`: the share of copies whose group
  (after :func:`features.neighbours.join_near_duplicates`, over the store's groups)
  holds their source, and the share of the other images joined with anything (real
  duplicates of the unmodified datasets counted apart).
* **one split whatever the network**: the split recorded from signatures of the images
  decoded at 224 and at 300 pixels (EfficientNet-Lite0's and Lite4's inputs).
* **flipped labels**: 2 % and 5 % of the images given another class at random; the
  recall of the flipped images among the top 2x-as-many label findings of
  :func:`classifiers.label_issues.find_label_issues`.
* **search time and memory** of the pixel search (:func:`features.neighbours.near_duplicate_pairs`,
  as ``extract`` and ``check`` run it) and of the features' 10 nearest neighbours
  (:func:`features.neighbours.scan_neighbours`, ``check``'s outliers) on 1,000 and 4,000
  real rows and 100,000 simulated ones (real rows drawn at random, with Gaussian noise of
  0.3 times each column's deviation), memory as the peak of numpy's allocations
  (tracemalloc) beyond the input, time as wall-clock and as the CPU time of the process
  (the work, on a shared machine).
* what :func:`pipeline.workflows.check.check_store` finds in the unmodified stores.

Writes ``bench/results/check.json`` (with the CPU and load averages) and prints a table.
Run: ``.venv/bin/python bench/check.py`` (about a quarter of an hour on two cores).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.machine import cpu_info, describe  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CACHE = Path("/tmp/tlearn-bench-check")
DATASETS = ("animals", "flowers5")
SEED = 0


def original_store(name: str) -> Path:
    from features.settings import NetworkSettings
    from pipeline.workflows import ExtractSettings, extract_dataset

    out = CACHE / f"{name}__lite0.h5"
    if not out.exists():
        extract_dataset(ExtractSettings(SHARED / name, out=out, near_duplicates=False,
                                        network=NetworkSettings("efficientnet_lite0")))
    return out


def make_copy(source: str, target: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    with Image.open(source) as image:
        rgb = image.convert("RGB")
    w, h = rgb.size
    cut = rng.uniform(0.03, 0.08)
    left, top = rng.uniform(0, cut) * w, rng.uniform(0, cut) * h
    rgb = rgb.crop((round(left), round(top), round(w - (cut * w - left)),
                    round(h - (cut * h - top))))
    scale = rng.uniform(0.5, 0.8)
    rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=int(rng.integers(50, 71)))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())


def copies_store(name: str, paths: list[str], labels: np.ndarray, label_names: list[str]
                 ) -> tuple[Path, np.ndarray]:
    """Features of copies of 1 % of the rows, and the row each copy was made from."""
    from features.extraction import LabeledImages, extract_features
    from features.settings import NetworkSettings

    rng = np.random.default_rng(SEED)
    sources = np.sort(rng.choice(len(paths), max(1, round(0.01 * len(paths))), replace=False))
    folder = CACHE / f"{name}-copies"
    targets = [folder / label_names[labels[i]] / f"copy{i:05d}.jpg" for i in sources]
    for i, target in zip(sources, targets, strict=True):
        if not target.exists():
            make_copy(paths[i], target, rng)
    out = CACHE / f"{name}-copies__lite0.h5"
    if not out.exists():
        images = LabeledImages([str(t) for t in targets], labels[sources], label_names,
                               np.zeros(len(sources), dtype=np.uint8), str(folder))
        extract_features(images, out, NetworkSettings("efficientnet_lite0"))
    return out, sources


#: Thresholds of the aligned pixel cosine tried (the rule's is
#: :data:`features.neighbours.NEAR_DUPLICATE_THRESHOLD`), each with the rule's candidates.
THRESHOLDS = (0.95, 0.96, 0.97, 0.98)
#: 16 x 16 signature cosine (whole pictures, no alignment) from which two photos of a
#: dataset are the same picture (rescaled ``_n`` files, edits, burst shots): of the
#: flowers5 pairs grouped, the 8 looked at above 0.93 showed the same scene 7 times, the
#: 8 below mostly look-alike daisies and dandelions.
REAL_DUPLICATE = 0.93


def grouping_figures(signatures: np.ndarray, groups: np.ndarray, n_original: int,
                     sources: np.ndarray) -> dict:
    """Copies grouped with their source and other images grouped, per threshold.

    Other images joined only through pairs whose 16 x 16 signatures agree to
    :data:`REAL_DUPLICATE` (the same picture twice in the dataset) are counted apart, as
    duplicates the dataset already held, not as errors.
    """
    from features.neighbours import join_near_duplicates, near_duplicate_pairs

    out = {}
    copies = np.arange(n_original, len(signatures))
    others = np.ones(n_original, dtype=bool)
    others[sources] = False
    _, before = np.unique(groups, return_inverse=True)
    size_before = np.bincount(before)[before]
    unsplit = np.zeros(len(signatures), dtype=np.uint8)
    for threshold in THRESHOLDS:
        t0 = time.perf_counter()
        first, second, _ = near_duplicate_pairs(signatures, threshold=threshold)
        seconds = time.perf_counter() - t0
        joined = join_near_duplicates(first, second, groups, unsplit).groups
        agree = np.einsum("ij,ij->i", signatures[first].astype(np.float32),
                          signatures[second].astype(np.float32))
        # first < second: a pair of two original rows has second < n_original
        real = (agree >= REAL_DUPLICATE) & (second < n_original)
        grouped = others & _grew(joined, size_before, n_original)
        wrongly = others & _grew(join_near_duplicates(first[~real], second[~real], groups,
                                                      unsplit).groups, size_before, n_original)
        already = grouped & ~wrongly
        out[str(threshold)] = {
            "threshold": threshold,
            "copies_with_source": float(np.mean(joined[copies] == joined[sources])),
            "others_grouped": float(wrongly.sum() / others.sum()),
            "others_grouped_count": int(wrongly.sum()),
            "real_duplicates_grouped_count": int(already.sum()), "pairs": len(first),
            "seconds": round(seconds, 2)}
    return out


def _grew(joined: np.ndarray, size_before: np.ndarray, n_original: int) -> np.ndarray:
    """Which original rows are in a larger group after the join than before."""
    _, after = np.unique(joined, return_inverse=True)
    return np.bincount(after)[after][:n_original] > size_before[:n_original]


def split_agreement(paths: list[str], groups: np.ndarray, split: np.ndarray,
                    signatures: np.ndarray, sizes: tuple[int, ...] = (224, 300)) -> dict:
    """The split each input size records, from signatures of the images decoded at it:
    EfficientNet-Lite0 and Lite4's sizes, the two ends of the range."""
    from features.batches import decode_batch
    from features.images import DEFAULT_MAX_PIXELS
    from features.neighbours import join_near_duplicates, near_duplicate_pairs

    recorded = {}
    for size in sizes:
        rows = []
        for start in range(0, len(paths), 64):
            _, _, bad, batch = decode_batch(paths[start:start + 64], size,
                                            DEFAULT_MAX_PIXELS, lambda x: x[:0])
            assert not bad, bad
            rows.append(batch)
        first, second, _ = near_duplicate_pairs(np.vstack(rows))
        recorded[size] = join_near_duplicates(first, second, groups, split)
    a, b = (recorded[size] for size in sizes)
    _, ga = np.unique(a.groups, return_inverse=True)
    _, gb = np.unique(b.groups, return_inverse=True)
    same_groups = len(np.unique(np.stack([ga, gb]), axis=1)[0]) == len(np.unique(ga)) == \
        len(np.unique(gb))
    stored = join_near_duplicates(*near_duplicate_pairs(signatures)[:2], groups, split)
    return {"sizes": list(sizes), "rows": len(paths),
            "rows_in_another_split": int((a.split != b.split).sum()),
            "same_groups": bool(same_groups),
            "near_duplicate_groups": [a.near_duplicate_groups, b.near_duplicate_groups],
            "rows_moved": [a.moved, b.moved],
            "store_rows_in_another_split": int((stored.split != a.split).sum())}


def label_figures(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    from classifiers.label_issues import find_label_issues

    out = {}
    k = int(y.max()) + 1
    for rate in (0.02, 0.05):
        rng = np.random.default_rng(SEED)
        flipped = rng.choice(len(y), round(rate * len(y)), replace=False)
        noisy = y.copy()
        noisy[flipped] = (y[flipped] + rng.integers(1, k, len(flipped))) % k
        t0 = time.perf_counter()
        issues = find_label_issues(X, noisy, groups)
        top = issues.rows[:2 * len(flipped)]
        found = np.isin(flipped, top)
        position = {int(r): i for i, r in enumerate(issues.rows)}
        suggested_right = [int(issues.suggested[position[int(f)]] == y[f])
                           for f in flipped[found]]
        out[str(rate)] = {"flipped": len(flipped), "flagged": len(issues.rows),
                          "recall_top_2x": float(found.mean()),
                          "suggested_label_right": float(np.mean(suggested_right))
                          if suggested_right else 0.0,
                          "C": issues.C, "seconds": round(time.perf_counter() - t0, 1)}
    return out


def search_figures(X: np.ndarray, signatures: np.ndarray, simulated_rows: int) -> dict:
    """Time and memory of the two searches: the pixel one (``extract`` and ``check``:
    near-duplicates) and the features' nearest neighbours (``check``: outliers)."""
    from features.neighbours import near_duplicate_pairs, scan_neighbours

    out = {}
    for rows in (1000, 4000, simulated_rows):
        if not rows:
            continue
        for what, data, run in (
                ("pixels", signatures[:rows] if rows <= len(signatures)
                 else _simulated(signatures.astype(np.float32), rows).astype(np.float16),
                 lambda d: len(near_duplicate_pairs(d)[0])),
                ("features_k10", X[:rows] if rows <= len(X) else _simulated(X, rows),
                 lambda d: len(scan_neighbours(d, 2.0, k=10).knn))):
            if what == "features_k10" and rows > 10_000:
                continue  # check's outliers: 334 s at 100,000 x 1,280 in an earlier run
            tracemalloc.start()
            t0, c0 = time.perf_counter(), time.process_time()
            found = run(data)
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - c0  # on a shared machine: the work, not the wait
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out[f"{rows}_{what}"] = {"rows": rows, "search": what, "seconds": round(seconds, 2),
                                     "cpu_seconds": round(cpu, 2),
                                     "peak_mb_beyond_input": round(peak / 2**20, 1),
                                     "input_mb": round(data.nbytes / 2**20, 1),
                                     "pairs": found if what == "pixels" else None}
    return out


def _simulated(X: np.ndarray, rows: int) -> np.ndarray:
    """``rows`` real rows drawn at random, plus Gaussian noise of 0.3 deviations of each
    column (so each real row stands for a bunch of near-identical ones)."""
    rng = np.random.default_rng(SEED)
    deviation = X.std(axis=0) * 0.3
    out = X[rng.integers(0, len(X), rows)]
    for start in range(0, rows, 10000):
        block = out[start:start + 10000]
        block += (rng.standard_normal(block.shape) * deviation).astype(np.float32)
    return out


def check_figures(store: Path) -> dict:
    from pipeline.workflows.check import check_store

    t0 = time.perf_counter()
    report = check_store(store)
    counts: dict[str, int] = {}
    for finding in report.findings:
        counts[finding.issue] = counts.get(finding.issue, 0) + 1
    examples = {}
    for issue in counts:
        examples[issue] = [
            {"path": os.path.relpath(f.path, SHARED), "score": round(f.score, 3),
             "given_label": f.given_label, "suggested_label": f.suggested_label,
             "related_path": os.path.relpath(f.related_path, SHARED) if f.related_path
             else ""} for f in report.findings if f.issue == issue][:5]
    return {"counts": counts, "examples": examples, "imbalance_ratio": report.imbalance_ratio,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    from features.store import FeatureStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated-rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "check.json")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": cpu_info(), "load_before": os.getloadavg(), "datasets": {}}
    for name in DATASETS:
        store = original_store(name)
        with FeatureStore(store) as fs:
            X, y = fs.load()
            groups, paths, label_names = fs.groups, fs.paths, fs.label_names
            signatures, split = fs.signatures, fs.split
        copies, sources = copies_store(name, paths, y, label_names)
        with FeatureStore(copies) as fs:
            copy_signatures = fs.signatures
        all_groups = np.concatenate([groups, len(X) + np.arange(len(copy_signatures))
                                     + groups.max() + 1])
        codes = np.unique(split, return_inverse=True)[1].astype(np.uint8)
        result["datasets"][name] = {
            "rows": len(X), "copies": len(copy_signatures),
            "grouping": grouping_figures(np.vstack([signatures, copy_signatures]),
                                         all_groups, len(X), sources),
            "splits": split_agreement(paths, groups, codes, signatures),
            "labels": label_figures(X, y, groups),
            "unmodified": check_figures(store)}
        if name == DATASETS[0]:
            with FeatureStore(original_store(DATASETS[1])) as fs:
                more = fs.signatures
            result["search"] = search_figures(X, np.vstack([signatures, more]),
                                              args.simulated_rows)
    result["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(describe(result["machine"]))
    for name, figures in result["datasets"].items():
        print(f"\n{name}: {figures['rows']} images, {figures['copies']} planted copies")
        print("threshold  copies-with-source  others-grouped  real-duplicates")
        for f in figures["grouping"].values():
            print(f"{f['threshold']:9}  {f['copies_with_source']:12.1%}"
                  f"  {f['others_grouped']:8.2%} ({f['others_grouped_count']})"
                  f"  {f['real_duplicates_grouped_count']:>6}")
        print(f"splits at {figures['splits']['sizes']}: "
              f"{figures['splits']['rows_in_another_split']} rows in another split")
        for rate, f in figures["labels"].items():
            print(f"labels flipped {float(rate):.0%}: recall in top 2x {f['recall_top_2x']:.1%}"
                  f" ({f['flipped']} flipped, {f['flagged']} flagged, suggested label right "
                  f"{f['suggested_label_right']:.0%}, {f['seconds']}s)")
        print(f"unmodified: {figures['unmodified']['counts']}")
    print("\nrows  search  seconds  cpu seconds  peak MB beyond input")
    for f in result["search"].values():
        print(f"{f['rows']:>6} {f['search']:>12} {f['seconds']:>8} {f['cpu_seconds']:>11}"
              f" {f['peak_mb_beyond_input']:>8}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
