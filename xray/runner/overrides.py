"""Param overrides for a run: dotted keys written into params.yaml, like `dvc exp run -S`."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from xray.core.dvc_private import modify_yaml
from xray.core.errors import InputError
from xray.core.params import ParamsError, load_params, parse_params


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
        data = yaml.safe_load(path.read_text())
        for key, value in overrides.items():
            _set_key(data, key, value)
        parse_params(data, f"{path} with the overrides")


def apply_overrides(root: Path, overrides: dict[str, Any]) -> list[str]:
    """Write dotted-key overrides into params.yaml (like `dvc exp run -S`); return changed keys."""
    path = root / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run inside the project)")
    original = path.read_bytes()
    with modify_yaml(path) as data:
        changed = [key for key, value in overrides.items() if _set_key(data, key, value)]
    try:
        load_params(path)
    except ParamsError:
        path.write_bytes(original)
        raise
    return changed
