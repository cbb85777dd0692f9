"""Resumable, verified HTTP(S) downloads with retries (httpx)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_BACKOFF_S = 60.0
"""Upper bound for one retry sleep (exponential backoff or Retry-After)."""
PROGRESS_FRACTION = 0.10
PROGRESS_SECONDS = 5.0
HEAD_FALLBACK_STATUSES = frozenset({403, 405, 501})
"""HEAD answers that mean 'ask again with a ranged GET' (403: URLs signed for GET only)."""
RETRYABLE_4XX = frozenset({408, 429})
"""Client-error statuses that are transient anyway (timeout, rate limit); 416 handled apart."""
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "xray-transfer-fetch/1"}


class FetchError(Exception):
    """A download or probe failed; the message is one line naming the URL."""


class _Transient(Exception):
    """A failure worth retrying."""

    def __init__(self, why: str, retry_after: float | None = None, *, restart: bool = False):
        super().__init__(why)
        self.retry_after = retry_after
        self.restart = restart


def _one_line(text: object) -> str:
    """Collapse any text to a single line."""
    return " ".join(str(text).split())


def _shown(url: str) -> str:
    """URL for messages, with any password removed."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return _one_line(url)
    return _one_line(str(u.copy_with(password=None)) if u.password else url)


def _fail(url: str, why: object) -> FetchError:
    """Build the one-line error for a URL."""
    return FetchError(_one_line(f"{_shown(url)}: {why}"))


