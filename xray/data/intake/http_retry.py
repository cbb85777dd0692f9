"""HTTP(S) requests that retry transient errors: URL checks, status classes, the retry loop.

Transient failures are retried with bounded exponential backoff: connection errors, timeouts,
a body cut short, HTTP 5xx, 408 and 429 (a Retry-After up to MAX_RETRY_AFTER_S is honoured).
Anything else fails at once with one line naming the URL: other 4xx, a non-http(s) URL or
redirect target, too many redirects. Used by xray/data/intake/fetch.py (probe and download).
"""

from __future__ import annotations

import email.utils
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import httpx

from xray.core.errors import WorkError
from xray.core.text import one_line

T = TypeVar("T")
ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_BACKOFF_S = 60.0
"""Upper bound for one exponential-backoff sleep."""
MAX_RETRY_AFTER_S = 300.0
"""Longest Retry-After honoured; a server asking for longer fails the transfer at once."""
MAX_REDIRECTS = 10
RETRYABLE_4XX = frozenset({408, 429})
"""Client-error statuses that are transient anyway (timeout, rate limit); 416 handled apart."""
CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "xray-transfer-fetch/1"}


class FetchError(WorkError):
    """A download or probe failed: one line naming the URL; `transient`: the retries ran out."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class _Transient(Exception):
    """A failure worth retrying."""

    def __init__(self, why: str, retry_after: float | None = None, *, restart: bool = False):
        super().__init__(why)
        self.retry_after = retry_after
        self.restart = restart


class _Permanent(Exception):
    """A failure that no retry can fix."""


def _shown(url: str) -> str:
    """URL for messages, with any password removed."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return one_line(url)
    return one_line(str(u.copy_with(password=None)) if u.password else url)


def _fail(url: str, why: object, *, transient: bool = False) -> FetchError:
    """Build the one-line error for a URL."""
    return FetchError(one_line(f"{_shown(url)}: {why}"), transient=transient)


def _check_url(url: str) -> None:
    """Refuse anything but absolute http(s) URLs."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise _fail(str(url), f"invalid URL: {e}") from e
    if u.scheme not in ALLOWED_SCHEMES or not u.host:
        raise _fail(url, "only http:// and https:// URLs are supported")


def _check_redirect(request: httpx.Request) -> None:
    """Request hook: refuse a redirect to anything but http(s) before it is sent."""
    if request.url.scheme not in ALLOWED_SCHEMES:
        raise _Permanent(f"redirected to a non-http(s) URL ({_shown(str(request.url))})")


def _client(timeout: float) -> httpx.Client:
    """An httpx client that follows at most MAX_REDIRECTS http(s) redirects."""
    return httpx.Client(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=timeout,
        headers=BASE_HEADERS,
        event_hooks={"request": [_check_redirect]},
    )


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """Parse 'bytes a-b/total' into (a, b, total or None)."""
    m = CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _int_header(value: str | None) -> int | None:
    """Parse a non-negative integer header, else None."""
    return int(value) if value and value.strip().isdigit() else None


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _check_status(r: httpx.Response) -> None:
    """Raise _Transient for 5xx, 408 and 429, _Permanent for any other status >= 400."""
    status = r.status_code
    if status < 400:
        return
    why = f"HTTP {status} {r.reason_phrase}".strip()
    if status >= 500 or status in RETRYABLE_4XX:
        wait = _retry_after(r.headers.get("Retry-After"))
        if wait is not None and wait > MAX_RETRY_AFTER_S:
            raise _Permanent(
                f"{why} with Retry-After {wait:.0f} s, over the {MAX_RETRY_AFTER_S:.0f} s cap"
            )
        raise _Transient(why, wait)
    raise _Permanent(why)


def _retrying(
    url: str,
    once: Callable[[], T],
    *,
    retries: int,
    backoff: float,
    label: str,
    on_retry: Callable[[bool], None] | None = None,
) -> T:
    """Call once() until it succeeds, retrying transient failures only (label: stderr prefix)."""
    failures = 0
    while True:
        try:
            return once()
        except _Permanent as e:
            raise _fail(url, e) from None
        except _Transient as e:
            why, wait, restart = str(e), e.retry_after, e.restart
        except httpx.UnsupportedProtocol as e:
            raise _fail(url, f"unsupported URL scheme: {e}") from None
        except httpx.TooManyRedirects:
            raise _fail(url, f"too many redirects (more than {MAX_REDIRECTS})") from None
        except httpx.TransportError as e:  # connection errors, timeouts, cut connections
            why, wait, restart = f"{type(e).__name__}: {e}", None, False
        except httpx.HTTPError as e:
            raise _fail(url, f"{type(e).__name__}: {e}") from None
        failures += 1
        if failures > retries:
            raise _fail(url, f"giving up after {retries} retries: {why}", transient=True)
        if on_retry is not None:
            on_retry(restart)
        delay = min(MAX_BACKOFF_S, backoff * 2 ** (failures - 1)) if wait is None else wait
        if label:
            print(
                f"{label}: retry {failures}/{retries} in {delay:.1f}s ({one_line(why)})",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(delay)


def _url_name(url: str) -> str:
    """The last path segment of a URL, for progress lines."""
    return httpx.URL(url).path.rstrip("/").rsplit("/", 1)[-1] or "download"
