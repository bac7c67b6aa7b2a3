"""The layout's rules: no import circle, and a lower floor never imports a higher one.

``features`` (image files to feature vectors) < ``classifiers`` (feature vectors to
decisions) < ``pipeline`` (what a user runs). Read from the source with ``ast``, imports
inside functions included, so a circle cannot hide in a function body.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FLOORS = ("features", "classifiers", "pipeline")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for floor in FLOORS for p in (REPO_ROOT / floor).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_module_imports_a_higher_floor():
    rank = {floor: i for i, floor in enumerate(FLOORS)}
    upward = sorted(f"{a} imports {b}" for a, targets in _imports().items() for b in targets
                    if rank[b.split(".")[0]] > rank[a.split(".")[0]])
    assert not upward


def test_there_is_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}
    circles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            # A package's __init__ re-exporting its own modules is not a circle of trades.
            if nxt in node.split(".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles


@pytest.mark.parametrize("runtime_module", ["features.runtimes"])
def test_runtimes_compile_a_given_network_and_never_build_one(runtime_module):
    assert not _imports()[runtime_module] & {"features.backbones", "features.networks",
                                             "features.factory"}
