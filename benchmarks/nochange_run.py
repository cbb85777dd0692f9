"""Overhead of a scheduled run where nothing changed: `xray run` over an up-to-date workspace.

Usage: python -m benchmarks.nochange_run WORKDIR [--repeat N]
WORKDIR must be a checkout where the pipeline already ran (every stage cached). Times, side by
side and alternating, `dvc status` alone, `xray run` end to end as it runs now (one `dvc
status`, no task run for up-to-date stages) and `xray run --repro-each` (the old path: one
`dvc repro --single-item` per stage), each a fresh process against a running Prefect server:
PREFECT_API_URL's, else one started here for the benchmark. The first `dvc status` (the DVC
state database cold for this path) is reported apart. Checks that no stage ran and dvc.lock is
unchanged; prints JSON and writes reports/benchmarks/nochange_run.json (in the cwd).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import machine, write_report

SERVER_START_S = 240


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run cmd; its wall seconds and output (fails on a non-zero exit)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {(proc.stderr or proc.stdout)[-2000:]}")
    return round(seconds, 2), proc.stdout + proc.stderr


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A Prefect server as `xray server` runs it, on a free port, with a throwaway home."""
    import socket

    from xray.cli.server import server_command, server_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    home = tempfile.mkdtemp(prefix="nochange-prefect-")
    env |= {"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(
        server_command(port),
        env=server_env(base=env) | {"PREFECT_UI_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                return proc, api
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    sys.exit("error: the Prefect server did not start")


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min and every value."""
    return {"median_s": round(statistics.median(values), 2), "min_s": min(values), "all_s": values}


def main() -> None:
    """Time the no-change `xray run`, new and old paths, and `dvc status` alone."""
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds (default: 3)")
    args = ap.parse_args()
    root = args.workdir.resolve()
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    server = None
    if not env.get("PREFECT_API_URL"):
        server, env["PREFECT_API_URL"] = start_server(env)
    dvc = [sys.executable, "-m", "dvc"]
    xray = [str(Path(sys.executable).parent / "xray"), "run", "--workdir", str(root)]  # this code
    runs = {
        "dvc_status": [*dvc, "status", "--json"],
        "xray_run_new": xray,
        "xray_run_old_repro_each": [*xray, "--repro-each"],
    }
    lock = (root / "dvc.lock").read_bytes()
    result: dict[str, Any] = {"workdir": str(root), "machine_start": machine()}
    try:
        cold, out = timed(runs["dvc_status"], root, env)
        result["dvc_status_first_s"] = cold  # cold DVC state database when the path is new
        result["stale_at_start"] = out.strip()[-300:]
        times: dict[str, list[float]] = {name: [] for name in runs}
        ran: dict[str, list[str]] = {name: [] for name in runs}
        for i in range(args.repeat):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for name in order:
                seconds, out = timed(runs[name], root, env)
                times[name].append(seconds)
                ran[name] += [ln.strip() for ln in out.splitlines() if "stages run:" in ln]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    result |= {name: summary(v) for name, v in times.items()}
    result["speedup_old_over_new"] = round(
        result["xray_run_old_repro_each"]["median_s"] / result["xray_run_new"]["median_s"], 2
    )
    result["stages_run_lines"] = sorted(set(ran["xray_run_new"] + ran["xray_run_old_repro_each"]))
    result["dvc_lock_unchanged"] = (root / "dvc.lock").read_bytes() == lock
    result["server"] = "started here" if server is not None else "PREFECT_API_URL"
    result["files_under_data"] = sum(len(files) for _, _, files in os.walk(root / "data"))
    checksum_jobs = subprocess.run(
        [*dvc, "config", "core.checksum_jobs"], cwd=root, capture_output=True, text=True
    )
    result["core_checksum_jobs"] = checksum_jobs.stdout.strip() or "default"
    write_report("nochange_run", result)


if __name__ == "__main__":
    main()
