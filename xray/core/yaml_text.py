"""YAML read with libyaml's C parser where PyYAML has it, the pure-Python one elsewhere.

dvc.lock grows with the pipeline (about 30 KB here) and every run reads it several times
(status, verify, artifacts, record, lineage): PyYAML's pure-Python parser took about 0.35 s
per read of it on this machine, the C one a tenth of that. Both build the same objects (the
C loader changes only the scanner and parser, not the safe constructor or the resolver).
params.yaml keeps its own stricter loader (xray/core/params.py: duplicate keys refused, the
line of an error named).
"""

from __future__ import annotations

from typing import Any

import yaml

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it (its wheels are), else PyYAML's own."""


def load_yaml(text: str | bytes) -> Any:
    """The safe YAML load of `text`; a yaml.YAMLError on bad YAML, as `yaml.safe_load`."""
    return yaml.load(text, Loader=SafeLoader)
