"""Tests for xray.data.intake.fetch against a loopback HTTP server."""

from __future__ import annotations

import errno
import hashlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, loopback_server

import xray.data.intake.download_cache as download_cache
import xray.data.intake.fetch as fetch_mod
from xray.data.intake.fetch import FetchError, fetch, probe
from xray.data.intake.http_retry import MAX_REDIRECTS

BLOB = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
ETAG = '"blob-v1"'
LAST_MODIFIED = "Mon, 01 Jan 2018 00:00:00 GMT"
FAST = {"backoff": 0.01, "timeout": 5.0, "progress": False}
REDIRECTS = {"/to-ftp": "ftp://127.0.0.1/blob.bin", "/loop": "/loop"}
"""GET paths answered with a 302 to these locations."""


@dataclass
class Behaviour:
    """What the test server does; mutated by tests, read by the handler."""

    fail_first: int = 0  # answer fail_status to this many GETs first
    fail_status: int = 500
    retry_after: str | None = None  # Retry-After header of those failures
    head_fail_first: int = 0  # answer 503 to this many HEADs first
    etag: str = ETAG
    hold: threading.Event | None = None  # after cut_after bytes, stall until set
    cut_after: int | None = None  # on the first GET, send full Content-Length but only K bytes
    cut_times: int = 1
    corrupt: bool = False  # serve wrong bytes (same length)
    ignore_range: bool = False  # answer 200 + full body even to Range requests
    head_allowed: bool = True
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    """Serves BLOB at /blob.bin with Range support and configurable faults."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""

    def _body(self) -> bytes:
        """The bytes to serve."""
        b = self.server.state  # type: ignore[attr-defined]
        return bytes(x ^ 0xFF for x in BLOB[:64]) + BLOB[64:] if b.corrupt else BLOB

    def _plain(self, status: int, extra: dict[str, str] | None = None) -> None:
        """Send an empty response."""
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        """Headers only (405 when HEAD is switched off)."""
        b: Behaviour = self.server.state  # type: ignore[attr-defined]
        b.requests.append(("HEAD", self.path, dict(self.headers)))
        heads = sum(1 for r in b.requests if r[0] == "HEAD")
        if not b.head_allowed:
            self._plain(405)
        elif heads <= b.head_fail_first:
            self._plain(503)
        elif self.path != "/blob.bin":
            self._plain(404)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.send_header("ETag", b.etag)
            self.send_header("Last-Modified", LAST_MODIFIED)
            self.end_headers()

    def do_GET(self) -> None:
        """Body, ranged body, or a configured fault."""
        b: Behaviour = self.server.state  # type: ignore[attr-defined]
        b.requests.append(("GET", self.path, dict(self.headers)))
        if self.path in REDIRECTS:
            self._plain(302, {"Location": REDIRECTS[self.path]})
            return
        if self.path != "/blob.bin":
            self._plain(404)
            return
        gets = sum(1 for r in b.requests if r[0] == "GET")
        if gets <= b.fail_first:
            self._plain(b.fail_status, {"Retry-After": b.retry_after} if b.retry_after else None)
            return
        body = self._body()
        start, end = 0, len(body) - 1
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not b.ignore_range and (if_range is None or if_range == b.etag):
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start, end = int(first), min(end, int(last)) if last else end
            if start >= len(body):
                self._plain(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start : end + 1]
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("ETag", b.etag)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if b.cut_after is not None and gets - b.fail_first <= b.cut_times:
            self.wfile.write(chunk[: b.cut_after])
            self.wfile.flush()
            if b.hold is not None:
                b.hold.wait(30)
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    """A loopback server; yields (base URL, behaviour)."""
    behaviour = Behaviour()
    with loopback_server(Handler, behaviour) as url:
        yield url, behaviour


def _gets(b: Behaviour) -> list[dict[str, str]]:
    """Headers of every GET the server saw."""
    return [h for m, _, h in b.requests if m == "GET"]


def test_plain_download(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A clean transfer lands at dest with the right bytes and no .part."""
    base, b = server
    dest = tmp_path / "sub" / "data.tar.gz"
    out = fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, **FAST)
    assert out == dest
    assert dest.read_bytes() == BLOB
    assert not (tmp_path / "sub" / "data.tar.gz.part").exists()
    assert len(_gets(b)) == 1


