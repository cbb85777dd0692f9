"""Safe extraction of .zip/.tar/.tar.gz/.tgz sources: plain files and folders only, bounded."""

from __future__ import annotations

import logging
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import IO

from xray.core.text import one_line
from xray.data.intake.entries import IngestError, is_junk_member

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Read/write block size for extraction."""
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """Return the relative path parts of a member name, or None when it is unsafe."""
    norm = name.replace("\\", "/")
    if "\x00" in norm or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return None
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        return None
    return parts


class _Extractor:
    """Writes members under dest, enforcing the byte budget and remembering what it created."""

    def __init__(self, archive: Path, dest: Path, max_total_bytes: int):
        self.archive = archive
        self.dest = dest.resolve()
        self.budget = max_total_bytes
        self.written = 0
        self.created: list[Path] = []

    def fail(self, member: str, why: str) -> IngestError:
        """Build the one-line error for a member."""
        return IngestError(one_line(f"{self.archive.name}: member {member!r}: {why}"))

    def target(self, member: str, parts: tuple[str, ...]) -> Path:
        """Resolve the on-disk path of a member and check it stays inside dest."""
        path = self.dest.joinpath(*parts)
        if not path.resolve().is_relative_to(self.dest):
            raise self.fail(member, "path escapes the destination")
        return path

    def mkdir(self, path: Path) -> None:
        """Create a directory (and parents), recording the ones created."""
        missing = []
        p = path
        while not p.exists() and p != self.dest:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self.created.append(d)

    def write(self, member: str, path: Path, src: IO[bytes]) -> None:
        """Stream one member to disk, stopping as soon as the total budget is exceeded."""
        self.mkdir(path.parent)
        if path.exists() or path.is_symlink():
            raise self.fail(member, "duplicate member")
        with path.open("xb") as out:
            self.created.append(path)
            while chunk := src.read(CHUNK_BYTES):
                self.written += len(chunk)
                if self.written > self.budget:
                    raise self.fail(member, f"uncompressed data exceed {self.budget} bytes")
                out.write(chunk)

    def cleanup(self) -> None:
        """Remove everything this extraction created, newest first."""
        for p in reversed(self.created):
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            except OSError:
                log.warning("could not remove %s after failed extraction", p)


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    """Return why a zip member is not a plain file/dir, or None when it is fine."""
    mode = info.external_attr >> 16
    if not mode:
        return None
    kind = stat.S_IFMT(mode)
    if kind == 0 or stat.S_ISREG(kind) or stat.S_ISDIR(kind):
        return None
    if stat.S_ISLNK(kind):
        return "symlink members are refused"
    return "device/fifo/socket members are refused"


def _extract_zip(ex: _Extractor, max_members: int) -> None:
    """Extract a zip archive after checking every central-directory entry."""
    with zipfile.ZipFile(ex.archive) as zf:
        infos = zf.infolist()  # the member cap counts every entry, junk and folders included
        declared = 0
        for i, info in enumerate(infos):
            if i >= max_members:
                raise ex.fail(info.filename, f"archive has more than {max_members} members")
            if is_junk_member(info.filename.replace("\\", "/")):
                continue
            parts = _safe_parts(info.filename)
            if parts is None:
                raise ex.fail(info.filename, "absolute or '..' path refused")
            if why := _zip_kind(info):
                raise ex.fail(info.filename, why)
            if info.flag_bits & 0x1:
                raise ex.fail(info.filename, "encrypted members are not supported")
            declared += info.file_size
            if declared > ex.budget:
                raise ex.fail(info.filename, f"declared sizes exceed {ex.budget} bytes")
        for info in infos:
            if is_junk_member(info.filename.replace("\\", "/")):
                continue
            parts = _safe_parts(info.filename) or ()
            if not parts:
                continue
            path = ex.target(info.filename, parts)
            if info.is_dir():
                ex.mkdir(path)
                continue
            try:
                with zf.open(info) as src:
                    ex.write(info.filename, path, src)
            except IngestError:
                raise
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                NotImplementedError,
                RuntimeError,
                ValueError,
            ) as e:
                raise ex.fail(info.filename, f"cannot extract: {e}") from e


def _check_tar_caps(ex: _Extractor, max_members: int) -> None:
    """A first pass over the tar headers (nothing written): the member cap and the declared
    sizes fail before any member is extracted, as a zip's central directory does."""
    declared = 0
    with tarfile.open(ex.archive, mode="r|*") as tf:
        for count, member in enumerate(tf, 1):
            if count > max_members:
                raise ex.fail(member.name, f"archive has more than {max_members} members")
            if member.isreg():
                declared += member.size
                if declared > ex.budget:
                    raise ex.fail(member.name, f"declared sizes exceed {ex.budget} bytes")


def _extract_tar(ex: _Extractor, max_members: int) -> None:
    """Extract a tar(.gz) archive: the caps first (headers only), then one streaming pass that
    checks each header before its data."""
    _check_tar_caps(ex, max_members)
    declared = 0
    count = 0
    with tarfile.open(ex.archive, mode="r|*") as tf:
        for member in tf:
            count += 1
            name = member.name
            if count > max_members:  # the archive grew since the first pass
                raise ex.fail(name, f"archive has more than {max_members} members")
            if is_junk_member(name.replace("\\", "/")):
                continue
            parts = _safe_parts(name)
            if parts is None:
                raise ex.fail(name, "absolute or '..' path refused")
            if member.issym():
                raise ex.fail(name, "symlink members are refused")
            if member.islnk():
                raise ex.fail(name, "hard link members are refused")
            if member.ischr() or member.isblk() or member.isfifo():
                raise ex.fail(name, "device/fifo members are refused")
            if not (member.isreg() or member.isdir()) or member.issparse():
                raise ex.fail(name, "unsupported member type")
            if not parts:
                continue
            path = ex.target(name, parts)
            if member.isdir():
                ex.mkdir(path)
                continue
            declared += member.size
            if declared > ex.budget:
                raise ex.fail(name, f"declared sizes exceed {ex.budget} bytes")
            src = tf.extractfile(member)
            if src is None:
                raise ex.fail(name, "unreadable member")
            try:
                ex.write(name, path, src)
            except IngestError:
                raise
            except (tarfile.TarError, OSError, EOFError) as e:
                raise ex.fail(name, f"cannot extract: {e}") from e


def safe_extract(archive: Path, dest: Path, *, max_total_bytes: int, max_members: int) -> None:
    """Extract a .zip/.tar/.tar.gz/.tgz into dest, refusing unsafe members and oversize content."""
    archive = Path(archive)
    lower = archive.name.lower()
    if lower.endswith(ZIP_SUFFIXES):
        extract = _extract_zip
    elif lower.endswith(TAR_SUFFIXES):
        extract = _extract_tar
    else:
        raise IngestError(f"{archive.name}: unsupported archive type (want .zip .tar .tar.gz .tgz)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ex = _Extractor(archive, dest, max_total_bytes)
    try:
        extract(ex, max_members)
    except IngestError:
        ex.cleanup()
        raise
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as e:
        ex.cleanup()
        raise IngestError(one_line(f"{archive.name}: corrupt or unreadable archive: {e}")) from e
    except BaseException:
        ex.cleanup()
        raise
