"""Param overrides for a run: dotted keys written into params.yaml, like `dvc exp run -S`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xray.core.dvc_private import modify_yaml
from xray.core.errors import InputError
from xray.core.params import ParamsError, load_params


def apply_overrides(root: Path, overrides: dict[str, Any]) -> list[str]:
    """Write dotted-key overrides into params.yaml (like `dvc exp run -S`); return changed keys."""
    path = root / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run inside the project)")
    original = path.read_bytes()
    changed: list[str] = []
    with modify_yaml(path) as data:
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise InputError(f"overrides: {key}: no section {part!r} in params.yaml")
                node = node[part]
            if parts[-1] not in node:
                raise InputError(f"overrides: {key}: no such key in params.yaml")
            if node[parts[-1]] != value:
                node[parts[-1]] = value
                changed.append(key)
    try:
        load_params(path)
    except ParamsError:
        path.write_bytes(original)
        raise
    return changed
