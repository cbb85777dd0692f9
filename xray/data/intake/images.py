"""Image files in: read with a byte cap (never blocking on a FIFO), decode once to 8-bit gray."""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xray.data.intake.entries import file_kind

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff"})
SIXTEEN_BIT_MAX = 65535
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
DEFAULT_MAX_FILE_BYTES = 100_000_000
"""The byte cap of read_file when none is given (data.max_file_bytes's default)."""
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
"""open() flags of read_file: a FIFO or terminal opens without waiting for a writer."""


class BadImage(Exception):
    """An image file that cannot be used; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_file(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most max_bytes; BadImage for anything else (checked first).

    The file is opened non-blocking and checked with fstat on that same descriptor, so a
    FIFO, socket or device (even one swapped in after the layout scan) is never read.
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as e:
        raise BadImage("fifo" if e.errno == errno.ENXIO else "unreadable") from e
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            st = os.fstat(fd)
            kind = file_kind(st.st_mode)
            if kind != "file":
                raise BadImage(kind)
            if st.st_size > max_bytes:
                raise BadImage("too_large")
            if st.st_size == 0:
                raise BadImage("empty")
            data = f.read(max_bytes + 1) or b""
        except OSError as e:
            raise BadImage("unreadable") from e
    if len(data) > max_bytes:  # grew after the size check
        raise BadImage("too_large")
    if not data:
        raise BadImage("empty")
    return data


def _to_gray(im: Image.Image) -> Image.Image:
    """Convert any decoded Pillow image to 8-bit grayscale ('L')."""
    mode = im.mode
    if mode == "L":
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("LA", "La"):
        return im.getchannel(0)
    if mode in SIXTEEN_BIT_MODES:
        # Fixed full-range scaling (v * 255 / 65535), not per-image stretching; float images
        # whose values all lie in [0, 1] are taken as normalised. Out-of-range values clip.
        arr = np.asarray(im, dtype=np.float64)
        scale = 1.0 if mode == "F" and arr.max(initial=0.0) <= 1.0 else float(SIXTEEN_BIT_MAX)
        arr = np.clip(np.rint(arr * (255.0 / scale)), 0, 255)
        return Image.fromarray(arr.astype(np.uint8))
    if mode == "LAB":
        return im.getchannel(0)
    # RGB/RGBA/RGBX/RGBa/P/PA/CMYK/YCbCr/HSV: luminance of the colour, alpha ignored.
    return im.convert("RGB").convert("L")


def load_image(
    source: Path | bytes,
    *,
    max_pixels: int,
    max_side: int | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> np.ndarray:
    """Decode an image (a file, or its bytes) once to 2-D uint8 grayscale, EXIF-oriented.

    The pixel count is read from the header and checked against max_pixels before any
    pixel is decoded; a file is read through read_file (max_bytes, regular files only).
    """
    data = source if isinstance(source, bytes) else read_file(Path(source), max_bytes)
    if not data:
        raise BadImage("empty")
    fh = io.BytesIO(data)
    with fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)
        except Image.DecompressionBombError as e:
            raise BadImage("too_many_pixels") from e
        except UnidentifiedImageError as e:
            raise BadImage("not_an_image") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
            raise BadImage(reason) from e
        w, h = im.size
        if w * h > max_pixels:
            raise BadImage("too_many_pixels")
        if w <= 0 or h <= 0:
            raise BadImage("undecodable")
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise BadImage("too_many_pixels") from e
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
            raise BadImage(reason) from e
        try:
            im = ImageOps.exif_transpose(im)
            gray = _to_gray(im)
        except (OSError, SyntaxError, ValueError, TypeError, KeyError) as e:
            raise BadImage("undecodable") from e
    if max_side is not None and max(gray.size) > max_side:
        gw, gh = gray.size
        scale = max_side / max(gw, gh)
        size = (max(1, round(gw * scale)), max(1, round(gh * scale)))
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    arr = np.array(gray, dtype=np.uint8)
    if arr.ndim != 2:
        raise BadImage("undecodable")
    return arr
