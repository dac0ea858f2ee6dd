"""The layers of docs/architecture.md, checked on the source: imports run one way and in no circle.

    tsp_model.core  <-  nn, data  <-  engine  <-  al  <-  simulation      (viz, synth: core and data)
    tsp_labelstudio (the Label Studio format)  <-  tsp_backend, tsp_cli   (neither imports the other)

Every import counts, also one written inside a function: a late import still makes the lower
layer depend on the upper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tsp_model", "tsp_labelstudio", "tsp_backend", "tsp_cli")

# layer -> the layers it may import (itself included)
ALLOWED = {
    "tsp_model.core": {"tsp_model.core"},
    "tsp_model.nn": {"tsp_model.core", "tsp_model.nn"},
    "tsp_model.data": {"tsp_model.core", "tsp_model.data"},
    "tsp_model.engine": {"tsp_model.core", "tsp_model.nn", "tsp_model.data", "tsp_model.engine"},
    "tsp_model.al": {"tsp_model.core", "tsp_model.nn", "tsp_model.data", "tsp_model.engine", "tsp_model.al"},
    "tsp_model.simulation": {"tsp_model.core", "tsp_model.nn", "tsp_model.data", "tsp_model.engine", "tsp_model.al",
                             "tsp_model.simulation"},
    "tsp_model.viz": {"tsp_model.core", "tsp_model.data", "tsp_model.viz"},
    "tsp_model.synth": {"tsp_model.core", "tsp_model.data", "tsp_model.synth"},
    "tsp_model": {"tsp_model.nn"},  # the package's lazy TSPMaskRCNN / build_model
    "tsp_labelstudio": {"tsp_model.core", "tsp_model.data", "tsp_labelstudio"},
    "tsp_backend": {"tsp_model", "tsp_labelstudio", "tsp_backend"},
    "tsp_cli": {"tsp_model", "tsp_labelstudio", "tsp_cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> every project module it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = _module_name(path)
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found |= {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level:
                    raise AssertionError(f"{name}: relative import; write the absolute module")
            graph[name] = {m for m in found if m.split(".")[0] in PACKAGES}
    return graph


def _layer(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    raise AssertionError(f"{module}: in no layer of docs/architecture.md")


def _resolve(graph: dict[str, set[str]], target: str) -> str | None:
    """The project module an import names (``pkg.mod.func`` -> ``pkg.mod``)."""
    while target and target not in graph:
        target = target.rpartition(".")[0]
    return target or None


GRAPH = _imports()


def test_every_import_points_down_the_layers():
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        allowed = ALLOWED[_layer(module)]
        for target in sorted(targets):
            resolved = _resolve(GRAPH, target)
            if resolved is None or resolved == "tsp_model" and _layer(module) != "tsp_model":
                continue
            if not any(resolved == a or resolved.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} -> {resolved}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = {m: {r for t in ts if (r := _resolve(GRAPH, t)) and r != m} for m, ts in GRAPH.items()}
    # a package's __init__ importing its own modules is not a cycle of concepts
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_in_a_layer(package):
    for module in GRAPH:
        if module.startswith(package):
            _layer(module)
