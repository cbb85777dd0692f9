"""Quiet, honest logs: TF start-up lines filtered, stage lines relayed once at their own level."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_project, stage_argv

from xray.core import errors
from xray.core import runtime as cli_support
from xray.core.errors import InputError, is_user_error
from xray.core.progress import EpochProgress, epoch_line
from xray.runner.stage_log import StageLog, git_advice

# Lines as `xray run` relayed them before (one stage's output, abridged).
STAGE_OUTPUT = """\
Running stage 'train_base':
> python -m tasks.train_base
2026-11-30 08:27:50,251 INFO xray.train_base: loaded 33 train / 7 val images in 0.0s
2026-11-30 08:27:50,300 WARNING xray.training: train.threads: TF is already initialized
2026-11-30 08:27:50,400 INFO xray.finetune: trainable layers:
  conv1  1,234
/venv/keras/src/trainers/epoch_iterator.py:74: UserWarning: something new
  self.data_adapter = data_adapters.get_data_adapter(
E0000 00:00:1796027266.771974   10063 graph.cc:1] NodeDef mentions attribute x
Updating lock file 'dvc.lock'

To track the changes with git, run:

\tgit add models/.gitignore dvc.lock

To enable auto staging, run:

\tdvc config core.autostage true
Use `dvc push` to send your updates to remote storage.
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: boom
ERROR: failed to reproduce 'train_base': failed to run: python -m tasks.train_base, exited with 1
"""


class Recorder:
    """A run-logger stand-in recording (level, text)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def __getattr__(self, level: str):  # debug, info, warning, error
        return lambda fmt, *args: self.records.append((level, fmt % args))


def test_stage_lines_keep_one_timestamp_and_their_level() -> None:
    log = Recorder()
    relay = StageLog("train_base", log)
    for line in STAGE_OUTPUT.splitlines():
        relay.feed(line)
    assert log.records == [
        ("info", "train_base | Running stage 'train_base':"),
        ("info", "train_base | > python -m tasks.train_base"),
        ("info", "train_base | loaded 33 train / 7 val images in 0.0s"),
        ("warning", "train_base | xray.training: train.threads: TF is already initialized"),
        ("info", "train_base | xray.finetune: trainable layers:"),
        ("info", "train_base |   conv1  1,234"),
        (
            "warning",
            "train_base | /venv/keras/src/trainers/epoch_iterator.py:74: UserWarning: "
            "something new",
        ),
        ("warning", "train_base |   self.data_adapter = data_adapters.get_data_adapter("),
        (
            "error",
            "train_base | E0000 00:00:1796027266.771974   10063 graph.cc:1] NodeDef "
            "mentions attribute x",
        ),
        ("info", "train_base | Updating lock file 'dvc.lock'"),
        ("error", "train_base | Traceback (most recent call last):"),
        ("error", 'train_base |   File "x.py", line 1, in <module>'),
        ("error", "train_base | RuntimeError: boom"),
        (
            "error",
            "train_base | ERROR: failed to reproduce 'train_base': failed to run: "
            "python -m tasks.train_base, exited with 1",
        ),
    ]
    assert relay.git_add == ["models/.gitignore", "dvc.lock"]


def test_git_advice_is_given_once_for_a_run() -> None:
    assert git_advice([]) is None
    advice = git_advice(["reports/.gitignore", "dvc.lock", "dvc.lock", "models/.gitignore"])
    assert advice == (
        "to track the changes with git, run: git add reports/.gitignore dvc.lock models/.gitignore"
    )


def project_error() -> None:
    """A bad-input error raised by project code (this helper stands in for tasks/)."""
    raise ValueError("params.yaml: train.epochs: bad")


def test_user_errors_are_named_and_bugs_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from xray.core.params import ParamsError

    assert is_user_error(InputError("x"))
    assert is_user_error(ParamsError("x"))
    assert not is_user_error(RuntimeError("x"))
    assert not is_user_error(OSError("x"))
    monkeypatch.setattr(errors, "PROJECT_PACKAGES", ("tasks", "flows", "tests"))
    try:
        project_error()  # raised by (stand-in) project code: bad input
    except ValueError as e:
        assert is_user_error(e)
    try:
        json.loads("{")  # a ValueError from inside a library: a bug
    except ValueError as e:
        assert not is_user_error(e)


