"""Entry-point glue shared by the stage modules: logging and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

# Errors that mean bad input rather than a bug: shown as one line, exit status 1.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    RuntimeError,
    OSError,
)


NOISY_LOGGERS = ("httpx", "httpcore")


def setup_logging() -> None:
    """Log to stderr with the stage's logger name."""
    logging.basicConfig(
        level=os.environ.get("XRAY_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in NOISY_LOGGERS:  # per-request lines of Prefect's API client
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's main(); turn user errors into one line on stderr and exit status 1."""
    setup_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("XRAY_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
