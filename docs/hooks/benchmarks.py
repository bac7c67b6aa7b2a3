"""MkDocs hook: benchmark tables rendered from ``bench/results/*.json`` at build time.

A page holds lines ``<!-- generated: bench NAME -->``; each becomes the tables of
``bench/results/NAME.json`` headed by the CPU it ran on, so no figure on the site is
typed by hand. The tables ``bench/report.py`` already prints are rendered by its own
functions; the other results by the renderers below. A marker naming a result file
that does not exist fails the build. ``<!-- generated: backbone-rates NAME -->`` becomes
``bench/backbones_table.py``'s table of that result (the backbones page).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
RESULTS = BENCH / "results"
MARKER = re.compile(r"^<!-- generated: bench (\w+) -->$", re.MULTILINE)
# the backbones page: an extraction result's rates beside each network's facts, then the
# sources of the published figures (bench/backbones_table.py renders both)
BACKBONE_RATES = re.compile(r"^<!-- generated: backbone-rates (\w+) -->$", re.MULTILINE)
# markers stand on a line of their own, so a page can quote one in its text
BACKBONE_SOURCES = re.compile(r"^<!-- generated: backbone-sources -->$", re.MULTILINE)
# the unknown-images page: bench/unknown.py's comparison of the scores
UNKNOWN_SCORES = re.compile(r"^<!-- generated: unknown-scores -->$", re.MULTILINE)


def _report():
    # bench/ is a folder of scripts, not a package: report.py imports machine.py by path
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("report")


def cpu_line(data: dict) -> str:
    """``CPU: model, N cores (flags)``: the machine every table of a result names."""
    machine = data.get("machine") or data.get("cpu")
    if not machine:
        raise ValueError("a benchmark result without its machine record")
    flags = " ".join(flag for flag, on in machine["flags"].items() if on)
    return f"**CPU:** {machine['model']}, {machine['cpus']} cores ({flags})."


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _backbones(data: dict) -> str:
    lines = ["| dataset | backbone | recipe | input | features | runtime | test accuracy "
             "| re-splits (mean ± std) | extraction img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        resplits = r.get("resplits")
        spread = (f"{_pct(resplits['accuracy_mean'])} ± {100 * resplits['accuracy_std']:.1f} "
                  f"({resplits['n']})" if resplits else "–")
        lines.append(f"| {r['dataset']} | `{r['backbone']}` | {r.get('recipe', 'native')} "
                     f"| {r['input_size']} | {r.get('feature_dim', '–')} "
                     f"| {r.get('runtime', data.get('runtime', 'tensorflow'))} "
                     f"| {_pct(r['test_accuracy'])} | {spread} | {r['extract_img_s']:.1f} |")
    recipes = [f"`{name}`: " + (" ".join(_recipe_flags(r)) or "the head's features alone")
               for name, r in data.get("recipes", {}).items()]
    legend = f"\n\nRecipes: {'; '.join(recipes)}." if recipes else ""
    return "\n".join(lines) + f"\n\n{data['note']}.{legend}"


def _recipe_flags(recipe: dict) -> list[str]:
    """The ``tlearn extract`` flags of a recipe the benchmark recorded."""
    flags = [f"`--taps {recipe['taps']}`"] if recipe.get("taps") else []
    flags += ["`--mirror`"] if recipe.get("mirror") else []
    flags += [f"`--input-size {recipe['input_size']}`"] if recipe.get("input_size") else []
    return flags


def _keras_modern(data: dict) -> str:
    # one variant per backbone: the parameters matter here, the runtime columns do not
    lines = ["| backbone | parameters (headless) | forward img/s | end-to-end img/s |",
             "|---|---|---|---|"]
    for r in data["throughput"]:
        lines.append(f"| `{r['backbone']}` | {r['parameters'] / 1e6:.1f} M "
                     f"| {r['forward_img_s']:.1f} | {r['end_to_end_img_s']:.1f} |")
    return "\n".join(lines) + (f"\n\n{data['images']} images, {data['rounds']} round(s); "
                               f"{_load(data)}.")


def _calibration(data: dict) -> str:
    names = {"old": "before: accuracy, ties to the strongest",
             "unscaled": "log-loss, own probabilities", "new": "now: log-loss"}
    lines = ["| set | classifier | rule | seeds | test accuracy (mean ± std) | log-loss "
             "| ECE |", "|---|---|---|---|---|---|---|"]
    for dataset, families in data["results"].items():
        for family, rules in families.items():
            for rule in ("old", "unscaled", "new"):
                r = rules.get(rule)
                if r is None:
                    continue
                loss = f"{r['log_loss']['mean']:.4f}" if r.get("log_loss") else "–"
                ece = f"{r['ece']['mean']:.4f}" if r.get("ece") else "–"
                lines.append(f"| {dataset} | {family} | {names[rule]} | {r['seeds']} "
                             f"| {100 * r['accuracy']['mean']:.2f} ± "
                             f"{100 * r['accuracy']['std']:.2f} | {loss} | {ece} |")
    return "\n".join(lines) + f"\n\nECE with {data['ece_bins']} equal-width bins."


def _imbalanced(data: dict) -> str:
    lines = ["| classifier | class weight | accuracy | balanced accuracy | cut class recall |",
             "|---|---|---|---|---|"]
    for family, weights in data["results"].items():
        for weight, r in weights.items():
            lines.append(f"| {family} | {weight} | {r['accuracy_mean']:.3f} "
                         f"| {r['balanced_accuracy_mean']:.3f} "
                         f"| {r['cut_class_recall_mean']:.3f} |")
    return (f"{data['dataset']}; {data['backbone']} features, mean of {data['seeds']} "
            "seeds.\n\n" + "\n".join(lines))


def _unknown(data: dict) -> str:
    lines = ["| model of | strangers | score | strangers flagged | AUROC |",
             "|---|---|---|---|---|"]
    for case, c in data["cases"].items():
        for score, s in c["scores"].items():
            lines.append(f"| {case} ({', '.join(c['known'])}) | {', '.join(c['strangers'])} "
                         f"| {score} | {_pct(s['flagged_at_coverage'])} | {s['auroc']:.3f} |")
    text = (f"{data['features']}; {data['per_class']} images a class; strangers flagged "
            f"while {_pct(data['coverage'])} of known test images are accepted.\n\n"
            + "\n".join(lines))
    if data.get("tasks"):
        text += "\n\nEach score over the three tasks (tlearn's in bold):\n\n" + unknown_scores(data)
    rules = [(case, c["model_threshold"]) for case, c in data["cases"].items()
             if c.get("model_threshold")]
    if rules:
        # the threshold the model itself stores, applied as `tlearn predict` applies it
        text += ("\n\nThe model's own rule (its stored score and threshold):\n\n"
                 "| model of | score | rank | threshold | known test images accepted "
                 "| strangers flagged | pickled bytes |\n|---|---|---|---|---|---|---|\n"
                 + "\n".join(f"| {case} | {m['score']} | {m.get('rank', '–')} "
                              f"| {m['threshold']:.3f} | {_pct(m['test_accepted'])} "
                              f"| {_pct(m['strangers_flagged'])} | {m['pickled_bytes']:,} |"
                              for case, m in rules))
    return text


def _size(n: int) -> str:
    # binary units: the size limit bench/unknown.py records is a power of two
    return next((f"{n / 1024 ** i:.1f} {unit}"
                 for i, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")) if n >= 1024 ** i),
                f"{n} bytes")


def unknown_scores(data: dict) -> str:
    """Each score of ``bench/unknown.py`` over its tasks: the strangers it flagged at the
    coverage, the mean, the AUROC and what a model would keep; tlearn's score in bold."""
    first = next(iter(data["tasks"].values()))
    tasks = [t for t in first if not t.startswith("mean_")]
    lines = ["| score | " + " | ".join(t.replace("_", " ") for t in tasks)
             + " | mean | mean AUROC | kept for 25,088-wide features of 100,000 images |",
             "|---|" + "---|" * (len(tasks) + 3)]
    for score, r in data["tasks"].items():
        kept = max(c["scores"][score]["stored_bytes_25088_wide_100k_rows"]
                   for c in data["cases"].values())
        cells = [score] + [f"{r[t]:.3f}" for t in tasks] + [
            f"{r['mean_flagged']:.3f}", f"{r['mean_auroc']:.3f}", _size(kept)]
        if score == data.get("chosen"):
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    eligible = ""
    if data.get("eligible"):
        eligible = (f" Eligible, at most {_size(data['size_limit_bytes'])} kept: "
                    + ", ".join(f"`{e}`" for e in data["eligible"]) + ".")
    return ("\n".join(lines) + f"\n\nShare of strangers flagged while "
            f"{_pct(data['coverage'])} of known test images are accepted.{eligible}")


