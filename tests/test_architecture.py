"""The import rules of docs/architecture.md: one-way layers, no cycles, checked from the code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("download", "split", "corrupt", "train_base", "finetune", "evaluate")
FOUNDATION = {
    f"tasks.{m}"
    for m in (
        "params",
        "corruptions",
        "io",
        "progress",
        "cli_support",
        "hashing",
        "git",
        "text",
        "model_file",
        "adapt_settings",
    )
}
"""The bottom layer of docs/architecture.md: modules that import only each other."""


def imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for package in ("tasks", "flows"):
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}"
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module in ("tasks", "flows"):
                        found |= {f"{node.module}.{a.name}" for a in node.names}
                    elif node.module.split(".")[0] in ("tasks", "flows"):
                        found.add(node.module)
                elif isinstance(node, ast.Import):
                    found |= {
                        a.name for a in node.names if a.name.split(".")[0] in ("tasks", "flows")
                    }
            graph[name] = found - {name}
    return graph


def test_tasks_never_import_flows() -> None:
    """The pipeline's stages and machinery run without Prefect's side of the project."""
    bad = {m: sorted(i for i in deps if i.startswith("flows.")) for m, deps in imports().items()}
    assert {m: d for m, d in bad.items() if m.startswith("tasks.") and d} == {}


def test_machinery_never_imports_a_stage_entry_point() -> None:
    """Stage modules (tasks/<stage>.py) are leaves for tasks/: only flows/ may import them."""
    entry = {f"tasks.{s}" for s in STAGES}
    bad = {
        m: sorted(deps & entry)
        for m, deps in imports().items()
        if m.startswith("tasks.") and deps & entry
    }
    assert bad == {}


def test_foundation_imports_only_the_foundation() -> None:
    """params, io, hashing, ... never reach up into machinery, entry points or flows/."""
    graph = imports()
    assert set(graph) >= FOUNDATION
    assert {m: sorted(graph[m] - FOUNDATION) for m in FOUNDATION if graph[m] - FOUNDATION} == {}


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """(start, last) pairs of every import cycle: start imports ... last, last imports start."""
    found: set[frozenset[str]] = set()
    for start in graph:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    found.add(frozenset({start, node}))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    return found


def test_no_import_cycles() -> None:
    """No two project modules import each other, directly or through others (lazily too)."""
    found = cycles(imports())
    assert found == set(), sorted(map(sorted, found))


def test_cycle_check_finds_a_cycle() -> None:
    """The check sees a direct cycle and one through a third module, and none in a chain."""
    assert cycles({"a": {"b"}, "b": {"a"}}) == {frozenset({"a", "b"})}
    assert frozenset({"a", "c"}) in cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()
