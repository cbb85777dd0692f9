"""Process hygiene: a stage dies with its run, and a run's temporary files stay in one folder.

A run starts DVC in its own session (signals reach it only through the run), so a `kill -9`
of the run would leave DVC and the stage running, still writing outputs. On Linux DVC asks
the kernel for SIGKILL when the run dies (`prctl(PR_SET_PDEATHSIG)`). The stage is not DVC's
child everywhere: DVC starts it through `$SHELL -c`, and a shell that does not exec its
command (dash, the /bin/sh of Debian and Ubuntu, used when SHELL is unset) stays between
them. So the stage watches the run itself: the run's environment names it (`XRAY_RUN`, pid
and start time, so a reused pid is not mistaken for it), and a thread of the stage waits on
a pidfd of that process and sends the stage SIGTERM when it is gone (its outputs are written
to temporary names first, so nothing half-written is left under an output's name). A stage
run by DVC alone also asks for SIGTERM when its parent dies.

TensorFlow (autograph), DVC and the project write temporary files through Python's
`tempfile`, which honours TMPDIR: a run points it at a work folder under .xray/tmp that is
removed when the run ends, and swept by the next run when a kill left it behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TMP_VARS = ("TMPDIR", "TMP", "TEMP")
RUN_VAR = "XRAY_RUN"
"""Environment variable naming the run that started a stage: `pid:start time`."""
POLL_S = 1.0  # where a pidfd is not available (Linux < 5.3), how often the stage looks


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Get `sig` when the parent process dies (Linux; elsewhere nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return  # not permitted here: the run's own cleanup still applies
    if os.getppid() != parent:  # it died before the request: act as the kernel would have
        os.kill(os.getpid(), sig)


def _start_time(pid: int) -> str | None:
    """Start time in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def run_identity() -> str:
    """This process as the value of XRAY_RUN: `pid:start time` (start time empty off Linux)."""
    pid = os.getpid()
    return f"{pid}:{_start_time(pid) or ''}"


def die_with_run(sig: int = signal.SIGTERM) -> None:
    """Get `sig` when the run named by XRAY_RUN ends (Linux; nothing without XRAY_RUN)."""
    value = os.environ.get(RUN_VAR, "")
    pid_text, _, start = value.partition(":")
    if not sys.platform.startswith("linux") or not pid_text.isdigit() or not start:
        return
    pid = int(pid_text)
    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None
    except OSError:  # no pidfd here: look every POLL_S
        fd = -1
    if fd is None or _start_time(pid) != start:  # gone already (or the pid is another's now)
        if fd is not None and fd >= 0:
            os.close(fd)
        os.kill(os.getpid(), sig)
        return
    watch = threading.Thread(target=_watch, args=(pid, start, fd, sig), name="die-with-run")
    watch.daemon = True
    watch.start()


def _watch(pid: int, start: str, fd: int, sig: int) -> None:
    """Wait for the run to end, then send this process `sig`."""
    if fd >= 0:
        select.select([fd], [], [])  # a pidfd is readable once its process has exited
    else:
        while _start_time(pid) == start:
            threading.Event().wait(POLL_S)
    os.kill(os.getpid(), sig)


def _child_dies_with_us() -> None:
    """preexec_fn of the DVC process: SIGKILL when the run that started it dies."""
    die_with_parent(signal.SIGKILL)


CHILD_DIES_WITH_US = _child_dies_with_us if sys.platform.startswith("linux") else None
"""Pass as `preexec_fn` to the Popen of a DVC process (None where prctl does not exist)."""


@contextlib.contextmanager
def run_env(root: Path) -> Iterator[dict[str, str]]:
    """Environment of one run's processes: a temporary folder of their own, and the run's name."""
    from xray.core.io import WORK_ROOT, work_dir  # numpy and PIL: not for every entry point

    with work_dir("run", root / WORK_ROOT) as tmp:
        yield dict.fromkeys(TMP_VARS, str(tmp.resolve())) | {RUN_VAR: run_identity()}
