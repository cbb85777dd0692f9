"""Faults around Prefect: an interrupted task lets its DVC stage finish; a server restart mid-run
loses nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import PrefectServer, api_call, dvc, git
from conftest import wait_for as conftest_wait_for

from flows.pipeline import dvc_repro
from xray.core.params import STAGES

STAGE_SCRIPT = """import os, time
print("begin", flush=True)
deadline = time.monotonic() + float(os.environ.get("XRAY_TEST_STAGE_S", "2"))
while time.monotonic() < deadline:  # progress output, like Keras: a closed pipe kills it
    print("step", flush=True)
    time.sleep(0.1)
with open("out.txt", "w") as f:
    f.write("done\\n")
print("end", flush=True)
"""
DVC_YAML = {"stages": {"slow": {"cmd": "python slow.py", "deps": ["slow.py"], "outs": ["out.txt"]}}}
LONG_STAGE_S = "120"
STOP_WITHIN_S = 20
DOWN_S = 5  # the server stays away this long, plus its stop and start times
RUN_TIMEOUT_S = 900
POLL_S = 1.0
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
RECORDS = "records"


class InterruptingLog:
    """A run logger stand-in that raises `exc` once, where the stage prints `begin`."""

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc
        self.lines: list[str] = []

    def info(self, fmt: str, *args: Any) -> None:
        """Record a line; raise the pending exception at the stage's first line."""
        self.lines.append(fmt % args)
        if self.exc is not None and self.lines[-1].endswith("| begin"):
            exc, self.exc = self.exc, None
            raise exc

    def warning(self, fmt: str, *args: Any) -> None:
        """Record a warning."""
        self.lines.append(fmt % args)

    def error(self, fmt: str, *args: Any) -> None:
        """Record an error (a stage's `error:` line, a traceback)."""
        self.lines.append(fmt % args)


def tiny_project(root: Path) -> Path:
    """A git + DVC repo with one stage, `slow`, that sleeps, then writes out.txt."""
    root.mkdir()
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    (root / "slow.py").write_text(STAGE_SCRIPT)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    return root


def locked(root: Path) -> dict[str, Any]:
    """The stages in root/dvc.lock (empty when there is none)."""
    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}


def processes_in(root: Path) -> list[int]:
    """Pids of processes whose working directory is root."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == root:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_an_interrupted_task_lets_its_stage_finish(tmp_path: Path) -> None:
    """Prefect's CancelledError mid-stage: the stage still completes, so a rerun skips it."""
    from prefect._internal.concurrency.cancellation import CancelledError

    root = tiny_project(tmp_path / "tiny")
    log = InterruptingLog(CancelledError())
    with pytest.raises(CancelledError):
        dvc_repro("slow", root, log)
    assert (root / "out.txt").read_text() == "done\n"
    assert [o["path"] for o in locked(root)["slow"]["outs"]] == ["out.txt"]
    assert any("letting the stage finish" in line for line in log.lines)
    assert any("stage finished (exit 0)" in line for line in log.lines)
    assert dvc_repro("slow", root, InterruptingLog(None))["ran"] is False


def test_a_termination_signal_stops_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a cancel) or Ctrl-C stops the stage at once; the rerun runs it."""
    from prefect.exceptions import TerminationSignal

    root = tiny_project(tmp_path / "tiny")
    monkeypatch.setenv("XRAY_TEST_STAGE_S", LONG_STAGE_S)
    t0 = time.monotonic()
    with pytest.raises(TerminationSignal):
        dvc_repro("slow", root, InterruptingLog(TerminationSignal(signal.SIGTERM)))
    assert time.monotonic() - t0 < STOP_WITHIN_S
    assert processes_in(root.resolve()) == []
    assert not (root / "out.txt").exists()
    assert "slow" not in locked(root)
    monkeypatch.setenv("XRAY_TEST_STAGE_S", "0")
    assert dvc_repro("slow", root, InterruptingLog(None))["ran"] is True
    assert (root / "out.txt").read_text() == "done\n"


def test_the_record_comes_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Artifacts that cannot reach the server fail the run before anything is recorded."""
    from flows import pipeline

    calls: list[str] = []

    def unreachable(workdir: str, stamps: object = None) -> None:
        calls.append("artifacts")
        raise httpx.ConnectError("All connection attempts failed")

    monkeypatch.setattr(pipeline, "verify_outputs", lambda *a: calls.append("verify"))
    monkeypatch.setattr(pipeline, "push_outputs", lambda *a: calls.append("push"))
    monkeypatch.setattr(pipeline, "publish", unreachable)
    monkeypatch.setattr(pipeline, "record_model", lambda *a: calls.append("record"))
    with pytest.raises(httpx.ConnectError):
        pipeline.after_stages(tmp_path, True, True, None, True, RECORDS)
    assert calls == ["verify", "push", "artifacts"]  # verified before anything leaves


# --- a real server restarted in the middle of a deployment run -----------------------------


poll = partial(conftest_wait_for, timeout=RUN_TIMEOUT_S, poll_s=POLL_S)


