"""The blocked near-duplicate search against a brute-force one, and joining groups."""

from __future__ import annotations

import numpy as np

from features.neighbours import (
    join_near_duplicates,
    near_duplicate_pairs,
    pixel_signatures,
    scan_neighbours,
)


def _brute(X: np.ndarray, threshold: float, k: int):
    Z = X - X.mean(axis=0)
    norms = np.linalg.norm(Z, axis=1)
    S = (Z / norms[:, None]) @ (Z / norms[:, None]).T
    i, j = np.triu_indices(len(X), 1)
    keep = S[i, j] >= threshold
    D = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    return set(zip(i[keep].tolist(), j[keep].tolist(), strict=True)), np.sort(D, axis=1)[:, :k]


def test_blocked_search_finds_exactly_the_pairs_and_neighbours_of_the_full_matrix():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 24)).astype(np.float32)
    X[250:262] = X[3:15] + 0.05 * rng.normal(size=(12, 24))  # copies across blocks
    pairs, nearest = _brute(X, 0.9, 4)
    # blocks smaller than the rows, and uneven, so that every edge case of the tiling is met
    scan = scan_neighbours(X, 0.9, k=4, row_block=64, column_block=100)
    assert set(zip(scan.first.tolist(), scan.second.tolist(), strict=True)) == pairs
    assert len(pairs) >= 12
    np.testing.assert_allclose(scan.knn, nearest, rtol=1e-4, atol=1e-4)


def test_pixel_signatures_shrug_off_brightness_and_size_but_not_another_picture():
    rng = np.random.default_rng(2)
    small = rng.uniform(0, 200, size=(1, 8, 8, 3))
    photo = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)  # a blocky 64 px picture
    brighter = photo * 1.1 + 20
    other = np.repeat(np.repeat(rng.uniform(0, 200, size=(1, 8, 8, 3)), 8, axis=1), 8, axis=2)
    a, b, c = (pixel_signatures(x).astype(np.float32)[0] for x in (photo, brighter, other))
    assert a @ b > 0.99 and a @ c < 0.5
    half = pixel_signatures(photo[:, ::2, ::2]).astype(np.float32)[0]  # the same at 32 px
    assert a @ half > 0.99


def test_joining_keeps_groups_whole_in_the_majority_split_and_is_idempotent():
    groups = np.array([0, 0, 2, 3, 4, 5])
    split = np.array([0, 0, 1, 1, 1, 0], dtype=np.uint8)
    joined = join_near_duplicates(np.array([1, 3]), np.array([2, 5]), groups, split)
    assert joined.groups.tolist() == [0, 0, 0, 3, 4, 3]
    # group {0,1,2}: two rows in train, one in test -> train; {3,5}: a tie -> its first row's
    assert joined.split.tolist() == [0, 0, 0, 1, 1, 1]
    assert (joined.near_duplicate_groups, joined.moved) == (2, 2)
    again = join_near_duplicates(np.array([1, 3]), np.array([2, 5]), joined.groups,
                                 joined.split)
    assert again.groups.tolist() == joined.groups.tolist()
    assert again.split.tolist() == joined.split.tolist() and again.moved == 0
    assert again.near_duplicate_groups == 2  # a resumed run reports what the first found


def _photo_like(rng: np.random.Generator, side: int = 128) -> np.ndarray:
    """A picture whose coarse detail outweighs its fine detail, as in photos."""
    from PIL import Image

    def smooth(cells: int) -> np.ndarray:
        noise = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
        return np.stack([np.asarray(Image.fromarray(noise[..., c], mode="F").resize(
            (side, side), Image.BICUBIC)) for c in range(3)], axis=-1)

    return np.clip(128 + 50 * sum(smooth(cells) * (4 / cells) ** 0.5
                                  for cells in (4, 8, 16, 32)), 0, 255)


def _crop_back(picture: np.ndarray, left: int, top: int, cut: int) -> np.ndarray:
    """``picture`` with ``cut`` pixels of width and height cut (``left`` and ``top`` of
    them on the left and top), resized back to its size."""
    from PIL import Image

    side = picture.shape[0]
    box = (left, top, side - (cut - left), side - (cut - top))
    return np.asarray(Image.fromarray(picture.astype(np.uint8)).crop(box).resize(
        (side, side), Image.BILINEAR), dtype=np.float32)


