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
    from features.backbones import BACKBONE_TABLE_COLUMNS, backbone_table

    lines = ["| " + " | ".join(BACKBONE_TABLE_COLUMNS) + " |",
             "|" + "---|" * len(BACKBONE_TABLE_COLUMNS)]
    for name, *rest in backbone_table():
        lines.append(f"| `{name}` | " + " | ".join(rest) + " |")
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
