"""The backbone table of docs/guide/backbones.md, generated from recorded data only.

Joins the throughput rows of ``bench/extract.py`` result files (random weights: the
same compute as ImageNet ones) with the published ImageNet figures of
``bench/published.json`` and the registry's facts, and prints one Markdown table per
result file, with the machine and load average it was measured under.
Run: ``.venv/bin/python bench/backbones_table.py bench/results/extract_dinov2.json ...``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import describe  # noqa: E402

from features.backbones import get_backbone  # noqa: E402

PUBLISHED = json.loads((REPO / "bench" / "published.json").read_text())["backbones"]
VARIANTS = [("tensorflow", "float32"), ("openvino", "float32"), ("openvino", "int8")]


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def table(result_file: Path) -> str:
    """One Markdown table of ``result_file``'s backbones."""
    data = json.loads(result_file.read_text())
    rows = data["throughput"]
    names = list(dict.fromkeys(r["backbone"] for r in rows))
    rate = {(r["backbone"], r["runtime"], r["precision"]): r for r in rows}
    refused = {(r["backbone"], r["runtime"], r["precision"]) for r in data.get("refused", [])}
    head = ["backbone", "input", "parameters", "features (default pooling)",
            "ImageNet top-1 (published)", "linear probe (published)"]
    head += [f"{rt} {p} forward / end-to-end img/s" for rt, p in VARIANTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        config = get_backbone(name)
        tf_row = rate.get((name, "tensorflow", "float32"))
        params = f"{tf_row['parameters'] / 1e6:.1f} M" if tf_row and tf_row["parameters"] else "—"
        published = PUBLISHED.get(name, {})
        cells = [f"`{name}`", str(config.input_size), params,
                 f"{config.feature_size(config.default_pooling):,} ({config.default_pooling})",
                 _percent(published.get("imagenet_top1")),
                 _percent(published.get("linear_probe_top1"))]
        for runtime, precision in VARIANTS:
            row = rate.get((name, runtime, precision))
            if (name, runtime, precision) in refused:
                cells.append("refused")
            else:
                cells.append("—" if row is None else
                             f"{row['forward_img_s']:.1f} / {row['end_to_end_img_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    load = (f"load average {data['load_average_before'][0]:.0f} before, "
            f"{data['load_average_after'][0]:.0f} after")
    caption = (f"`{result_file.relative_to(REPO)}`: {describe(data['machine'])}, {load}; "
               f"{data['images']} images, batch {data['batch_size']}, {data['rounds']} round(s).")
    return caption + "\n\n" + "\n".join(lines)


def sources() -> str:
    """The sources of the published figures, one line each."""
    return "\n".join(f"- `{name}`: {entry['source']}" for name, entry in PUBLISHED.items())


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(table(Path(path).resolve()), end="\n\n")
    print(sources())
