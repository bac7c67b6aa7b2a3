"""How sure a test figure is: confidence intervals and the paired test between two models.

A test split holds a few hundred images, so one accuracy is one draw: the 95 %
interval says how far the true accuracy could be, and McNemar's exact test says
whether two models tested on the very same images really differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # the two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (accuracy, rank-5) at ``z`` (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0 % and
    100 % (a model right on all 50 test images still gets a lower bound below 1).
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def bootstrap_interval(metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray,
                       y_pred: np.ndarray, *, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, y_pred)`` over test images.

    Used for macro-F1, which has no closed-form interval; resampling the images
    (with replacement, seeded) keeps each image's true and predicted label together.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if n == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, n, n)
        values[i] = metric(y_true[rows], y_pred[rows])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return (float(lo), float(hi))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (scikit-learn's
    ``balanced_accuracy_score``): every class counts the same, however many images it has.

    Fast enough to bootstrap (one bincount per call); 0 for no rows.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if not len(y_true):
        return 0.0
    size = int(max(y_true.max(), y_pred.max())) + 1
    totals = np.bincount(y_true, minlength=size)
    hits = np.bincount(y_true[y_true == y_pred], minlength=size)
    present = totals > 0
    return float(np.mean(hits[present] / totals[present]))


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on the paired predictions of two models.

    Attributes
    ----------
    n : int
        Test images both models were judged on.
    only_a, only_b : int
        Images only model A (resp. B) got right: the discordant pairs.
    p_value : float
        Two-sided exact binomial p-value of ``only_a`` against ``only_a + only_b`` at 1/2.
    """

    n: int
    only_a: int
    only_b: int
    p_value: float

    def verdict(self, name_a: str = "A", name_b: str = "B", alpha: float = 0.05) -> str:
        """The result in plain words, at the ``alpha`` level."""
        if self.only_a == self.only_b == 0:
            return f"{name_a} and {name_b} are right on exactly the same images: no difference"
        better, worse = (name_a, name_b) if self.only_a > self.only_b else (name_b, name_a)
        if self.p_value < alpha:
            return (f"{better} is really better than {worse} (p = {self.p_value:.3g}: "
                    f"{max(self.only_a, self.only_b)} against {min(self.only_a, self.only_b)} "
                    f"images only one of them gets right)")
        return (f"no real difference between {name_a} and {name_b} on these {self.n} images "
                f"(p = {self.p_value:.2f}; {self.only_a} against {self.only_b} images only one "
                "of them gets right)")


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar's exact test from per-image correctness of two models on the same images.

    Raises
    ------
    ValueError
        When the two arrays have different lengths (not paired).
    """
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("McNemar's test needs the two models' results on the same images")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemarResult(len(correct_a), only_a, only_b, min(1.0, p))
