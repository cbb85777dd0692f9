"""What a stage entry point shares: its paths as dvc.yaml's `cmd` passes them."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path

from xray.core.errors import InputError
from xray.core.yaml_text import load_yaml


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message} (the stage's paths come from dvc.yaml's cmd)")


def stage_paths(
    stage: str, names: Sequence[str], argv: Sequence[str] | None = None
) -> dict[str, Path]:
    """`--name PATH` for each of `names` (all required), parsed from argv (default: sys.argv).

    dvc.yaml is the one place that names a stage's inputs and outputs: its `cmd` passes them
    (`python -m tasks.train_base --train data/splits/train.csv ...`), its deps and outs list
    the same paths, and the stage module holds no path of its own.
    """
    parser = _Parser(prog=f"python -m tasks.{stage}", add_help=False)
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True)
    return dict(vars(parser.parse_args(argv)))


def dvc_yaml_paths(stage: str, root: Path = Path(".")) -> dict[str, Path]:
    """The `--name PATH` pairs of `stage`'s cmd in root/dvc.yaml, for code that is not the stage.

    `xray probe`, the flow and the command line find a stage's files here, so that dvc.yaml
    stays the one place that names them. Paths are relative to root, as DVC runs the stage.
    """
    import shlex

    import yaml

    path = root / "dvc.yaml"
    try:
        stages = (load_yaml(path.read_text()) or {}).get("stages") or {}
        cmd = str(stages[stage]["cmd"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise InputError(f"{path}: no cmd for stage {stage!r} ({e})") from None
    words = shlex.split(cmd)
    found: dict[str, Path] = {}
    for flag, value in itertools.pairwise(words):
        if flag.startswith("--") and not value.startswith("--"):
            found[flag[2:].replace("-", "_")] = root / value
    return found


def _sigterm(signum: int, frame: object) -> None:
    """SIGTERM (dvc/Prefect cancel) unwinds like Ctrl-C: work and staged folders are removed."""
    raise KeyboardInterrupt(f"signal {signum}")


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in this process, for a stage that stages its output.

    A terminated run (dvc or Prefect cancelling it) then unwinds through `staged_dir` and
    `work_dir` and leaves the previous output untouched. Called by the stage's `__main__`.
    """
    import signal

    signal.signal(signal.SIGTERM, _sigterm)
