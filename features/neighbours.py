"""Which images of a store are near-identical, and how far each row is from the rest.

Near-duplicates (a photo resized, re-encoded, brightened or cropped by a few percent) are
found from the **pixels alone**: each image's signature is its 16 x 16 cell averages,
minus each channel's mean, of unit length, computed from the picture as decoded, before
its resize to a network's input (:func:`features.images.load_images` with ``cells``).
So the grouping, and the split recorded with it, is the same whichever
backbone, input size or pooling a store uses: two stores of one folder are tested on the
same images. Two images are near-duplicates when one, cut to one of a few windows of
3-8 % less width and height at several offsets, looks like the other (the cosine of
their 8 x 8 cells at least :data:`NEAR_DUPLICATE_THRESHOLD`). Only each image's closest
:data:`CANDIDATES_PER_ROW` images by whole-picture cosine (at least
:data:`CANDIDATE_THRESHOLD`) are compared that way, which keeps time and memory bounded.

Features still give each row's nearest neighbours (outliers) and, for stores of an older
tlearn without signatures, the pairs of near-identical features
(:func:`scan_neighbours`). Both searches are exact: matrix products of row blocks by
column blocks, so memory is a few blocks whatever the row count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Side of the pixel signature, and its length (RGB).
SIGNATURE_SIDE = 16
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE * 3
#: Side of the cells two signatures are compared at: a crop of a few percent shifts the
#: picture by about one 16 x 16 cell, which an 8 x 8 comparison of aligned windows absorbs.
COMPARED_SIDE = 8
#: Cosine of the best-aligned windows at or above which two images are near-duplicates;
#: whole-picture cosine of the 8 x 8 cells from which a pair is compared at all, and how
#: many such candidates each image keeps (its closest). Measured on animals and flowers5
#: with planted copies (bench/check.py): every copy (resized 0.5-0.8x, JPEG 50-70, 3-8 %
#: crops) scored at least 0.98 with its source, and at 0.97 no other animals photo and
#: 0.3 % of the flowers5 photos were joined with another.
NEAR_DUPLICATE_THRESHOLD = 0.97
CANDIDATE_THRESHOLD = 0.6
CANDIDATES_PER_ROW = 10
#: Windows tried: the share of width and height cut (each with offsets along both
#: sides, in :data:`CROP_OFFSETS` steps from none to all of it on one side).
CROPS = (0.03, 0.055, 0.08)
CROP_OFFSETS = 3
#: Centred cosine of the features at or above which two rows of a store without pixel
#: signatures (an older tlearn's) are reported as near-duplicates by ``tlearn check``.
FEATURES_ONLY_THRESHOLD = 0.9
#: Everything that decides which rows a store groups, for its settings key: a store
#: grouped by another rule is another store.
#: What a signature is, for every store's settings key (recorded whether or not the
#: store groups near-duplicates): a store with signatures of another kind is another store.
SIGNATURE_RULE = {"side": SIGNATURE_SIDE, "of": "box averages of the picture as decoded"}
GROUPING_RULE = {"pixels": NEAR_DUPLICATE_THRESHOLD, "candidate": CANDIDATE_THRESHOLD,
                 "candidates_per_row": CANDIDATES_PER_ROW, "crops": list(CROPS),
                 "crop_offsets": CROP_OFFSETS, "compared_side": COMPARED_SIDE}
_ROW_BLOCK = 2048
_COLUMN_BLOCK = 8192
_PAIR_CHUNK = 2048


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


@lru_cache(maxsize=64)
def _area_weights(cells_in: int, start: float, length: float, cells_out: int) -> np.ndarray:
    """(cells_out, cells_in) weights averaging the window ``[start, start + length)`` of
    an axis of ``cells_in`` unit cells into ``cells_out`` equal cells, by area."""
    edges = start + length * np.arange(cells_out + 1) / cells_out
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(cells_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    overlap /= np.maximum(overlap.sum(axis=1, keepdims=True), 1e-12)
    weights = overlap.astype(np.float32)
    weights.setflags(write=False)  # cached: shared by every caller
    return weights


def _normalised(cells: np.ndarray) -> np.ndarray:
    """(..., 3, side, side) cell averages, each channel minus its mean, of unit length,
    as (..., side * side * 3) float32 (channels last)."""
    # each channel minus its mean: what is left is the picture, not its colour cast or
    # brightness, so photos of one colourful class do not look alike for it
    cells = cells - cells.mean(axis=(-2, -1), keepdims=True)
    flat = np.moveaxis(cells, -3, -1).reshape(*cells.shape[:-3], -1)
    return flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-6)


def pixel_signatures(images: np.ndarray) -> np.ndarray:
    """Each image of a batch as :data:`SIGNATURE_SIDE` squared cells.

    ``images`` are RGB pixels, (n, height, width, 3); extraction passes the box averages
    of each picture as decoded, before its resize to a network's input
    (:func:`features.images.load_images` with ``cells``), so the signature of a file
    does not depend on the network. Cell averages by area, minus each channel's mean,
    divided by their norm, so that a brighter, resized or re-encoded copy keeps nearly
    the same signature. float16, (n, :data:`SIGNATURE_SIZE`).
    """
    x = np.moveaxis(np.asarray(images, dtype=np.float32), -1, 1)  # (n, 3, h, w)
    rows = _area_weights(x.shape[2], 0.0, float(x.shape[2]), SIGNATURE_SIDE)
    cols = _area_weights(x.shape[3], 0.0, float(x.shape[3]), SIGNATURE_SIDE)
    return _normalised(rows @ x @ cols.T).astype(np.float16)


@lru_cache(maxsize=1)
def _window_weights() -> tuple[np.ndarray, np.ndarray]:
    """Row and column weights of every window (whole picture first), each
    (windows, COMPARED_SIDE, SIGNATURE_SIDE)."""
    specs = [(0.0, 0.0, 0.0)] + [(crop, left, top) for crop in CROPS
                                 for left in np.linspace(0, crop, CROP_OFFSETS)
                                 for top in np.linspace(0, crop, CROP_OFFSETS)]
    side = SIGNATURE_SIDE
    rows = np.stack([_area_weights(side, top * side, (1 - crop) * side, COMPARED_SIDE)
                     for crop, _, top in specs])
    cols = np.stack([_area_weights(side, left * side, (1 - crop) * side, COMPARED_SIDE)
                     for crop, left, _ in specs])
    return rows, cols


def _windows(signatures: np.ndarray) -> np.ndarray:
    """Every window of :data:`CROPS` of each signature at :data:`COMPARED_SIDE` squared:
    (n, windows, COMPARED_SIDE ** 2 * 3), the whole picture first."""
    rows, cols = _window_weights()
    cells = np.asarray(signatures, dtype=np.float32).reshape(
        len(signatures), 1, SIGNATURE_SIDE, SIGNATURE_SIDE, 3)
    cells = np.moveaxis(cells, -1, 1)  # (n, 3, 1, side, side)
    out = rows @ cells @ np.swapaxes(cols, 1, 2)  # (n, 3, windows, compared, compared)
    return _normalised(np.moveaxis(out, 1, 2))


def near_duplicate_pairs(signatures: np.ndarray, *,
                         threshold: float = NEAR_DUPLICATE_THRESHOLD,
                         candidate: float = CANDIDATE_THRESHOLD,
                         per_row: int = CANDIDATES_PER_ROW, row_block: int = 1024,
                         column_block: int = 4096
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate images by their pixel signatures (see the module's rule).

    Parameters
    ----------
    signatures : numpy.ndarray, shape (rows, SIGNATURE_SIZE)
        :func:`pixel_signatures` of the rows; rows of zeros (not known) are never paired.
    threshold : float
        Cosine of the best-aligned 8 x 8 windows from which a pair is returned.
    candidate : float
        Whole-picture 8 x 8 cosine from which a pair is compared at all.
    per_row : int
        Candidates each row keeps (its closest above ``candidate``).
    row_block, column_block : int
        Rows per side of one matrix product.

    Returns
    -------
    first, second, similarity : numpy.ndarray
        Pairs (``first < second``) and their aligned cosine, sorted by pair.
    """
    n = len(signatures)
    whole = np.empty((n, COMPARED_SIDE * COMPARED_SIDE * 3), dtype=np.float32)
    for start in range(0, n, row_block):
        whole[start:start + row_block] = _whole(signatures[start:start + row_block])
    known = np.any(np.asarray(signatures) != 0, axis=1)  # zeros: not known
    best = np.full((n, per_row), -np.inf, dtype=np.float32)
    best_at = np.zeros((n, per_row), dtype=np.int64)
    for r0 in range(0, n, row_block):
        r1 = min(n, r0 + row_block)
        for c0 in range(r0, n, column_block):  # each pair once: on or right of the diagonal
            c1 = min(n, c0 + column_block)
            sim = whole[r0:r1] @ whole[c0:c1].T
            if c0 < r1:  # a row is not its own candidate, and a pair is kept once: i < j
                sim[np.arange(r0, r1)[:, None] >= np.arange(c0, c1)[None, :]] = -np.inf
            sim[~known[r0:r1]] = -np.inf
            sim[:, ~known[c0:c1]] = -np.inf
            _keep_block(best, best_at, sim, r0, c0, candidate)
    rows, slots = np.nonzero(np.isfinite(best))
    pairs = np.unique(np.sort(np.stack([rows, best_at[rows, slots]], axis=1), axis=1), axis=0)
    firsts, seconds, sims = [], [], []
    for start in range(0, len(pairs), _PAIR_CHUNK):
        a, b = pairs[start:start + _PAIR_CHUNK].T
        aligned = _aligned(signatures, a, b)
        keep = aligned >= threshold
        firsts.append(a[keep])
        seconds.append(b[keep])
        sims.append(aligned[keep])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return (np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64),
            np.concatenate(sims).astype(np.float32))


