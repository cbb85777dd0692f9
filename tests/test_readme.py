"""The README agrees with the code: documented defaults, stage outputs, CLI and environment."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from conftest import ROOT

from xray.core.params import Params
from xray.runner.repro import _paths

README = (ROOT / "README.md").read_text()
PARAMS_YAML = yaml.safe_load((ROOT / "params.yaml").read_text())
# A params table row: | `section.key` | `value` | what it does |
PARAM_ROW = re.compile(r"^\| `(\w+)\.(\w+)` \| `([^`]*)` \|", re.M)
# An inline mention: `section.key`, default VALUE
INLINE_DEFAULT = re.compile(r"`(\w+)\.(\w+)`,? default ([\w.\-]+)")


def code_default(section: str, key: str) -> Any:
    """The default xray/core/sections.py gives a key left out of params.yaml."""
    model = Params.model_fields[section].annotation
    value = model.model_fields[key].get_default(call_default_factory=True)  # type: ignore[union-attr]
    return json.loads(json.dumps(value))  # tuples as the lists YAML gives


def documented() -> list[tuple[str, str, Any]]:
    """(section, key, value) for every default the README states."""
    rows = [(s, k, yaml.safe_load(v)) for s, k, v in PARAM_ROW.findall(README)]
    inline = [(s, k, yaml.safe_load(v)) for s, k, v in INLINE_DEFAULT.findall(README)]
    return rows + inline


def test_the_readme_documents_defaults() -> None:
    keys = {f"{s}.{k}" for s, k, _ in documented()}
    assert {"train.epochs", "finetune.epochs", "data.source", "adapt.min_images"} <= keys


@pytest.mark.parametrize(("section", "key", "value"), documented())
def test_documented_defaults_match_params_yaml_and_the_code(
    section: str, key: str, value: Any
) -> None:
    assert PARAMS_YAML[section][key] == value, f"params.yaml {section}.{key}"
    assert code_default(section, key) == value, f"xray/core/sections.py {section}.{key}"


def test_code_defaults_equal_params_yaml() -> None:
    """A key left out of params.yaml means what params.yaml says (no silent second default)."""
    differ = [
        f"{section}.{key}: params.yaml {value!r}, code {code_default(section, key)!r}"
        for section, values in PARAMS_YAML.items()
        for key, value in values.items()
        if not isinstance(value, dict) and code_default(section, key) != value
    ]
    assert not differ


def stage_rows() -> dict[str, str]:
    """The README's pipeline table: stage -> its row."""
    rows = re.findall(r"^\| `(\w+)` \| (.*)$", README, re.M)
    return {stage: row for stage, row in rows}


def test_stage_table_lists_every_output_of_dvc_yaml() -> None:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    rows = stage_rows()
    for stage, body in spec.items():
        outs = _paths(body.get("outs", [])) + _paths(body.get("metrics", []))
        outs += _paths(body.get("plots", []))
        missing = [o for o in outs if f"`{o}" not in rows[stage]]
        assert not missing, f"README's {stage} row lacks {missing}"


def test_readme_documents_the_cli_and_the_environment() -> None:
    for needle in (
        "XRAY_LOG_LEVEL",
        "XRAY_TRACEBACK",
        "XRAY_PROGRESS_INTERVAL",
        "--verbose",
        "xray --version",
        "--source",
        "--push",
        "--record",
    ):
        assert needle in README, needle
    assert re.search(r"^\| 2 \| usage error or bad input", README, re.M)
