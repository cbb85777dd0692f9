"""The project's one error type: what went wrong, in one line, with the exit status it means.

Raise a subclass of `XrayError` for anything a user can act on (a bad file, key or value; a
source that changed; work that failed for a stated reason): `InputError` (exit status 2) or
`WorkError` (exit status 1), or set `exit_code` on the subclass. Every other exception is a
bug and keeps its traceback.

The entry points map them in one place, `report_error` (xray/core/runtime.py): `error:
<message>` on stderr. The `xray` command then exits with `exit_status(error)`; a stage
(`run_stage`) always exits 1, whatever stopped it (DVC and the flow read "the stage failed";
the line says why). `XRAY_TRACEBACK=1` shows the traceback of these errors too.

One fallback stays, for the project's convention from before this type: a `ValueError` or a
missing, unreadable path (`PROJECT_INPUT_ERRORS`) raised by the project's own code (the
innermost frame of its traceback is in tasks/, flows/ or xray/) is bad input too, exit status
2. Without it documented one-line errors would become tracebacks: `read_csv`'s "not found (run
the stage that writes it first)" in a stage, `xray run --set` naming a key params.yaml lacks,
`xray deps` on a dvc.yaml it cannot parse, and the other plain `raise ValueError(...)` of the
library. The same error raised deep inside a library (json, numpy, Keras) is a bug.
"""

from __future__ import annotations

import errno
from pathlib import Path

from xray.core.text import one_line

EXIT_OK = 0  # done
EXIT_FAILED = 1  # the work failed: a stage, images, an adaptation, a probe, a deployment
EXIT_USAGE = 2  # usage error or bad input: options, params.yaml, a missing model, env values


class XrayError(Exception):
    """An error the user can act on: `str()` is one line, `exit_code` the status it means."""

    exit_code: int = EXIT_USAGE

    def __str__(self) -> str:
        return one_line(super().__str__())


class InputError(XrayError, ValueError):
    """Bad input the user can fix (a file, a key, a value, an option): exit status 2."""

    exit_code = EXIT_USAGE


class WorkError(XrayError, RuntimeError):
    """Work that failed for a reason the message states (a stage, a probe, a push): exit 1."""

    exit_code = EXIT_FAILED


class DiskFullError(WorkError):
    """The disk (or quota) filled while writing: the message names what was being written."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException, path: Path | str | None = None) -> DiskFullError | None:
    """The one-line error for a disk-full OSError (naming `path`, else its file), else None."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FULL_ERRNOS:
        return None
    where = path or exc.filename
    what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    advice = "free space, then rerun; nothing already saved was replaced"
    return DiskFullError(
        f"{where}: {what} while writing it ({advice})" if where else f"{what} ({advice})"
    )


PROJECT_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
"""Builtin errors that name bad input when the project's own code raised them (the fallback)."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("tasks", "flows", "xray")


def _raised_in_project(exc: BaseException) -> bool:
    """True when the innermost frame of exc's traceback is in the project's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(PROJECT_ROOT / pkg) for pkg in PROJECT_PACKAGES)


def is_user_error(exc: BaseException) -> bool:
    """Whether exc is shown as one line (an XrayError, or the fallback) rather than a traceback."""
    if isinstance(exc, XrayError) or disk_full(exc) is not None:  # a full disk is no bug
        return True
    return isinstance(exc, PROJECT_INPUT_ERRORS) and _raised_in_project(exc)


def exit_status(exc: BaseException) -> int:
    """The exit status a user error means: its exit_code; bad input (2) for the fallback."""
    if not isinstance(exc, XrayError) and (full := disk_full(exc)) is not None:
        return full.exit_code
    return exc.exit_code if isinstance(exc, XrayError) else EXIT_USAGE
