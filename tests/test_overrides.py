"""One-off overrides (issue 24 item 4): they apply to one run, only the changed values move in
params.yaml, and the file is put back after the run, a failure or a kill."""

from __future__ import annotations

import difflib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from xray.core.errors import InputError
from xray.core.params import ParamsError
from xray.runner.overrides import BACKUP, one_off_params, restore_params, set_keys

CHANGES = {
    "train.epochs": 3,
    "data.sha256": "ab" * 32,  # was null
    "data.synthetic.seed": 7,  # unchanged: not written
    "corrupt.families": ["seed", "jpeg"],  # a flow list wrapped over several lines
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The committed params.yaml (comments, nulls, wrapped lists) in a folder."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_only_the_changed_values_move(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    after, changed = set_keys(before, CHANGES)
    assert changed == ["train.epochs", "data.sha256", "corrupt.families"]
    data = yaml.safe_load(after)
    assert data["train"]["epochs"] == 3 and data["data"]["sha256"] == "ab" * 32
    assert data["corrupt"]["families"] == ["seed", "jpeg"]
    expected = yaml.safe_load(before)
    expected["train"]["epochs"], expected["data"]["sha256"] = 3, "ab" * 32
    expected["corrupt"]["families"] = ["seed", "jpeg"]
    assert data == expected  # nothing else moved in meaning
    removed = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), n=0)
        if line.startswith("-") and not line.startswith("---")
    ]
    families = next(i for i, line in enumerate(before.splitlines()) if "families:" in line)
    wrapped = 1 + sum(
        1 for line in before.splitlines()[families + 1 :] if line.startswith("             ")
    )
    assert len(removed) == 2 + wrapped  # epochs, sha256, and the families lines only
    assert "# the last one is the positive class" in after and "patient_pattern: null" in after
    assert "  sha256: " + "ab" * 32 + "            # expected sha256" in after  # comment kept


def test_unknown_keys_and_bad_values_write_nothing(project: Path) -> None:
    path = project / "params.yaml"
    before = path.read_bytes()
    with (
        pytest.raises(InputError, match=r"train\.nope: no such key"),
        one_off_params(project, {"train.nope": 1}),
    ):
        pass
    with (
        pytest.raises(ParamsError, match=r"train\.epochs"),
        one_off_params(project, {"train.epochs": -5}),
    ):
        pass
    assert path.read_bytes() == before and not (project / BACKUP).exists()


def test_the_file_is_put_back_after_the_run_and_after_a_failure(project: Path) -> None:
    path = project / "params.yaml"
    before = path.read_bytes()
    with one_off_params(project, CHANGES) as changed:
        assert changed == ["train.epochs", "data.sha256", "corrupt.families"]
        assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3
        assert (project / BACKUP).read_bytes() == before
    assert path.read_bytes() == before and not (project / BACKUP).exists()
    with pytest.raises(RuntimeError, match="stage failed"), one_off_params(project, CHANGES):
        raise RuntimeError("stage failed")
    assert path.read_bytes() == before and not (project / BACKUP).exists()


def test_after_a_kill_the_next_run_puts_the_file_back_first(project: Path) -> None:
    """kill -9 in the middle of a run: the backup stays (locked while the run lived); the next
    run, with or without overrides, restores it before anything else."""
    path = project / "params.yaml"
    before = path.read_bytes()
    code = (
        "import sys, time; from pathlib import Path; "
        "from xray.runner.overrides import one_off_params; "
        "cm = one_off_params(Path(sys.argv[1]), {'train.epochs': 3}); cm.__enter__(); "
        "print('in', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(project)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "in"
        assert restore_params(project) is False  # its run is alive: left alone
        assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(0.1)
    assert (project / BACKUP).exists() and path.read_bytes() != before
    with one_off_params(project, {}) as changed:  # a scheduled run without overrides
        assert changed == [] and path.read_bytes() == before
    assert not (project / BACKUP).exists()
