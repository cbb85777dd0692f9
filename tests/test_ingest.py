"""Intake tests: safe extraction (tasks.archive), layout discovery (tasks.layout), image
decoding (tasks.images), patient ids (tasks.patients)."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.archive import _Extractor, safe_extract
from tasks.images import BadImage, load_image
from tasks.intake import IngestError
from tasks.io import sha256_file
from tasks.layout import Found, find_images
from tasks.patients import patient_id

CLASSES = ("NORMAL", "PNEUMONIA")
MB = 1 << 20
REAL_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/chest_xray_224_train.zip"


# --------------------------------------------------------------------------- helpers


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """Write a zip with the given (name or ZipInfo, data) members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """Write a tar.gz with the given (TarInfo, data) members."""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _tinfo(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A TarInfo of the given type."""
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    return ti


def _leftovers(dest: Path) -> list[str]:
    """Everything under dest, relative."""
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))


def _touch(root: Path, *rels: str) -> None:
    """Create small files at the given relative paths."""
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _triples(found: list[Found]) -> list[tuple[str, str, str]]:
    """(split, label, rel) of each result."""
    return [(f.split, f.label, f.rel) for f in found]


# --------------------------------------------------------------------------- safe_extract


def test_extract_zip_ok_skips_macos_junk(tmp_path: Path) -> None:
    """Plain members land in dest; __MACOSX and ._ entries are skipped."""
    arc = _zip(
        tmp_path / "a.zip",
        [
            ("chest_xray/train/NORMAL/IM-0001-0001.jpeg", b"img"),
            ("chest_xray/train/NORMAL/", b""),
            ("__MACOSX/chest_xray/train/NORMAL/._IM-0001-0001.jpeg", b"junk"),
            ("chest_xray/train/NORMAL/._IM-0001-0001.jpeg", b"junk"),
        ],
    )
    dest = tmp_path / "out"
    safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert _leftovers(dest) == [
        "chest_xray",
        "chest_xray/train",
        "chest_xray/train/NORMAL",
        "chest_xray/train/NORMAL/IM-0001-0001.jpeg",
    ]
    assert (dest / "chest_xray/train/NORMAL/IM-0001-0001.jpeg").read_bytes() == b"img"


def test_extract_tar_ok(tmp_path: Path) -> None:
    """A tar.gz with dirs and files extracts completely."""
    arc = _tar(
        tmp_path / "a.tar.gz",
        [
            (_tinfo("./data", tarfile.DIRTYPE), b""),
            (_tinfo("./data/NORMAL/x.png"), b"abc"),
            (_tinfo("._x.png"), b"junk"),
        ],
    )
    dest = tmp_path / "out"
    safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert _leftovers(dest) == ["data", "data/NORMAL", "data/NORMAL/x.png"]


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt", "C:/evil.txt", "..\\evil.txt"]
)
def test_zip_unsafe_paths(tmp_path: Path, evil: str) -> None:
    """Zip-slip and absolute members are refused, naming the member; dest stays empty."""
    arc = _zip(tmp_path / "a.zip", [("ok/good.txt", b"fine"), (zipfile.ZipInfo(evil), b"bad")])
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=r"absolute or '\.\.' path refused") as ei:
        safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert repr(evil) in str(ei.value)
    assert _leftovers(dest) == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_member(tmp_path: Path) -> None:
    """A unix symlink zip member is refused by name."""
    link = zipfile.ZipInfo("data/link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    arc = _zip(tmp_path / "a.zip", [("data/good.txt", b"fine"), (link, b"/etc/passwd")])
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=r"member 'data/link': symlink members are refused"):
        safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert _leftovers(dest) == []


@pytest.mark.parametrize(
    ("info", "why"),
    [
        (_tinfo("data/link", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
        (_tinfo("data/hard", tarfile.LNKTYPE, "data/good.txt"), "hard link"),
        (_tinfo("data/dev", tarfile.CHRTYPE), "device/fifo"),
        (_tinfo("data/pipe", tarfile.FIFOTYPE), "device/fifo"),
        (_tinfo("../evil.txt"), "absolute or '..'"),
        (_tinfo("/abs/evil.txt"), "absolute or '..'"),
    ],
)
def test_tar_refused_members(tmp_path: Path, info: tarfile.TarInfo, why: str) -> None:
    """Links, devices, fifos and escaping paths in a tar are refused; earlier files are removed."""
    arc = _tar(tmp_path / "a.tgz", [(_tinfo("data/good.txt"), b"fine"), (info, b"bad")])
    dest = tmp_path / "out"
    with pytest.raises(IngestError) as ei:
        safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert f"member {info.name!r}: {why}" in str(ei.value)
    assert _leftovers(dest) == []


def test_zip_bomb_declared(tmp_path: Path) -> None:
    """50 MB of zeros (compressed to ~50 KB) exceeds a 1 MB budget before anything is written."""
    arc = _zip(tmp_path / "bomb.zip", [("ok.txt", b"fine"), ("zeros.bin", bytes(50 * MB))])
    assert arc.stat().st_size < MB
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=r"member 'zeros.bin': declared sizes exceed 1048576"):
        safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert _leftovers(dest) == []


def test_zip_lying_header_stops(tmp_path: Path) -> None:
    """A member whose headers claim 1000 bytes but inflate to 4 MB fails mid-extraction."""
    arc = _zip(tmp_path / "liar.zip", [("ok.txt", b"fine"), ("zeros.bin", bytes(4 * MB))])
    raw = bytearray(arc.read_bytes())
    with zipfile.ZipFile(arc) as zf:
        local = zf.getinfo("zeros.bin").header_offset
    struct.pack_into("<I", raw, local + 22, 1000)  # local header uncompressed size
    central = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)  # second entry
    struct.pack_into("<I", raw, central + 24, 1000)
    arc.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=r"member 'zeros.bin': cannot extract"):
        safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert _leftovers(dest) == []


def test_streaming_budget_counts_actual_bytes(tmp_path: Path) -> None:
    """The writer stops as soon as actual bytes pass the budget, whatever was declared."""
    dest = tmp_path / "out"
    dest.mkdir()
    ex = _Extractor(tmp_path / "x.zip", dest, max_total_bytes=MB)

    class Endless(io.RawIOBase):
        """A stream that never ends and counts what was read."""

        served = 0

        def read(self, n: int = -1) -> bytes:
            self.served += n
            return bytes(n)

    src = Endless()
    with pytest.raises(IngestError, match=r"member 'big': uncompressed data exceed 1048576"):
        ex.write("big", dest / "big", src)  # type: ignore[arg-type]
    assert src.served <= 2 * MB
    ex.cleanup()
    assert _leftovers(dest) == []


def test_tar_bomb_declared(tmp_path: Path) -> None:
    """A tar member declaring more than the budget is refused before its data is written."""
    arc = _tar(
        tmp_path / "bomb.tar.gz",
        [(_tinfo("ok.txt"), b"fine"), (_tinfo("zeros.bin"), bytes(3 * MB))],
    )
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=r"member 'zeros.bin': declared sizes exceed"):
        safe_extract(arc, dest, max_total_bytes=MB, max_members=10)
    assert _leftovers(dest) == []


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_member_count_cap(tmp_path: Path, kind: str) -> None:
    """More members than max_members -> IngestError naming the first one over the cap."""
    names = [f"f{i}.txt" for i in range(5)]
    if kind == "zip":
        arc = _zip(tmp_path / "many.zip", [(n, b"x") for n in names])
    else:
        arc = _tar(tmp_path / "many.tar.gz", [(_tinfo(n), b"x") for n in names])
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=r"member 'f3.txt': archive has more than 3 members"):
        safe_extract(arc, dest, max_total_bytes=MB, max_members=3)
    assert _leftovers(dest) == []


def test_corrupt_archive_and_unknown_type(tmp_path: Path) -> None:
    """Garbage archives and unknown suffixes raise IngestError naming the archive."""
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(IngestError, match=r"^bad\.zip: corrupt or unreadable archive"):
        safe_extract(bad, tmp_path / "out", max_total_bytes=MB, max_members=10)
    with pytest.raises(IngestError, match=r"^data\.rar: unsupported archive type"):
        safe_extract(tmp_path / "data.rar", tmp_path / "out", max_total_bytes=MB, max_members=10)


# --------------------------------------------------------------------------- find_images

KAGGLE_FILES = [
    ("test", "PNEUMONIA", "test/PNEUMONIA/person100_bacteria_475.jpeg"),
    ("train", "NORMAL", "train/NORMAL/IM-0115-0001.jpeg"),
    ("train", "PNEUMONIA", "train/PNEUMONIA/person1_virus_6.jpeg"),
    ("val", "NORMAL", "val/NORMAL/NORMAL2-IM-1427-0001.jpeg"),
]


def test_kaggle_nested_copy_and_junk(tmp_path: Path) -> None:
    """Kaggle zip layout: the nested chest_xray/chest_xray copy and macOS junk never double data."""
    for prefix in ("chest_xray", "chest_xray/chest_xray"):
        _touch(tmp_path, *(f"{prefix}/{rel}" for _, _, rel in KAGGLE_FILES))
    _touch(
        tmp_path,
        "__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg",
        "chest_xray/__MACOSX/train/NORMAL/._IM-0115-0001.jpeg",
        "chest_xray/train/NORMAL/._IM-0115-0001.jpeg",
        "chest_xray/train/NORMAL/.DS_Store",
        "chest_xray/.DS_Store",
    )
    found = find_images(tmp_path, CLASSES)
    assert _triples(found) == [(s, c, f"chest_xray/{rel}") for s, c, rel in KAGGLE_FILES]
    assert found[0].path == (tmp_path / "chest_xray" / KAGGLE_FILES[0][2]).resolve()
    assert found[0].path.is_absolute()


def test_nested_copy_with_more_files_wins(tmp_path: Path) -> None:
    """When the copies differ, the one holding more images is used (only one copy)."""
    _touch(tmp_path, "chest_xray/train/NORMAL/a.jpeg")
    _touch(tmp_path, *(f"chest_xray/chest_xray/{rel}" for _, _, rel in KAGGLE_FILES))
    found = find_images(tmp_path, CLASSES)
    assert _triples(found) == [(s, c, f"chest_xray/chest_xray/{rel}") for s, c, rel in KAGGLE_FILES]


def test_extracted_kaggle_zip_end_to_end(tmp_path: Path) -> None:
    """safe_extract + find_images on a Kaggle-like zip yields each image once."""
    members = [
        (f"{p}/{rel}", b"x")
        for p in ("chest_xray", "chest_xray/chest_xray")
        for _, _, rel in KAGGLE_FILES
    ]
    members.append(("__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg", b"junk"))
    arc = _zip(tmp_path / "chest-xray-pneumonia.zip", members)
    dest = tmp_path / "raw"
    safe_extract(arc, dest, max_total_bytes=MB, max_members=100)
    assert len(find_images(dest, CLASSES)) == len(KAGGLE_FILES)


def test_mendeley_layout(tmp_path: Path) -> None:
    """Mendeley ChestXRay2017/chest_xray/{train,test} layout."""
    _touch(
        tmp_path,
        "ChestXRay2017/chest_xray/train/NORMAL/IM-0001-0001.jpeg",
        "ChestXRay2017/chest_xray/train/PNEUMONIA/person3_virus_15.jpeg",
        "ChestXRay2017/chest_xray/test/NORMAL/IM-0005-0001.jpeg",
        "__MACOSX/ChestXRay2017/chest_xray/test/NORMAL/._IM-0005-0001.jpeg",
    )
    assert _triples(find_images(tmp_path, CLASSES)) == [
        ("test", "NORMAL", "ChestXRay2017/chest_xray/test/NORMAL/IM-0005-0001.jpeg"),
        ("train", "NORMAL", "ChestXRay2017/chest_xray/train/NORMAL/IM-0001-0001.jpeg"),
        ("train", "PNEUMONIA", "ChestXRay2017/chest_xray/train/PNEUMONIA/person3_virus_15.jpeg"),
    ]


def test_split_folders_at_root(tmp_path: Path) -> None:
    """A folder directly holding {train,val,test}/{CLASS}."""
    _touch(tmp_path, "train/NORMAL/a.png", "val/PNEUMONIA/b.png", "test/NORMAL/c.png")
    assert _triples(find_images(tmp_path, CLASSES)) == [
        ("test", "NORMAL", "test/NORMAL/c.png"),
        ("train", "NORMAL", "train/NORMAL/a.png"),
        ("val", "PNEUMONIA", "val/PNEUMONIA/b.png"),
    ]


def test_flat_class_folders_and_case(tmp_path: Path) -> None:
    """Flat class folders (any case) become split 'train' with canonical labels."""
    _touch(tmp_path, "normal/a.png", "Pneumonia/b.png")
    assert _triples(find_images(tmp_path, CLASSES)) == [
        ("train", "NORMAL", "normal/a.png"),
        ("train", "PNEUMONIA", "Pneumonia/b.png"),
    ]


def test_unknown_class_folder(tmp_path: Path) -> None:
    """An unexpected class folder is an error naming it."""
    _touch(tmp_path, "train/NORMAL/a.png", "train/COVID19/b.png")
    with pytest.raises(IngestError, match=r"unknown class folder 'train/COVID19'"):
        find_images(tmp_path, CLASSES)


def test_class_map_and_ignore(tmp_path: Path) -> None:
    """class_map merges folders into a class (case-insensitively); ignore skips folders."""
    _touch(
        tmp_path,
        "train/NORMAL/a.png",
        "train/pneumonia_bacterial/b.png",
        "train/Pneumonia_Viral/c.png",
        "train/COVID/d.png",
    )
    found = find_images(
        tmp_path,
        CLASSES,
        ignore=["covid"],
        class_map={"pneumonia_bacterial": "PNEUMONIA", "pneumonia_viral": "PNEUMONIA"},
    )
    assert _triples(found) == [
        ("train", "NORMAL", "train/NORMAL/a.png"),
        ("train", "PNEUMONIA", "train/Pneumonia_Viral/c.png"),
        ("train", "PNEUMONIA", "train/pneumonia_bacterial/b.png"),
    ]
    with pytest.raises(IngestError, match=r"^class_map: 'x' maps to 'COVID'"):
        find_images(tmp_path, CLASSES, class_map={"x": "COVID"})


def test_candidate_files(tmp_path: Path) -> None:
    """Image-like and odd/no-extension files are candidates; hidden and known non-image aren't."""
    _touch(
        tmp_path,
        *(
            f"NORMAL/{n}"
            for n in [
                "a.JPG",
                "b.png",
                "c.TIFF",
                "d.bmp",
                "e.jpeg",
                "noext",
                "odd.dat",
                "notes.txt",
                "Thumbs.db",
                "meta.json",
                ".DS_Store",
                "._a.JPG",
            ]
        ),
    )
    rels = [f.rel for f in find_images(tmp_path, CLASSES)]
    assert rels == [
        "NORMAL/a.JPG",
        "NORMAL/b.png",
        "NORMAL/c.TIFF",
        "NORMAL/d.bmp",
        "NORMAL/e.jpeg",
        "NORMAL/noext",
        "NORMAL/odd.dat",
    ]


def test_two_unrelated_datasets_is_ambiguous(tmp_path: Path) -> None:
    """Two separate dataset folders are not silently merged or picked."""
    _touch(tmp_path, "a/train/NORMAL/x.png", "b/train/NORMAL/y.png")
    with pytest.raises(IngestError, match=r"several datasets found .*'a', 'b'"):
        find_images(tmp_path, CLASSES)
    assert len(find_images(tmp_path, CLASSES, ignore=["b"])) == 1


def test_no_class_folders(tmp_path: Path) -> None:
    """A tree without any class folder is an error."""
    _touch(tmp_path, "stuff/a.png")
    with pytest.raises(IngestError, match="no class folders"):
        find_images(tmp_path, CLASSES)


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


# --------------------------------------------------------------------------- ids, hashes


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("person12_bacteria_46.jpeg", "person12"),
        ("person1_virus_7.jpeg", "person1"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("person1_bacteria_1_2.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0543-0001-0002.jpeg", "IM-0543"),
        ("NORMAL2-IM-0587-0001.jpeg", "NORMAL2-IM-0587"),
        ("NORMAL2-IM-0587-0001-0001.jpeg", "NORMAL2-IM-0587"),
        ("chest_xray/train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001", "IM-0115"),
        ("scan_0001.png", None),
        ("person12.jpeg", None),
        ("IM-0115.jpeg", None),
        ("", None),
    ],
)
def test_patient_id_kermany(name: str, pid: str | None) -> None:
    """Every Kermany naming variant maps to its patient; others give None."""
    assert patient_id(name) == pid


