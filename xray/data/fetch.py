"""Resumable, verified HTTP(S) downloads and probes with retries of transient errors (httpx).

Transient failures are retried with bounded exponential backoff: connection errors, timeouts,
a body cut short, HTTP 5xx, 408 and 429 (a Retry-After up to MAX_RETRY_AFTER_S is honoured).
Anything else fails at once with one line naming the URL: other 4xx, a checksum or size
mismatch, a non-http(s) URL or redirect target, too many redirects. With a cache folder the
partial file lives in ``<cache>/<key>/`` (key: the URL and its validators or pinned sha256),
so a retry, or a rerun after a crash or kill -9, resumes with a Range request (If-Range).
The key is the pinned sha256 or else `validators` (the probe's etag, last_modified and size,
probed by `fetch` when not given). Without a cache folder the partial file is ``dest.part``,
removed on any failure.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import httpx

from xray.core.hashing import file_sha256, json_sha256
from xray.core.text import one_line

T = TypeVar("T")

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_BACKOFF_S = 60.0
"""Upper bound for one exponential-backoff sleep."""
MAX_RETRY_AFTER_S = 300.0
"""Longest Retry-After honoured; a server asking for longer fails the transfer at once."""
MAX_REDIRECTS = 10
PROGRESS_FRACTION = 0.10
PROGRESS_SECONDS = 5.0
HEAD_FALLBACK_STATUSES = frozenset({403, 405, 501})
"""HEAD answers that mean 'ask again with a ranged GET' (403: URLs signed for GET only)."""
RETRYABLE_4XX = frozenset({408, 429})
"""Client-error statuses that are transient anyway (timeout, rate limit); 416 handled apart."""
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "xray-transfer-fetch/1"}
VALIDATORS = ("etag", "last_modified", "size")
"""The probe fields that key a cached partial download (unless a sha256 is pinned)."""


class FetchError(Exception):
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


def _probe_once(client: httpx.Client, url: str) -> dict[str, str | int | None]:
    """One HEAD (or ranged GET when HEAD is refused) of url."""
    r = client.head(url)
    if r.status_code in HEAD_FALLBACK_STATUSES:
        with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as r:
            _check_status(r)
            if r.status_code == 206:
                cr = _content_range(r.headers.get("Content-Range"))
                size = cr[2] if cr else None
            else:
                size = _int_header(r.headers.get("Content-Length"))
    else:
        _check_status(r)
        size = _int_header(r.headers.get("Content-Length"))
    return {
        "url": url,
        "etag": r.headers.get("ETag"),
        "last_modified": r.headers.get("Last-Modified"),
        "size": size,
    }


def probe(
    url: str,
    *,
    timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 1.0,
    progress: bool = True,
) -> dict[str, str | int | None]:
    """HEAD the URL (ranged GET if HEAD is refused) and return url, etag, last_modified, size."""
    _check_url(url)
    label = f"probe {_url_name(url)}" if progress else ""
    with _client(timeout) as client:
        return _retrying(
            url, lambda: _probe_once(client, url), retries=retries, backoff=backoff, label=label
        )


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
    """Download state carried across attempts (and, through `meta`, across runs)."""

    offset: int = 0  # bytes of the current body safely on disk in the partial file
    total: int | None = None  # full size announced by the server, when known
    validator: str | None = None  # strong ETag or Last-Modified, sent as If-Range
    meta: Path | None = None  # where the cache keeps validator and total for a rerun

    def save(self) -> None:
        """Write validator and total next to the partial file (atomically), when cached."""
        if self.meta is None:
            return
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps({"validator": self.validator, "total": self.total}))
        os.replace(tmp, self.meta)


def _validators_of(r: httpx.Response) -> tuple[str | None, str | None]:
    """The response's strong ETag (weak ones may not be used in If-Range) and Last-Modified."""
    etag = r.headers.get("ETag")
    return (None if etag and etag.startswith("W/") else etag), r.headers.get("Last-Modified")


def _attempt(client: httpx.Client, url: str, part: Path, st: _State, progress: _Progress) -> None:
    """One GET (ranged when st.offset > 0), appending to or restarting the partial file."""
    headers: dict[str, str] = {}
    if st.offset > 0:
        headers["Range"] = f"bytes={st.offset}-"
        if st.validator:
            headers["If-Range"] = st.validator
    with client.stream("GET", url, headers=headers) as r:
        status = r.status_code
        if status == 416:
            # Our offset is past what the server has (file changed or stale); start over.
            raise _Transient("HTTP 416 for a resumed range", restart=True)
        _check_status(r)
        etag, last_modified = _validators_of(r)
        if status == 206:
            cr = _content_range(r.headers.get("Content-Range"))
            if cr is None or cr[0] != st.offset:
                bad = r.headers.get("Content-Range")
                raise _Transient(f"bad Content-Range {bad!r}", restart=True)
            if (
                st.validator
                and (etag or last_modified)
                and st.validator not in (etag, last_modified)
            ):
                raise _Transient("the file changed during the transfer", restart=True)
            st.total = cr[2]
            mode = "ab"
        elif status == 200:
            st.offset = 0  # full body: a fresh start even if we asked for a range
            st.total = _int_header(r.headers.get("Content-Length"))
            st.validator = etag or last_modified
            mode = "wb"
        else:
            raise _Permanent(f"unexpected HTTP {status}")
        st.save()
        with part.open(mode) as out:
            for chunk in r.iter_raw():
                out.write(chunk)
                st.offset += len(chunk)
                progress.update(st.offset, st.total)
    if st.total is not None and st.offset < st.total:
        raise _Transient(f"body ended at {st.offset} of {st.total} bytes")


