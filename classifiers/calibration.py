"""Whether scores mean what they say: expected calibration error and reliability bins.

A model whose top probability is 0.8 should be right on about 80 % of such images.
The images are put in 15 equal-width bins of top probability; the expected
calibration error (ECE) is the image-weighted mean gap between each bin's
accuracy and its mean top probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, accuracy and mean confidence (top probability), equal-width bins."""

    edges: list[float]
    counts: list[int]
    accuracy: list[float | None]
    confidence: list[float | None]

    def to_dict(self) -> dict:
        return {"edges": self.edges, "counts": self.counts, "accuracy": self.accuracy,
                "confidence": self.confidence}


def reliability_bins(probabilities: np.ndarray, y_index: np.ndarray, bins: int = ECE_BINS
                     ) -> ReliabilityBins:
    """Bin images by their top probability (bins are (lo, hi], the first [0, hi])."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_index)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts, accuracy, mean_conf = [], [], []
    for b in range(bins):
        rows = which == b
        counts.append(int(rows.sum()))
        accuracy.append(float(correct[rows].mean()) if rows.any() else None)
        mean_conf.append(float(confidence[rows].mean()) if rows.any() else None)
    return ReliabilityBins([float(e) for e in edges], counts, accuracy, mean_conf)


def expected_calibration_error(probabilities: np.ndarray, y_index: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins of the top probability (15 by default)."""
    table = reliability_bins(probabilities, y_index, bins)
    n = sum(table.counts)
    if n == 0:
        return 0.0
    return float(sum(c * abs(a - m) for c, a, m in zip(
        table.counts, table.accuracy, table.confidence, strict=True) if c) / n)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities recomputed at ``temperature``: ``p ** (1 / T)``, renormalised.

    Equal to ``softmax(logits / T)`` for probabilities that came from
    ``softmax(logits)``; T > 1 softens over-confident scores, T = 1 changes nothing.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0 or p.size == 0:
        return p
    logp = np.log(np.clip(p, 1e-300, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, y_index: np.ndarray) -> float:
    """The temperature minimising the log-loss of ``probabilities`` on held-out rows,
    against Platt's targets.

    One parameter fitted on validation images (never the test split): the ranking of
    the classes, hence the accuracy, is unchanged. ``T = 1 / a`` for the scale ``a``
    of :func:`classifiers.platt.fit_margin_scale` on the log-probabilities (the same
    fit as the linear families' margins): a row of class ``c`` aims at
    ``(N_c + 1) / (N_c + 2)``, not 1, so a small validation split that the model
    classifies perfectly gives a finite temperature instead of driving every score
    to 0 or 1.
    """
    from classifiers.platt import fit_margin_scale

    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-15, 1.0))
    return 1.0 / fit_margin_scale(logp, np.asarray(y_index))
