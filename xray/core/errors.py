"""The project's one error type: what went wrong, in one line, with the exit status it means.

Raise a subclass of `XrayError` for anything a user can act on (a bad file, key or value; a
source that changed; work that failed for a stated reason). The entry points (a stage's
`run_stage`, the `xray` command) print `error: <message>` and exit with `exit_code`; every
other exception is a bug and keeps its traceback. `XRAY_TRACEBACK=1` shows one for these too.
"""

from __future__ import annotations

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
