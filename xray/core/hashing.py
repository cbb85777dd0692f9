"""Content hashes, one helper per kind: files (md5 as DVC records it, sha256), bytes, JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from xray.core.errors import WorkError

CHUNK_BYTES = 1 << 20


def _file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file (plain md5 of its bytes)."""
    return _file_digest(path, "md5")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return _file_digest(path, "sha256")


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: str | None, where: str) -> None:
    """Fail with one line naming `where` when data's SHA-256 is not the recorded one (if any)."""
    if not expected:
        return
    got = bytes_sha256(data)
    if got != expected.lower():
        raise WorkError(
            f"{where}: sha256 {got[:16]}... is not the manifest's {expected[:16]}... (changed "
            "after it was written: `dvc checkout` restores it, `xray verify` finds the rest)"
        )


def json_sha256(value: object) -> str:
    """Hex SHA-256 of a JSON value (keys sorted), e.g. a fingerprint of settings."""
    return bytes_sha256(json.dumps(value, sort_keys=True).encode())
