"""Benchmark the "unknown" scores: how well each flags images of no trained class.

EfficientNet-Lite0 features (ImageNet weights, global average pooling) of subsets of
``../shared/datasets``: ``--per-class`` images of each of ``animals``' cats and dogs and of
``flowers5``'s five classes, and as many pandas (extraction on a shared 2-core machine runs
at ~10-25 images/s, hence subsets). Two cases:

* ``animals``: a model of cats and dogs, shown its held-out cats and dogs (in
  distribution) against the pandas and the flowers (out of distribution);
* ``flowers5``: a model of the five flowers, shown its held-out flowers against the cats,
  dogs and pandas.

Each case splits its classes 75/25 (stratified, seed 0), fits ``FeatureClassifier``
(logreg) on the 75 % and computes each score on the held-out 25 % and on the strangers:

* ``top_probability`` (baseline): 1 - the highest calibrated probability;
* ``mahalanobis_ledoit_wolf``: the class-conditional Mahalanobis distance (smallest over
  the classes) with one full covariance shared by the classes, shrunk by Ledoit-Wolf
  (features x features values: too large to keep for wide features);
* ``mahalanobis_lowrank_<r>``: the model's score (:mod:`classifiers.novelty`), the same
  with the covariance kept as ``r`` principal axes and one variance for the rest, all
  shrunk by the same Ledoit-Wolf rule;
* ``knn``: mean distance to the ``k`` nearest training features (stores every training
  row: the reference a small model must approach, not a candidate);
* ``pca_residual``: the distance of the features from their projection onto the
  principal subspace of the training features (``--components`` axes).

The threshold of each score is the ``coverage`` quantile of its values on the held-out
in-distribution rows (95 %: 5 % of known images are flagged), so that every score is
compared at the same coverage; reported are the share of strangers flagged at that
threshold (overall and per stranger class) and the AUROC of known against strangers.
Then the model's own rule: its threshold fitted on 3 held-out folds of the training split
(never on the held-out rows), with the share of held-out known rows it accepts and of
strangers it flags. Writes
``bench/results/unknown.json`` with the CPU and load, and prints a table.
Run: ``.venv/bin/python bench/unknown.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.machine import cpu_info, describe  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
CACHE = REPO / "artifacts" / "bench"
FOLDERS = {"cats": "animals/cats", "dogs": "animals/dogs", "panda": "animals/panda",
           **{f: f"flowers5/{f}" for f in ("daisy", "dandelion", "rose", "sunflower",
                                          "tulip")}}


def extract(per_class: int) -> dict[str, np.ndarray]:
    """Lite0 features of the first ``per_class`` images (sorted) of every folder, cached."""
    out = CACHE / f"unknown_lite0_{per_class}.npz"
    if out.exists():
        with np.load(out) as data:
            return dict(data)
    from features.factory import create_extractor
    from features.images import is_image_file, load_image

    extractor = create_extractor("efficientnet_lite0")
    feats = {}
    for name, folder in FOLDERS.items():
        files = sorted(p for p in (SHARED / folder).iterdir() if is_image_file(p))[:per_class]
        t0 = time.perf_counter()
        images = np.stack([load_image(p, extractor.spec.input_size) for p in files])
        feats[name] = extractor(images).astype(np.float32)
        print(f"{name}: {len(files)} images, {len(files) / (time.perf_counter() - t0):.1f}/s",
              flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(out, **feats)
    return feats


def scores_of(model, X_train, y_train, X, rank: int, k: int) -> dict[str, np.ndarray]:
    """Every score of rows ``X`` (higher: more unlike the training rows)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.neighbors import NearestNeighbors

    from classifiers.novelty import FeatureDistance

    means = np.stack([X_train[y_train == c].mean(axis=0) for c in np.unique(y_train)])
    pooled = LedoitWolf().fit(X_train - means[np.searchsorted(np.unique(y_train), y_train)])
    precision = pooled.precision_
    lw = np.min([np.einsum("ij,ij->i", (X - m) @ precision, X - m) for m in means], axis=0)
    knn = NearestNeighbors(n_neighbors=k).fit(X_train).kneighbors(X)[0].mean(axis=1)
    centre = X_train.mean(axis=0)
    _, _, axes = np.linalg.svd(X_train - centre, full_matrices=False)
    axes = axes[:rank]
    shifted = X - centre
    residual = np.linalg.norm(shifted - shifted @ axes.T @ axes, axis=1)
    out = {"top_probability": 1.0 - model.predict_proba(X).max(axis=1),
           "mahalanobis_ledoit_wolf": lw, f"knn_{k}": knn, "pca_residual": residual}
    for r in sorted({8, 32, rank}):
        out[f"mahalanobis_lowrank_{r}"] = FeatureDistance.fit(X_train, y_train,
                                                              rank=r).score(X)
    return out