def run_stage_main(body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `run_stage(main)` in a fresh process, main's body given."""
    code = f"from xray.core.runtime import run_stage\ndef main():\n    {body}\nrun_stage(main)\n"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_a_stage_run_as_main_keeps_its_named_errors_one_line(tmp_path: Path) -> None:
    """`python -m tasks.download` defines DownloadError in __main__: still a user error."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = str(tmp_path / "absent.zip")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        stage_argv("download"),  # the paths as dvc.yaml passes them
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "absent.zip" in lines[0] or "xray probe" in lines[0]


def test_run_stage_one_line_for_user_errors_traceback_for_bugs() -> None:
    missing = (
        "from pathlib import Path; from xray.core.io import read_csv; read_csv(Path('no.csv'))"
    )
    user = run_stage_main(missing)
    assert user.returncode == 1
    assert user.stderr == "error: no.csv: not found (run the stage that writes it first)\n"
    bug = run_stage_main("raise RuntimeError('a bug')")
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "RuntimeError: a bug" in bug.stderr
    raise_user = "from xray.core.errors import InputError; raise InputError('x')"
    shown = run_stage_main(raise_user, {"XRAY_TRACEBACK": "1"})
    assert "Traceback" in shown.stderr and shown.stderr.rstrip().endswith("InputError: x")


def test_a_stage_exits_1_for_every_user_error_one_line() -> None:
    """Bad input or failed work: the stage failed (exit 1); the line says which."""
    for cls in ("InputError", "WorkError"):
        body = f"from xray.core.errors import {cls}; raise {cls}('bad\\n  value')"
        proc = run_stage_main(body)
        assert proc.returncode == 1 and proc.stderr == "error: bad value\n", proc.stderr


@pytest.mark.slow
def test_tensorflow_imported_inside_a_stage_s_main_stays_quiet() -> None:
    """run_stage quiets TensorFlow before main imports it; XRAY_LOG_LEVEL=DEBUG keeps all."""
    body = (
        "import warnings; import tensorflow as tf; tf.constant(1.0) + 1; "
        "warnings.warn('`shuffle=True` was passed, but will be ignored', UserWarning)"
    )
    code = f"from xray.core.runtime import run_stage\ndef main():\n    {body}\nrun_stage(main)\n"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    runs = {}
    for level in ("INFO", "DEBUG"):
        runs[level] = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env=env | {"XRAY_LOG_LEVEL": level},
        )
        assert runs[level].returncode == 0, runs[level].stderr
    quiet = runs["INFO"].stderr
    assert not [line for line in quiet.splitlines() if any(n in line for n in TF_NOISE)], quiet
    assert "`shuffle=True` was passed" in runs["DEBUG"].stderr  # everything still available


ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = b"I0000 00:00:1796027263.005365   10063 port.cc:153] oneDNN custom operations are on."
NODEDEF = (
    b"E0000 00:00:1796018051.426348   22901 node_def_util.cc:682] NodeDef mentions attribute "
    b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; ...>"
)
OTHER = b"E0000 00:00:1 other.cc:1] a real error"


def test_filter_stderr_drops_only_the_start_up_lines() -> None:
    code = f"""
import os
from xray.core.runtime import filter_stderr, QUIET_STDERR
with filter_stderr(QUIET_STDERR):
    for line in {[ABSL, ONEDNN, OTHER]!r}:
        os.write(2, line + b"\\n")
os.write(2, b"after\\n")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.stderr == OTHER + b"\nafter\n"


@pytest.mark.parametrize("how", ["ok", "bug", "abort"])
def test_a_stage_s_stderr_loses_the_node_def_line_and_nothing_else(how: str) -> None:
    """Filtered by a child process: even a crashing stage's last words get through, in order."""
    body = (
        f"import os; [os.write(2, ln + b'\\n') for ln in {[NODEDEF, OTHER]!r}]; "
        "print('progress\\rbar', end='', file=__import__('sys').stderr, flush=True); "
        + {"ok": "pass", "bug": "raise RuntimeError('a bug')", "abort": "os.abort()"}[how]
    )
    proc = run_stage_main(body)
    assert "NodeDef" not in proc.stderr
    assert proc.stderr.startswith(OTHER.decode() + "\nprogress\nbar")  # text mode: CR read as LF
    assert ("RuntimeError: a bug" in proc.stderr) == (how == "bug")
    loud = run_stage_main(body, {"XRAY_LOG_LEVEL": "DEBUG"})
    assert "NodeDef mentions attribute use_unbounded_threadpool" in loud.stderr


def test_log_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAY_LOG_LEVEL", "warning")
    assert cli_support.log_level() == "WARNING"
    monkeypatch.setenv("XRAY_LOG_LEVEL", "chatty")
    with pytest.raises(InputError, match="XRAY_LOG_LEVEL='chatty'"):
        cli_support.log_level()


def test_epoch_progress_logs_every_epoch_with_an_eta(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    cb = EpochProgress(4, "train_base", logging.getLogger("t"), clock=lambda: now[0])
    cb.on_train_begin()  # any other hook is a no-op
    with caplog.at_level(logging.INFO):
        for epoch, seconds in enumerate([30.0, 10.0]):
            cb.on_epoch_begin(epoch)
            now[0] += seconds
            cb.on_epoch_end(epoch, {"loss": 0.5, "auc": 0.9, "val_auc": 0.8, "learning_rate": 1e-3})
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "train_base: epoch 1/4 loss 0.5000 auc 0.9000 | val auc 0.8000, lr 0.001, 30s/epoch, "
        "ETA 1m30s"
    )
    assert lines[1].endswith("10s/epoch, ETA 20s")  # the first (compiling) epoch left out
    assert epoch_line("f", 1, 1, {}, 1.0, 0.0) == "f: epoch 1/1, 1s/epoch, ETA 0s"


TF_NOISE = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "cpu_feature_guard",
    "`shuffle=True` was passed",
    "use_unbounded_threadpool",
)


@pytest.mark.slow
def test_a_real_training_stage_writes_no_start_up_noise(tmp_path: Path) -> None:
    """download, split and a one-epoch train_base: their output has none of TF's noise."""
    root = copy_project(tmp_path / "p", {"train": {"epochs": 1, "warmup_epochs": 0}})
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(root),
    }
    out = ""
    for stage in ("download", "split", "train_base"):
        proc = subprocess.run(
            stage_argv(stage, root),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        out += proc.stdout + proc.stderr
    assert not [line for line in out.splitlines() if any(n in line for n in TF_NOISE)], out
    assert "INFO xray.train_base: training: epoch 1/1 loss" in out
    assert "Epoch 1/1" not in out  # Keras' own per-epoch lines are replaced
    loud = subprocess.run(
        [sys.executable, "-c", "import tasks, tensorflow"],
        cwd=root,
        env=env | {"XRAY_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # everything still available (which start-up lines TensorFlow prints depends on the CPU)
    assert any(n in loud.stderr for n in TF_NOISE), loud.stderr
