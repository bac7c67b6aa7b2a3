"""Which rows of a feature matrix are near-identical, and how far each row is from the rest.

Similarity is the cosine of the features after subtracting their mean: CNN features
are mostly positive, so raw cosines of unrelated photos sit high (0.5-0.7 for
EfficientNet-Lite0) and the centred cosine separates copies from look-alikes by a
wider margin (docs/guide/check.md, bench/check.py). The search is exact: matrix
products of row blocks by column blocks, keeping only the pairs above the threshold
and each row's ``k`` best neighbours, so memory is a few blocks whatever the row
count (about 150 MB at the default block sizes and 1,280 features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Centred cosine of the features at or above which two images are near-duplicate
#: candidates; they are near-duplicates when their pixel signatures also agree (at
#: least :data:`SIGNATURE_THRESHOLD`). Rows without signatures (stores of an older
#: tlearn, the Ray engine) need :data:`FEATURES_ONLY_THRESHOLD`. Measured on
#: EfficientNet-Lite0 features of animals and flowers5 with planted resized (0.5-0.8x),
#: re-encoded (JPEG 50-70) and cropped (3-8 %) copies (bench/check.py). Signatures are
#: compared at :data:`COMPARED_SIDE` squared: a crop of a few percent shifts the picture
#: by about one 16 x 16 cell, which halves a cell's agreement but not a coarser one's
#: (planted copies grouped with their source on animals: 83 % at 16 x 16, 97 % at 8 x 8).
NEAR_DUPLICATE_THRESHOLD = 0.6
SIGNATURE_THRESHOLD = 0.88
FEATURES_ONLY_THRESHOLD = 0.9
#: Side of the pixel signature, and its length (RGB).
SIGNATURE_SIDE = 16
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE * 3
COMPARED_SIDE = 8
#: Everything that decides which rows a store groups, for its settings key: a store
#: grouped by another rule is another store.
GROUPING_RULE = {"signature": SIGNATURE_THRESHOLD, "features_only": FEATURES_ONLY_THRESHOLD,
                 "compared_side": COMPARED_SIDE}
_ROW_BLOCK = 2048
_COLUMN_BLOCK = 8192


@dataclass(frozen=True)
class NeighbourScan:
    """Pairs of near-identical rows and each row's nearest neighbours.

    Attributes
    ----------
    first, second : numpy.ndarray of int64
        Row pairs (``first < second``) whose similarity is at least the threshold.
    similarity : numpy.ndarray of float32
        Their centred cosine.
    knn : numpy.ndarray of float32, shape (rows, k)
        The Euclidean distances (of the centred features) of each row to its ``k``
        nearest other rows, nearest first (no columns when ``k`` is 0).
    """

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray
    knn: np.ndarray


def pixel_signatures(x: np.ndarray) -> np.ndarray:
    """Each image of a batch as :data:`SIGNATURE_SIDE` squared pixels, centred and scaled.

    ``x`` is the batch the network sees, (n, size, size, 3), after the backbone's
    preprocessing (a per-channel affine map of the pixels): block averages, minus each
    channel's mean, divided by their norm, so that a brighter, resized or re-encoded copy
    keeps nearly the same signature. float16, (n, :data:`SIGNATURE_SIZE`).
    """
    x = np.asarray(x, dtype=np.float32)
    n, size = x.shape[0], x.shape[1]
    step = max(1, size // SIGNATURE_SIDE)
    if size < SIGNATURE_SIDE:  # tiny inputs (tests): repeat pixels up to the side
        x = np.repeat(np.repeat(x, -(-SIGNATURE_SIDE // size), axis=1),
                      -(-SIGNATURE_SIDE // size), axis=2)
        step = x.shape[1] // SIGNATURE_SIDE
    side = step * SIGNATURE_SIDE
    x = x[:, :side, :side].reshape(n, SIGNATURE_SIDE, step, SIGNATURE_SIDE, step, 3)
    s = x.mean(axis=(2, 4))
    # each channel minus its mean: what is left is the picture, not its colour cast, so
    # photos of one colourful class (flowers of one kind) do not look alike for it
    s = (s - s.mean(axis=(1, 2), keepdims=True)).reshape(n, -1)
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-6)
    return s.astype(np.float16)


def _centre_and_norms(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros(X.shape[1], dtype=np.float64)
    for start in range(0, len(X), _ROW_BLOCK):
        mean += X[start:start + _ROW_BLOCK].sum(axis=0, dtype=np.float64)
    mean = (mean / max(1, len(X))).astype(np.float32)
    norms = np.empty(len(X), dtype=np.float32)
    for start in range(0, len(X), _ROW_BLOCK):
        norms[start:start + _ROW_BLOCK] = np.linalg.norm(X[start:start + _ROW_BLOCK] - mean,
                                                         axis=1)
    return mean, np.maximum(norms, np.float32(1e-12))


def _merge_top(best: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    both = np.concatenate([best, candidates], axis=1)
    if both.shape[1] > k:
        both = -np.partition(-both, k - 1, axis=1)[:, :k]
    return both


def scan_neighbours(X: np.ndarray, threshold: float = NEAR_DUPLICATE_THRESHOLD, *, k: int = 0,
                    signatures: np.ndarray | None = None,
                    signature_threshold: float = SIGNATURE_THRESHOLD,
                    features_only_threshold: float = FEATURES_ONLY_THRESHOLD,
                    row_block: int | None = None, column_block: int | None = None
                    ) -> NeighbourScan:
    """Exact search of ``X``'s rows for near-identical pairs and nearest neighbours.

    Parameters
    ----------
    X : numpy.ndarray, shape (rows, features)
        Any array-like indexable by row slices (read a block at a time, never copied whole).
    threshold : float
        Centred cosine at or above which a pair is returned; with ``signatures``, only
        if its signatures' cosine is at least ``signature_threshold`` too (or, where a
        row's signature is not known, all zeros, its features' at least
        ``features_only_threshold``).
    signatures : numpy.ndarray, shape (rows, SIGNATURE_SIZE), optional
        :func:`pixel_signatures` of the rows. Without them every pair needs
        ``features_only_threshold``.
    k : int, default=0
        Neighbours kept per row for :attr:`NeighbourScan.knn` (0: none).
    row_block, column_block : int, optional
        Rows per side of one matrix product; memory is about
        ``4 * row_block * column_block`` bytes plus the blocks' features. By default
        at most 2,048 by 8,192, fewer for wide features (``flatten``) so that a block's
        features stay within 64 and 128 MB.
    """
    n, dim = X.shape
    row_block = row_block or int(np.clip((64 << 20) // (4 * dim), 256, _ROW_BLOCK))
    column_block = column_block or int(np.clip((128 << 20) // (4 * dim), row_block,
                                               _COLUMN_BLOCK))
    mean, norms = _centre_and_norms(X)
    k = min(k, max(0, n - 1))
    knn = np.full((n, k), -np.inf, dtype=np.float32)
    firsts, seconds, sims = [], [], []
    for r0 in range(0, n, row_block):
        r1 = min(n, r0 + row_block)
        rows = (np.asarray(X[r0:r1], dtype=np.float32) - mean) / norms[r0:r1, None]
        # Only blocks on or right of the diagonal: each pair is computed once.
        for c0 in range(r0, n, column_block):
            c1 = min(n, c0 + column_block)
            cols = rows if (c0, c1) == (r0, r1) else \
                (np.asarray(X[c0:c1], dtype=np.float32) - mean) / norms[c0:c1, None]
            sim = rows @ cols.T
            if c0 == r0:  # the diagonal block: a row is not its own neighbour or copy
                np.fill_diagonal(sim[:, :min(r1, c1) - r0], -np.inf)
                below = np.tril_indices(r1 - r0, -1, m=c1 - c0)
                lower = sim[below].copy()  # the pairs the upper triangle already holds
                sim[below] = -np.inf
            i, j = np.nonzero(sim >= min(threshold, features_only_threshold))
            keep = _confirmed(sim[i, j], i + r0, j + c0, signatures, threshold,
                              signature_threshold, features_only_threshold)
            firsts.append(i[keep] + r0)
            seconds.append(j[keep] + c0)
            sims.append(sim[i[keep], j[keep]])
            if k:
                if c0 == r0:
                    sim[below] = lower
                # Euclidean distance of the centred rows (the diagonal's -inf: +inf), as
                # closeness: an odd photo is far also by its features' size, not only angle
                close = -np.sqrt(np.maximum(
                    norms[r0:r1, None] ** 2 + norms[None, c0:c1] ** 2
                    - 2 * sim * (norms[r0:r1, None] * norms[None, c0:c1]), 0))
                knn[r0:r1] = _merge_top(knn[r0:r1], _top(close, k, axis=1), k)
                if c0 != r0:
                    knn[c0:c1] = _merge_top(knn[c0:c1], _top(close, k, axis=0).T, k)
                elif c1 > r1:  # columns beyond the rows: their own side of the block
                    knn[r1:c1] = _merge_top(knn[r1:c1], _top(close[:, r1 - c0:], k, 0).T, k)
    first = np.concatenate(firsts).astype(np.int64) if firsts else np.empty(0, np.int64)
    second = np.concatenate(seconds).astype(np.int64) if seconds else np.empty(0, np.int64)
    similarity = np.concatenate(sims).astype(np.float32) if sims else np.empty(0, np.float32)
    return NeighbourScan(first, second, similarity, -np.sort(knn, axis=1)[:, ::-1])


def _confirmed(sim: np.ndarray, first: np.ndarray, second: np.ndarray,
               signatures: np.ndarray | None, threshold: float, signature_threshold: float,
               features_only_threshold: float) -> np.ndarray:
    """Which candidate pairs are near-duplicates (see :func:`scan_neighbours`)."""
    if signatures is None:
        return sim >= features_only_threshold
    a = _coarser(signatures[first])
    b = _coarser(signatures[second])
    agree = np.einsum("ij,ij->i", a, b)
    known = a.any(axis=1) & b.any(axis=1)
    return np.where(known, (sim >= threshold) & (agree >= signature_threshold),
                    sim >= features_only_threshold)


def _coarser(signatures: np.ndarray) -> np.ndarray:
    """Signatures averaged to :data:`COMPARED_SIDE` squared cells and scaled again."""
    s = np.asarray(signatures, dtype=np.float32)
    step = SIGNATURE_SIDE // COMPARED_SIDE
    s = s.reshape(len(s), COMPARED_SIDE, step, COMPARED_SIDE, step, 3).mean(axis=(2, 4))
    # still centred: each channel's mean is unchanged by averaging (no pairs: no rows)
    s = s.reshape(len(s), COMPARED_SIDE * COMPARED_SIDE * 3)
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-6)


def _top(sim: np.ndarray, k: int, axis: int) -> np.ndarray:
    """The ``k`` largest values along ``axis`` (unsorted), rows along the other axis."""
    if sim.shape[axis] <= k:
        return sim
    part = -np.partition(-sim, k - 1, axis=axis)
    return part[:, :k] if axis == 1 else part[:k, :]


@dataclass(frozen=True)
class NearDuplicateGrouping:
    """Groups and split after near-identical rows were joined.

    Attributes
    ----------
    groups : numpy.ndarray of int64
        Group id of each row: the smallest id of the groups it was joined with.
    split : numpy.ndarray of uint8
        Split code of each row; a joined group takes the split most of its rows had
        (ties: the split of its first row), so no group straddles two splits.
    near_duplicate_groups : int
        Groups holding a near-identical pair (counted alike when joined again).
    moved : int
        Rows whose split changed.
    """

    groups: np.ndarray
    split: np.ndarray
    near_duplicate_groups: int
    moved: int


def join_near_duplicates(first: np.ndarray, second: np.ndarray, groups: np.ndarray,
                         split: np.ndarray) -> NearDuplicateGrouping:
    """Join the groups of every pair of rows (``first[i]``, ``second[i]``).

    Idempotent: joining again with the groups and split it returned changes nothing,
    so an interrupted run that recorded part of them ends with the same result.
    """
    groups = np.asarray(groups, dtype=np.int64)
    split = np.asarray(split, dtype=np.uint8)
    n = len(groups)
    # rows of one group are linked through the first row holding that group id
    _, first_row, member = np.unique(groups, return_index=True, return_inverse=True)
    rows = np.concatenate([np.arange(n), first])
    cols = np.concatenate([first_row[member], second])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    new_id = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(new_id, comp, groups)
    counts = np.zeros((n_comp, int(split.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (comp, split), 1)
    leader = np.full(n_comp, n, dtype=np.int64)
    np.minimum.at(leader, comp, np.arange(n))
    chosen = counts.argmax(axis=1).astype(np.uint8)
    lead_split = split[leader]
    ties = counts[np.arange(n_comp), lead_split] == counts.max(axis=1)
    chosen[ties] = lead_split[ties]
    new_split = chosen[comp]
    return NearDuplicateGrouping(new_id[comp], new_split, len(np.unique(comp[first])),
                                 int((new_split != split).sum()))
