"""MkDocs hook: the API reference lists every public name the packages export.

The public names are those ``features`` and ``classifiers`` export on first use (their
``_HOMES``) and the ``__all__`` of ``pipeline.workflows`` and ``pipeline.stage3``, plus the
serving, export and model-loading entry points. ``<!-- generated: api -->`` becomes one
mkdocstrings block per name, so a name added to an export list appears here without an
edit, and a name mkdocstrings cannot find fails the strict build.
"""

from __future__ import annotations

import importlib

MARKER = "<!-- generated: api -->"

# modules whose public names are what a library user calls, beyond the export lists
ENTRY_POINTS = {
    "pipeline.image_classifiers": ["ImageClassifier", "load_image_classifier"],
    "pipeline.serving": ["serve", "create_app", "ServeLimits"],
    "pipeline.export": ["export_model", "read_export_manifest"],
}


def public_names() -> dict[str, list[str]]:
    """``{section: [dotted path mkdocstrings documents]}``, every public name once."""
    sections: dict[str, list[str]] = {}
    for package in ("features", "classifiers"):
        homes = importlib.import_module(package)._HOMES
        sections[package] = [f"{homes[name]}.{name}" for name in sorted(homes)]
    for package in ("pipeline.workflows", "pipeline.stage3"):
        names = importlib.import_module(package).__all__
        sections[package] = [f"{package}.{name}" for name in names]
    sections["pipeline: models, serving, export"] = [
        f"{module}.{name}" for module, names in ENTRY_POINTS.items() for name in names]
    return sections


def api_reference() -> str:
    lines = []
    for section, paths in public_names().items():
        lines += [f"## `{section}`" if "." in section or section.isidentifier()
                  else f"## {section}", ""]
        for path in paths:
            lines += [f"::: {path}", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, api_reference())
    return markdown