def test_resume_after_cut(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A connection cut mid-body is resumed with a Range request from the bytes on disk."""
    base, b = server
    b.cut_after = 100_000
    dest = tmp_path / "data.zip"
    fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, **FAST)
    assert dest.read_bytes() == BLOB
    gets = _gets(b)
    assert len(gets) == 2
    assert "Range" not in gets[0]
    assert gets[1]["Range"] == "bytes=100000-"
    assert gets[1]["If-Range"] == ETAG


def test_range_ignored_restarts_from_zero(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A 200 answer to a Range request restarts the file instead of appending."""
    base, b = server
    b.cut_after, b.ignore_range = 50_000, True
    dest = tmp_path / "data.zip"
    fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, **FAST)
    assert dest.read_bytes() == BLOB
    assert _gets(b)[1]["Range"] == "bytes=50000-"


def test_500s_then_success(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """Server errors are retried until the transfer succeeds."""
    base, b = server
    b.fail_first = 3
    dest = tmp_path / "data.zip"
    fetch(f"{base}/blob.bin", dest, retries=3, **FAST)
    assert dest.read_bytes() == BLOB
    assert len(_gets(b)) == 4


def test_500s_exhaust_retries(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """After `retries` retries the error names the URL and nothing is kept."""
    base, b = server
    b.fail_first = 100
    dest = tmp_path / "data.zip"
    with pytest.raises(FetchError, match=r"blob\.bin: giving up after 2 retries: HTTP 500"):
        fetch(f"{base}/blob.bin", dest, retries=2, **FAST)
    assert len(_gets(b)) == 3
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_keeps_nothing(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """Wrong bytes -> FetchError; neither dest nor .part remains."""
    base, b = server
    b.corrupt = True
    dest = tmp_path / "data.zip"
    with pytest.raises(FetchError, match="sha256 mismatch") as ei:
        fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, **FAST)
    assert f"{base}/blob.bin" in str(ei.value)
    assert "\n" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://example.org/x.zip", "file:///etc/passwd", "blob.bin"])
def test_non_http_scheme(url: str, tmp_path: Path) -> None:
    """Only http(s) URLs are accepted."""
    with pytest.raises(FetchError, match="only http"):
        fetch(url, tmp_path / "x.zip", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_404_not_retried(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A 4xx is final: one request, FetchError, nothing kept."""
    base, b = server
    with pytest.raises(FetchError, match=r"missing\.zip: HTTP 404"):
        fetch(f"{base}/missing.zip", tmp_path / "x.zip", retries=5, **FAST)
    assert len(_gets(b)) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_sha256_argument(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A malformed expected digest is refused before any request."""
    base, b = server
    with pytest.raises(FetchError, match="64 hex"):
        fetch(f"{base}/blob.bin", tmp_path / "x.zip", sha256="abc", **FAST)
    assert b.requests == []


def test_progress_lines(
    server: tuple[str, Behaviour], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress goes to stderr and ends at 100%."""
    base, _ = server
    fetch(f"{base}/blob.bin", tmp_path / "x.zip", backoff=0.01, progress=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "fetch x.zip: 0.3/0.3 MB (100%)"
    assert 2 <= len(err) <= 12


def test_probe_head(server: tuple[str, Behaviour]) -> None:
    """probe reports etag, last-modified and size from HEAD."""
    base, b = server
    info = probe(f"{base}/blob.bin")
    assert info == {
        "url": f"{base}/blob.bin",
        "etag": ETAG,
        "last_modified": LAST_MODIFIED,
        "size": len(BLOB),
    }
    assert [m for m, _, _ in b.requests] == ["HEAD"]


def test_probe_falls_back_to_ranged_get(server: tuple[str, Behaviour]) -> None:
    """When HEAD is not allowed, a Range: bytes=0-0 GET gives the size from Content-Range."""
    base, b = server
    b.head_allowed = False
    info = probe(f"{base}/blob.bin")
    assert info["size"] == len(BLOB)
    assert info["etag"] == ETAG
    assert b.requests[1][0] == "GET"
    assert b.requests[1][2]["Range"] == "bytes=0-0"


def test_probe_404(server: tuple[str, Behaviour]) -> None:
    """probe raises FetchError naming the URL on 4xx."""
    base, _ = server
    with pytest.raises(FetchError, match=r"nope: HTTP 404"):
        probe(f"{base}/nope")


# ---------------------------------------------------------------- retries where they help


def _one_line_naming(e: pytest.ExceptionInfo[FetchError], url: str) -> str:
    """The error's message, checked to be one line starting with the URL."""
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{url}: ")
    return msg


def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry sleeps instead of sleeping."""
    slept: list[float] = []
    monkeypatch.setattr(fetch_mod.time, "sleep", slept.append)
    return slept


def test_503_then_200_is_retried(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A 503 is transient: retried after the backoff, then the transfer succeeds."""
    base, b = server
    b.fail_first, b.fail_status = 1, 503
    dest = tmp_path / "data.zip"
    fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, cache_dir=tmp_path / "cache", **FAST)
    assert dest.read_bytes() == BLOB
    assert len(_gets(b)) == 2
    assert list((tmp_path / "cache").iterdir()) == []  # the cache folder of the key is gone


def test_backoff_is_exponential_and_bounded(
    server: tuple[str, Behaviour], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sleeps double from `backoff` and never exceed MAX_BACKOFF_S."""
    base, b = server
    slept = _no_sleep(monkeypatch)
    b.fail_first, b.fail_status = 6, 502
    fetch(f"{base}/blob.bin", tmp_path / "x.zip", retries=6, backoff=10.0, progress=False)
    assert slept == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]


def test_429_honours_retry_after(
    server: tuple[str, Behaviour], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 is retried after the server's Retry-After instead of the backoff."""
    base, b = server
    slept = _no_sleep(monkeypatch)
    b.fail_first, b.fail_status, b.retry_after = 2, 429, "7"
    fetch(f"{base}/blob.bin", tmp_path / "x.zip", **FAST)
    assert slept == [7.0, 7.0]
    assert len(_gets(b)) == 3


def test_retry_after_over_the_cap_fails_at_once(
    server: tuple[str, Behaviour], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server asking to come back in an hour fails the transfer at once."""
    base, b = server
    slept = _no_sleep(monkeypatch)
    b.fail_first, b.fail_status, b.retry_after = 1, 503, "3600"
    url = f"{base}/blob.bin"
    with pytest.raises(FetchError) as ei:
        fetch(url, tmp_path / "x.zip", **FAST)
    assert "HTTP 503 Service Unavailable with Retry-After 3600 s" in _one_line_naming(ei, url)
    assert len(_gets(b)) == 1
    assert slept == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_4xx_fails_at_once(
    server: tuple[str, Behaviour], tmp_path: Path, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4xx other than 408/429 is permanent: one request, one line, no partial kept."""
    base, b = server
    slept = _no_sleep(monkeypatch)
    b.fail_first, b.fail_status = 100, status
    url = f"{base}/blob.bin"
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as ei:
        fetch(url, tmp_path / "x.zip", sha256=BLOB_SHA, cache_dir=cache, retries=5, **FAST)
    assert f": HTTP {status} " in _one_line_naming(ei, url)
    assert not ei.value.transient
    assert len(_gets(b)) == 1
    assert slept == []
    assert list(cache.iterdir()) == []


def test_checksum_mismatch_fails_at_once(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A sha256 mismatch is permanent: one transfer, no retry, the partial discarded."""
    base, b = server
    b.corrupt = True
    url = f"{base}/blob.bin"
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="sha256 mismatch") as ei:
        fetch(url, tmp_path / "x.zip", sha256=BLOB_SHA, cache_dir=cache, retries=5, **FAST)
    _one_line_naming(ei, url)
    assert len(_gets(b)) == 1
    assert list(cache.iterdir()) == []
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize(
    ("path", "why"),
    [("/to-ftp", "redirected to a non-http(s) URL"), ("/loop", "too many redirects")],
)
def test_bad_redirects_fail_at_once(
    server: tuple[str, Behaviour], tmp_path: Path, path: str, why: str
) -> None:
    """A redirect to ftp:// or a redirect loop is permanent: one line, no retry."""
    base, b = server
    url = f"{base}{path}"
    with pytest.raises(FetchError, match=re.escape(why)) as ei:
        fetch(url, tmp_path / "x.zip", retries=5, **FAST)
    _one_line_naming(ei, url)
    expected = 1 if path == "/to-ftp" else MAX_REDIRECTS + 1
    assert len(_gets(b)) == expected


def test_cut_then_rerun_resumes_from_the_cache(
    server: tuple[str, Behaviour], tmp_path: Path
) -> None:
    """Retries used up mid-body: the partial stays in the cache; a rerun asks for the rest."""
    base, b = server
    b.cut_after = 100_000
    url, dest, cache = f"{base}/blob.bin", tmp_path / "out" / "data.zip", tmp_path / "cache"
    with pytest.raises(FetchError, match="giving up after 0 retries") as ei:
        fetch(url, dest, sha256=BLOB_SHA, cache_dir=cache, retries=0, **FAST)
    assert ei.value.transient
    (slot,) = cache.iterdir()
    assert (slot / "part").stat().st_size == 100_000
    assert not dest.exists()

    fetch(url, dest, sha256=BLOB_SHA, cache_dir=cache, retries=0, **FAST)
    assert dest.read_bytes() == BLOB
    gets = _gets(b)
    assert len(gets) == 2
    assert gets[1]["Range"] == "bytes=100000-"
    assert gets[1]["If-Range"] == ETAG
    assert not slot.exists()


KILLED_FETCH = """
import sys
from pathlib import Path
from xray.data.intake.fetch import fetch
fetch(sys.argv[1], Path(sys.argv[2]), cache_dir=Path(sys.argv[3]), backoff=0.01, progress=False)
"""


def test_kill_9_then_rerun_resumes(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A fetch killed with SIGKILL mid-body leaves its partial; the rerun resumes it by Range."""
    base, b = server
    b.cut_after, b.hold = 120_000, threading.Event()
    url, dest, cache = f"{base}/blob.bin", tmp_path / "data.zip", tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, url, str(dest), str(cache)])
    try:
        deadline = time.monotonic() + 60
        while sum(p.stat().st_size for p in cache.glob("*/part")) < 120_000:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    finally:
        b.hold.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    b.cut_after = None
    fetch(url, dest, cache_dir=cache, **FAST)
    assert dest.read_bytes() == BLOB
    gets = _gets(b)
    assert len(gets) == 2
    assert gets[1]["Range"] == "bytes=120000-"
    assert gets[1]["If-Range"] == ETAG
    assert list(cache.iterdir()) == []


def test_changed_etag_discards_the_partial(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """The file changed on the server (new ETag): the old partial is dropped, not resumed."""
    base, b = server
    b.cut_after = 100_000
    url, dest, cache = f"{base}/blob.bin", tmp_path / "data.zip", tmp_path / "cache"
    with pytest.raises(FetchError):
        fetch(url, dest, cache_dir=cache, retries=0, **FAST)  # keyed by the probed ETag
    (old,) = cache.iterdir()

    b.etag, b.cut_after = '"blob-v2"', None
    fetch(url, dest, sha256=None, cache_dir=cache, **FAST)
    assert dest.read_bytes() == BLOB
    assert not old.exists()
    assert list(cache.iterdir()) == []
    assert "Range" not in _gets(b)[-1]


def test_changed_etag_under_a_pinned_sha256_restarts(
    server: tuple[str, Behaviour], tmp_path: Path
) -> None:
    """Same key (pinned sha256) but a new ETag: If-Range fails, the full body replaces the part."""
    base, b = server
    b.cut_after = 100_000
    url, dest, cache = f"{base}/blob.bin", tmp_path / "data.zip", tmp_path / "cache"
    with pytest.raises(FetchError):
        fetch(url, dest, sha256=BLOB_SHA, cache_dir=cache, retries=0, **FAST)
    b.etag, b.cut_after = '"blob-v2"', None
    fetch(url, dest, sha256=BLOB_SHA, cache_dir=cache, **FAST)
    assert dest.read_bytes() == BLOB
    last = _gets(b)[-1]
    assert (last["Range"], last["If-Range"]) == ("bytes=100000-", ETAG)  # answered with 200


def test_probe_head_retries_a_503(server: tuple[str, Behaviour]) -> None:
    """The probe's HEAD is retried on a 503 like a transfer."""
    base, b = server
    b.head_fail_first = 2
    info = probe(f"{base}/blob.bin", backoff=0.01, progress=False)
    assert info["etag"] == ETAG
    assert [m for m, _, _ in b.requests] == ["HEAD", "HEAD", "HEAD"]


def test_probe_404_is_not_retried(server: tuple[str, Behaviour]) -> None:
    """A 404 at probe time fails at once with one line."""
    base, b = server
    url = f"{base}/nope"
    with pytest.raises(FetchError, match="HTTP 404") as ei:
        probe(url, retries=5, backoff=0.01, progress=False)
    _one_line_naming(ei, url)
    assert len(b.requests) == 1


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    """Connection errors are transient: retried, then one line with the last reason."""
    url = f"http://127.0.0.1:{free_port()}/blob.bin"
    with pytest.raises(FetchError, match="giving up after 2 retries: ConnectError") as ei:
        fetch(url, tmp_path / "x.zip", retries=2, **FAST)
    _one_line_naming(ei, url)
    assert ei.value.transient


def test_read_timeout_mid_body_resumes(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    """A server stalling mid-body times out; the retry continues from the bytes on disk."""
    base, b = server
    b.cut_after, b.hold = 100_000, threading.Event()
    dest = tmp_path / "data.zip"
    try:
        fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, backoff=0.01, timeout=0.5, progress=False)
    finally:
        b.hold.set()
    assert dest.read_bytes() == BLOB
    assert _gets(b)[1]["Range"] == "bytes=100000-"


def test_move_across_file_systems(
    server: tuple[str, Behaviour], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the cache and dest are on different file systems the file is copied, then renamed."""
    base, _ = server
    real_replace = download_cache.os.replace

    def replace(src: Path | str, dst: Path | str) -> None:
        """os.replace, failing with EXDEV for the partial file."""
        if Path(src).name == "part":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(download_cache.os, "replace", replace)
    dest, cache = tmp_path / "out" / "data.zip", tmp_path / "cache"
    fetch(f"{base}/blob.bin", dest, sha256=BLOB_SHA, cache_dir=cache, **FAST)
    assert dest.read_bytes() == BLOB
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.zip"]
    assert list(cache.iterdir()) == []


class Endless(BaseHTTPRequestHandler):
    """/endless: a chunked body that never ends; /trickle: 10 bytes every 0.1 s; /big: a
    Content-Length over the cap (and no body worth reading)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("ETag", '"endless"')
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path == "/big":
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk, pause = (b"x" * 65536, 0.0) if self.path == "/endless" else (b"y" * 10, 0.1)
        try:
            for _ in range(100_000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except OSError:  # the client hung up: the point of the test
            pass


@pytest.mark.parametrize(
    ("path", "limits", "message"),
    [
        (
            "/endless",
            {"max_bytes": 2_000_000},
            r"more than 2000000 bytes \(data\.max_download_bytes\)",
        ),
        ("/big", {"max_bytes": 2_000_000}, r"declares 1000000000000 bytes, more than 2000000"),
        (
            "/trickle",
            {"min_rate": 10_000, "window_s": 0.5},
            r"\d+ bytes/s over \d+ s, below data\.min_download_rate 10000",
        ),
    ],
)
def test_downloads_are_bounded_and_leave_no_partial_file(
    tmp_path: Path, path: str, limits: dict[str, float], message: str
) -> None:
    """Issue 24 item 9: an endless body, a too-large one and a 100-byte/s one each fail at
    once (no retry) with one line; the partial file is removed, from the cache too."""
    from xray.data.intake.fetch import Limits

    cache = tmp_path / "cache"
    with loopback_server(Endless, None) as url:
        start = time.monotonic()
        with pytest.raises(FetchError) as e:
            fetch(
                f"{url}{path}", tmp_path / "a.zip", cache_dir=cache, limits=Limits(**limits), **FAST
            )
        took = time.monotonic() - start
    assert re.search(message, _one_line_naming(e, f"{url}{path}")), str(e.value)
    assert took < 30 and not e.value.transient
    assert not (tmp_path / "a.zip").exists()
    assert [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 0] == []
