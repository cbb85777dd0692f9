"""Shared file helpers: atomic writes, PNG I/O of canonical images, manifests."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MANIFEST_FIELDS = ("path", "label", "source_split", "patient_id", "sha256", "width", "height")
PNG_COMPRESS_LEVEL = 6


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def png_bytes(image: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode a 2-D uint8 image as a deterministic PNG (no metadata, fixed compression)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(
        buf, format="PNG", compress_level=compress_level, optimize=False
    )
    return buf.getvalue()


def read_gray(path: Path) -> np.ndarray:
    """Read an image file written by this pipeline as a 2-D uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def decode_gray(data: bytes) -> np.ndarray:
    """Decode the bytes of an image file written by this pipeline as a 2-D uint8 array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, pretty and key-sorted for stable diffs."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """Write rows as CSV atomically with a fixed column order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fields})
    write_bytes_atomic(path, buf.getvalue().encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV written by write_csv; a missing file is a one-line error."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (run the stage that writes it first)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `final` only when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
