"""Stage paths come from dvc.yaml's cmd: parsed by the stage, read back by everything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray.core.errors import EXIT_FAILED, EXIT_USAGE, InputError, WorkError, XrayError
from xray.core.stage import dvc_yaml_paths, stage_paths


def test_stage_paths_parses_every_name() -> None:
    got = stage_paths("split", ["manifest", "out_dir"], ["--manifest", "a.csv", "--out-dir", "b"])
    assert got == {"manifest": Path("a.csv"), "out_dir": Path("b")}


def test_stage_paths_missing_one_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match="--out-dir") as e:
        stage_paths("split", ["manifest", "out_dir"], ["--manifest", "a.csv"])
    assert "\n" not in str(e.value)


def test_dvc_yaml_paths_reads_the_cmd(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  split:\n    cmd: python -m tasks.split --manifest data/m.csv --out-dir data/s\n"
    )
    assert dvc_yaml_paths("split", tmp_path) == {
        "manifest": tmp_path / "data/m.csv",
        "out_dir": tmp_path / "data/s",
    }
    with pytest.raises(InputError, match="corrupt"):
        dvc_yaml_paths("corrupt", tmp_path)


def test_the_project_dvc_yaml_names_every_stage_cmd() -> None:
    root = Path(__file__).resolve().parents[1]
    for stage in ("download", "split", "corrupt", "train_base", "finetune", "evaluate"):
        dvc_yaml_paths(stage, root)


def test_errors_are_one_line_with_their_exit_status() -> None:
    assert InputError("bad\nvalue").exit_code == EXIT_USAGE
    assert str(InputError("bad\n  value")) == "bad value"
    assert WorkError("x").exit_code == EXIT_FAILED
    assert isinstance(InputError("x"), ValueError) and isinstance(WorkError("x"), RuntimeError)
    assert issubclass(InputError, XrayError) and issubclass(WorkError, XrayError)