def test_patient_id_custom_pattern() -> None:
    """A custom regex uses group 'patient', else group 1; bad patterns name the params key."""
    assert patient_id("AB123_left.png", r"^(?P<site>[A-Z]+)(?P<patient>\d+)_") == "123"
    assert patient_id("d/sub-42_img.png", r"^sub-(\d+)") == "42"
    assert patient_id("other.png", r"^sub-(\d+)") is None
    assert patient_id("person1_virus_7.jpeg", r"^sub-(\d+)") is None  # pattern replaces default
    with pytest.raises(IngestError, match=r"^patient_pattern: invalid regex"):
        patient_id("x.png", r"(unclosed")
    with pytest.raises(IngestError, match=r"^patient_pattern: .* needs a group"):
        patient_id("x.png", r"x")


def test_sha256_file(tmp_path: Path) -> None:
    """Known digest of 'abc'."""
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"{REAL_ZIP} not present")
def test_patient_id_parses_real_archive() -> None:
    """Every file name in the real training archive yields a patient id (no fallback)."""
    with zipfile.ZipFile(REAL_ZIP) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    assert len(names) == 5216
    failed = [n for n in names if patient_id(n) is None]
    assert failed == []
    by_class: dict[str, set[str]] = {}
    for n in names:
        by_class.setdefault(n.split("/")[-2], set()).add(patient_id(n) or "")
    assert set(by_class) == {"NORMAL", "PNEUMONIA"}
    assert not by_class["NORMAL"] & by_class["PNEUMONIA"]
    assert (len(by_class["NORMAL"]), len(by_class["PNEUMONIA"])) == (1211, 1635)


@pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"{REAL_ZIP} not present")
def test_real_archive_extract_and_find(tmp_path: Path) -> None:
    """The real archive extracts safely and every image is found once with its label."""
    dest = tmp_path / "raw"
    safe_extract(REAL_ZIP, dest, max_total_bytes=1 << 30, max_members=20_000)
    found = find_images(dest, CLASSES)
    counts = {c: sum(f.label == c for f in found) for c in CLASSES}
    assert counts == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert {f.split for f in found} == {"train"}
    assert len({f.path for f in found}) == 5216
