"""Param overrides for one run: dotted keys set in params.yaml for that run only.

`one_off_params` writes the overrides into params.yaml for the run (the stages read it, DVC
records it in dvc.lock, the record commits it) and puts the file back, byte for byte,
when the run ends: also after a failure, and after a kill at the start of the next run (the
original waits in .xray/, locked while its run lives). A scheduled run without overrides so
always runs the committed params. Only the changed values move: the file is edited as text at
the places the YAML parser reports for each value; comments, `null`s, list wrapping and key
order stay as they are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import yaml

from xray.core.errors import InputError
from xray.core.io import _try_lock, write_bytes_atomic
from xray.core.params import load_params, parse_params
from xray.core.yaml_text import load_yaml

BACKUP = Path(".xray") / "params.yaml.before-run"
"""The committed params.yaml while a run with overrides lives (restored by the next run)."""


def _set_key(data: dict[str, Any], key: str, value: Any) -> bool:
    """Set dotted `key` of parsed params to value; whether it changed (InputError if absent)."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise InputError(f"overrides: {key}: no section {part!r} in params.yaml")
        node = node[part]
    if parts[-1] not in node:
        raise InputError(f"overrides: {key}: no such key in params.yaml")
    if node[parts[-1]] == value:
        return False
    node[parts[-1]] = value
    return True


def check_overrides(root: Path, overrides: dict[str, Any], stages: Collection[str]) -> None:
    """Validate params.yaml for these stages with the overrides applied, writing nothing."""
    path = root / "params.yaml"
    load_params(path, stages)  # the file itself first: its own error, naming its key
    if overrides:
        data = load_yaml(path.read_text())
        for key, value in overrides.items():
            _set_key(data, key, value)
        parse_params(data, f"{path} with the overrides")


def _value_node(root: yaml.Node, key: str) -> yaml.Node:
    """The node of a dotted key's value in a composed YAML document."""
    node = root
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            raise InputError(f"overrides: {key}: no section in params.yaml")
        found = [v for k, v in node.value if k.value == part]
        if not found:
            raise InputError(f"overrides: {key}: no such key in params.yaml")
        node = found[0]
    return node


def _flow(value: Any) -> str:
    """A value as one line of flow-style YAML (`null`, `3`, `[a, b]`, `{k: 1}`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def set_keys(text: str, overrides: dict[str, Any]) -> tuple[str, list[str]]:
    """params.yaml text with each dotted key's value replaced in place; the changed keys.

    Only the characters of the changed values move (the parser's marks give where each value
    starts and ends); the result is checked to parse to the old values with the new ones set.
    """
    expected = load_yaml(text)
    changed = [k for k, v in overrides.items() if _set_key(expected, k, v)]
    root = yaml.compose(text)
    spans = []
    for key in changed:
        node = _value_node(root, key)
        spans.append((node.start_mark.index, node.end_mark.index, _flow(overrides[key])))
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    if load_yaml(text) != expected:  # a value the flow form cannot replace in place
        raise InputError(f"overrides: {', '.join(changed)}: cannot be written into params.yaml")
    return text, changed


def restore_params(root: Path) -> bool:
    """Put back the params.yaml that a killed run with overrides left its backup of; whether
    there was one. A backup whose run still lives (locked) is left alone."""
    backup = root / BACKUP
    if not backup.exists():
        return False
    fd = _try_lock(backup)
    if fd is None:  # its run is alive
        return False
    try:
        write_bytes_atomic(root / "params.yaml", backup.read_bytes())
        backup.unlink()
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def one_off_params(root: Path, overrides: dict[str, Any]) -> Iterator[list[str]]:
    """params.yaml with the overrides for the block (validated first); the changed keys.

    The file is put back as it was when the block ends, however it ends; a kill leaves the
    backup, which the next run's `one_off_params` (or `restore_params`) puts back first.
    """
    path = root / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run inside the project)")
    if restore_params(root):
        print(f"params.yaml: put back as committed (a run with overrides was stopped: {BACKUP})")
    if not overrides:
        yield []
        return
    original = path.read_bytes()
    text, changed = set_keys(original.decode(), overrides)
    parse_params(load_yaml(text), f"{path} with the overrides")
    backup = root / BACKUP
    write_bytes_atomic(backup, original)
    fd = _try_lock(backup)
    try:
        write_bytes_atomic(path, text.encode())
        yield changed
    finally:
        write_bytes_atomic(path, original)
        backup.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)