def _flat(value, prefix: str = "") -> dict:
    """A nested record as ``{"a.b": scalar}``; lists of scalars joined by commas."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return {prefix[:-1]: ", ".join(_scalar(v) for v in value)}
        return {}
    return {prefix[:-1]: _scalar(value)}


def _scalar(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def _records_table(records: list[dict]) -> str:
    """One row per record, one column per field any record has (in first-seen order)."""
    flat = [_flat(r) for r in records]
    columns = list(dict.fromkeys(k for row in flat for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "–") for c in columns) + " |" for row in flat]
    return "\n".join(lines)


def _serve_attacks(data: dict) -> str:
    # two runs (before and after the limits) of many measures: one column per run
    runs = [_flat(run) for run in data["runs"]]
    lines = ["| measure | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |",
             "|---|" + "---|" * len(runs)]
    for key in dict.fromkeys(k for run in runs for k in run):
        lines.append(f"| {key} | " + " | ".join(run.get(key, "–") for run in runs) + " |")
    return "\n".join(lines)


def _serve_token(data: dict) -> str:
    extra = {key: data[key] for key in ("check_in_process", "model_info_in_process")}
    return (_records_table(data["rows"]) + "\n\nIn process, microseconds per call:\n\n"
            + _records_table([{"measure": k, **v} for k, v in extra.items()]))


def _load(data: dict) -> str:
    before = data.get("load_average_before") or data.get("load_before")
    after = data.get("load_average_after") or data.get("load_after")
    return f"load average {before[0]:.1f} before, {after[0]:.1f} after"


def _backends(data: dict) -> str:
    lines = ["| backend | device | versions | build s | forward img/s | end-to-end img/s "
             "| largest difference from TensorFlow |", "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        lines.append(f"| {r['backend']} | {r['device']} | {versions} | {r['build_s']:.1f} "
                     f"| {r['forward_img_s']:.1f} | {r['end_to_end_img_s']:.1f} "
                     f"| {r['parity_vs_tensorflow']:.1e} |")
    rows = data["rows"][0]
    missing = ", ".join(data.get("not_installed", [])) or "none"
    return "\n".join(lines) + (f"\n\n{rows['images']} images, batch {data['batch_size']}, "
                               f"rates as medians of rounds; not installed: {missing}; "
                               f"{_load(data)}.")


def _decode(data: dict) -> str:
    lines = ["| images | files | workers | kind | img/s | img/s per worker |",
             "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['images']} | {r['files']} | {r['workers']} | {r['kind']} "
                     f"| {r['img_s']:.1f} | {r['img_s_per_worker']:.1f} |")
    return "\n".join(lines) + f"\n\nReader: `{data['reader']}`; {_load(data)}."


def _check(data: dict) -> str:
    parts = []
    for dataset, d in data["datasets"].items():
        grouping = ["| aligned pixel cosine threshold | copies grouped with their source "
                    "| other images grouped | same picture already in the set | pairs "
                    "| seconds |", "|---|---|---|---|---|---|"]
        for g in d["grouping"].values():
            grouping.append(f"| {g['threshold']} | {_pct(g['copies_with_source'])} "
                            f"| {_pct(g['others_grouped'])} ({g['others_grouped_count']}) "
                            f"| {g['real_duplicates_grouped_count']} | {g['pairs']} "
                            f"| {g['seconds']:.1f} |")
        s = d["splits"]
        splits = (f"Decoded at {s['sizes'][0]} and at {s['sizes'][1]} pixels, the "
                  f"{s['rows']:,} images record the same groups: "
                  f"{'yes' if s['same_groups'] else 'no'}; rows in another split: "
                  f"{s['rows_in_another_split']} (near-duplicate groups "
                  f"{s['near_duplicate_groups'][0]} and {s['near_duplicate_groups'][1]}).")
        labels = ["| labels flipped | flipped | flagged | flipped among the top 2x flagged "
                  "| suggested label right | C | seconds |", "|---|---|---|---|---|---|---|"]
        for share, r in d["labels"].items():
            labels.append(f"| {_pct(float(share))} | {r['flipped']} | {r['flagged']} "
                          f"| {_pct(r['recall_top_2x'])} | {_pct(r['suggested_label_right'])} "
                          f"| {r['C']:g} | {r['seconds']:.0f} |")
        found = ", ".join(f"{kind} {n}" for kind, n in d["unmodified"]["counts"].items())
        parts.append(f"**{dataset}**: {d['rows']:,} rows, {d['copies']} planted copies.\n\n"
                     + "\n".join(grouping) + f"\n\n{splits}\n\n" + "\n".join(labels)
                     + f"\n\nThe unmodified dataset: {found} findings in "
                     f"{d['unmodified']['seconds']:.0f} s.")
    search = ["| rows | search | seconds | CPU seconds | peak MB beyond the input | input MB "
              "| pairs |", "|---|---|---|---|---|---|---|"]
    for r in data["search"].values():
        pairs = "–" if r["pairs"] is None else f"{r['pairs']:,}"
        search.append(f"| {r['rows']:,} | {r['search']} | {r['seconds']:.2f} "
                      f"| {r['cpu_seconds']:.2f} | {r['peak_mb_beyond_input']:.1f} "
                      f"| {r['input_mb']:.1f} | {pairs} |")
    return ("\n\n".join(parts) + "\n\n**Search time and memory**\n\n" + "\n".join(search)
            + f"\n\n{_load(data).capitalize()}.")


def _install_resolution(data: dict) -> str:
    # a pip dry run measures no speed: the resolved versions, one column per candidate
    # (A, B, C as the result's own reasoning names them), shared versions in one line
    candidates = list(data["candidates"].values())
    letters = [chr(ord("A") + i) for i in range(len(candidates))]
    packages = sorted({p for c in candidates for p in c["all"]}, key=str.lower)
    same = [p for p in packages
            if len({c["all"].get(p) for c in candidates}) == 1 and not p.startswith("nvidia")]
    lines = ["| package | " + " | ".join(letters) + " |", "|---|" + "---|" * len(candidates),
             "| packages in all | " + " | ".join(
                 str(c["packages"]) if c["resolved"] else "does not resolve"
                 for c in candidates) + " |"]
    lines += [f"| {p} | " + " | ".join(c["all"].get(p, "–") for c in candidates) + " |"
              for p in packages if p not in same]
    legend = "; ".join(f"{letter}: `{name}`"
                       for letter, name in zip(letters, data["candidates"], strict=True))
    shared = ", ".join(f"{p} {candidates[0]['all'][p]}" for p in same)
    return ("\n".join(lines) + f"\n\n{legend}.\n\nThe same in every candidate: {shared}."
            f"\n\nChosen: `{data['chosen']}`. {data['why']}")


def _keras_modern_runtimes(data: dict) -> str:
    refused = "".join(f"\n\nNot measured: `{r['backbone']}` on {r['runtime']} {r['precision']}: "
                      f"{r['reason'].rstrip('.')}." for r in data.get("refused", []))
    return _report().extract_table(data) + refused


def _header(name: str, data: dict) -> str:
    if "candidates" in data and not (data.get("machine") or data.get("cpu")):
        # a resolution runs nothing: no CPU to name, the command it ran instead
        return f"**No CPU: a package resolution,** `{data['command']}`."
    return cpu_line(data)


def _recipe_words(recipe: dict) -> str:
    return " ".join(str(v) for v in (recipe.get("backbone"),
                                     f"taps {recipe['taps']}" if recipe.get("taps") else "head",
                                     "mirror" if recipe.get("mirror") else "",
                                     recipe.get("classifier")) if v)


def _accuracy_ci(run: dict) -> str:
    lo, hi = run.get("test_accuracy_ci") or (None, None)
    return (f"{_pct(run['test_accuracy'])} [{_pct(lo)}, {_pct(hi)}]"
            if run.get("test_accuracy") is not None else "–")


def _p(paired: dict | None) -> str:
    p = (paired or {}).get("p_value")
    if p is None:
        return "–"
    return f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.1g}"  # never a p of 0.00


def _against_sweep(run: dict) -> str:
    """McNemar's p against the sweep's choice and, when another model, its best by
    cross-validation."""
    choice, best = run.get("auto_vs_sweep"), run.get("auto_vs_sweep_best_cv")
    if best is None or best == choice:
        return _p(choice)
    return f"its choice: {_p(choice)}; its best by CV: {_p(best)}"


def _auto(data: dict) -> str:
    """Each run of ``bench/auto.py``: the recipe ``tlearn auto`` chose within its budget, its
    test accuracy beside the default recipe's (and the exhaustive sweep's, where run), the
    time used, and the candidates."""
    sweeps = data.get("sweeps") or {}
    lines = ["| dataset | budget | chosen | test accuracy [95 % CI] | seconds used "
             "| within budget + 10 % | default recipe | its accuracy [95 % CI] | its seconds "
             "| paired test | paired test against the sweep |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for run in data["runs"]:
        auto, default = run["auto"], run.get("default") or {}
        recipe = auto.get("recipe") or {}
        lines.append(
            f"| {auto['dataset']} | {auto['budget']} "
            f"| {_recipe_words(recipe) if recipe else 'refused'} | {_accuracy_ci(auto)} "
            f"| {auto.get('elapsed_s', 0):.0f} of {auto.get('budget_s', 0):.0f} "
            f"| {'yes' if auto.get('within_budget_plus_10pct') else 'no'} "
            f"| {default.get('recipe', '–')} | {_accuracy_ci(default)} "
            f"| {default.get('wall_seconds', 0):.0f} | {_p(run.get('auto_vs_default'))} "
            f"| {_against_sweep(run)} |")
        statuses: dict[str, int] = {}
        for candidate in auto.get("candidates", []):
            statuses[candidate["status"]] = statuses.get(candidate["status"], 0) + 1
        if auto.get("why"):
            notes.append(f"{auto['dataset']}, {auto['budget']}: {auto['why']} (candidates: "
                         + ", ".join(f"{n} {k}" for k, n in statuses.items()) + ").")
        elif auto.get("refused"):
            notes.append(f"{auto['dataset']}, {auto['budget']}: {auto['refused']}")
    if not data["runs"]:  # a file of sweeps only (``bench/auto.py --sweep-only``)
        lines = []
    if sweeps:
        lines += ["", "| dataset | exhaustive sweep's choice | test accuracy [95 % CI] "
                  "| seconds | candidates on the whole train split | best by cross-validation "
                  "(its CV accuracy) | its test accuracy [95 % CI] | paired test of the two |",
                  "|---|---|---|---|---|---|---|---|"]
        for dataset, sweep in sweeps.items():
            whole = sum(c["status"] in ("finalist", "winner") for c in sweep["candidates"])
            best = sweep.get("best_cv")
            best_cells = ("– | – | –" if best is None else
                          f"{_recipe_words(best['recipe'])} ({_pct(best['cv_accuracy'])}) "
                          f"| {_accuracy_ci(best)} | "
                          + ("the same model" if best["is_the_choice"]
                             else _p(best.get("vs_the_choice"))))
            lines.append(f"| {dataset} | {_recipe_words(sweep['recipe'])} "
                         f"| {_accuracy_ci(sweep)} | {sweep['elapsed_s']:.0f} | {whole} "
                         f"| {best_cells} |")
            if sweep.get("why"):
                notes.append(f"{dataset}, exhaustive sweep: {sweep['why']}")
    not_run = f"\n\nNot run: {data['not_run']}." if data.get("not_run") else ""
    return "\n".join(lines).strip("\n") + ("\n\n" + "\n\n".join(notes) if notes else "") + not_run


def render(name: str) -> str:
    """The tables of ``bench/results/<name>.json``, headed by the CPU they ran on (a
    package resolution, which runs nothing, by the command it ran)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    report = _report()
    # by the file's stem: extract_intel_amx is an extract result, and so on
    renderers = [("extract_keras_modern_runtimes", _keras_modern_runtimes),
                 ("extract_keras_modern", _keras_modern), ("extract", report.extract_table),
                 ("train", report.train_table),
                 ("compare_stages", report.stages_table), ("serve_attacks", _serve_attacks),
                 ("serve_token", _serve_token), ("serve", report.serve_table),
                 ("predict", report.predict_table), ("engines", report.engines_table),
                 ("backbones", _backbones), ("calibration", _calibration),
                 ("imbalanced", _imbalanced), ("auto", _auto), ("unknown", _unknown),
                 ("backends", _backends),
                 ("decode", _decode), ("check", _check),
                 ("gpu_install_resolution", _install_resolution)]
    render_table = next(f for prefix, f in renderers if name.startswith(prefix))
    body = render_table(data)
    # report.py's renderers that name the machine themselves end with that line: keep one
    body = re.sub(r"\n\nMeasured on [^\n]*$", "", body)
    return f"{_header(name, data)} Result file: `bench/results/{name}.json`.\n\n{body}"


def result_names() -> list[str]:
    return sorted(p.stem for p in RESULTS.glob("*.json"))


def _backbones_table():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("backbones_table")


def backbone_rates(name: str) -> str:
    """``bench/backbones_table.py``'s table of ``bench/results/<name>.json``: its rates
    joined with the registry's facts and the published ImageNet figures."""
    return _backbones_table().table(RESULTS / f"{name}.json")


def _unknown_scores_block() -> str:
    data = json.loads((RESULTS / "unknown.json").read_text())
    return (f"{cpu_line(data)} Result file: `bench/results/unknown.json`.\n\n"
            + unknown_scores(data))


def on_page_markdown(markdown: str, **kwargs) -> str:
    markdown = BACKBONE_RATES.sub(lambda m: backbone_rates(m.group(1)), markdown)
    markdown = UNKNOWN_SCORES.sub(lambda m: _unknown_scores_block(), markdown)
    markdown = BACKBONE_SOURCES.sub(lambda m: _backbones_table().sources(), markdown)
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
