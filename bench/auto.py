"""Benchmark ``tlearn auto``: the recipe it chooses within a budget against the default one.

For each dataset (``../shared/datasets``) and budget asked, in one run, each in a fresh
process with its own, empty ``--out`` and artifacts folder (a store left by another run
would flatter the budget):

* ``auto``: ``tlearn auto DATA --budget B``; its wall time seen from outside the process
  (start-up included), the time it accounted, the chosen recipe and why, its test
  accuracy with the 95 % interval, and its candidates (evaluated, pruned, skipped);
* ``default``: ``tlearn extract DATA`` (EfficientNet-Lite0, head) then ``tlearn train``
  (logreg): the recipe a user gets without choosing; its wall time and test accuracy,
  and McNemar's exact test of the two models on the same test images.

* ``sweep`` (``--sweep``, once per dataset after its budgets): ``tlearn auto --exhaustive``,
  every candidate on the whole train split with no budget to speak of. It chooses by the
  same rule as a budget (the cheapest recipe not significantly worse than the best); its
  best candidate by cross-validation is also trained at its C (``tlearn train --grid C``)
  and tested, and each budget's choice is paired with both (McNemar). On two cores it
  took 44 minutes on flowers5, 13 on animals: ``--sweep-only`` runs the sweeps alone (their CPU
  seconds are recorded beside the wall time), and ``--sweeps-from FILE`` pairs a later
  run's budgets with those sweeps (``--pair-only``: the runs already in the results file).

Prints a table and writes ``bench/results/<name>.json`` with the CPU it ran on and the
load averages before and after each run; other processes may share the CPU, which the
budget then holds for fewer candidates. Run:
``.venv/bin/python bench/auto.py --datasets flowers5 --budgets 15m``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_info, describe  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
WORK = REPO / "artifacts" / "bench" / "auto"


def _tlearn(args: list[str], artifacts: Path, log: Path) -> float:
    """Wall seconds of one ``tlearn ARGS`` process, its output kept in ``log``."""
    env = {**os.environ, "TLEARN_ARTIFACTS": str(artifacts), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--no-color", *args],
                              cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"tlearn {' '.join(args)} failed: {log.read_text()[-2000:]}")
    return seconds


def _report(artifacts: Path, model: str) -> dict:
    from pipeline.reports import read_report

    return read_report(artifacts / "reports" / model)


def run_auto(dataset: str, budget: str, stamp: str, exhaustive: bool = False) -> dict:
    from pipeline.workflows.auto import parse_budget

    folder = WORK / f"{stamp}-{dataset}-{'sweep' if exhaustive else budget}"
    artifacts, out = folder / "artifacts", folder / "out"
    folder.mkdir(parents=True)
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        wall = _tlearn(["auto", str(SHARED / dataset), "--budget", budget, "--out", str(out),
                        *(["--exhaustive"] if exhaustive else [])],
                       artifacts, folder / "auto.log")
    except RuntimeError:
        refusal = [line for line in (folder / "auto.log").read_text().splitlines()
                   if line.startswith("error:")]
        if not refusal:
            raise
        return {"dataset": dataset, "budget": budget, "refused": refusal[0],
                "load_average": {"before": load_before, "after": os.getloadavg()}}
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    choice = json.loads((out / "choice.json").read_text())
    statuses: dict[str, int] = {}
    for c in choice["candidates"]:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    return {"dataset": dataset, "budget": budget, "budget_s": parse_budget(budget),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                     capture_output=True, text=True).stdout.strip(),
            "wall_seconds": wall, "elapsed_s": choice["elapsed_s"],
            "cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime
                            - cpu_before.ru_utime - cpu_before.ru_stime),
            "nice": os.nice(0),
            "within_budget_plus_10pct": wall <= 1.1 * parse_budget(budget),
            "recipe": choice["recipe"], "why": choice["why"],
            "test_accuracy": choice["test_accuracy"],
            "test_accuracy_ci": choice["test_accuracy_ci"],
            "test_images": choice["test_images"], "rungs": choice["rungs"],
            "candidate_statuses": statuses, "candidates": choice["candidates"],
            "model": Path(choice["model"]).stem, "artifacts": str(artifacts),
            "load_average": {"before": load_before, "after": os.getloadavg()}}


def run_default(dataset: str, stamp: str) -> dict:
    folder = WORK / f"{stamp}-{dataset}-default"
    artifacts = folder / "artifacts"
    folder.mkdir(parents=True)
    store = folder / f"{dataset}__efficientnet_lite0.h5"
    load_before = os.getloadavg()
    extract = _tlearn(["extract", str(SHARED / dataset), "--out", str(store)], artifacts,
                      folder / "extract.log")
    train = _tlearn(["train", str(store), "--classifier", "logreg"], artifacts,
                    folder / "train.log")
    model = f"{store.stem}__logreg"
    test = _report(artifacts, model)["test"]
    return {"dataset": dataset, "recipe": "efficientnet_lite0 head + logreg",
            "wall_seconds": extract + train, "extract_seconds": extract,
            "train_seconds": train, "test_accuracy": test["accuracy"],
            "test_accuracy_ci": test["accuracy_ci"], "model": model,
            "artifacts": str(artifacts),
            "load_average": {"before": load_before, "after": os.getloadavg()}}


def run_sweep_best(sweep: dict) -> dict:
    """The sweep's best candidate by cross-validation on the whole train split (accuracy,
    then log-loss), trained at its chosen C on the sweep's own store (``tlearn train
    --grid C``) and tested once: the sweep chooses by the same rule as a budget (the
    cheapest recipe not significantly worse), and this is the best it saw."""
    whole = [c for c in sweep["candidates"] if c["status"] in ("finalist", "winner")]
    best = min(whole, key=lambda c: (-c["cv_accuracy"], c["cv_log_loss"]))
    recipe = best["recipe"]
    entry = {"recipe": recipe, "cv_accuracy": best["cv_accuracy"],
             "cv_accuracy_ci": best["cv_accuracy_ci"], "cv_log_loss": best["cv_log_loss"],
             "images_per_second": best["images_per_second"]}
    if best["status"] == "winner":
        return {**entry, "is_the_choice": True, "model": sweep["model"],
                "artifacts": sweep["artifacts"], "test_accuracy": sweep["test_accuracy"],
                "test_accuracy_ci": sweep["test_accuracy_ci"]}
    folder = Path(sweep["artifacts"]).parent
    state = json.loads((folder / "out" / "auto_state.json").read_text())
    store = next(Path(path) for path, extraction in state["extractions"].items()
                 if extraction["recipe"] == recipe["name"] and "subsets" not in Path(path).parts)
    seconds = _tlearn(["train", str(store), "--classifier", recipe["classifier"],
                       "--grid", repr(recipe["C"])], Path(sweep["artifacts"]),
                      folder / "best_cv_train.log")
    model = f"{store.stem}__{recipe['classifier']}"
    test = _report(Path(sweep["artifacts"]), model)["test"]
    return {**entry, "is_the_choice": False, "model": model, "artifacts": sweep["artifacts"],
            "train_seconds": seconds, "test_accuracy": test["accuracy"],
            "test_accuracy_ci": test["accuracy_ci"],
            "vs_the_choice": paired(sweep, {"artifacts": sweep["artifacts"], "model": model})}


def paired(auto: dict, default: dict) -> dict:
    from pipeline.reports import paired_comparison

    a = _report(Path(auto["artifacts"]), auto["model"])
    b = _report(Path(default["artifacts"]), default["model"])
    return paired_comparison(a, b)


def pair_with_sweep(entry: dict, sweep: dict) -> None:
    """McNemar's test of a budget's choice against the sweep's choice and against the
    sweep's best by cross-validation (the same test when they are one model)."""
    if "refused" in entry["auto"]:
        return
    entry["auto_vs_sweep"] = paired(entry["auto"], sweep)
    best = sweep.get("best_cv")
    if best is not None:
        entry["auto_vs_sweep_best_cv"] = (entry["auto_vs_sweep"] if best["is_the_choice"]
                                          else paired(entry["auto"], best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["flowers5", "animals"])
    parser.add_argument("--budgets", nargs="+", default=["15m"],
                        help="one per dataset, or one for all")
    parser.add_argument("--no-default", action="store_true")
    parser.add_argument("--sweep", action="store_true",
                        help="also every candidate on the whole train split (tlearn auto "
                             "--exhaustive, no budget), once per dataset, after its budgets")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the sweeps (no budget runs), e.g. niced beside other work")
    parser.add_argument("--sweeps-from", type=Path,
                        help="a results file whose sweeps the budget runs are paired with")
    parser.add_argument("--pair-only", action="store_true",
                        help="run nothing: pair the budget runs already in "
                             "bench/results/<name>.json with the sweeps of --sweeps-from")
    parser.add_argument("--name", default="auto", help="bench/results/<name>.json")
    parser.add_argument("--not-run", default="",
                        help="what the figures leave out, for the record")
    args = parser.parse_args()
    budgets = args.budgets if len(args.budgets) > 1 else args.budgets * len(args.datasets)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result_path = REPO / "bench" / "results" / f"{args.name}.json"
    if args.pair_only:
        record = json.loads(result_path.read_text())
        sweeps_record = json.loads(args.sweeps_from.read_text())
        if any("best_cv" not in sweep for sweep in sweeps_record.get("sweeps", {}).values()):
            for sweep in sweeps_record["sweeps"].values():  # sweeps run before it was kept
                sweep.setdefault("best_cv", run_sweep_best(sweep))
            args.sweeps_from.write_text(json.dumps(sweeps_record, indent=1, default=str))
        record.pop("sweeps", None)  # kept in their own file, named here
        record["sweeps_from"] = str(args.sweeps_from.resolve().relative_to(REPO))
        for entry in record["runs"]:
            sweep = sweeps_record.get("sweeps", {}).get(entry["auto"]["dataset"])
            if sweep:
                pair_with_sweep(entry, sweep)
        result_path.write_text(json.dumps(record, indent=1, default=str))
        print(f"paired with {args.sweeps_from}; written to {result_path}")
        return
    record = {"machine": cpu_info(), "note": (
        "one run; the load averages before and after each run are recorded (a busy machine "
        "holds fewer candidates in a budget): speeds compare only within this run, "
        "accuracies do not depend on the machine"),
        "not_run": args.not_run, "runs": []}
    print(describe(record["machine"]), flush=True)
    defaults: dict[str, dict] = {}  # one default per dataset, beside each of its budgets
    sweeps: dict[str, dict] = {}  # --sweeps-from's, kept in their own file
    if args.sweeps_from:
        sweeps = json.loads(args.sweeps_from.read_text()).get("sweeps", {})
        record["sweeps_from"] = str(args.sweeps_from.resolve().relative_to(REPO))
    for dataset, budget in zip(args.datasets, budgets, strict=True):
        if args.sweep_only:
            break
        auto = run_auto(dataset, budget, stamp)
        entry = {"auto": auto}
        record["runs"].append(entry)
        result_path.write_text(json.dumps(record, indent=1, default=str))
        if "refused" in auto:
            print(f"{dataset} at {budget}: {auto['refused']}", flush=True)
            continue
        if not args.no_default:
            if dataset not in defaults:
                defaults[dataset] = run_default(dataset, stamp)
            default = defaults[dataset]
            entry["default"] = default
            entry["auto_vs_default"] = paired(auto, default)
            result_path.write_text(json.dumps(record, indent=1, default=str))
        if dataset in sweeps:
            pair_with_sweep(entry, sweeps[dataset])
            result_path.write_text(json.dumps(record, indent=1, default=str))
        print(f"{dataset} at {budget}: auto {auto['test_accuracy']:.4f} "
              f"{[round(v, 3) for v in auto['test_accuracy_ci']]} in {auto['wall_seconds']:.0f}s "
              f"({auto['recipe']['backbone']} taps={auto['recipe']['taps']} "
              f"mirror={auto['recipe']['mirror']} {auto['recipe']['classifier']})"
              + (f"; default {entry['default']['test_accuracy']:.4f} in "
                 f"{entry['default']['wall_seconds']:.0f}s; "
                 f"{entry['auto_vs_default']['verdict']}" if "default" in entry else ""),
              flush=True)
    if args.sweep or args.sweep_only:
        for dataset in dict.fromkeys(args.datasets):
            sweep = run_auto(dataset, "100h", stamp, exhaustive=True)
            sweep["best_cv"] = run_sweep_best(sweep)
            record.setdefault("sweeps", {})[dataset] = sweep
            for entry in record["runs"]:
                if entry["auto"]["dataset"] == dataset:
                    pair_with_sweep(entry, sweep)
            result_path.write_text(json.dumps(record, indent=1, default=str))
            print(f"{dataset} sweep: {sweep['test_accuracy']:.4f} in "
                  f"{sweep['wall_seconds']:.0f}s ({sweep['recipe']['backbone']} "
                  f"taps={sweep['recipe']['taps']} mirror={sweep['recipe']['mirror']} "
                  f"{sweep['recipe']['classifier']})", flush=True)
    print(f"written to {result_path}")


if __name__ == "__main__":
    main()
