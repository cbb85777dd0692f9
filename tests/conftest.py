"""Shared fixtures: a shrunk copy of the project in a temporary git repo."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import absl.logging
import httpx
import numpy as np
import pytest
import yaml

from benchmarks._common import api_call  # noqa: F401  (tests import it from here)
from xray.core.io import MANIFEST_FIELDS, png_bytes, write_csv

ROOT = Path(__file__).resolve().parents[1]

# absl (TensorFlow's logging) keeps a handler bound to the sys.stderr of its import, here a
# pytest capture buffer. Prefect's logging setup closes every handler, and absl's close()
# closes its stream when that is no longer sys.stderr: a later test then loses stderr. The
# real stderr is never closed by absl.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

# Seconds prefect_test_harness waits for its temporary server (its 30 s default fails on a
# busy 2-core machine, as the CLI's would: xray/cli/main.py EPHEMERAL_STARTUP_TIMEOUT_S).
HARNESS_STARTUP_S = 120

# Prefect in tests: a private home (temporary server database) and no telemetry.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="xray-prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
SHARED_ZIP = ROOT.parent / "shared" / "datasets" / "chest_xray_224_train.zip"
SERVER_START_S = 240  # a loaded machine can take minutes to migrate a fresh database
SERVER_STOP_S = 30

# The real params.yaml, shrunk so a whole pipeline run takes about a minute.
SHRUNK = {
    "data": {
        "synthetic": {"patients_per_class": 8, "image_size": 64, "images_per_patient": [1, 3]}
    },
    "corrupt": {"families": ["seed"], "severities": [3]},
    "compute": {"workers": 2},
    "train": {"image_size": 48, "epochs": 2, "batch_size": 16, "patience": 2},
    "finetune": {"epochs": 1, "batch_size": 16},
    # two shifts, one balance: the proxy's three kinds of target, at a fraction of the cost
    "evaluate": {"grid_images": 4, "proxy_shifts": ["equalize", "markers"], "proxy_priors": [0.6]},
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


def stage_argv(stage: str, root: Path = ROOT) -> list[str]:
    """The stage's command as dvc.yaml runs it (its paths included), on this Python."""
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    return [sys.executable, *shlex.split(cmd)[1:]]


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


MAX_WORKERS = 4  # TensorFlow per worker: more would trade memory for little


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


# The longest files, longest first (the suite's --durations on a 2-core machine: about 330,
# 305, 165, 150 and 130 s): started first, no worker is left running one of them alone at the end.
LONGEST_FILES = (
    "test_deploy.py",
    "test_strategy.py",
    "test_server_restart.py",
    "test_pipeline.py",
    "test_remote.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first, then the other files with slow tests, then the rest (order kept
    inside each file): under xdist the long files start at once, the short ones fill in."""
    heavy = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FILES:
            return 0, LONGEST_FILES.index(name)
        return (1 if item.path in heavy else 2), 0

    items.sort(key=rank)


@pytest.fixture(scope="session")
def shrunk_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project copy whose shrunk pipeline ran once (`dvc repro`, then committed: lock,
    .gitignores, git outputs), and what `dvc repro` printed. Shared by the tests that start
    from a finished run, on every xdist worker: copy it (`copy_run`) before changing anything."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one run for all the workers of this session
        base = base.parent
    folder = base / "shrunk-run"
    folder.mkdir(exist_ok=True)
    done = folder / "printed.txt"
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits for the first one's run
        if not done.exists():
            root = copy_project(folder / "project")
            printed = dvc(root, "repro").stdout
            git(root, "add", "-A")  # DVC's .gitignores keep the cached outputs out of git
            git(root, "commit", "-q", "-m", "pipeline run")
            (folder / "printed.tmp").write_text(printed)
            (folder / "printed.tmp").rename(done)
    return folder / "project", done.read_text()


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a finished project (its git repo, DVC cache and outputs)."""
    shutil.copytree(run, dest, symlinks=True)
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


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], object], what: str, log: Path, *, timeout: float, poll_s: float
) -> Any:
    """Poll predicate() until truthy; fail with the log's tail on timeout.

    An API call that times out or cannot connect counts as "not yet": a server busy with a
    worker and its flow runs (or restarting) on a loaded machine may answer a poll late.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out waiting for {what}: {log.read_text()[-4000:]}")


class PrefectServer:
    """A real Prefect server as `xray server` runs it, on a free loopback port; restartable.

    Its SQLite database and concurrency leases live under `root/prefect`, so a restart on the
    same port finds everything the previous process had.
    """

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.home = root / "prefect"
        self.log = root / "server.log"
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = dict(os.environ) | {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers as itself (not some other test's)."""
        from xray.cli.server import server_command, server_env

        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                server_command(self.port), env=server_env(base=self.env), stdout=log, stderr=log
            )
        deadline = time.monotonic() + SERVER_START_S
        while not self._answers_as_itself():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Prefect server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(1)

    def _answers_as_itself(self) -> bool:
        """True when the port answers with this server's PREFECT_HOME (a port race is caught)."""
        try:
            r = httpx.get(f"{self.api}/admin/settings", timeout=5)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        if Path(r.json()["home"]).resolve() != self.home.resolve():
            self.stop()
            pytest.fail(f"port {self.port} is answered by another Prefect server")
        return True

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after SERVER_STOP_S)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A started PrefectServer under tmp_path, stopped afterwards."""
    server = PrefectServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_generated_split(
    raw: Path, splits: Path, name: str, n: int, draw: Callable[[str], np.ndarray]
) -> None:
    """n generated PNGs, classes alternating (draw(label) -> 2-D uint8), and the split CSV."""
    rows = []
    for i in range(n):
        label = ("NORMAL", "PNEUMONIA")[i % 2]
        img = draw(label)
        rel = f"images/{name}/{label}/{name}{i}.png"
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(png_bytes(img))
        rows.append(
            {
                "path": rel,
                "label": label,
                "source_split": name,
                "patient_id": f"{name}{i}",
                "sha256": f"{name}{i:062d}",
                "width": img.shape[1],
                "height": img.shape[0],
            }
        )
    splits.mkdir(parents=True, exist_ok=True)
    write_csv(splits / f"{name}.csv", rows, MANIFEST_FIELDS)


MODEL_SIZE = 32  # input size of the tiny model_file
MODEL_THRESHOLD = 0.37  # its threshold


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init xray_net saved with its metadata (no prior references: an older file)."""
    import keras

    from xray.models.architectures import build_model, save_model

    keras.utils.set_random_seed(5)
    path = tmp_path_factory.mktemp("model") / "m.keras"
    meta = {
        "arch": "xray_net",
        "image_size": MODEL_SIZE,
        "classes": ["NORMAL", "PNEUMONIA"],
        "positive_class": "PNEUMONIA",
        "threshold": MODEL_THRESHOLD,
    }
    save_model(build_model("xray_net", MODEL_SIZE), path, meta)
    return path
