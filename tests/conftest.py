"""Shared fixtures: a shrunk copy of the project in a temporary git repo."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Prefect in tests: a private home (temporary server database) and no telemetry.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="xray-prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
SHARED_ZIP = ROOT.parent / "shared" / "datasets" / "chest_xray_224_train.zip"

# The real params.yaml, shrunk so a whole pipeline run takes about a minute.
SHRUNK = {
    "data": {
        "synthetic": {"patients_per_class": 8, "image_size": 64, "images_per_patient": [1, 3]}
    },
    "corrupt": {"families": ["seed"], "severities": [3]},
    "compute": {"workers": 2},
    "train": {"image_size": 48, "epochs": 2, "batch_size": 16, "patience": 2},
    "finetune": {"epochs": 1, "batch_size": 16},
    "evaluate": {"grid_images": 4},
}


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler], state: object) -> Iterator[str]:
    """Serve `handler` on a free 127.0.0.1 port in a thread; `self.server.state` is `state`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def deep_update(base: dict, change: dict) -> dict:
    """Recursively merge `change` into a copy of `base`."""
    out = dict(base)
    for key, value in change.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def git(cwd: Path, *args: str) -> str:
    """Run git quietly in `cwd`; return stdout."""
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def tracked_files() -> list[str]:
    """The project's files as git sees them (tracked and untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


PIPELINE_OUTPUTS = ("data/raw", "data/splits", "data/corrupted", "models/", "reports/", "dvclive/")


def copy_project(dest: Path, extra: dict | None = None) -> Path:
    """Copy the project into `dest`, a new git repo with shrunk (and extra) params."""
    for rel in tracked_files():
        if rel.startswith(PIPELINE_OUTPUTS) or rel == "dvc.lock":
            continue  # pipeline outputs (data/source.json, the source record, is kept)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = deep_update(deep_update(params, SHRUNK), extra or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "test project")
    return dest


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Factory: copy the project into a temporary git repo with shrunk (and extra) params."""

    def make(extra: dict | None = None, name: str = "project") -> Path:
        return copy_project(tmp_path / name, extra)

    return make


def run_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first on PATH, quiet TF."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `dvc ARGS` in cwd with this interpreter's environment."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc
