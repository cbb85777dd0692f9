"""The schema of params.yaml: parsed once into pydantic models, one per stage section."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from xray.core.errors import InputError
from xray.core.sections import (
    AdaptParams,
    ComputeParams,
    CorruptParams,
    DataParams,
    EvaluateParams,
    FinetuneParams,
    SplitParams,
    SyntheticParams,
    TrainParams,
    _Section,
)
from xray.core.yaml_text import load_yaml

__all__ = [
    "PARAMS_FILE",
    "STAGES",
    "AdaptParams",
    "ComputeParams",
    "CorruptParams",
    "DataParams",
    "EvaluateParams",
    "FinetuneParams",
    "Params",
    "ParamsError",
    "SplitParams",
    "SyntheticParams",
    "TrainParams",
    "load_params",
    "parse_params",
]

PARAMS_FILE = Path("params.yaml")
STAGES = ("download", "split", "corrupt", "train_base", "finetune", "evaluate")

MOVED_KEYS = {"corrupt.workers": "compute.workers"}
"""Keys that moved to another section: their old place is named in the error."""


class ParamsError(InputError):
    """A bad params.yaml: the message is one line naming the key."""


class Params(_Section):
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    corrupt: CorruptParams = CorruptParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    adapt: AdaptParams = AdaptParams()
    compute: ComputeParams = ComputeParams()


def _describe(err: ValidationError, source: str) -> str:
    """One line for the first validation error, naming the dotted key."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        moved = f" (moved to {MOVED_KEYS[key]})" if key in MOVED_KEYS else ""
        return f"{source}: unknown key '{key}'{moved}"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{source}: {key}: {msg}{shown}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed YAML mapping; raise ParamsError with one line naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML refusing a key given twice in one mapping (DVC refuses it; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _stage_params(path: Path) -> list[tuple[str, str]]:
    """(stage, dotted key) of every params.yaml key the stages of the dvc.yaml beside it read."""
    try:
        stages = (load_yaml((path.parent / "dvc.yaml").read_text()) or {}).get("stages")
    except (OSError, yaml.YAMLError, AttributeError):
        return []  # no readable dvc.yaml: DVC's own check does not apply
    found = []
    for stage, spec in (stages or {}).items():
        for entry in (spec or {}).get("params") or []:
            if isinstance(entry, str):
                found.append((stage, entry))
            elif isinstance(entry, dict):  # {file: [keys]}: only this params file's keys
                for file, keys in entry.items():
                    if Path(file).name == path.name:
                        found += [(stage, k) for k in keys or []]
    return found


def _check_stage_keys(raw: Any, path: Path, stages: Collection[str] | None) -> None:
    """Every key the given dvc.yaml stages read is in the file, as `dvc repro` requires."""
    if raw is None:
        raise ParamsError(f"{path}: empty (dvc.yaml's stages read their sections from it)")
    for stage, dotted in _stage_params(path) if stages is not None else []:
        if stage not in stages:
            continue
        node = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{path}: no key '{dotted}' (dvc.yaml's stage {stage} reads it)")
            node = node[part]


def load_params(path: Path | str = PARAMS_FILE, stages: Collection[str] | None = None) -> Params:
    """Read and validate params.yaml, as strictly as `dvc repro` reads it.

    stages: also require every key that these dvc.yaml stages read (DVC checks only the
    stages it runs, so a stage's own entry point passes None and DVC has checked).
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or "syntax error").split())
        context = " ".join(str(getattr(e, "context", None) or "").split())
        why = f"{problem} ({context})" if context else problem
        raise ParamsError(f"{path}:{where} is not valid YAML: {why}") from None
    _check_stage_keys(raw, path, stages)
    return parse_params(raw, str(path))
