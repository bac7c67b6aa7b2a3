"""Render the benchmark results (``bench/results/*.json``) as markdown tables (the site's too).

Run after ``make bench``: ``.venv/bin/python bench/report.py``. Missing results are
reported as such, never filled in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def extract_table(data: dict) -> str:
    lines = ["| backbone | runtime | precision | forward img/s | end-to-end img/s "
             "| end-to-end / forward | vs TF float32 | convert s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["throughput"]:
        lines.append(f"| {r['backbone']} | {r.get('runtime', 'tensorflow')} | {r['precision']} "
                     f"| {r['forward_img_s']:.1f} | {r['end_to_end_img_s']:.1f} "
                     f"| {r['end_to_end_over_forward']:.2f} "
                     f"| {r.get('vs_tensorflow_float32', r.get('bf16_speedup_end_to_end')):.2f}x "
                     f"| {r.get('prepare_seconds', 0.0):.1f} |")
    if data.get("accuracy"):
        lines += ["", "| dataset | runtime | precision | images | extract img/s | test accuracy |",
                  "|---|---|---|---|---|---|"]
        for a in data["accuracy"]:
            lines.append(f"| {a['dataset']} | {a['runtime']} | {a['precision']} | "
                         f"{a['images']:,} | {a['extract_img_s']:.1f} | "
                         f"{100 * a['test_accuracy']:.2f}% |")
    peak = data.get("peak_rss_mb") or {}
    if peak:
        lines.append("")
        lines.append(f"Peak memory of `tlearn extract` (`efficientnet_lite0`): "
                     f"{peak['300']:.0f} MB for 300 images, {peak['3000']:.0f} MB for 3,000 "
                     f"(+{data['rss_growth_mb']:.0f} MB).")
    return "\n".join(lines)


def train_table(data: dict) -> str:
    lines = ["| features | recipe | rows x columns | seconds | speed-up | peak extra MB | "
             "peak / training matrix | test accuracy | vs classic | C | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in data["results"].items():
        for recipe, r in rows.items():
            lines.append(
                f"| {name} | {recipe} | {r['rows']:,} x {r['features']:,} | {r['seconds']:.2f} "
                f"| {r['speedup_vs_classic']:.1f}x | {r['peak_extra_mb']:.0f} | "
                f"{r['peak_over_train_matrix']:.2f} | {100 * r['test_accuracy']:.2f}% | "
                f"{r['accuracy_points_vs_classic']:+.2f} | {r['chosen_C']:g} | "
                f"{r['loadavg_before'][0]:.1f} |")
    return "\n".join(lines)


def _machine_line(data: dict) -> str:
    machine = data.get("machine")
    if not machine:
        return ""
    flags = " ".join(f for f, on in machine["flags"].items() if on)
    return f"\n\nMeasured on {machine['model']}, {machine['cpus']} CPUs ({flags})."


def _stages_table_single_split(data: dict) -> str:
    """Results of the earlier benchmark (one split, no intervals)."""
    lines = ["| dataset | method | test images | test accuracy | wall time |",
             "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['test_images']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['wall_seconds']:.0f} s |")
    return "\n".join(lines) + "\n\n(one seeded split, before intervals were reported)"


def stages_table(data: dict) -> str:
    if "summary" not in data:
        return _stages_table_single_split(data)
    lines = ["| dataset | method | test images per split | accuracy per seed | mean | "
             "pooled 95 % interval | wall time |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for r in data["summary"]:
        if "per_seed" in r:
            verdicts += [f"- {r['dataset']}, seed {v['seed']}: {v['verdict']}"
                         for v in r["per_seed"]]
            continue
        lines.append(f"| {r['dataset']} | {r['method']} | {r['test_images_per_seed']} | "
                     + ", ".join(f"{100 * a:.1f}%" for a in r["accuracy_per_seed"])
                     + f" | {100 * r['accuracy_mean']:.2f}% | [{100 * r['pooled_95ci'][0]:.1f}, "
                     f"{100 * r['pooled_95ci'][1]:.1f}] | {r['wall_seconds']:.0f} s |")
    if verdicts:
        lines += ["", "McNemar's exact test, fine-tuning against features + logreg, on the "
                  "same test images:", "", *verdicts]
    return "\n".join(lines) + _machine_line(data)


def serve_table(data: dict) -> str:
    lines = ["| runtime | batching | images/request | clients | answered | 503 | requests/s "
             "| images/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    memory = []
    for v in data["variants"]:
        for r in v["rows"]:
            lines.append(
                f"| {v.get('runtime', 'tensorflow')} | {'on' if v['batching'] else 'off'} | "
                f"{r['images_per_request']} | {r['clients']} | {r['answered']} | "
                f"{r['refused_503']} | {r['requests_per_second']:.1f} | "
                f"{r['images_per_second']:.1f} | "
                + (f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} |" if r["p50_ms"] else "- | - |"))
        memory.append(f"{v.get('runtime', 'tensorflow')} with batching "
                      f"{'on' if v['batching'] else 'off'}: {v['rss_mb_before']:.0f} MB before "
                      f"the load, {v['rss_mb_after']:.0f} MB after")
    lines += ["", "Server memory (RSS): " + "; ".join(memory) + "."]
    return "\n".join(lines) + _machine_line(data)


def predict_table(data: dict) -> str:
    peak = data["peak_rss_mb"]
    lines = [f"`tlearn predict` ({data['backbone']} + {data['classifier']}) classified "
             f"{data['images']:,} images at {data['predict_images_per_second']:.1f} img/s, "
             f"against {data['extract_images_per_second']:.1f} img/s for `tlearn extract` "
             f"with the same backbone on the same images "
             f"({data['predict_over_extract']:.2f}x). Peak memory of one `tlearn predict` "
             f"process: {peak['300']:.0f} MB for 300 images, {peak['3000']:.0f} MB for 3,000 "
             f"({data['peak_growth_mb']:+.0f} MB)."]
    return "\n".join(lines) + _machine_line(data)


def engines_table(data: dict) -> str:
    lines = ["| images | local img/s | ray img/s | ray / local | local s | ray s "
             "| first batch s (local, ray) | load |", "|---|---|---|---|---|---|---|---|"]
    for run in data["runs"]:
        a, b = run["local"], run["ray"]
        lines.append(f"| {a['images']} | {a['img_s']:.1f} | {b['img_s']:.1f} "
                     f"| {run['ratio']:.2f} | {a['seconds']:.1f} | {b['seconds']:.1f} "
                     f"| {a['first_batch_s']:.1f}, {b['first_batch_s']:.1f} "
                     f"| {run['load'][0]:.1f} |")
    w = data["writer"]
    if data.get("marginal"):
        m = data["marginal"]
        lines += ["", f"Between {m['from']} and {m['to']} images (the fixed costs cancel): "
                  f"local {m['local_img_s']:.1f} img/s, ray {m['ray_img_s']:.1f} img/s, "
                  f"ray / local {m['ratio']:.2f}."]
    lines += ["", f"Ray: {data['ray_actors']} actors; starting a local Ray took "
              f"{data['ray_start_s']:.1f} s (not in the figures above; a command without "
              "--address pays it once). Driver-side writer alone: "
              f"{w['rows_s']:,.0f} rows/s ({w['mb_s']:.0f} MB/s of {w['feature_dim']}-value "
              f"float32 rows, batches of {w['batch']}).",
              f"Load average {data['load_before'][0]:.2f} before, "
              f"{data['load_after'][0]:.2f} after; {describe(data['machine'])}."]
    return "\n".join(lines)


def main() -> None:
    for name, render in (("extract", extract_table), ("train", train_table),
                         ("compare_stages", stages_table), ("serve", serve_table),
                         ("predict", predict_table), ("engines", engines_table)):
        data = _load(name)
        print(f"## {name}\n")
        print(render(data) if data else f"(no results: run bench/{name}.py)")
        print()


if __name__ == "__main__":
    main()
