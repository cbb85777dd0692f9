"""Progress of long work: n/N, rate and ETA as log lines (pipes, Prefect) or a live bar."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

# Seconds between two progress lines; a line is also written at each 10% of the work.
INTERVAL_ENV = "XRAY_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 5.0
# Minimum spacing of the 10% lines, so a fast job does not write ten lines in a second.
MIN_SPACING = 1.0
BAR_WIDTH = 28
BAR_REDRAW = 0.2  # seconds between two redraws of the live bar


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m: short, for ETA and elapsed times."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def interval_from_env() -> float:
    """The progress interval in seconds from XRAY_PROGRESS_INTERVAL (default 5)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a positive number of seconds")
    return value


def _live(stream: TextIO | None) -> bool:
    if stream is None or os.environ.get("XRAY_NO_BAR"):
        return False
    if stream is sys.stderr:  # a terminal, even while a stage's stderr is filtered
        from xray.core.runtime import stderr_is_terminal

        return stderr_is_terminal()
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts done items of a known total and reports them at a steady cadence.

    Writes `what: n/N unit (p%), r/s, ETA t` to `logger` every `interval` seconds and at
    each 10% (through pipes and in Prefect's log), or redraws one bar line on `stream`
    when it is a terminal. `close()` always writes the final line with the total time.
    """

    def __init__(
        self,
        total: int,
        what: str,
        logger: logging.Logger,
        *,
        unit: str = "images",
        interval: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0:
            raise ValueError(f"progress total must be >= 0, got {total}")
        self.total = total
        self.what = what
        self.unit = unit
        self.log = logger
        self.interval = interval_from_env() if interval is None else interval
        self.stream = sys.stderr if stream is None else stream
        self.live = _live(self.stream)
        self.clock = clock
        self.start = clock()
        self.done = 0
        self._last_line = self.start
        self._last_draw = -math.inf
        self._next_tenth = 1
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc_type is not None)

    def rate(self, now: float | None = None) -> float:
        """Items per second so far."""
        elapsed = (self.clock() if now is None else now) - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float:
        """Seconds left at the rate so far (inf before the first item)."""
        r = self.rate(now)
        return (self.total - self.done) / r if r > 0 else math.inf

    def status(self, now: float | None = None) -> str:
        """One line: `what: n/N unit (p%), r/s, ETA t`."""
        now = self.clock() if now is None else now
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
            f"{self.rate(now):,.1f}/s, ETA {format_duration(self.eta(now))}"
        )

    def update(self, n: int = 1) -> None:
        """Record n more items done; report when the cadence says so."""
        self.done = min(self.total, self.done + n)
        now = self.clock()
        if self.live:
            if now - self._last_draw >= BAR_REDRAW or self.done == self.total:
                self._draw(now)
            return
        tenth = math.floor(10 * self.done / self.total) if self.total else 10
        crossed = tenth >= self._next_tenth and now - self._last_line >= MIN_SPACING
        if self.done < self.total and (crossed or now - self._last_line >= self.interval):
            self.log.info("%s", self.status(now))
            self._last_line = now
            self._next_tenth = tenth + 1

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = round(BAR_WIDTH * frac)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = (
            f"\r{self.what} [{bar}] {self.done:,}/{self.total:,} {self.rate(now):,.1f}/s "
            f"ETA {format_duration(self.eta(now))}"
        )
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._last_draw = now

    def close(self, failed: bool = False) -> None:
        """Write the final line (once): items done, total time and mean rate."""
        if self._closed:
            return
        self._closed = True
        now = self.clock()
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        elapsed = now - self.start
        verb = "stopped at" if failed or self.done < self.total else "done"
        self.log.info(
            "%s: %s %s/%s %s in %s (%s/s)",
            self.what,
            verb,
            f"{self.done:,}",
            f"{self.total:,}",
            self.unit,
            format_duration(elapsed),
            f"{self.rate(now):,.1f}",
        )


EPOCH_METRICS = ("loss", "accuracy", "auc")


def epoch_line(
    what: str, epoch: int, epochs: int, logs: dict[str, float], seconds: float, eta: float
) -> str:
    """`what: epoch e/E, loss .. accuracy .. auc .. | val ..., lr .., 12s/epoch, ETA 2m30s`."""

    def metrics(prefix: str) -> str:
        return " ".join(
            f"{name} {logs[prefix + name]:.4f}" for name in EPOCH_METRICS if prefix + name in logs
        )

    parts = [f"{what}: epoch {epoch}/{epochs}", metrics("")]
    if any(k.startswith("val_") for k in logs):
        parts.append(f"| val {metrics('val_')}")
    line = " ".join(p for p in parts if p)
    if "learning_rate" in logs:
        line += f", lr {logs['learning_rate']:.3g}"
    return f"{line}, {format_duration(seconds)}/epoch, ETA {format_duration(eta)}"


class EpochProgress:
    """One log line per finished training epoch: its metrics, time, and the ETA of the rest.

    A Keras callback (duck-typed: no Keras import here, so data stages stay TF-free); the ETA
    assumes every remaining epoch runs (early stopping can end sooner). Replaces Keras' own
    per-epoch line (fit with verbose=0).
    """

    def __init__(
        self,
        epochs: int,
        what: str,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epochs = epochs
        self.what = what
        self.log = logger
        self.clock = clock
        self.model: object = None
        self.params: dict = {}
        self._begin = self.clock()
        self._first: int | None = None
        self._durations: list[float] = []

    def set_model(self, model: object) -> None:
        """Keras hands the model over (unused)."""
        self.model = model

    def set_params(self, params: dict) -> None:
        """Keras hands the fit parameters over (unused)."""
        self.params = params

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self._begin = self.clock()
        if self._first is None:
            self._first = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Log the epoch's line."""
        seconds = self.clock() - self._begin
        self._durations.append(seconds)
        # the first epoch of a run includes tracing/compilation: average the others when there
        per_epoch = self._durations[1:] or self._durations
        mean = sum(per_epoch) / len(per_epoch)
        left = max(0, self.epochs - (epoch + 1))
        values = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        self.log.info(
            "%s", epoch_line(self.what, epoch + 1, self.epochs, values, seconds, left * mean)
        )

    def __getattr__(self, name: str) -> Callable[..., None]:
        """Every other Keras hook (on_train_batch_end, ...) does nothing."""
        if name.startswith("on_"):
            return _noop
        raise AttributeError(name)


def _noop(*_args: object, **_kwargs: object) -> None:
    """A callback hook that does nothing."""


def _is_number(value: object) -> bool:
    """True for a value float() takes (Python or NumPy scalars, 0-d tensors)."""
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


WARN_FIRST = 10
"""Repeated warnings of one kind: the first WARN_FIRST lines, then one line with the count."""


def warn_some(
    logger: logging.Logger, what: str, lines: list[str], where: str, first: int = WARN_FIRST
) -> None:
    """Log `what line` for the first `first` lines, then one line: how many more, where all are."""
    for line in lines[:first]:
        logger.warning("%s %s", what, line)
    if len(lines) > first:
        more, total = len(lines) - first, len(lines)
        logger.warning("%s %d more (%d in all; %s)", what, more, total, where)
