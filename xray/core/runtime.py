"""Entry-point glue shared by the stages and the CLI: logging, quiet TensorFlow, one-line errors.

The entry points are `run_stage` (each stage's `python -m tasks.<stage>`) and the `xray`
command's main (xray/cli/main.py). Both quiet TensorFlow before anything imports it
(`quiet_tensorflow`: TF_CPP_MIN_LOG_LEVEL and warning filters), pass their stderr through a
small filter process for TensorFlow's known harmless lines (`filter_stderr`), and print a
user error (xray/core/errors.py) as one line (`report_error`).

Environment:
- XRAY_LOG_LEVEL (DEBUG, INFO, WARNING, ERROR; default INFO): the level of every log line.
  DEBUG (`xray --verbose`) also lets through TensorFlow's start-up lines and the known
  harmless warnings that are otherwise filtered (QUIET_STDERR, QUIET_WARNINGS).
- XRAY_TRACEBACK (any non-empty value): show the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from xray.core.errors import EXIT_FAILED, InputError, disk_full, exit_status, is_user_error
from xray.core.process import die_with_parent, die_with_run

LOG_LEVEL_ENV = "XRAY_LOG_LEVEL"
TRACEBACK_ENV = "XRAY_TRACEBACK"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One line of LOG_FORMAT as a stage writes it (parsed back by the flow, xray/runner/stage_log.py).
LOG_LINE_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.\-]+): (.*)$"
)
NOISY_LOGGERS = ("httpx", "httpcore")

# TensorFlow's start-up lines on stderr, written by its C++ libraries while `import
# tensorflow` loads them (twice: two libraries); TF_CPP_MIN_LOG_LEVEL keeps them out where
# the build reads it first, the stderr filter drops them where it does not.
QUIET_STDERR = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^I0000 [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on"),
)
# Known harmless lines TensorFlow's C++ runtime writes while it works.
QUIET_RUNTIME = (
    # tf.data graphs built by this TF for a MapDataset op definition that lacks the attribute
    re.compile(
        r"^E0000 [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
        r"use_unbounded_threadpool which is not in the op definition"
    ),
)
QUIET_LINES = QUIET_STDERR + QUIET_RUNTIME  # what an entry point's stderr filter drops
# The filter: lines matching argv's regexes are dropped, all else is passed on as it comes
# (a partial line at once, so a live progress bar still works), to EOF: when the last
# process holding the pipe ends, however it ends, so a crash's last words are not lost.
FILTER_PROGRAM = r"""
import os, re, signal, sys
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
drop = [re.compile(p.encode()) for p in sys.argv[1:]]
cpp = re.compile(rb"^[IWEF]\d{0,4}$|^[IWEF]\d{4} ")
held = b""
while True:
    data = os.read(0, 65536)
    if not data:
        break
    *lines, held = (held + data).split(b"\n")
    out = [ln + b"\n" for ln in lines if not any(p.search(ln) for p in drop)]
    if held and not cpp.match(held):
        out.append(held)
        held = b""
    if out:
        os.write(1, b"".join(out))
if held:
    os.write(1, held)
"""
FILTER_WAIT_S = 5.0  # how long a finished stage waits for the filter to pass on its last lines
# Known harmless Python warnings: (message regex, category).
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Keras passes its own shuffle=True default on for tf.data input, which shuffles itself.
    (r"`shuffle=True` was passed, but will be ignored", UserWarning),
)
TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"
TF_QUIET_LEVEL = "2"  # TensorFlow's C++ INFO and WARNING lines (oneDNN, CPU features)


def log_level() -> str:
    """The level from XRAY_LOG_LEVEL (default INFO); a bad value is an InputError."""
    raw = os.environ.get(LOG_LEVEL_ENV, "") or "INFO"
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise InputError(f"{LOG_LEVEL_ENV}={raw!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


def verbose() -> bool:
    """True when XRAY_LOG_LEVEL is DEBUG: nothing is filtered."""
    return os.environ.get(LOG_LEVEL_ENV, "").strip().upper() == "DEBUG"


def setup_logging() -> None:
    """Log to stderr at XRAY_LOG_LEVEL with the logger's name; quiet the per-request loggers."""
    level = log_level()
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if level != "DEBUG":
        for noisy in NOISY_LOGGERS:  # per-request lines of Prefect's API client
            logging.getLogger(noisy).setLevel(logging.WARNING)


_STDERR: dict[str, Any] = {}


def stderr_is_terminal() -> bool:
    """Whether this process's stderr is a terminal (also while filter_stderr has it piped)."""
    if "tty" in _STDERR:
        return bool(_STDERR["tty"])
    try:
        return os.isatty(2)
    except OSError:
        return False


@contextlib.contextmanager
def filter_stderr(patterns: Sequence[re.Pattern[str]] = QUIET_LINES) -> Iterator[None]:
    """Pass this process's stderr (C++ included) through FILTER_PROGRAM, dropping `patterns`.

    Not at XRAY_LOG_LEVEL=DEBUG, and nothing is filtered when the filter cannot start.
    """
    if verbose() or _STDERR:
        yield
        return
    try:
        tty = os.isatty(2)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", FILTER_PROGRAM, *(p.pattern for p in patterns)],
            stdin=subprocess.PIPE,
            stdout=2,
        )
    except OSError:
        yield
        return
    assert proc.stdin is not None
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 now holds the pipe's only write end in this process
    _STDERR.update(tty=tty, proc=proc)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe closes here: the filter drains it and ends
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=FILTER_WAIT_S)
        _STDERR.clear()


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up lines and known harmless warnings out: call before it loads.

    Sets TF_CPP_MIN_LOG_LEVEL (an explicit setting wins; the stages the `xray` command starts
    inherit it) and ignores QUIET_WARNINGS. Nothing at XRAY_LOG_LEVEL=DEBUG: everything shows.
    """
    if verbose():
        return
    os.environ.setdefault(TF_LOG_ENV, TF_QUIET_LEVEL)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def set_verbose() -> None:
    """XRAY_LOG_LEVEL=DEBUG for this process and its children (before quiet_tensorflow)."""
    os.environ[LOG_LEVEL_ENV] = "DEBUG"


def report_error(exc: BaseException, template: str = "error: {}") -> int | None:
    """A user error printed as one line (`template` around its message); its exit status.

    None for a bug, and for every error when XRAY_TRACEBACK is set: the caller re-raises it
    and Python prints the traceback. The one place an entry point maps an error to its line.
    """
    if os.environ.get(TRACEBACK_ENV) or not is_user_error(exc):
        return None
    print(template.format(disk_full(exc) or exc), file=sys.stderr)
    return exit_status(exc)


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's main(): TensorFlow quiet, logging set up, stderr filtered.

    main imports the library itself, so nothing loads TensorFlow before quiet_tensorflow.
    A user error is one line on stderr and exit status 1 (the stage failed), a bug a
    traceback. Nothing is filtered at XRAY_LOG_LEVEL=DEBUG.
    """
    try:
        die_with_parent()  # a killed run (or DVC) takes its stage with it: xray/core/process.py
        die_with_run()
        quiet_tensorflow()
        setup_logging()
        with filter_stderr():
            main()
    except Exception as e:
        if report_error(e) is None:
            raise
        sys.exit(EXIT_FAILED)
