"""The import rules of docs/architecture.md: layers are folders, imports point down, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "flows", "xray")
LAYERS: dict[str, int] = {
    "xray.perturbations.names": 0,  # the suite's names, for params (no numpy code, no imports)
    "xray.core": 1,
    "xray.data": 2,
    "xray.perturbations": 2,
    "xray.models": 3,
    "xray.adaptation": 4,
    "xray.reports": 5,
    "xray.records": 6,
    "xray.runner": 6,
    "tasks": 7,  # the six stage entry points
    "flows": 7,  # the Prefect flow and its deployment
    "xray.cli": 8,
}
"""Layer of each folder (the longest matching prefix wins): an import may point to a lower
layer or inside its own folder, never up and never sideways into another folder."""
LIBRARY_MAX_LINES = 400
STAGE_MAX_LINES = 80


def modules() -> dict[str, Path]:
    """Every project module by dotted name (package __init__ files included)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (anywhere in the file, lazily too)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in known else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        graph[name] = {m for m in found if m in known} - {name}
    return graph


def folder(module: str) -> str:
    """The LAYERS key a module belongs to (longest prefix)."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    assert keys, f"{module} is in no layer of LAYERS"
    return max(keys, key=len)


def test_every_module_has_a_layer() -> None:
    for name in modules():
        if name not in PACKAGES:
            folder(name)


def test_imports_point_down_the_layers() -> None:
    """No import up a layer, none sideways into another folder of the same layer."""
    bad = []
    for name, deps in imports().items():
        if name in PACKAGES:
            continue
        here = folder(name)
        for dep in deps:
            if dep in PACKAGES:
                continue
            there = folder(dep)
            if there != here and LAYERS[there] >= LAYERS[here]:
                bad.append(f"{name} -> {dep}")
    assert bad == []


def test_package_inits_hold_no_code() -> None:
    """Importing a package has no side effect: its __init__.py is a docstring at most."""
    for path in modules().values():
        if path.name == "__init__.py":
            body = ast.parse(path.read_text()).body
            assert all(
                isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body
            ), path


def test_module_sizes() -> None:
    """Library modules stay under 400 lines, stage entry points under 80."""
    big = {}
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        limit = STAGE_MAX_LINES if name.startswith("tasks.") else LIBRARY_MAX_LINES
        if lines > limit:
            big[str(path.relative_to(ROOT))] = lines
    assert big == {}


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


def test_layer_check_sees_an_upward_import() -> None:
    """folder() and LAYERS rank a core module below a report module."""
    assert LAYERS[folder("xray.core.io")] < LAYERS[folder("xray.reports.metrics")]
    assert folder("xray.perturbations.names") == "xray.perturbations.names"


def test_the_layout_is_described_where_users_look() -> None:
    """Every library folder is named in `xray --help`, docs/architecture.md and LAYERS."""
    from xray.cli.main import EPILOG

    folders = sorted(p.name for p in (ROOT / "xray").iterdir() if (p / "__init__.py").exists())
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert folders == sorted(k.split(".")[1] for k in LAYERS if k.count(".") == 1)
    for name in folders:
        assert name in EPILOG.split("code:")[1], name
        assert f"`xray/{name}`" in doc or f"  {name}/" in doc, name
