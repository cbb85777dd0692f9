"""Tests for tasks.fetch against a loopback HTTP server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_server

from tasks.fetch import FetchError, fetch, probe

BLOB = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
ETAG = '"blob-v1"'
LAST_MODIFIED = "Mon, 01 Jan 2018 00:00:00 GMT"
FAST = {"backoff": 0.01, "timeout": 5.0, "progress": False}


@dataclass
class Behaviour:
    """What the test server does; mutated by tests, read by the handler."""

    fail_first: int = 0  # answer 500 to this many GETs first
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
        if not b.head_allowed:
            self._plain(405)
        elif self.path != "/blob.bin":
            self._plain(404)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.send_header("ETag", ETAG)
            self.send_header("Last-Modified", LAST_MODIFIED)
            self.end_headers()

    def do_GET(self) -> None:
        """Body, ranged body, or a configured fault."""
        b: Behaviour = self.server.state  # type: ignore[attr-defined]
        b.requests.append(("GET", self.path, dict(self.headers)))
        if self.path != "/blob.bin":
            self._plain(404)
            return
        gets = sum(1 for r in b.requests if r[0] == "GET")
        if gets <= b.fail_first:
            self._plain(500)
            return
        body = self._body()
        start, end = 0, len(body) - 1
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not b.ignore_range and (if_range is None or if_range == ETAG):
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
        self.send_header("ETag", ETAG)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if b.cut_after is not None and gets - b.fail_first <= b.cut_times:
            self.wfile.write(chunk[: b.cut_after])
            self.wfile.flush()
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
