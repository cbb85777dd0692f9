"""Partial downloads kept across runs: a locked folder per URL and validators, resumable.

With a cache folder the partial file lives in ``<cache>/<key>/`` (key: the URL and its
validators or pinned sha256), so a retry, or a rerun after a crash or kill -9, resumes with a
Range request (If-Range). One process at a time holds a folder (an flock); partials of the same
URL under other keys are stale and removed. Used by xray/data/intake/fetch.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xray.core.hashing import json_sha256
from xray.data.intake.http_retry import _fail


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


def _discard(slot: _Slot | None, part: Path) -> None:
    """Remove a partial file and, when cached, its folder."""
    with contextlib.suppress(OSError):
        part.unlink(missing_ok=True)
    if slot is not None:
        slot.discard()
