"""Stage deps that cannot drift: each DVC stage must list every project module its command imports.

A stage's `cmd` is `python -m tasks.<stage>`; its code is that module plus every project
module it imports, transitively (lazy imports inside functions included, since they run
too). Each of them must be covered by a dep in `dvc.yaml` (the file itself, or a folder
holding it, e.g. `xray/data`), or an edit to it leaves the stage's outputs cached and wrong.
A listed code dep that the stage does not import is reported as well: it reruns the stage for
nothing. A code dep is a `.py` file or a folder holding `.py` files (a data folder holds
none); a folder counts as used when the stage imports any module in it. Package
`__init__.py` files are not counted (they hold no stage logic).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from xray.core.errors import InputError
from xray.core.yaml_text import load_yaml

DVC_YAML = "dvc.yaml"
CMD_MODULE_RE = re.compile(r"python(?:3)? -m ([\w.]+)")


@dataclass(frozen=True)
class StageDeps:
    """What one stage imports and what dvc.yaml lists for it."""

    stage: str
    needed: tuple[str, ...]  # project .py files the command imports (transitively)
    missing: tuple[str, ...]  # needed but not covered by a dep
    unused: tuple[str, ...]  # listed code deps (files, folders) holding nothing it imports
    covers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each code dep -> needed files in it

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unused


def _covers(dep: str, file: str) -> bool:
    """True when the dep path (a file or a folder) is file or holds it."""
    return file == dep or file.startswith(dep + "/")


def _is_code_dep(dep: str, root: Path) -> bool:
    """A `.py` file, or a folder in root holding a `.py` file (at any depth)."""
    if dep.endswith(".py"):
        return True
    folder = root / dep
    return folder.is_dir() and next(folder.rglob("*.py"), None) is not None


def module_file(module: str, root: Path) -> str | None:
    """The project file of a dotted module name (relative to root), None outside the project."""
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, package: str) -> Iterable[str]:
    """Every dotted name an `import` or `from ... import` in the tree may refer to."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_closure(entry: str, root: Path) -> set[str]:
    """The project files imported by the file `entry`, itself included, transitively."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            tree = ast.parse((root / path).read_text(), filename=path)
        except SyntaxError as e:
            raise InputError(f"{path}: cannot parse ({e.msg}, line {e.lineno})") from None
        package = str(Path(path).parent).replace("/", ".").strip(".")
        for name in _imported_names(tree, package):
            found = module_file(name, root)
            if found is not None and found not in seen:
                todo.append(found)
    return {p for p in seen if not p.endswith("__init__.py")}


def _dep_paths(deps: list[object]) -> list[str]:
    """Dep entries of a dvc.yaml stage as plain paths."""
    return [d if isinstance(d, str) else next(iter(d)) for d in deps or []]  # type: ignore[arg-type]


def check_stages(root: Path = Path(".")) -> list[StageDeps]:
    """Compare each `python -m` stage's import closure with its deps in root/dvc.yaml."""
    path = root / DVC_YAML
    try:
        stages = (load_yaml(path.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    results = []
    for name, stage in stages.items():
        match = CMD_MODULE_RE.search(str(stage.get("cmd", "")))
        if not match:
            continue
        entry = module_file(match.group(1), root)
        if entry is None:
            raise InputError(f"{path}: stage {name}: no module {match.group(1)} in the project")
        needed = import_closure(entry, root)
        deps = [d.rstrip("/") for d in _dep_paths(stage.get("deps"))]
        code = [d for d in deps if _is_code_dep(d, root)]
        covers = tuple((d, tuple(sorted(p for p in needed if _covers(d, p)))) for d in code)
        results.append(
            StageDeps(
                stage=name,
                needed=tuple(sorted(needed)),
                missing=tuple(sorted(p for p in needed if not any(_covers(d, p) for d in deps))),
                unused=tuple(sorted(d for d, files in covers if not files)),
                covers=covers,
            )
        )
    return results


def describe_deps(result: StageDeps) -> list[str]:
    """For `xray deps -v`: each code dep of a stage and the modules it covers, one per line."""
    lines = [f"{result.stage}:"]
    for dep, files in result.covers:
        shown = [f[len(dep) + 1 :] for f in files] if files and files != (dep,) else []
        inside = f" ({', '.join(shown)})" if shown else ""
        lines.append(f"  {dep}{inside}" if files else f"  {dep} (unused: imports nothing in it)")
    lines += [f"  {f} (missing: not a dep)" for f in result.missing]
    return lines


def describe(results: list[StageDeps]) -> str:
    """One line: every problem, or that the deps are complete."""
    problems = []
    for r in results:
        if r.missing:
            problems.append(f"stage {r.stage} misses deps {', '.join(r.missing)}")
        if r.unused:
            problems.append(f"stage {r.stage} lists deps it never imports {', '.join(r.unused)}")
    if problems:
        return f"{DVC_YAML}: " + "; ".join(problems)
    return f"{DVC_YAML}: the deps of {len(results)} stages cover every project module they import"
