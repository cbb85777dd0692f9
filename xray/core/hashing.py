"""Content hashes, one helper per kind: files (md5 as DVC records it, sha256), bytes, JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


def json_sha256(value: object) -> str:
    """Hex SHA-256 of a JSON value (keys sorted), e.g. a fingerprint of settings."""
    return bytes_sha256(json.dumps(value, sort_keys=True).encode())