def _lock(folder: Path) -> int | None:
    """An exclusive lock on folder/lock (its fd), or None when another process holds it."""
    try:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # removed meanwhile by another process
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class _Slot:
    """A partial download's cache folder ``<cache>/<key>/``, locked while this process uses it."""

    folder: Path
    fd: int

    @property
    def part(self) -> Path:
        """The partial file."""
        return self.folder / "part"

    @property
    def meta(self) -> Path:
        """Validator and total of the partial file."""
        return self.folder / "meta.json"

    def resume(self, st: _State, pinned: bool) -> None:
        """Continue from a partial file left by an earlier run, or start clean."""
        st.meta = self.meta
        try:
            meta = json.loads(self.meta.read_text())
            size = self.part.stat().st_size
        except (OSError, ValueError):
            meta, size = None, 0
        total = meta.get("total") if isinstance(meta, dict) else None
        validator = meta.get("validator") if isinstance(meta, dict) else None
        ok = isinstance(total, int | None) and isinstance(validator, str | None)
        if size and ok and (validator or pinned) and (total is None or size <= total):
            st.offset, st.total, st.validator = size, total, validator
        else:
            self.part.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the folder and release the lock."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_slot(cache_dir: Path, url: str, identity: Mapping[str, object]) -> _Slot:
    """Lock the cache folder of (url, identity); drop partials of the same URL with other keys."""
    url_key = json_sha256(url)[:16]
    folder = cache_dir / f"{url_key}-{json_sha256({'url': url, **identity})[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    if fd is None:
        raise _fail(url, f"another process is downloading it into {folder}")
    for stale in cache_dir.glob(f"{url_key}-*"):  # the validators changed: a stale partial
        if stale != folder and (stale_fd := _lock(stale)) is not None:
            shutil.rmtree(stale, ignore_errors=True)
            os.close(stale_fd)
    return _Slot(folder, fd)


def _move_into_place(src: Path, dest: Path) -> None:
    """Move src to dest atomically (through a sibling temporary file across file systems)."""
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        src.unlink()


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    validators: Mapping[str, object] | None = None,
    cache_dir: Path | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download url to dest via a resumable partial file (kept in cache_dir), then verify it."""
    _check_url(url)
    if sha256 is not None and not SHA256_RE.match(sha256):
        raise _fail(url, f"expected sha256 {sha256!r} is not 64 hex digits")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = _State()
    slot: _Slot | None = None
    if cache_dir is None:
        part = dest.with_suffix(dest.suffix + ".part")
        part.unlink(missing_ok=True)  # never resume a .part of unknown origin
    else:
        if sha256 is not None:
            identity: dict[str, object] = {"sha256": sha256.lower()}
        else:
            if validators is None:
                validators = probe(
                    url, timeout=timeout, retries=retries, backoff=backoff, progress=progress
                )
            identity = {k: validators.get(k) for k in VALIDATORS}
        try:
            slot = _open_slot(Path(cache_dir), url, identity)
        except OSError as e:
            raise _fail(url, f"local file error: {e}") from e
        slot.resume(st, pinned=sha256 is not None)
        part = slot.part
    meter = _Progress(dest.name, progress)
    if progress and st.offset:
        print(f"fetch {dest.name}: resuming at byte {st.offset}", file=sys.stderr, flush=True)

    def restart(again: bool) -> None:
        """Before a retry: forget the partial file when it cannot be continued."""
        if again:
            st.offset, st.validator = 0, None
            part.unlink(missing_ok=True)

    try:
        with _client(timeout) as client:
            if not (st.offset and st.offset == st.total):  # else complete before an interruption
                _retrying(
                    url,
                    lambda: _attempt(client, url, part, st, meter),
                    retries=retries,
                    backoff=backoff,
                    label=f"fetch {dest.name}" if progress else "",
                    on_retry=restart,
                )
        size = part.stat().st_size
        if st.total is not None and size != st.total:
            raise _fail(url, f"size mismatch: got {size} bytes, expected {st.total}")
        if sha256 is not None and (got := file_sha256(part)) != sha256.lower():
            raise _fail(url, f"sha256 mismatch: got {got}, expected {sha256.lower()}")
        meter.update(size, st.total, final=True)
        _move_into_place(part, dest)
        if slot is not None:
            slot.discard()
    except FetchError as e:
        if slot is None or not e.transient:  # permanent: the partial file is of no use
            _discard(slot, part)
        raise
    except OSError as e:
        _discard(slot, part)
        raise _fail(url, f"local file error: {e}") from e
    except BaseException:  # an interruption: the cache keeps the partial file for a rerun
        if slot is None:
            part.unlink(missing_ok=True)
        raise
    finally:
        if slot is not None:
            slot.close()
    return dest


def _discard(slot: _Slot | None, part: Path) -> None:
    """Remove a partial file and, when cached, its folder."""
    with contextlib.suppress(OSError):
        part.unlink(missing_ok=True)
    if slot is not None:
        slot.discard()
