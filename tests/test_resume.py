"""Resume after a kill: callback state restored, dvclive continuous, `dvc repro` picks it up."""

from __future__ import annotations

import filecmp
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml
from conftest import dvc, run_env

from xray.models import resume, training

SCORES = [0.5, 0.9, 0.6, 0.7, 0.8, 0.85, 0.99, 0.99, 0.99, 0.99]  # val score per epoch
EPOCHS = len(SCORES)
PATIENCE = 3  # best at epoch index 1, then 3 worse epochs: stops after index 4
STEPS = 2  # training batches per epoch


class Scripted(keras.metrics.Metric):
    """A score read from SCORES at the epoch the optimizer's step count says training is in."""

    def __init__(self, iterations: Callable[[], Any], name: str = "scripted") -> None:
        super().__init__(name=name)
        self.iterations = iterations

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Nothing to accumulate."""

    def result(self) -> Any:
        """SCORES[finished epochs - 1] (clipped at 0 during the first epoch)."""
        ops = keras.ops
        epoch = ops.maximum(ops.cast(self.iterations(), "int32") // STEPS - 1, 0)
        return ops.take(ops.convert_to_tensor(SCORES, "float32"), epoch)


class Crash(keras.callbacks.Callback):
    """Raise like a kill at the end of epoch `at` (0-based), after its checkpoint."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.at:
            raise KeyboardInterrupt("killed")


def _run(root: Path, crash_at: int | None = None) -> tuple[dict[str, Any], keras.Model]:
    """One fit() of a tiny dropout model monitored on the scripted score, in `root`."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dropout(0.3), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-2),
        loss="binary_crossentropy",
        metrics=[Scripted(lambda: model.optimizer.iterations)],
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), (np.arange(16) % 2).astype("float32")

    def data(first_epoch: int) -> Any:
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x) // STEPS)

    summary = training.fit(
        model,
        data,
        data(0),
        epochs=EPOCHS,
        patience=PATIENCE,
        live_dir=root / "live",
        work_dir=root / "work",
        steps_per_epoch=STEPS,
        reduce_on_plateau=True,
        extra_callbacks=[Crash(crash_at)] if crash_at is not None else [],
        fingerprint="test",
    )
    return summary, model


def _same_tree(a: Path, b: Path) -> bool:
    """Two folders hold the same files with the same bytes."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.fixture
def scripted_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Early stopping, LR-on-plateau and best weights all follow the scripted score."""
    monkeypatch.setattr(training, "MONITOR", "val_scripted")


@pytest.mark.usefixtures("scripted_monitor")
def test_early_stopping_and_plateau_state_survive_a_kill(tmp_path: Path) -> None:
    full, full_model = _run(tmp_path / "full")
    assert full["epochs_run"] == 5 and full["best_epoch"] == 2  # stopped after index 4
    lr = (tmp_path / "full/live/plots/metrics/lr.tsv").read_text().split()
    assert float(lr[-1]) < float(lr[3])  # the plateau rule halved the rate (at index 3)

    root = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(root, crash_at=2)  # killed with the stopping counter at 1 of 3
    state = resume.read_checkpoint(root / "work" / "ckpt-0003")
    assert [cb["wait"] for cb in state["callbacks"]] == [1, 1]  # plateau, early stopping
    # what a kill can leave behind: a checkpoint cut short, an uncommitted best and dvclive row
    (root / "work" / ".ckpt-0004.tmp").mkdir()
    newer = root / "work" / "newer.weights.h5"  # BestWeights renames new files into place
    newer.write_bytes(b"an uncommitted best")
    os.replace(newer, root / "work" / "best.weights.h5")
    with (root / "work/live/plots/metrics/eval/scripted.tsv").open("a") as f:
        f.write("3\t0.7\n")

    resumed, model = _run(root)
    assert resumed["first_epoch"] == 4 and resumed["epochs_run"] == 2  # not 3 more: wait kept
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resume.latest_checkpoint(root / "work").name == "ckpt-0005"  # kept until finish()
    assert _same_tree(tmp_path / "full" / "live", root / "live")  # every epoch once, same lr
    for a, b in zip(full_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # weights, dropout masks and optimizer restored


@pytest.mark.usefixtures("scripted_monitor")
def test_a_kill_after_the_last_epoch_trains_nothing_more(tmp_path: Path) -> None:
    full, full_model = _run(tmp_path / "full")
    root = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(root, crash_at=4)  # early stopping fired; killed before the outputs were saved
    assert resume.read_checkpoint(root / "work" / "ckpt-0005")["finished"]
    again, model = _run(root)
    assert again["epochs_run"] == 0 and again["best_epoch"] == full["best_epoch"]
    assert _same_tree(tmp_path / "full" / "live", root / "live")
    for a, b in zip(full_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the best epoch's weights


def _lock_stages(proj: Path) -> dict[str, Any]:
    """The stages recorded in dvc.lock (none when it does not exist)."""
    lock = proj / "dvc.lock"
    return yaml.safe_load(lock.read_text())["stages"] if lock.exists() else {}


def _digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and bytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


KILL_EPOCHS = 6
POLL_S = 0.01
START_TIMEOUT_S = 900


@pytest.mark.slow
def test_killed_train_base_resumes_under_dvc_repro(make_project: Callable[..., Path]) -> None:
    proj = make_project({"train": {"epochs": KILL_EPOCHS, "patience": KILL_EPOCHS}})
    work = proj / "models" / ".train_base.work"
    log = proj.parent / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "train_base"],
            cwd=proj,
            env=run_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: dvc and the stage it runs
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and resume.latest_checkpoint(work) is None:
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(POLL_S)
        os.killpg(proc.pid, signal.SIGKILL)  # like a crash or a killed job: no cleanup at all
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill:\n{log.read_text()}"
    checkpoint = resume.latest_checkpoint(work)
    assert checkpoint is not None
    done = resume.read_checkpoint(checkpoint)["epoch"]
    assert 1 <= done < KILL_EPOCHS, f"killed too late ({done} epochs done) to test a resume"
    print(f"killed after {done} of {KILL_EPOCHS} epochs")
    assert not (proj / "models" / "base.keras").exists()
    assert "train_base" not in _lock_stages(proj)

    second = dvc(proj, "repro", "train_base")
    output = second.stdout + second.stderr
    assert f"resuming at epoch {done + 1} of {KILL_EPOCHS}" in output
    ran = [int(e) for e, total in re.findall(r"training: epoch (\d+)/(\d+)", output)]
    assert ran == list(range(done + 1, KILL_EPOCHS + 1))  # only the epochs not yet finished
    assert (proj / "models" / "base.keras").is_file()
    assert not work.exists()
    assert "train_base" in _lock_stages(proj)
    rows = (proj / "dvclive/train_base/plots/metrics/eval/auc.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", *map(str, range(KILL_EPOCHS))]
    assert "Running stage" not in dvc(proj, "repro", "train_base").stdout

    # the same run without the kill gives the same bytes: model, dvclive log, dvc.lock entry
    resumed = {p: _digest(proj / p) for p in ("models/base.keras", "dvclive/train_base")}
    lock = _lock_stages(proj)["train_base"]
    dvc(proj, "repro", "--force", "--single-item", "train_base")
    assert {p: _digest(proj / p) for p in resumed} == resumed
    assert _lock_stages(proj)["train_base"] == lock
