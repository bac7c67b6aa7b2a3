"""``tlearn check``: what is wrong with a dataset, found in its feature store.

Label issues (:mod:`classifiers.label_issues`), near-duplicates and the leaks among them
(pairs in different splits), outliers and class balance. Reads the store only; the
one file it may write is the issues CSV it is asked for.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifiers.label_issues import find_label_issues
from features.errors import UserInputError
from features.integrity import atomic_write_text, check_output_path
from features.neighbours import (
    FEATURES_ONLY_THRESHOLD,
    join_near_duplicates,
    near_duplicate_pairs,
    scan_neighbours,
)
from features.store import FeatureStore
from pipeline.datasets import ISSUE_COLUMNS

#: Kinds of finding, in the order they are listed.
ISSUES = ("leak", "label", "near_duplicate", "outlier")
#: Neighbours of the outlier score: an image's mean distance to its k nearest.
NEIGHBOURS = 10
#: Robust z-score (median and MAD of the neighbour distances) from which an image is an
#: outlier: far from every class, as off-topic or broken photos are.
OUTLIER_Z = 4.0


@dataclass(frozen=True)
class Finding:
    """One row of issues.csv.

    ``score``: higher means more likely a real problem (label: how improbable the given
    label is, ``1 - p(given)``; near_duplicate and leak: the centred
    cosine of the pair; outlier: robust z-score of the distance to the nearest images).
    """

    path: str
    issue: str
    score: float
    given_label: str
    suggested_label: str = ""
    related_path: str = ""
    split: str = ""


@dataclass
class CheckReport:
    """What :func:`check_store` found."""

    store: Path
    rows: int
    findings: list[Finding]
    class_counts: dict[str, int]
    mixed_label_groups: int
    split_counts: dict[str, int] = field(default_factory=dict)

    @property
    def imbalance_ratio(self) -> float:
        """Images of the largest class per image of the smallest."""
        counts = [c for c in self.class_counts.values() if c]
        return max(counts) / min(counts) if counts else 0.0

    def counts(self) -> dict[str, int]:
        """Findings of each kind (every kind, zeros included)."""
        return {issue: sum(f.issue == issue for f in self.findings) for issue in ISSUES}

    def flagged_paths(self) -> set[str]:
        """Images a finding names (leaks: both images of the pair)."""
        out = {f.path for f in self.findings}
        out |= {f.related_path for f in self.findings if f.issue == "leak"}
        return out

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(ISSUE_COLUMNS)
        for f in self.findings:
            writer.writerow([f.path, f.issue, f"{f.score:.4f}", f.given_label, f.suggested_label,
                             f.related_path, f.split])
        return buffer.getvalue()


def write_issues_csv(report: CheckReport, out: str | Path) -> Path:
    """Write ``report``'s findings to ``out`` atomically.

    Refuses to replace a file that is not an issues CSV tlearn wrote.
    """
    out = Path(out)
    check_output_path(out)
    if out.exists():
        try:
            with out.open(encoding="utf-8") as f:
                header = f.readline().strip()
        except (OSError, UnicodeDecodeError):
            header = ""
        if header != ",".join(ISSUE_COLUMNS):
            raise UserInputError(f"{out} exists and is not an issues CSV of 'tlearn check'; "
                                 "choose another --out (it is left as it is)")
    return atomic_write_text(out, report.to_csv())


def check_store(store: str | Path, *, neighbours: int = NEIGHBOURS, folds: int = 5,
                seed: int = 0) -> CheckReport:
    """Find label issues, near-duplicates, leaks, outliers and class imbalance in ``store``.

    Raises
    ------
    UserInputError
        A store that is not one, or whose images carry fewer than two labels.
    """
    store = Path(store)
    with FeatureStore(store) as fs:
        names = fs.label_names
        X, y = fs.load()
        if len(names) < 2 or len(np.unique(y)) < 2:
            raise UserInputError(
                f"{store} holds images of {len(np.unique(y))} class(es): checking labels needs "
                "a store extracted from a labelled dataset of at least two classes "
                "(tlearn extract DATA, one sub-folder per class)")
        paths, split, groups = fs.paths, fs.split, fs.groups
        signatures = fs.signatures
        split_counts = fs.split_counts()
    first, second, similarity, knn = _near_duplicates(X, signatures, neighbours)
    findings: list[Finding] = []
    for a, b, sim in zip(first, second, similarity, strict=True):
        other = names[y[a]] if y[a] != y[b] else ""
        findings.append(Finding(paths[b], "leak" if split[a] != split[b] else "near_duplicate",
                                float(sim), names[y[b]], other, paths[a], split[b]))
    issues = find_label_issues(X, y, groups, seed=seed)
    for row, score, suggested in zip(issues.rows, issues.score, issues.suggested, strict=True):
        findings.append(Finding(paths[row], "label", float(score), names[y[row]],
                                names[suggested], "", split[row]))
    findings += _outliers(knn, paths, y, names, split)
    order = {issue: i for i, issue in enumerate(ISSUES)}
    findings.sort(key=lambda f: (order[f.issue], -f.score, f.path))
    joined = join_near_duplicates(first, second, groups,
                                  np.zeros(len(y), dtype=np.uint8)).groups
    # groups (identical files, augmented copies, near-duplicates) under two labels
    _, member = np.unique(joined, return_inverse=True)
    labelled = np.unique(np.stack([member, y]), axis=1)[0]
    mixed = int((np.bincount(labelled) > 1).sum())
    counts = np.bincount(y, minlength=len(names))
    return CheckReport(store, len(y), findings,
                       {n: int(c) for n, c in zip(names, counts, strict=True)}, mixed,
                       split_counts)


def _near_duplicates(X: np.ndarray, signatures: np.ndarray | None, neighbours: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs (first, second, similarity) and each row's nearest distances.

    The rule extraction groups by (pixels); rows without a signature (all of a store of
    an older tlearn, or those an older Ray engine wrote as zeros) are paired by their
    features alone, at :data:`features.neighbours.FEATURES_ONLY_THRESHOLD`.
    """
    known = (np.zeros(len(X), dtype=bool) if signatures is None
             else np.any(signatures != 0, axis=1))
    scan = scan_neighbours(X, 2.0 if known.all() else FEATURES_ONLY_THRESHOLD, k=neighbours)
    unknown = ~known[scan.first] | ~known[scan.second]
    parts = [(scan.first[unknown], scan.second[unknown], scan.similarity[unknown])]
    if known.any():
        parts.append(near_duplicate_pairs(signatures))
    first, second, similarity = (np.concatenate(p) for p in zip(*parts, strict=True))
    return first, second, similarity, scan.knn


def _outliers(knn: np.ndarray, paths: list[str], y: np.ndarray, names: list[str],
              split: np.ndarray) -> list[Finding]:
    if knn.shape[1] == 0:
        return []
    distance = knn.mean(axis=1)
    median = np.median(distance)
    spread = 1.4826 * np.median(np.abs(distance - median))
    z = (distance - median) / max(spread, 1e-6)
    return [Finding(paths[i], "outlier", float(z[i]), names[y[i]], "", "", split[i])
            for i in np.flatnonzero(z >= OUTLIER_Z)]
