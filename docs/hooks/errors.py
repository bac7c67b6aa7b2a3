"""MkDocs hook: every one-line error a user can meet, collected from the code at build time.

A user mistake is a :class:`features.errors.UserInputError` (or a subclass), or a line the
command line prints with :func:`pipeline.cli.errors.fail`; the message names the problem
and the fix. This hook reads every such call in ``features/``, ``classifiers/`` and
``pipeline/`` with :mod:`ast` and replaces ``<!-- generated: errors -->`` with them, one
table per package, so the troubleshooting page lists what the code raises today. Parts
computed at run time (an f-string's fields) are shown as ``{name}``, or ``{...}`` for
an expression.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("features", "classifiers", "pipeline")
MARKER = "<!-- generated: errors -->"
RAISERS = {"UserInputError", "WeightsUnavailableError", "UnknownNameError", "fail"}


def _text(node: ast.AST) -> str | None:
    """The message a call's first argument spells, fields as ``{...}``; None if not text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{" + _field(value.value) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None and right is not None:
            return left + right
        return None
    return None


def _field(node: ast.AST) -> str:
    """A run-time field as a reader sees it: ``{path}`` for ``self.path``, else ``{...}``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and not node.attr.startswith("_"):
        return node.attr
    return "..."


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def user_errors() -> list[tuple[str, str]]:
    """``(module path, message)`` of every user error the code raises with a literal text."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            # a message kept in a module constant (RAY_MISSING = "...") and raised by name
            constants = {target.id: node.value.value for node in tree.body
                         if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                         and isinstance(node.value.value, str)
                         for target in node.targets if isinstance(target, ast.Name)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and _callee(node) in RAISERS and node.args):
                    first = node.args[0]
                    message = (constants.get(first.id) if isinstance(first, ast.Name)
                               else _text(first))
                    if message:
                        found.append((str(path.relative_to(ROOT)), " ".join(message.split())))
    return list(dict.fromkeys(found))


def errors_reference() -> str:
    lines = []
    for package in PACKAGES:
        rows = [(where, msg) for where, msg in user_errors() if where.startswith(package + "/")]
        lines += [f"### In `{package}/`", "", "| error line | raised in |", "|---|---|"]
        lines += [f"| {_cell(msg)} | `{where}` |" for where, msg in rows]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    # shown as code: placeholders and brackets stay literal, and a '|' cannot end the cell
    return "`` " + text.replace("|", "\\|").replace("`", "'") + " ``"


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, errors_reference())
    return markdown
