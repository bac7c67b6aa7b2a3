"""MkDocs hook: benchmark tables rendered from ``bench/results/*.json`` at build time.

A page holds lines ``<!-- generated: bench NAME -->``; each becomes the tables of
``bench/results/NAME.json`` headed by the CPU it ran on, so no figure on the site is
typed by hand. The tables ``bench/report.py`` already prints are rendered by its own
functions; the other results by the renderers below. A marker naming a result file
that does not exist fails the build.
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
    load = data["load_average_before"][0], data["load_average_after"][0]
    return "\n".join(lines) + (f"\n\n{data['images']} images, {data['rounds']} round(s); "
                               f"load average {load[0]:.1f} before, {load[1]:.1f} after.")


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
    return (f"{data['features']}; {data['per_class']} images a class; strangers flagged "
            f"while {_pct(data['coverage'])} of known test images are accepted.\n\n"
            + "\n".join(lines))


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


def render(name: str) -> str:
    """The tables of ``bench/results/<name>.json``, headed by the CPU they ran on."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    report = _report()
    # by the file's stem: extract_intel_amx is an extract result, and so on
    renderers = [("extract_keras_modern", _keras_modern), ("extract", report.extract_table),
                 ("train", report.train_table),
                 ("compare_stages", report.stages_table), ("serve_attacks", _serve_attacks),
                 ("serve_token", _serve_token), ("serve", report.serve_table),
                 ("predict", report.predict_table), ("engines", report.engines_table),
                 ("backbones", _backbones), ("calibration", _calibration),
                 ("imbalanced", _imbalanced), ("unknown", _unknown)]
    render_table = next(f for prefix, f in renderers if name.startswith(prefix))
    body = render_table(data)
    # report.py's renderers that name the machine themselves end with that line: keep one
    body = re.sub(r"\n\nMeasured on [^\n]*$", "", body)
    return f"{cpu_line(data)} Result file: `bench/results/{name}.json`.\n\n{body}"


def result_names() -> list[str]:
    return sorted(p.stem for p in RESULTS.glob("*.json"))


def on_page_markdown(markdown: str, **kwargs) -> str:
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
