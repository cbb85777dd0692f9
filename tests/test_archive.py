"""Tests for xray.data.intake.archive: safe extraction of zip and tar sources (bad members)."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from xray.data.intake.archive import _Extractor, safe_extract
from xray.data.intake.entries import IngestError

MB = 1 << 20


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
def test_member_count_cap(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """More members than max_members -> IngestError naming the first one over the cap, before
    any member is written (issue 24 item 13: a tar was extracted up to the cap first)."""
    names = [f"f{i}.txt" for i in range(5)]
    if kind == "zip":
        arc = _zip(tmp_path / "many.zip", [(n, b"x") for n in names])
    else:
        arc = _tar(tmp_path / "many.tar.gz", [(_tinfo(n), b"x") for n in names])
    dest = tmp_path / "out"
    written: list[str] = []
    real_write = _Extractor.write
    monkeypatch.setattr(
        _Extractor, "write", lambda self, m, *a: (written.append(m), real_write(self, m, *a))[1]
    )
    with pytest.raises(IngestError, match=r"member 'f3.txt': archive has more than 3 members"):
        safe_extract(arc, dest, max_total_bytes=MB, max_members=3)
    assert written == [] and _leftovers(dest) == []
    safe_extract(arc, dest, max_total_bytes=MB, max_members=5)
    assert written == names


def test_corrupt_archive_and_unknown_type(tmp_path: Path) -> None:
    """Garbage archives and unknown suffixes raise IngestError naming the archive."""
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(IngestError, match=r"^bad\.zip: corrupt or unreadable archive"):
        safe_extract(bad, tmp_path / "out", max_total_bytes=MB, max_members=10)
    with pytest.raises(IngestError, match=r"^data\.rar: unsupported archive type"):
        safe_extract(tmp_path / "data.rar", tmp_path / "out", max_total_bytes=MB, max_members=10)
