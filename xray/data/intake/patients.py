"""Patient ids from image file names: the Kermany et al. scheme, or a custom regex."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import PurePosixPath

from xray.core.text import one_line
from xray.data.intake.entries import IngestError

PATIENT_PATTERN_KEY = "patient_pattern"
"""Name used for the custom patient regex in error messages (the params key)."""
KNOWN_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$"),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+(?:-\d+)?$"),
    re.compile(r"^(IM-\d+)-\d+(?:-\d+)?$"),
)
"""Kermany et al. file-name stems -> patient id (group 1)."""


@lru_cache(maxsize=32)
def _compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    """Compile and validate a custom patient regex."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        msg = f"{PATIENT_PATTERN_KEY}: invalid regex {pattern!r}: {e}"
        raise IngestError(one_line(msg)) from e
    if "patient" not in rx.groupindex and rx.groups < 1:
        msg = f"{PATIENT_PATTERN_KEY}: regex {pattern!r} needs a group or (?P<patient>...)"
        raise IngestError(msg)
    return rx


def patient_id(filename: str, pattern: str | None = None) -> str | None:
    """Patient id from an image file name (Kermany scheme, or a custom regex); None if no match."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    if pattern is not None:
        rx = _compile_patient_pattern(pattern)
        m = rx.search(name)
        if m is None:
            return None
        pid = m.group("patient") if "patient" in rx.groupindex else m.group(1)
        return pid or None
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for rx in KNOWN_PATIENT_PATTERNS:
        m = rx.match(stem)
        if m:
            return m.group(1)
    return None
