"""Process hygiene: a stage dies with its run, and a run's temporary files stay in one folder.

A run starts DVC in its own session (signals reach it only through the run), so a `kill -9`
of the run would leave DVC and the stage running, still writing outputs. On Linux each link
of the chain asks the kernel for a signal when its parent dies (`prctl(PR_SET_PDEATHSIG)`):
DVC gets SIGKILL when the run dies, the stage SIGTERM when DVC dies (its outputs are written
to temporary names first, so nothing half-written is left under an output's name).

TensorFlow (autograph), DVC and the project write temporary files through Python's
`tempfile`, which honours TMPDIR: a run points it at a work folder under .xray/tmp that is
removed when the run ends, and swept by the next run when a kill left it behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TMP_VARS = ("TMPDIR", "TMP", "TEMP")


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


def _child_dies_with_us() -> None:
    """preexec_fn of the DVC process: SIGKILL when the run that started it dies."""
    die_with_parent(signal.SIGKILL)


CHILD_DIES_WITH_US = _child_dies_with_us if sys.platform.startswith("linux") else None
"""Pass as `preexec_fn` to the Popen of a DVC process (None where prctl does not exist)."""


@contextlib.contextmanager
def run_tmpdir(root: Path) -> Iterator[dict[str, str]]:
    """A temporary folder for one run's processes: the environment variables that select it."""
    from xray.core.io import WORK_ROOT, work_dir  # numpy and PIL: not for every entry point

    with work_dir("run", root / WORK_ROOT) as tmp:
        yield dict.fromkeys(TMP_VARS, str(tmp.resolve()))
