"""xray/core/yaml_text.py: libyaml's parser where PyYAML has it, the same objects as
yaml.safe_load, and no unsafe tags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xray.core.yaml_text import SafeLoader, load_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["dvc.yaml", "dvc.lock", "params.yaml", "prefect.yaml"])
def test_load_yaml_reads_the_projects_files_as_safe_load_does(name: str) -> None:
    text = (ROOT / name).read_text()
    assert load_yaml(text) == yaml.safe_load(text)


def test_the_c_parser_is_used_where_pyyaml_has_it() -> None:
    assert SafeLoader is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_bad_yaml_and_unsafe_tags_raise_yaml_errors() -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [1, 2\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        load_yaml("!!python/object/apply:os.system ['true']\n")
    assert load_yaml("") is None
    # YAML 1.1, as yaml.safe_load: a float needs its dot
    assert load_yaml(b"x: 1.0e-3\ny: null\nz: 1e-3\n") == {"x": 1e-3, "y": None, "z": "1e-3"}
