"""Trigger to done of a scheduled run where nothing changed, on a real Prefect server.

Usage: python -m benchmarks.nochange_scheduled WORKDIR [--repeat N] [--remote DIR]
WORKDIR must be a git checkout where the pipeline already ran. Starts a Prefect server as
`xray server` does (throwaway home) and `xray serve --workdir WORKDIR --remote DIR` (the nightly
deployment of prefect.yaml: push and record on), triggers one run that pushes and records
what is new, then N runs in a row where nothing changed, each created through the API as
`prefect deployment run` does, each once the previous run's process has exited (as it has
before a nightly run). For each: trigger to done (the flow run's `created` to its `end_time`),
of which the pick-up (created to start: the runner's poll, created to Pending, then the
flow-run process starting, Pending to Running) and the run itself (start to end).
Checks that the no-change runs ran no stage and recorded nothing; prints JSON and writes
reports/benchmarks/nochange_scheduled.json (in the cwd).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._common import api_call, machine, write_report
from benchmarks.nochange_run import start_server

RUN_TIMEOUT_S = 1800
POLL_S = 0.5


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _deployment(api: str, deadline: float) -> str:
    """The id of the served deployment, once `serve` registered it."""
    while time.monotonic() < deadline:
        r = api_call("POST", f"{api}/deployments/filter", json={}, timeout=10)
        if r.status_code == 200 and r.json():
            return str(r.json()[0]["id"])
        time.sleep(1)
    sys.exit("error: xray serve registered no deployment")


def _flow_run_processes(pid: int) -> list[int]:
    """The children of `serve` that run a flow (the runner's `python -m prefect.engine` or
    multiprocessing child; not its long-lived helpers)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"prefect.engine" in cmd or b"spawn_main" in cmd:
                found.append(int(child))
    return found


def _settle(serve: int) -> None:
    """Wait until the last flow run's process has exited, as it has long before a scheduled run:
    a run triggered while it still shuts down waits for the runner's free slot (seconds)."""
    deadline = time.monotonic() + 60
    while _flow_run_processes(serve) and time.monotonic() < deadline:
        time.sleep(0.2)


def _run(api: str, dep: str, serve: int) -> dict[str, Any]:
    """Trigger one run, once serve is idle, and wait for its end; timings from the server."""
    _settle(serve)
    r = api_call("POST", f"{api}/deployments/{dep}/create_flow_run", json={})
    r.raise_for_status()
    run_id = r.json()["id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = api_call("GET", f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(POLL_S)
    else:
        sys.exit(f"error: run {run_id} did not end in {RUN_TIMEOUT_S} s")
    if run["state_type"] != "COMPLETED":
        sys.exit(f"error: run {run_id} ended {run['state_type']}")
    created, start, end = (_stamp(run[k]) for k in ("created", "start_time", "end_time"))
    states = api_call("GET", f"{api}/flow_run_states/", params={"flow_run_id": run_id}).json()
    pending = min(_stamp(s["timestamp"]) for s in states if s["type"] == "PENDING")
    return {
        "trigger_to_done_s": round((end - created).total_seconds(), 2),
        "pickup_s": round((start - created).total_seconds(), 2),
        "poll_s": round((pending - created).total_seconds(), 2),
        "process_start_s": round((start - pending).total_seconds(), 2),
        "run_s": round((end - start).total_seconds(), 2),
    }


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()


def main() -> None:
    """Serve the deployment, trigger runs, time them."""
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--repeat", type=int, default=5, help="no-change runs timed (default: 5)")
    ap.add_argument("--remote", type=Path, help="DVC remote folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.workdir.resolve()
    remote = args.remote or Path(tempfile.mkdtemp(prefix="nochange-remote-"))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    server, env["PREFECT_API_URL"] = start_server(env)
    api = env["PREFECT_API_URL"]
    log = Path(tempfile.mkstemp(prefix="nochange-serve-", suffix=".log")[1])
    cmd = [str(Path(sys.executable).parent / "xray"), "serve", "--workdir", str(root)]
    cmd += ["--remote", str(remote), "--interval", "86400"]  # runs come from the triggers
    result: dict[str, Any] = {"workdir": str(root), "machine_start": machine()}
    with log.open("w") as out:
        serve = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=out)
    try:
        dep = _deployment(api, time.monotonic() + 120)
        result["first_run"] = _run(api, dep, serve.pid)  # pushes and records what is new
        lock, records = (root / "dvc.lock").read_bytes(), _git(root, "rev-parse", "xray-records")
        runs = [_run(api, dep, serve.pid) for _ in range(args.repeat)]
        result["dvc_lock_unchanged"] = (root / "dvc.lock").read_bytes() == lock
        result["recorded_nothing"] = _git(root, "rev-parse", "xray-records") == records
    finally:
        _settle(serve.pid)  # the last run's process ends on its own, not by the shutdown
        serve.terminate()
        serve.wait(timeout=60)
        server.terminate()
        server.wait(timeout=60)
    for key in ("trigger_to_done_s", "pickup_s", "poll_s", "process_start_s", "run_s"):
        values = [r[key] for r in runs]
        result[key] = {"median": round(statistics.median(values), 2), "all": values}
    text = log.read_text()
    result["no_change_runs_ran_stages"] = [ln for ln in text.splitlines() if "stages run:" in ln]
    result["push_skipped_lines"] = sum(
        "skipped: the remote has every object" in ln for ln in text.splitlines()
    )
    result["goal_s"] = 10
    write_report("nochange_scheduled", result)


if __name__ == "__main__":
    main()