def test_a_copy_cropped_by_seven_percent_is_still_a_near_duplicate_but_another_picture_is_not():
    rng = np.random.default_rng(3)
    photo, other = _photo_like(rng), _photo_like(rng)
    # 9 of 128 pixels cut off the left and the top, resized back: the picture shifts by
    # more than half a 16 x 16 cell, and its whole-picture cosine drops below the rule's
    copy = _crop_back(photo, 9, 9, 9)
    signatures = np.vstack([pixel_signatures(np.stack([photo, copy, other])),
                            pixel_signatures(rng.uniform(0, 255, size=(17, 32, 32, 3)))])
    first, second, similarity = near_duplicate_pairs(signatures)
    assert (first.tolist(), second.tolist()) == ([0], [1])
    assert similarity[0] >= 0.97
    # the same pair without aligned windows: the crop alone parts them
    assert near_duplicate_pairs(signatures[:2], candidate=0.0, threshold=0.999)[0].size == 0


def test_the_blocked_candidate_search_keeps_each_rows_closest_as_the_whole_matrix_does():
    rng = np.random.default_rng(4)
    photos = np.stack([_photo_like(rng, 64) for _ in range(30)])
    copies = np.stack([_crop_back(photos[i], i % 4, 3 - i % 4, 4) for i in range(0, 30, 3)])
    signatures = pixel_signatures(np.concatenate([photos, copies]))
    per_row, candidate = 3, 0.2  # few candidates a row, so which are kept matters
    # brute force: every pair's aligned cosine, and each row's closest by whole picture
    from features.neighbours import _whole

    w = _whole(signatures)
    sim = w @ w.T
    np.fill_diagonal(sim, -np.inf)
    sim[sim < candidate] = -np.inf
    expected = set()
    for i in range(len(sim)):
        for j in np.argsort(-sim[i])[:per_row]:
            if np.isfinite(sim[i, j]):
                expected.add((min(i, int(j)), max(i, int(j))))
    scores = {pair: near_duplicate_pairs(signatures[list(pair)], candidate=-1.0,
                                         threshold=-1.0)[2][0] for pair in expected}
    kept = {pair for pair, score in scores.items() if score >= 0.97}
    # blocks smaller than the rows, uneven, and columns narrower than rows
    for row_block, column_block in ((7, 13), (13, 7), (64, 64)):
        first, second, _ = near_duplicate_pairs(signatures, per_row=per_row,
                                                candidate=candidate, row_block=row_block,
                                                column_block=column_block)
        assert set(zip(first.tolist(), second.tolist(), strict=True)) == kept
    assert {(i, 30 + i // 3) for i in range(0, 30, 3)} <= kept  # every copy found


def test_images_without_a_signature_are_never_paired():
    rng = np.random.default_rng(5)
    signatures = pixel_signatures(rng.uniform(0, 255, size=(6, 32, 32, 3)))
    signatures[3:] = 0  # not known (rows of another engine), though "identical"
    first, _, _ = near_duplicate_pairs(signatures, candidate=-1.0, threshold=-1.0)
    assert not set(first.tolist()) & {3, 4, 5}


def test_a_folder_of_look_alikes_keeps_each_images_closest_candidates(monkeypatch):
    # every picture alike at 8 x 8 (scans, product shots): more candidates than a block
    # holds for each row, so only the closest of each block are merged; the result is
    # the whole matrix's, and each copy is still found
    rng = np.random.default_rng(6)
    base = _photo_like(rng, 64)
    photos = np.stack([base + 0.5 * (_photo_like(rng, 64) - 128) for _ in range(40)])
    copies = np.stack([_crop_back(photos[i], 1, 2, 3) for i in range(0, 40, 4)])
    signatures = pixel_signatures(np.concatenate([photos, copies]))
    from features.neighbours import _whole

    w = _whole(signatures)
    sim = w @ w.T
    np.fill_diagonal(sim, -np.inf)
    assert (sim >= 0.6).mean() > 0.9  # the look-alike folder this is about
    expected = set()
    for i in range(len(sim)):
        for j in np.argsort(-sim[i])[:2]:
            expected.add((min(i, int(j)), max(i, int(j))))
    kept = {pair for pair in expected
            if near_duplicate_pairs(signatures[list(pair)], candidate=-1.0)[0].size}
    import features.neighbours

    merged = []
    keep_best = features.neighbours._keep_best
    monkeypatch.setattr(features.neighbours, "_keep_best", lambda best, at, rows, *rest:
                        merged.append(len(rows)) or keep_best(best, at, rows, *rest))
    # blocks of 32 x 64: most of their entries pass, more than 4 x 2 per row and column
    first, second, _ = near_duplicate_pairs(signatures, per_row=2, row_block=32,
                                            column_block=64)
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == kept
    # each block merged at most its rows' and columns' 2 best, both ways round, not all
    assert max(merged) <= 2 * 2 * (32 + 50)
    assert {(i, 40 + i // 4) for i in range(0, 40, 4)} <= kept
