"""Render the benchmark results (``bench/results/*.json``) as the README's markdown tables.

Run after ``make bench``: ``.venv/bin/python bench/report.py``. Missing results are
reported as such, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

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
             "peak / matrix | test accuracy | vs classic | C |", "|---|---|---|---|---|---|---|"
             "---|---|---|"]
    for name, rows in data["results"].items():
        for recipe, r in rows.items():
            lines.append(
                f"| {name} | {recipe} | {r['rows']:,} x {r['features']:,} | {r['seconds']:.1f} "
                f"| {r['speedup_vs_classic']:.1f}x | {r['peak_extra_mb']:.0f} | "
                f"{r['peak_over_matrix']:.2f} | {100 * r['test_accuracy']:.2f}% | "
                f"{r['accuracy_points_vs_classic']:+.2f} | {r['chosen_C']:g} |")
    return "\n".join(lines)


def stages_table(data: dict) -> str:
    lines = ["| dataset | method | test images | test accuracy | wall time |",
             "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['test_images']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['wall_seconds']:.0f} s |")
    per_epoch = [r for r in data["rows"] if "seconds_per_epoch" in r]
    for r in per_epoch:
        s = r["seconds_per_epoch"]
        lines.append("")
        lines.append(f"Fine-tuning {r['dataset']}: {s['warmup']:.0f} s per warm-up epoch, "
                     f"{s['finetune']:.0f} s per fine-tuning epoch ({r['epochs']} epochs).")
    return "\n".join(lines)


def serve_table(data: dict) -> str:
    lines = ["| clients | requests | requests/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | "
                     f"{r['requests_per_second']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    for name, render in (("extract", extract_table), ("train", train_table),
                         ("compare_stages", stages_table), ("serve", serve_table)):
        data = _load(name)
        print(f"## {name}\n")
        print(render(data) if data else f"(no results: run bench/{name}.py)")
        print()


if __name__ == "__main__":
    main()
