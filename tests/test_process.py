"""Process hygiene (issue 24 item 7): a `kill -9` of the run takes DVC and the stage with it,
and the run's temporary files (TensorFlow's, DVC's, ours) live in one folder that goes away."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, dvc, git

STAGE = """\
import os, sys, tempfile, time
sys.path.insert(0, {root!r})
from xray.core.runtime import run_stage

def main():
    fd, name = tempfile.mkstemp(prefix="autograph-like-")  # as TensorFlow's autograph does
    os.close(fd)
    with open("stage.txt", "w") as f:
        f.write(f"{{os.getpid()}} {{name}}")
    time.sleep(float(os.environ.get("XRAY_TEST_STAGE_S", "0")))
    with open("out.txt", "w") as f:
        f.write("done")

run_stage(main)
"""
DRIVER = """\
import logging, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from flows.pipeline import dvc_repro
dvc_repro("slow", Path({project!r}), logging.getLogger("driver"))
"""
DVC_YAML = {
    "stages": {"slow": {"cmd": "python stage.py", "deps": ["stage.py"], "outs": ["out.txt"]}}
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (dead) parent's reaper is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _wait(what: str, check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_kill_9_of_the_run_stops_its_stage_and_its_temp_files_go(tmp_path: Path) -> None:
    project = tmp_path / "tiny"
    project.mkdir()
    git(project, "init", "-q")
    dvc(project, "init", "-q")
    (project / "stage.py").write_text(STAGE.format(root=str(ROOT)))
    (project / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    # SHELL=/bin/sh: DVC starts the stage through `sh -c`, and a shell that does not exec its
    # command (dash) stays between DVC and the stage: the stage must watch the run itself
    env = {**os.environ, "XRAY_TEST_STAGE_S": "120", "SHELL": "/bin/sh"}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(root=str(ROOT), project=str(project))],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stamp = project / "stage.txt"
    try:
        _wait("the stage to start", lambda: stamp.exists() and " " in stamp.read_text())
    finally:
        driver.kill()  # kill -9 of the run
        driver.wait(timeout=30)
    pid_text, temp_name = stamp.read_text().split(" ", 1)
    stage_pid = int(pid_text)
    _wait("the stage to die with its run", lambda: not _alive(stage_pid), timeout=30)
    assert not (project / "out.txt").exists()  # it stopped writing
    run_tmp = Path(temp_name).parent
    assert run_tmp.parent == (project / ".xray" / "tmp").resolve()  # TMPDIR of the run
    assert run_tmp.name.startswith("run-")

    # the next run sweeps the killed run's folder and leaves none of its own
    stamp.unlink()
    subprocess.run(
        [sys.executable, "-c", DRIVER.format(root=str(ROOT), project=str(project))],
        cwd=project,
        env={**os.environ, "XRAY_TEST_STAGE_S": "0", "SHELL": "/bin/sh"},
        check=True,
        timeout=300,
    )
    assert (project / "out.txt").read_text() == "done"
    assert not run_tmp.exists()
    assert [p.name for p in (project / ".xray" / "tmp").iterdir()] == []


WATCHER = """\
import sys, time
sys.path.insert(0, {root!r})
from xray.core.process import die_with_run
die_with_run()
print("watching", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfd and /proc")
@pytest.mark.parametrize("pid_reused", [False, True])
def test_a_stage_ends_when_the_run_named_in_its_environment_ends(pid_reused: bool) -> None:
    from xray.core.process import RUN_VAR

    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{run.pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
        name = f"{run.pid}:{int(start) - 1 if pid_reused else start}"  # another start: not ours
        stage = subprocess.Popen(
            [sys.executable, "-c", WATCHER.format(root=str(ROOT))],
            env={**os.environ, RUN_VAR: name},
            stdout=subprocess.PIPE,
            text=True,
        )
        if pid_reused:  # the run it names is gone already: it ends at once
            assert stage.wait(timeout=30) == -15
            return
        assert stage.stdout is not None and stage.stdout.readline() == "watching\n"
        assert stage.poll() is None
    finally:
        run.kill()
        run.wait()
    assert stage.wait(timeout=30) == -15  # SIGTERM, as soon as the run is gone