def auroc(known: np.ndarray, strangers: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(strangers))],
                               np.r_[known, strangers]))


def run_case(feats: dict, known: list[str], strangers: list[str], coverage: float,
             rank: int, k: int) -> dict:
    from sklearn.model_selection import train_test_split

    from classifiers import FeatureClassifier
    from classifiers.novelty import fit_unknown_score
    from classifiers.search import stratified_folds

    X = np.concatenate([feats[c] for c in known])
    y = np.concatenate([np.full(len(feats[c]), i) for i, c in enumerate(known)])
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y,
                                                        random_state=0)
    model = FeatureClassifier("logreg").fit(X_train, y_train)
    X_out = np.concatenate([feats[c] for c in strangers])
    of = np.concatenate([np.full(len(feats[c]), c) for c in strangers])
    known_scores = scores_of(model, X_train, y_train, X_test, rank, k)
    stranger_scores = scores_of(model, X_train, y_train, X_out, rank, k)
    table = {}
    for name, inside in known_scores.items():
        outside = stranger_scores[name]
        cut = np.quantile(inside, coverage)
        table[name] = {"flagged_at_coverage": float(np.mean(outside > cut)),
                       "auroc": auroc(inside, outside),
                       "flagged_by_class": {c: float(np.mean(outside[of == c] > cut))
                                            for c in strangers}}
    fitted = fit_unknown_score(X_train, y_train, stratified_folds(y_train, 3, 0),
                               coverage=coverage, rank=rank)
    flagged = fitted.is_unknown(fitted.score(X_out))
    model_rule = {"threshold": fitted.threshold, "rank": len(fitted.distance.axes),
                  "test_accepted": float(np.mean(~fitted.is_unknown(fitted.score(X_test)))),
                  "strangers_flagged": float(np.mean(flagged)),
                  "flagged_by_class": {c: float(np.mean(flagged[of == c])) for c in strangers}}
    return {"known": known, "strangers": strangers, "train_rows": len(X_train),
            "test_rows": len(X_test), "stranger_rows": len(X_out),
            "test_accuracy": float(np.mean(model.predict(X_test) == y_test)),
            "scores": table, "model_threshold": model_rule}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--coverage", type=float, default=0.95)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    feats = extract(args.per_class)
    flowers = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    cases = {"animals": run_case(feats, ["cats", "dogs"], ["panda", *flowers], args.coverage,
                                 args.rank, args.k),
             "flowers5": run_case(feats, flowers, ["cats", "dogs", "panda"], args.coverage,
                                  args.rank, args.k)}
    info = cpu_info()
    result = {"machine": info, "load_average": os.getloadavg(),
              "features": "efficientnet_lite0/imagenet, global average pooling, 1280 values",
              "per_class": args.per_class, "coverage": args.coverage, "rank": args.rank,
              "cases": cases}
    out = REPO / "bench" / "results" / "unknown.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(describe(info))
    for case, r in cases.items():
        print(f"\n{case}: {r['train_rows']} train, {r['test_rows']} known test, "
              f"{r['stranger_rows']} strangers; accuracy {r['test_accuracy']:.3f}")
        print(f"{'score':28} {'flagged @' + format(args.coverage, '.0%'):>12} {'AUROC':>7}")
        for name, s in r["scores"].items():
            print(f"{name:28} {s['flagged_at_coverage']:12.3f} {s['auroc']:7.3f}")
        m = r["model_threshold"]
        print(f"model's threshold (folds of train, rank {m['rank']}): known test accepted "
              f"{m['test_accepted']:.3f}, strangers flagged {m['strangers_flagged']:.3f} ("
              + ", ".join(f"{c} {v:.2f}" for c, v in m["flagged_by_class"].items()) + ")")
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
