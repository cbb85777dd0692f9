"""Tests for xray.data.intake.images: decoding any image once to 8-bit grayscale, and its limits."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xray.data.intake.images import BadImage, load_image

# --------------------------------------------------------------------------- load_image


def _save(path: Path, im: Image.Image, **kw: object) -> Path:
    """Save an image and return its path."""
    im.save(path, **kw)
    return path


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG with a valid IHDR for w x h but no pixel data."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b""))
    return path


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty.jpeg", lambda p: p.write_bytes(b""), "empty"),
        ("text.jpeg", lambda p: p.write_text("hello, not an image\n"), "not_an_image"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, make: object, reason: str) -> None:
    """Zero-byte and non-image files get the right reason."""
    p = tmp_path / name
    make(p)  # type: ignore[operator]
    with pytest.raises(BadImage) as ei:
        load_image(p, max_pixels=10**6)
    assert ei.value.reason == reason


def test_truncated_jpeg(tmp_path: Path) -> None:
    """A JPEG cut in half is 'truncated'."""
    full = _save(tmp_path / "full.jpeg", Image.fromarray(_noise(64, 64)), quality=90)
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(BadImage) as ei:
        load_image(cut, max_pixels=10**6)
    assert ei.value.reason == "truncated"


def test_undecodable_png(tmp_path: Path) -> None:
    """A PNG whose header parses but whose pixel data is broken is 'undecodable'."""
    good = _save(tmp_path / "g.png", Image.fromarray(_noise(32, 32)))
    raw = bytearray(good.read_bytes())
    idat = raw.index(b"IDAT")
    raw[idat + 10] ^= 0xFF  # breaks the chunk CRC / zlib stream
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BadImage) as ei:
        load_image(bad, max_pixels=10**6)
    assert ei.value.reason == "undecodable"


def test_too_many_pixels_checked_from_header(tmp_path: Path) -> None:
    """The pixel cap is enforced from the header, before decoding (no pixel data exists here)."""
    p = _png_header_only(tmp_path / "big.png", 200, 100)
    with pytest.raises(BadImage) as ei:
        load_image(p, max_pixels=19_999)
    assert ei.value.reason == "too_many_pixels"
    with pytest.raises(BadImage) as ei:  # within the cap, the missing data then shows
        load_image(p, max_pixels=20_000)
    assert ei.value.reason != "too_many_pixels"


def test_pillow_decompression_bomb_guard(tmp_path: Path) -> None:
    """Pillow's own bomb error (above its MAX_IMAGE_PIXELS x2) also maps to too_many_pixels."""
    p = _png_header_only(tmp_path / "huge.png", 50_000, 50_000)
    with pytest.raises(BadImage) as ei:
        load_image(p, max_pixels=10**12)
    assert ei.value.reason == "too_many_pixels"


def test_grayscale_exact(tmp_path: Path) -> None:
    """8-bit grayscale round-trips exactly."""
    a = _noise(20, 30)
    out = load_image(_save(tmp_path / "g.png", Image.fromarray(a)), max_pixels=10**6)
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, a)


RGB_LUMA = [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29), ((255, 255, 255), 255)]


def _colour_strip(mode: str, colours: list[tuple[int, ...]]) -> Image.Image:
    """A 1 x n image with one pixel per colour."""
    im = Image.new(mode, (len(colours), 1))
    for i, c in enumerate(colours):
        im.putpixel((i, 0), c)
    return im


def test_rgb_luminance(tmp_path: Path) -> None:
    """RGB becomes ITU-R 601 luma (Pillow's L conversion)."""
    im = _colour_strip("RGB", [c for c, _ in RGB_LUMA])
    out = load_image(_save(tmp_path / "c.png", im), max_pixels=10**6)
    assert out.tolist() == [[y for _, y in RGB_LUMA]]


def test_rgba_alpha_ignored(tmp_path: Path) -> None:
    """RGBA uses the colour's luma; alpha is ignored (not composited on black)."""
    im = _colour_strip(
        "RGBA", [(*c, a) for (c, _), a in zip(RGB_LUMA, (0, 64, 128, 255), strict=True)]
    )
    out = load_image(_save(tmp_path / "c.png", im), max_pixels=10**6)
    assert out.tolist() == [[y for _, y in RGB_LUMA]]


def test_palette(tmp_path: Path) -> None:
    """Palette images map through their palette to luma."""
    im = _colour_strip("RGB", [c for c, _ in RGB_LUMA]).quantize(colors=4)
    assert im.mode == "P"
    out = load_image(_save(tmp_path / "p.png", im), max_pixels=10**6)
    assert out.tolist() == [[y for _, y in RGB_LUMA]]


def test_sixteen_bit_png(tmp_path: Path) -> None:
    """16-bit grayscale scales by the full 16-bit range (v * 255 / 65535, rounded)."""
    a = np.array([[0, 257 * 100, 65535, 128, 32767]], dtype=np.uint16)
    p = _save(tmp_path / "d.png", Image.fromarray(a))
    assert Image.open(p).mode in ("I;16", "I")
    out = load_image(p, max_pixels=10**6)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 100, 255, 0, 127]]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    """CMYK JPEGs become grayscale: white stays white, full black ink is black."""
    im = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (8, 0, 16, 8))
    p = _save(tmp_path / "c.jpeg", im, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p, max_pixels=10**6)
    assert out.shape == (8, 16)
    assert abs(int(out[4, 2]) - 255) <= 3 and int(out[4, 13]) <= 3


def test_exif_orientation(tmp_path: Path) -> None:
    """EXIF orientation 6 (rotate 90° CW) is applied: 40x20 stored -> 20 wide, 40 tall."""
    im = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)))  # h=20, w=40
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(tmp_path / "rot.jpeg", im, exif=exif.tobytes(), quality=95)
    raw = np.array(Image.open(p).convert("L"))
    out = load_image(p, max_pixels=10**6)
    assert raw.shape == (20, 40)
    assert out.shape == (40, 20)
    np.testing.assert_array_equal(out, np.rot90(raw, k=-1))


def test_max_side_downscale(tmp_path: Path) -> None:
    """max_side shrinks the longer side keeping the aspect; smaller images are untouched."""
    p = _save(tmp_path / "w.png", Image.fromarray(_noise(50, 100)))
    assert load_image(p, max_pixels=10**6, max_side=20).shape == (10, 20)
    assert load_image(p, max_pixels=10**6, max_side=100).shape == (50, 100)
    a = load_image(p, max_pixels=10**6, max_side=33)
    np.testing.assert_array_equal(a, load_image(p, max_pixels=10**6, max_side=33))
    assert a.shape == (16, 33)
