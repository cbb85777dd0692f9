"""Progress lines: cadence, content and the final line, with a fake clock (no sleeping)."""

from __future__ import annotations

import io
import logging

import pytest

from xray.core.progress import Progress, format_duration, interval_from_env


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "xray.test"]


def test_lines_every_interval_and_at_each_tenth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xray.test")
    clock = Clock()
    p = Progress(
        1000,
        "corrupt",
        logging.getLogger("xray.test"),
        interval=5,
        stream=io.StringIO(),
        clock=clock,
    )
    for _ in range(1000):
        clock.t += 0.01  # 100 items/s: 10 s in all, a tenth every second
        p.update()
    p.close()
    out = lines(caplog)
    # nine 10% lines (the 100% one is the final line), one final line
    assert len(out) == 10
    assert out[0] == "corrupt: 100/1,000 images (10%), 100.0/s, ETA 9s"
    assert out[-1] == "corrupt: done 1,000/1,000 images in 10s (100.0/s)"


def test_slow_work_reports_on_interval_between_tenths(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xray.test")
    clock = Clock()
    p = Progress(
        100,
        "evaluate",
        logging.getLogger("xray.test"),
        unit="sets",
        interval=5,
        stream=io.StringIO(),
        clock=clock,
    )
    clock.t = 6.0
    p.update(0)
    assert lines(caplog) == ["evaluate: 0/100 sets (0%), 0.0/s, ETA ?"]


def test_fast_work_is_not_reported_more_than_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="xray.test")
    clock = Clock()
    p = Progress(
        1000, "x", logging.getLogger("xray.test"), interval=5, stream=io.StringIO(), clock=clock
    )
    for _ in range(1000):
        clock.t += 0.0001
        p.update()
    p.close()
    assert len(lines(caplog)) == 1  # only the final line


def test_failure_says_where_it_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xray.test")
    clock = Clock()
    log = logging.getLogger("xray.test")
    with (
        pytest.raises(KeyError),
        Progress(10, "x", log, stream=io.StringIO(), clock=clock) as p,
    ):
        clock.t = 1
        p.update(3)
        raise KeyError("boom")
    assert lines(caplog)[-1] == "x: stopped at 3/10 images in 1s (3.0/s)"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_live_bar_and_no_periodic_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XRAY_NO_BAR", raising=False)
    caplog.set_level(logging.INFO, logger="xray.test")
    clock = Clock()
    tty = Tty()
    p = Progress(4, "x", logging.getLogger("xray.test"), interval=0.1, stream=tty, clock=clock)
    for _ in range(4):
        clock.t += 1
        p.update()
    p.close()
    assert "[" + "#" * 28 + "] 4/4" in tty.getvalue()
    assert lines(caplog) == ["x: done 4/4 images in 4s (1.0/s)"]


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 59.4, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]
    assert format_duration(float("inf")) == "?"


def test_interval_env_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAY_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="XRAY_PROGRESS_INTERVAL='soon'"):
        interval_from_env()
    monkeypatch.setenv("XRAY_PROGRESS_INTERVAL", "2.5")
    assert interval_from_env() == 2.5