def _keep_block(best: np.ndarray, best_at: np.ndarray, sim: np.ndarray, r0: int, c0: int,
                candidate: float) -> None:
    """Merge the candidates of one block of similarities (rows ``r0...``, columns
    ``c0...``) into the rows' and the columns' best."""
    k = best.shape[1]
    i, j = np.nonzero(sim >= candidate)
    if len(i) > 4 * k * sum(sim.shape):
        # a folder of look-alikes (scans, product shots): only each row's and each
        # column's k best of the block can be among its k best at all
        rows = np.argpartition(-sim, k - 1, axis=1)[:, :k] if sim.shape[1] > k else \
            np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
        cols = np.argpartition(-sim, k - 1, axis=0)[:k] if sim.shape[0] > k else \
            np.broadcast_to(np.arange(sim.shape[0])[:, None], sim.shape)
        i = np.concatenate([np.repeat(np.arange(sim.shape[0]), rows.shape[1]), cols.ravel()])
        j = np.concatenate([rows.ravel(), np.tile(np.arange(sim.shape[1]), cols.shape[0])])
        pairs = np.unique(np.stack([i, j], axis=1), axis=0)
        i, j = pairs[:, 0], pairs[:, 1]
        keep = sim[i, j] >= candidate
        i, j = i[keep], j[keep]
    values = sim[i, j]
    _keep_best(best, best_at, np.concatenate([i + r0, j + c0]),
               np.concatenate([j + c0, i + r0]), np.concatenate([values, values]))


