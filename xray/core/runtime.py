"""Entry-point glue shared by the stages and the CLI: logging, quiet TensorFlow, one-line errors.

Environment:
- XRAY_LOG_LEVEL (DEBUG, INFO, WARNING, ERROR; default INFO): the level of every log line.
  DEBUG (`xray --verbose`) also lets through TensorFlow's start-up lines and the known
  harmless warnings that are otherwise filtered (QUIET_STDERR, QUIET_WARNINGS).
- XRAY_TRACEBACK (any non-empty value): show the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

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
# tensorflow` loads them (twice: two libraries), before TF_CPP_MIN_LOG_LEVEL is read.
QUIET_STDERR = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^I0000 [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on"),
)
# Known harmless lines TensorFlow's C++ runtime writes while it works (a stage's stderr is
# filtered for them by a small child process, see filter_stderr).
QUIET_RUNTIME = (
    # tf.data graphs built by this TF for a MapDataset op definition that lacks the attribute
    re.compile(
        r"^E0000 [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
        r"use_unbounded_threadpool which is not in the op definition"
    ),
)
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


class UserError(ValueError):
    """Bad input the user can fix (a file, a key, a value): one line, no traceback."""


# Project errors that mean bad input or an unusable source rather than a bug, by qualified
# name (no import of their heavy modules here). New ones should subclass UserError instead.
USER_ERROR_NAMES = frozenset(
    {
        "xray.core.params.ParamsError",
        "tasks.download.DownloadError",
        "xray.data.fetch.FetchError",
        "xray.data.intake.IngestError",
        "tasks.split.SplitError",
        "xray.core.compute.ComputeError",
        "xray.cli.adapt.AdaptError",
        "xray.reports.lineage.LineageError",
    }
)
# Raised by the project's own code (not deep in a library), these name bad input too.
PROJECT_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
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


def _qualified_name(cls: type) -> str:
    """`module.Class`, with a stage's real module name when it runs as `python -m tasks.x`."""
    module = cls.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else module
    return f"{module}.{cls.__qualname__}"


def is_user_error(exc: BaseException) -> bool:
    """Whether exc is bad input (one line) rather than a bug (a traceback).

    UserError and the named project errors are; a ValueError or a missing/unreadable path
    is when the project's own code raised it (its convention for bad input); anything
    else, a RuntimeError, an OSError, or a ValueError from inside a library, is a bug.
    """
    if isinstance(exc, UserError):
        return True
    names = {_qualified_name(c) for c in type(exc).__mro__}
    if names & USER_ERROR_NAMES:
        return True
    return isinstance(exc, PROJECT_INPUT_ERRORS) and _raised_in_project(exc)


def log_level() -> str:
    """The level from XRAY_LOG_LEVEL (default INFO); a bad value is a UserError."""
    raw = os.environ.get(LOG_LEVEL_ENV, "") or "INFO"
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise UserError(f"{LOG_LEVEL_ENV}={raw!r}: expected one of {', '.join(LOG_LEVELS)}")
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


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[re.Pattern[str]]) -> Iterator[None]:
    """Hold what is written to file descriptor 2 (C++ included); replay all but `patterns`."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for raw in held:
                line = raw.decode("utf-8", "replace")
                if not any(p.search(line) for p in patterns):
                    os.write(2, raw)


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
def filter_stderr(patterns: Sequence[re.Pattern[str]] = QUIET_RUNTIME) -> Iterator[None]:
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


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader with TensorFlow's start-up lines filtered from stderr."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr(QUIET_STDERR):
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` (once) and wraps its loader in _QuietLoader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow" or verbose():
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_QUIET: dict[str, Any] = {}


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up lines and known harmless warnings out of the logs.

    Called when the `tasks` package is imported, before anything imports TensorFlow: sets
    TF_CPP_MIN_LOG_LEVEL (an explicit setting wins), filters the lines TensorFlow writes
    while it loads, and ignores QUIET_WARNINGS. Nothing is filtered at XRAY_LOG_LEVEL=DEBUG.
    """
    if verbose() or _QUIET:
        return
    if TF_LOG_ENV not in os.environ:
        os.environ[TF_LOG_ENV] = TF_QUIET_LEVEL
        _QUIET["tf_env"] = True
    if "tensorflow" not in sys.modules:
        finder = _QuietTensorFlow()
        sys.meta_path.insert(0, finder)
        _QUIET["finder"] = finder
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    _QUIET["warnings"] = True


def set_verbose() -> None:
    """XRAY_LOG_LEVEL=DEBUG for this process and its children; undo quiet_tensorflow."""
    os.environ[LOG_LEVEL_ENV] = "DEBUG"
    if _QUIET.pop("tf_env", False):
        os.environ.pop(TF_LOG_ENV, None)
    finder = _QUIET.pop("finder", None)
    if finder is not None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
    if _QUIET.pop("warnings", False):
        messages = {m for m, _ in QUIET_WARNINGS}
        warnings.filters[:] = [
            f for f in warnings.filters if getattr(f[1], "pattern", None) not in messages
        ]


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's main(); a user error becomes one line on stderr and exit status 1.

    Its stderr is filtered for QUIET_RUNTIME lines (not at XRAY_LOG_LEVEL=DEBUG).
    """
    try:
        setup_logging()
        with filter_stderr():
            main()
    except Exception as e:
        if os.environ.get(TRACEBACK_ENV) or not is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
