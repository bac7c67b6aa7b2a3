"""Classify image files with any model given as a scoring function of decoded pixels.

Every model that classifies images (a stage 2 classifier with its backbone, a stage 3
Keras model) describes itself as one :class:`ImageScorer`, and every entry point
(``predict_images``, ``tlearn predict``, serving, export checks, Ray) classifies files
through it and :func:`iter_image_predictions`. Files are decoded through the one image
reader, ahead of the model in threads (the same
:func:`features.batches.iter_computed_batches` extraction uses), and scored a batch at a
time, so memory stays bounded by a few batches whatever the number of files; results
come back in input order, with unreadable files reported, not fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from features.batches import ComputedBatch, iter_computed_batches

ClassScores = Callable[[np.ndarray], np.ndarray]

#: Where the class scores of the files come from, a batch at a time and in order:
#: ``source(paths, start=..., batch_size=..., workers=...)`` yields a
#: :class:`features.batches.ComputedBatch` of scores for every batch of ``paths[start:]``
#: (an engine of ``pipeline``, such as Ray, computing them elsewhere).
ScoreBatches = Callable[..., Iterator[ComputedBatch]]


@dataclass(frozen=True)
class ImageScorer:
    """What a model needs to classify image files: its input size, scores and class names.

    Built by the model itself (``image_scorer()`` of
    :class:`classifiers.estimators.FeatureClassifier` and of
    :class:`pipeline.stage3.KerasImageClassifier`), its network compiled for ``runtime``.

    Attributes
    ----------
    input_size : int
        Side of the square images the model takes.
    class_scores : callable
        Maps RGB uint8 images ``(n, size, size, 3)`` to scores ``(n, classes)``.
    label_names : list of str
        Name of each score column.
    scores_are_probabilities : bool
        False where scores are decision values (models saved before Platt scaling).
    runtime : str
        What runs the network (``"tensorflow"``, ``"openvino"``).
    precision : str
        The precision the network computes in (``"float32"``, ``"bfloat16"``, ``"int8"``).
    unknown_threshold : float or None
        Set when the model scores how unlike its training images an image is: then
        ``class_scores`` has one column more, last, that score, and images scoring above
        the threshold are "unknown" (:func:`image_verdict`). None for models without it.
    """

    input_size: int
    class_scores: ClassScores
    label_names: list[str]
    scores_are_probabilities: bool
    runtime: str
    precision: str
    unknown_threshold: float | None = None

    def classify_files(self, paths: Sequence[str | os.PathLike], top: int = 1, *,
                       batch_size: int = 32, workers: int = 2) -> list[dict]:
        """All results of :func:`iter_image_predictions` for ``paths``, in their order."""
        return list(iter_image_predictions(paths, self.input_size, self.class_scores,
                                           self.label_names, top, batch_size=batch_size,
                                           workers=workers,
                                           unknown_threshold=self.unknown_threshold))


def rank_scores(scores: np.ndarray, label_names: Sequence[str], top: int
                ) -> list[tuple[str, float]]:
    """The ``top`` best ``(label, score)`` pairs of one row of scores, best first."""
    order = np.argsort(scores)[::-1][:max(1, top)]
    return [(label_names[j], float(scores[j])) for j in order]


def image_verdict(scores: np.ndarray, label_names: Sequence[str], top: int,
                  unknown_threshold: float | None = None) -> dict:
    """``{"label", "score", "top"}`` of one row of scores, with ``"unknown"`` and
    ``"unknown_score"`` when the row ends with the unknown score (``unknown_threshold``
    set, see :class:`ImageScorer`); ``label`` still names the best class."""
    n = len(label_names)
    ranked = rank_scores(scores[:n], label_names, top)
    verdict = {"label": ranked[0][0], "score": ranked[0][1], "top": ranked}
    if unknown_threshold is not None:
        verdict["unknown"] = bool(scores[n] > unknown_threshold)
        verdict["unknown_score"] = float(scores[n])
    return verdict


def iter_image_predictions(paths: Sequence[str | os.PathLike], input_size: int,
                           class_scores: ClassScores, label_names: Sequence[str], top: int = 1,
                           *, batch_size: int = 32, workers: int = 2,
                           score_batches: ScoreBatches | None = None,
                           unknown_threshold: float | None = None) -> Iterator[dict]:
    """Classify image files one batch at a time, yielding one result per path, in order.

    Decoding runs ``workers`` threads ahead of the model (as in extraction), so at most
    a few batches of pixels are in memory whatever the number of files.

    Parameters
    ----------
    paths : sequence of path-like
    input_size : int
        Side of the square the model takes.
    class_scores : callable
        Maps RGB uint8 images ``(n, size, size, 3)`` to scores ``(n, classes)``.
    label_names : sequence of str
        Name of each score column.
    top : int, default=1
        How many ``(label, score)`` pairs to keep per image.
    batch_size : int, default=32
        Images decoded and scored at a time.
    workers : int, default=2
        Decoding threads.
    score_batches : callable, optional
        Where the scores are computed (:data:`ScoreBatches`); by default here, with
        ``class_scores``, decoding ``workers`` threads ahead.
    unknown_threshold : float, optional
        The scores end with the unknown score, and this is its threshold
        (:class:`ImageScorer`).

    Yields
    ------
    dict
        ``{"path", "label", "score", "top": [(label, score)...]}``, or
        ``{"path", "error"}`` for a file that could not be read; with
        ``unknown_threshold``, also ``"unknown"`` and ``"unknown_score"``.
    """
    names = [str(p) for p in paths]
    batch_size = max(1, batch_size)
    if score_batches is None:
        batches = iter_computed_batches(names, size=input_size, batch_size=batch_size,
                                        preprocess=raw_pixels, compute=class_scores,
                                        workers=workers)
    else:
        batches = score_batches(names, start=0, batch_size=batch_size, workers=workers)
    for batch in batches:
        entries: list[dict] = [{} for _ in range(batch.end - batch.begin)]
        for i, reason in batch.bad:
            entries[i] = {"path": names[batch.begin + i], "error": reason}
        if batch.good:
            scores = np.asarray(batch.values)
            for row, i in enumerate(batch.good):
                entries[i] = {"path": names[batch.begin + i],
                              **image_verdict(scores[row], label_names, top,
                                              unknown_threshold)}
        yield from entries


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """The preprocessing of a model that takes uint8 pixels as they are decoded."""
    return images
