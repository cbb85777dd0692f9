"""Shared helpers of the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

OUT_DIR = Path("reports/benchmarks")
REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """CPU count and the load average (the CPU may be shared: read figures with it)."""
    return {
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def require(ws: Path, needs: tuple[str, ...], hint: str = "build the workspace first") -> None:
    """Stop with one line naming the first of `needs` (paths in the workspace) that is missing."""
    for need in needs:
        if not (ws / need).exists():
            raise SystemExit(f"error: {ws / need}: not found ({hint})")


RETRY_STATUS = (429, 502, 503)  # what Prefect's own client retries (a busy SQLite server: 503)
API_PATIENCE_S = 90.0


def api_call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One Prefect API request, retried as Prefect's client retries it: on 429/502/503 and a
    refused or timed-out connection, with backoff, for up to API_PATIENCE_S (a loaded machine
    running two test servers answers late); then the last answer, or the error."""
    deadline, pause = time.monotonic() + API_PATIENCE_S, 0.5
    while True:
        try:
            r = httpx.request(method, url, **{"timeout": 30, **kwargs})
            if r.status_code not in RETRY_STATUS or time.monotonic() > deadline:
                return r
        except (httpx.ConnectError, httpx.TimeoutException):
            if time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def write_report(name: str, result: dict[str, Any]) -> Path:
    """Print the result as JSON and write it to reports/benchmarks/NAME.json."""
    from xray.core.io import write_json

    result = {"benchmark": name, **result, "machine_end": machine()}
    path = OUT_DIR / f"{name}.json"
    write_json(path, result)
    print(json.dumps(result, indent=2))
    return path


def materialize(commit: str, dest: Path) -> Path:
    """The commit's stage and library code (tasks/, and xray/ where it has one) in dest."""
    dest.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", commit],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    code = [p for p in ("tasks", "xray") if p in listed]
    archive = subprocess.run(
        ["git", "archive", commit, *code], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_driver(driver: str, args: list[str], code: Path, cwd: Path, what: str) -> dict[str, Any]:
    """Run `driver` in a fresh Python importing the project code at `code`; its last JSON line.

    Progress lines are held back (one interval of an hour) so they do not cost time.
    """
    env = {**os.environ, "PYTHONPATH": str(code), "XRAY_PROGRESS_INTERVAL": "3600"}
    proc = subprocess.run(
        [sys.executable, "-c", driver, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