def _check_url(url: str) -> None:
    """Refuse anything but absolute http(s) URLs."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise _fail(str(url), f"invalid URL: {e}") from e
    if u.scheme not in ALLOWED_SCHEMES or not u.host:
        raise _fail(url, "only http:// and https:// URLs are supported")


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
    """Seconds from a numeric Retry-After header (HTTP dates are ignored)."""
    n = _int_header(value)
    return float(n) if n is not None else None


def probe(url: str, *, timeout: float = 30.0) -> dict[str, str | int | None]:
    """HEAD the URL (ranged GET if HEAD is refused) and return url, etag, last_modified, size."""
    _check_url(url)
    try:
        with httpx.Client(follow_redirects=True, timeout=timeout, headers=BASE_HEADERS) as client:
            r = client.head(url)
            size: int | None = None
            if r.status_code in HEAD_FALLBACK_STATUSES:
                with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as r:
                    if r.status_code == 206:
                        cr = _content_range(r.headers.get("Content-Range"))
                        size = cr[2] if cr else None
                    else:
                        size = _int_header(r.headers.get("Content-Length"))
            else:
                size = _int_header(r.headers.get("Content-Length"))
            if r.status_code >= 400:
                raise _fail(url, f"HTTP {r.status_code}")
            return {
                "url": url,
                "etag": r.headers.get("ETag"),
                "last_modified": r.headers.get("Last-Modified"),
                "size": size,
            }
    except httpx.HTTPError as e:
        raise _fail(url, f"{type(e).__name__}: {e}") from e


class _Progress:
    """Prints a stderr line every ~10% of the total or every few seconds."""

    def __init__(self, name: str, enabled: bool):
        self.name = name
        self.enabled = enabled
        self.last_t = time.monotonic()
        self.last_frac = 0.0

    def update(self, done: int, total: int | None, *, final: bool = False) -> None:
        """Maybe report progress."""
        if not self.enabled:
            return
        now = time.monotonic()
        frac = done / total if total else 0.0
        due = now - self.last_t >= PROGRESS_SECONDS or frac - self.last_frac >= PROGRESS_FRACTION
        if not (due or final):
            return
        self.last_t, self.last_frac = now, frac
        size = (
            f"{done / 1e6:.1f}/{total / 1e6:.1f} MB ({100 * frac:.0f}%)"
            if total
            else (f"{done / 1e6:.1f} MB")
        )
        print(f"fetch {self.name}: {size}", file=sys.stderr, flush=True)


@dataclass
class _State:
    """Download state carried across attempts."""

    offset: int = 0  # bytes of the current body safely on disk in the .part
    total: int | None = None  # full size announced by the server, when known
    validator: str | None = None  # strong ETag or Last-Modified, sent as If-Range


def _attempt(client: httpx.Client, url: str, part: Path, st: _State, progress: _Progress) -> None:
    """One GET (ranged when st.offset > 0), appending to or restarting the .part file."""
    headers: dict[str, str] = {}
    if st.offset > 0:
        headers["Range"] = f"bytes={st.offset}-"
        if st.validator:
            headers["If-Range"] = st.validator
    with client.stream("GET", url, headers=headers) as r:
        status = r.status_code
        retry_after = _retry_after(r.headers.get("Retry-After"))
        if status == 416:
            # Our offset is past what the server has (file changed or stale); start over.
            raise _Transient("HTTP 416 for a resumed range", retry_after, restart=True)
        if status >= 500 or status in RETRYABLE_4XX:
            raise _Transient(f"HTTP {status}", retry_after)
        if status >= 400:
            raise _fail(url, f"HTTP {status}")
        if status == 206:
            cr = _content_range(r.headers.get("Content-Range"))
            if cr is None or cr[0] != st.offset:
                bad = r.headers.get("Content-Range")
                raise _Transient(f"bad Content-Range {bad!r}", restart=True)
            st.total = cr[2]
            mode = "ab"
        elif status == 200:
            st.offset = 0  # full body: a fresh start even if we asked for a range
            st.total = _int_header(r.headers.get("Content-Length"))
            mode = "wb"
        else:
            raise _fail(url, f"unexpected HTTP {status}")
        etag = r.headers.get("ETag")
        if etag and etag.startswith("W/"):
            etag = None  # weak ETags are not allowed in If-Range
        st.validator = etag or r.headers.get("Last-Modified")
        with part.open(mode) as out:
            try:
                for chunk in r.iter_raw():
                    out.write(chunk)
                    st.offset += len(chunk)
                    progress.update(st.offset, st.total)
            except httpx.TransportError as e:
                raise _Transient(f"{type(e).__name__}: {e}") from e


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download url to dest via a resumable .part file, verifying size and optional sha256."""
    _check_url(url)
    if sha256 is not None and not SHA256_RE.match(sha256):
        raise _fail(url, f"expected sha256 {sha256!r} is not 64 hex digits")
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part.unlink(missing_ok=True)  # never resume a .part of unknown origin
    meter = _Progress(dest.name, progress)
    st = _State()
    failures = 0
    try:
        with httpx.Client(follow_redirects=True, timeout=timeout, headers=BASE_HEADERS) as client:
            while True:
                try:
                    _attempt(client, url, part, st, meter)
                    if st.total is not None and st.offset < st.total:
                        raise _Transient(f"body ended at {st.offset} of {st.total} bytes")
                    break
                except _Transient as e:
                    why, wait, restart = str(e), e.retry_after, e.restart
                except httpx.TransportError as e:  # connect errors, timeouts before the body
                    why, wait, restart = f"{type(e).__name__}: {e}", None, False
                except httpx.HTTPError as e:
                    raise _fail(url, f"{type(e).__name__}: {e}") from e
                failures += 1
                if failures > retries:
                    raise _fail(url, f"giving up after {retries} retries: {why}")
                if restart:
                    st.offset, st.validator = 0, None
                delay = min(
                    MAX_BACKOFF_S, wait if wait is not None else backoff * 2 ** (failures - 1)
                )
                if progress:
                    print(
                        f"fetch {dest.name}: retry {failures}/{retries} in {delay:.1f}s ({why})",
                        file=sys.stderr,
                        flush=True,
                    )
                time.sleep(delay)
        size = part.stat().st_size
        if st.total is not None and size != st.total:
            raise _fail(url, f"size mismatch: got {size} bytes, expected {st.total}")
        if sha256 is not None and (got := _sha256(part)) != sha256.lower():
            raise _fail(url, f"sha256 mismatch: got {got}, expected {sha256.lower()}")
        meter.update(size, st.total, final=True)
        os.replace(part, dest)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise _fail(url, f"local file error: {e}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest
