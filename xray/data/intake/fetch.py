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

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from xray.core.errors import DiskFullError, disk_full
from xray.core.hashing import file_sha256
from xray.data.intake.download_cache import (
    _discard,
    _move_into_place,
    _open_slot,
    _Slot,
    _State,
)
from xray.data.intake.http_retry import (
    FetchError,
    _check_status,
    _check_url,
    _client,
    _content_range,
    _fail,
    _int_header,
    _Permanent,
    _retrying,
    _Transient,
    _url_name,
)

PROGRESS_FRACTION = 0.10
PROGRESS_SECONDS = 5.0
HEAD_FALLBACK_STATUSES = frozenset({403, 405, 501})
"""HEAD answers that mean 'ask again with a ranged GET' (403: URLs signed for GET only)."""
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
VALIDATORS = ("etag", "last_modified", "size")
"""The probe fields that key a cached partial download (unless a sha256 is pinned)."""


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


@dataclass(frozen=True)
class Limits:
    """Bounds of one download: its size, and the slowest rate kept up over a window."""

    max_bytes: int | None = None
    min_rate: float = 0.0  # bytes per second; 0: no floor
    window_s: float = 120.0


class _Pace:
    """Fails a body that stays below Limits.min_rate for a whole window."""

    def __init__(self, limits: Limits, offset: int):
        self.limits = limits
        self.start, self.at = time.monotonic(), offset

    def check(self, offset: int) -> None:
        """After each chunk: the size cap, then the rate over the window just ended."""
        lim = self.limits
        if lim.max_bytes is not None and offset > lim.max_bytes:
            raise _Permanent(f"more than {lim.max_bytes} bytes (data.max_download_bytes)")
        elapsed = time.monotonic() - self.start
        if lim.min_rate and elapsed >= lim.window_s:
            rate = (offset - self.at) / elapsed
            if rate < lim.min_rate:
                raise _Permanent(
                    f"{rate:.0f} bytes/s over {elapsed:.0f} s, below data.min_download_rate "
                    f"{lim.min_rate:.0f} (data.download_rate_window_s {lim.window_s:g})"
                )
            self.start, self.at = time.monotonic(), offset


def _validators_of(r: httpx.Response) -> tuple[str | None, str | None]:
    """The response's strong ETag (weak ones may not be used in If-Range) and Last-Modified."""
    etag = r.headers.get("ETag")
    return (None if etag and etag.startswith("W/") else etag), r.headers.get("Last-Modified")


def _attempt(
    client: httpx.Client,
    url: str,
    part: Path,
    st: _State,
    progress: _Progress,
    limits: Limits = Limits(),
) -> None:
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
        if limits.max_bytes is not None and (st.total or 0) > limits.max_bytes:
            raise _Permanent(
                f"declares {st.total} bytes, more than {limits.max_bytes} (data.max_download_bytes)"
            )
        st.save()
        pace = _Pace(limits, st.offset)
        try:
            with part.open(mode) as out:
                for chunk in r.iter_raw():
                    out.write(chunk)
                    st.offset += len(chunk)
                    progress.update(st.offset, st.total)
                    pace.check(st.offset)
        except OSError as e:  # a full disk is not a network error: no retry, one line
            if (full := disk_full(e, part)) is not None:
                raise full from None
            raise
    if st.total is not None and st.offset < st.total:
        raise _Transient(f"body ended at {st.offset} of {st.total} bytes")


def _cached_slot(
    url: str,
    cache_dir: Path,
    st: _State,
    sha256: str | None,
    validators: Mapping[str, object] | None,
) -> _Slot:
    """The locked cache folder of url, keyed by the pinned sha256 or else the validators;
    st continues from the partial file an earlier run left there."""
    if sha256 is not None:
        identity: dict[str, object] = {"sha256": sha256.lower()}
    else:
        assert validators is not None  # probed by fetch when not given
        identity = {k: validators.get(k) for k in VALIDATORS}
    try:
        slot = _open_slot(cache_dir, url, identity)
    except OSError as e:
        raise _fail(url, f"local file error: {e}") from e
    slot.resume(st, pinned=sha256 is not None)
    return slot


def _verify_and_move(
    url: str, part: Path, dest: Path, st: _State, sha256: str | None, meter: _Progress
) -> None:
    """Check the finished partial file's size and sha256, then move it to dest."""
    size = part.stat().st_size
    if st.total is not None and size != st.total:
        raise _fail(url, f"size mismatch: got {size} bytes, expected {st.total}")
    if sha256 is not None and (got := file_sha256(part)) != sha256.lower():
        raise _fail(url, f"sha256 mismatch: got {got}, expected {sha256.lower()}")
    meter.update(size, st.total, final=True)
    _move_into_place(part, dest)


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
    limits: Limits = Limits(),
) -> Path:
    """Download url to dest via a resumable partial file (kept in cache_dir), then verify it.

    `limits` bound the body's size and its slowest rate: past either the download fails at
    once (no retry) and the partial file is removed.
    """
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
        if validators is None and sha256 is None:
            validators = probe(
                url, timeout=timeout, retries=retries, backoff=backoff, progress=progress
            )
        slot = _cached_slot(url, Path(cache_dir), st, sha256, validators)
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
                    lambda: _attempt(client, url, part, st, meter, limits),
                    retries=retries,
                    backoff=backoff,
                    label=f"fetch {dest.name}" if progress else "",
                    on_retry=restart,
                )
        _verify_and_move(url, part, dest, st, sha256, meter)
        if slot is not None:
            slot.discard()
    except FetchError as e:
        if slot is None or not e.transient:  # permanent: the partial file is of no use
            _discard(slot, part)
        raise
    except OSError as e:
        _discard(slot, part)
        raise _fail(url, f"local file error: {e}") from e
    except DiskFullError:  # the partial file would only keep the disk full
        _discard(slot, part)
        raise
    except BaseException:  # an interruption: the cache keeps the partial file for a rerun
        if slot is None:
            part.unlink(missing_ok=True)
        raise
    finally:
        if slot is not None:
            slot.close()
    return dest