def _keep_best(best: np.ndarray, best_at: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               values: np.ndarray) -> None:
    """Merge the entries (``rows``, ``cols``, ``values``) into each row's best ones so far
    (``best``: their values, in no order, -inf where none; ``best_at``: their columns)."""
    if not len(rows):
        return
    k = best.shape[1]
    touched = np.unique(rows)
    r = np.concatenate([np.repeat(touched, k), rows])
    c = np.concatenate([best_at[touched].ravel(), cols])
    v = np.concatenate([best[touched].ravel(), values])
    order = np.lexsort((-v, r))
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)
    keep = rank < k
    best[touched] = -np.inf
    best[r[keep], rank[keep]] = v[keep]
    best_at[r[keep], rank[keep]] = c[keep]


def _whole(signatures: np.ndarray) -> np.ndarray:
    """Each signature as :data:`COMPARED_SIDE` squared cells (the whole picture)."""
    cells = np.asarray(signatures, dtype=np.float32).reshape(
        len(signatures), SIGNATURE_SIDE, SIGNATURE_SIDE, 3)
    weights = _area_weights(SIGNATURE_SIDE, 0.0, float(SIGNATURE_SIDE), COMPARED_SIDE)
    return _normalised(weights @ np.moveaxis(cells, -1, 1) @ weights.T)


def _aligned(signatures: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each pair's best-aligned windows: one image whole against every
    window of the other, both ways round (each image's windows computed once)."""
    rows, where = np.unique(np.concatenate([a, b]), return_inverse=True)
    windows = _windows(signatures[rows])
    wa, wb = windows[where[:len(a)]], windows[where[len(a):]]
    one = np.einsum("pk,pwk->pw", wa[:, 0], wb).max(axis=1)
    other = np.einsum("pk,pwk->pw", wb[:, 0], wa).max(axis=1)
    return np.maximum(one, other)


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


def scan_neighbours(X: np.ndarray, threshold: float = FEATURES_ONLY_THRESHOLD, *, k: int = 0,
                    row_block: int | None = None, column_block: int | None = None
                    ) -> NeighbourScan:
    """Exact search of ``X``'s rows for near-identical pairs and nearest neighbours.

    Similarity is the cosine of the features after subtracting their mean: CNN features
    are mostly positive, so raw cosines of unrelated photos sit high.

    Parameters
    ----------
    X : numpy.ndarray, shape (rows, features)
        Any array-like indexable by row slices (read a block at a time, never copied whole).
    threshold : float
        Centred cosine at or above which a pair is returned (> 1: no pairs).
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
            i, j = np.nonzero(sim >= threshold)
            firsts.append(i + r0)
            seconds.append(j + c0)
            sims.append(sim[i, j])
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