def flow_run(api: str, run_id: str) -> dict[str, Any]:
    """The flow run as the server has it."""
    r = api_call("GET", f"{api}/flow_runs/{run_id}")
    r.raise_for_status()
    return r.json()


def start_run(api: str, serve_log: Path) -> dict[str, Any]:
    """Create a flow run of the served nightly deployment (once `serve` has registered it)."""

    def deployment_id() -> str | None:
        r = api_call("GET", f"{api}/deployments/name/xray-pipeline/nightly")
        return r.json()["id"] if r.status_code == 200 else None

    dep_id = poll(deployment_id, "the deployment", serve_log)
    r = api_call("POST", f"{api}/deployments/{dep_id}/create_flow_run", json={})
    r.raise_for_status()
    return r.json()


def finished(api: str, run_id: str, serve_log: Path) -> dict[str, Any]:
    """Wait for the flow run's terminal state; return the run."""
    return poll(
        lambda: (run := flow_run(api, run_id))["state_type"] in TERMINAL and run,
        "the run to end",
        serve_log,
    )


def stages_run(serve_log: Path, run_name: str) -> list[str]:
    """The stages a flow run says it ran (its `stages run:` line in the serve log)."""
    pattern = rf"Flow run '{re.escape(run_name)}' - stages run: (.*)"
    found = re.findall(pattern, serve_log.read_text())
    assert len(found) == 1, f"no single `stages run` line for {run_name}: {found}"
    text = found[0].strip()
    return [] if text.startswith("none") else text.split(", ")


def outs(stage: dict[str, Any]) -> dict[str, str]:
    """A locked stage's outputs: path -> md5."""
    return {o["path"]: o.get("md5", "") for o in stage.get("outs", [])}


def records(root: Path) -> tuple[list[str], list[str]]:
    """The record commits on RECORDS (newest first) and the finetuned model's GTO tags."""
    branch = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", RECORDS], cwd=root, capture_output=True, check=False
    )
    commits = git(root, "rev-list", f"main..{RECORDS}").split() if branch.returncode == 0 else []
    return commits, git(root, "tag", "--list", "finetuned@*").split()


@pytest.mark.slow
def test_a_server_restart_mid_run_loses_nothing(
    tmp_path: Path, make_project: Any, prefect_server: PrefectServer
) -> None:
    """Stop the server during train_base, start it again on the same port and database.

    The stages done before stay locked and unchanged, the deployment's concurrency lease
    survives the restart (leases on disk), and the run completes and is recorded once; if
    it crashed instead, it records nothing and a rerun runs only what DVC lacks.
    """
    api = prefect_server.api
    root = make_project()
    serve_log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "xray.cli.main", "serve", "--workdir", str(root)]
    cmd += ["--remote", str(tmp_path / "dvc-remote"), "--branch", RECORDS]
    with serve_log.open("w") as log:
        serve = subprocess.Popen(cmd, cwd=root, env=prefect_server.env, stdout=log, stderr=log)
    try:
        run = start_run(api, serve_log)
        poll(lambda: "Running stage 'train_base'" in serve_log.read_text(), "train_base", serve_log)
        details = flow_run(api, run["id"])["state"]["state_details"]
        lease = details["deployment_concurrency_lease_id"]
        assert lease, "the run holds no deployment concurrency lease"
        before = locked(root)
        prefect_server.stop()
        time.sleep(DOWN_S)
        prefect_server.start()
        renew = api_call(
            "POST",
            f"{api}/v2/concurrency_limits/leases/{lease}/renew",
            json={"lease_duration": 300},
        )
        state = flow_run(api, run["id"])["state_type"]
        assert renew.status_code == 204 or state in TERMINAL, f"lease lost: {renew.text}"
        print(f"\nafter the restart: lease renewal {renew.status_code}, run {state}")
        assert set(before) == {"download", "split", "corrupt"}, "the stop missed train_base"

        run = finished(api, run["id"], serve_log)
        print(f"run {run['name']} ended {run['state_type']} ({run['total_run_time']:.0f} s)")
        if run["state_type"] == "COMPLETED":
            assert stages_run(serve_log, run["name"]) == list(STAGES)
        else:  # a crash records nothing; a rerun continues from what DVC has
            assert records(root) == ([], [])
            done = set(locked(root))
            rerun = finished(api, start_run(api, serve_log)["id"], serve_log)
            assert rerun["state_type"] == "COMPLETED"
            assert set(stages_run(serve_log, rerun["name"])) == set(STAGES) - done
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()

    after = locked(root)
    assert list(after) == list(STAGES)
    for stage, entry in before.items():  # finished before the restart: kept, not redone
        assert outs(after[stage]) == outs(entry), f"{stage} changed across the restart"
        assert all((root / path).exists() for path in outs(entry)), f"{stage} lost outputs"
    commits, tags = records(root)
    assert len(commits) == 1 and tags == ["finetuned@v0.1.0"]
    assert git(root, "rev-parse", "finetuned@v0.1.0^{commit}").strip() == commits[0]
