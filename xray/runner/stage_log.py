"""A stage's output (`dvc repro` and the stage under it) relayed into the flow's log.

Each line is logged once, with the flow's timestamp and the line's own level: a stage's
log record (xray/core/runtime.py LOG_FORMAT) loses its timestamp and keeps its level and
message; DVC's `ERROR:`/`WARNING:` lines, `error:` lines, tracebacks, Python warnings and
TensorFlow's C++ lines keep theirs. DVC's advice after each stage (`To track the changes
with git, run: git add dvc.lock`, auto staging, `dvc push`) is held back, and the files it
names are collected so the flow can give the advice once per run (`git_advice`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from xray.core.runtime import LOG_LINE_RE

GIT_ADVICE_START = "To track the changes with git, run:"
GIT_ADD_RE = re.compile(r"^\s+git add (.+)$")
ADVICE_LINES = (
    re.compile(r"^To enable auto staging, run:$"),
    re.compile(r"^\s+dvc config core\.autostage true$"),
    re.compile(r"^Use `dvc push` to send your updates to remote storage\.$"),
)
DVC_LINE_RE = re.compile(r"^(ERROR|WARNING|error|warning): ")
CPP_LINE_RE = re.compile(r"^([IWEF])\d{4} ")
CPP_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
PY_WARNING_RE = re.compile(r"^\S.*:\d+: \w*Warning: ")
DVC_STATUS_RE = re.compile(r"^(Running stage |> |Stage '|Updating lock file|Generating lock file)")
LEVEL_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


class StageLog:
    """Relays one stage's output lines to `log` (a logger or Prefect's run logger)."""

    def __init__(self, stage: str, log: Any) -> None:
        self.stage = stage
        self.log = log
        self.level = logging.INFO  # of the last line: continuation lines keep it
        self.in_advice = False
        self.git_add: list[str] = []

    def parse(self, line: str) -> tuple[int, str] | None:
        """The level and text to log for one raw line; None for a line held back."""
        if line == GIT_ADVICE_START:
            self.in_advice = True
            return None
        if self.in_advice:
            match = GIT_ADD_RE.match(line)
            if match:
                self.git_add += [f for f in match.group(1).split() if f not in self.git_add]
                return None
            if not line.strip() or any(p.match(line) for p in ADVICE_LINES):
                return None
            self.in_advice = False
        elif any(p.match(line) for p in ADVICE_LINES):
            return None
        if not line.strip():
            return None
        record = LOG_LINE_RE.match(line)
        if record:
            level_name, name, message = record.groups()
            self.level = logging.getLevelName(level_name)
            same = name == f"xray.{self.stage}"
            return self.level, message if same else f"{name}: {message}"
        dvc = DVC_LINE_RE.match(line)
        cpp = CPP_LINE_RE.match(line)
        if dvc:
            self.level = logging.getLevelName(dvc.group(1).upper())
        elif cpp:
            self.level = CPP_LEVELS[cpp.group(1)]
        elif line.startswith("Traceback (most recent call last):"):
            self.level = logging.ERROR
        elif PY_WARNING_RE.match(line):
            self.level = logging.WARNING
        elif DVC_STATUS_RE.match(line):
            self.level = logging.INFO
        return self.level, line

    def feed(self, line: str) -> None:
        """Log one raw output line (without its newline) at its own level, or hold it back."""
        parsed = self.parse(line.rstrip())
        if parsed is not None:
            level, text = parsed
            getattr(self.log, LEVEL_METHODS.get(level, "info"))("%s | %s", self.stage, text)


def git_advice(files: Iterable[str]) -> str | None:
    """DVC's git advice for a whole run, once: None when no stage changed a tracked file."""
    names = list(dict.fromkeys(files))
    if not names:
        return None
    return f"to track the changes with git, run: git add {' '.join(names)}"
