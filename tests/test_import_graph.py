"""meshrtc's modules import each other without a cycle (a function-level import counts too)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_no_import_cycle() -> None:
    graph = _import_graph()
    assert len(graph) > 50  # the scan found the package
    assert "meshrtc.pipeline.nodes" in graph["meshrtc.pipeline.registry"]
    assert _cycle(graph) is None


def test_the_scan_sees_a_cycle() -> None:
    """The check can fail: the old node.py -> nodes -> node.py lookup is a cycle to it."""
    graph = _import_graph()
    graph["meshrtc.pipeline.node"].add("meshrtc.pipeline.nodes")
    assert _cycle(graph) is not None
