"""Safe archive extraction, dataset layout discovery, image decoding and patient ids."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Read/write block size for extraction and hashing."""
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
JUNK_DIRS = frozenset({"__macosx"})
"""Folder names (lower case) skipped everywhere: macOS resource-fork junk."""
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff"})
NON_IMAGE_SUFFIXES = frozenset(
    {
        ".txt",
        ".csv",
        ".tsv",
        ".json",
        ".md",
        ".rst",
        ".ini",
        ".db",
        ".xml",
        ".yaml",
        ".yml",
        ".html",
        ".htm",
        ".pdf",
        ".log",
        ".py",
        ".ipynb",
        ".zip",
        ".gz",
        ".tgz",
        ".tar",
        ".pkl",
    }
)
"""Known non-image extensions inside class folders; anything else is an image candidate."""
SPLIT_ALIASES: Mapping[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
"""Folder names (lower case) recognised as a source split, and the split they mean."""
FLAT_SPLIT = "train"
"""Split assigned to images found in a flat folder of class subfolders."""
PATIENT_PATTERN_KEY = "patient_pattern"
"""Name used for the custom patient regex in error messages (the params key)."""
SIXTEEN_BIT_MAX = 65535
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
KNOWN_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$"),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+(?:-\d+)?$"),
    re.compile(r"^(IM-\d+)-\d+(?:-\d+)?$"),
)
"""Kermany et al. file-name stems -> patient id (group 1)."""


class IngestError(Exception):
    """Bad archive, layout or parameter; the message is one line naming the culprit."""


class BadImage(Exception):
    """An image file that cannot be used; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Found:
    """One candidate image file discovered under a source root."""

    path: Path
    rel: str
    split: str
    label: str


# --------------------------------------------------------------------------- extraction


def _one_line(text: object) -> str:
    """Collapse any text to a single line."""
    return " ".join(str(text).split())


def _is_junk(name: str) -> bool:
    """True for macOS junk members (__MACOSX/ folders, AppleDouble '._*' files)."""
    parts = [p for p in name.split("/") if p]
    return any(p.lower() in JUNK_DIRS for p in parts) or bool(parts and parts[-1].startswith("._"))


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
        return IngestError(_one_line(f"{self.archive.name}: member {member!r}: {why}"))

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
            if _is_junk(info.filename.replace("\\", "/")):
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
            if _is_junk(info.filename.replace("\\", "/")):
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


def _extract_tar(ex: _Extractor, max_members: int) -> None:
    """Extract a tar(.gz) archive in one streaming pass, checking each header before its data."""
    declared = 0
    count = 0
    with tarfile.open(ex.archive, mode="r|*") as tf:
        for member in tf:
            count += 1
            name = member.name
            if count > max_members:
                raise ex.fail(name, f"archive has more than {max_members} members")
            if _is_junk(name.replace("\\", "/")):
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
        raise IngestError(_one_line(f"{archive.name}: corrupt or unreadable archive: {e}")) from e
    except BaseException:
        ex.cleanup()
        raise


# --------------------------------------------------------------------------- layout discovery


def _hidden(name: str) -> bool:
    """True for dot-files/folders (.DS_Store, ._*, .git) and macOS junk folders."""
    return name.startswith(".") or name.lower() in JUNK_DIRS


def _class_lookup(classes: Sequence[str], class_map: Mapping[str, str] | None) -> dict[str, str]:
    """Map lower-cased folder names to canonical class names, validating the parameters."""
    lookup: dict[str, str] = {}
    for c in classes:
        if c.lower() in lookup:
            raise IngestError(f"classes: {c!r} listed twice (names are case-insensitive)")
        lookup[c.lower()] = c
    for folder, cls in (class_map or {}).items():
        if cls not in classes:
            raise IngestError(f"class_map: {folder!r} maps to {cls!r}, which is not in classes")
        lookup[folder.lower()] = cls
    return lookup


def _subdirs(d: Path, ignore: frozenset[str]) -> list[Path]:
    """Visible, non-ignored, non-symlink subfolders of d, sorted by name."""
    out = []
    for e in sorted(os.scandir(d), key=lambda e: e.name):
        if e.is_dir(follow_symlinks=False) and not _hidden(e.name) and e.name.lower() not in ignore:
            out.append(Path(e.path))
    return out


def _candidate_files(folder: Path) -> Iterator[Path]:
    """Files under a class folder that may be images (hidden and known non-image files skipped)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name) or Path(name).suffix.lower() in NON_IMAGE_SUFFIXES:
                continue
            yield Path(dirpath) / name


@dataclass
class _Root:
    """A dataset copy: a folder holding split folders, or class folders directly."""

    path: Path
    split_dirs: dict[Path, str]  # split folder -> split; empty for a flat root
    found: list[Found] | None = None
    error: IngestError | None = None


def _scan_root(root: _Root, base: Path, lookup: dict[str, str], ignore: frozenset[str]) -> None:
    """Collect the images of one dataset copy, or record the layout error it hits."""
    groups = root.split_dirs.items() if root.split_dirs else [(root.path, FLAT_SPLIT)]
    found: list[Found] = []
    try:
        for split_dir, split in groups:
            for cdir in _subdirs(split_dir, ignore):
                label = lookup.get(cdir.name.lower())
                if label is None:
                    rel = cdir.relative_to(base).as_posix()
                    raise IngestError(
                        f"unknown class folder {rel!r} (add it to class_map or ignore)"
                    )
                for f in _candidate_files(cdir):
                    found.append(Found(f, f.relative_to(base).as_posix(), split, label))
    except IngestError as e:
        root.error = e
    root.found = found


def find_images(
    root: Path,
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
    ignore: Sequence[str] = (),
) -> list[Found]:
    """Find labelled candidate images under root in any supported layout, one copy only."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise IngestError(f"{root}: not a directory")
    lookup = _class_lookup(classes, class_map)
    ignored = frozenset(n.lower() for n in ignore)

    class_kids: dict[Path, list[Path]] = {}
    split_kids: dict[Path, list[Path]] = {}
    for dirpath, dirnames, _ in os.walk(base):
        d = Path(dirpath)
        keep = sorted(n for n in dirnames if not _hidden(n) and n.lower() not in ignored)
        class_kids[d] = [d / n for n in keep if n.lower() in lookup]
        split_kids[d] = [d / n for n in keep if n.lower() in SPLIT_ALIASES]
        dirnames[:] = [n for n in keep if n.lower() not in lookup]  # never descend into classes

    roots: list[_Root] = []
    split_roots: set[Path] = set()
    for d in sorted(class_kids, key=lambda p: (len(p.parts), str(p))):
        if any(class_kids.get(s) for s in split_kids[d]):
            if class_kids[d]:
                rel = d.relative_to(base).as_posix() or "."
                raise IngestError(f"{rel!r}: mixed layout, both split and class folders")
            # every split folder is scanned, so e.g. test/ holding only COVID/ still errors
            roots.append(_Root(d, {s: SPLIT_ALIASES[s.name.lower()] for s in split_kids[d]}))
            split_roots.add(d)
        elif class_kids[d] and not (d.name.lower() in SPLIT_ALIASES and d.parent in split_roots):
            roots.append(_Root(d, {}))
    if not roots:
        raise IngestError(f"{root}: no class folders named like {sorted(lookup.values())}")

    heads: list[list[_Root]] = []  # groups of nested copies of the same dataset
    for r in roots:
        for group in heads:
            if r.path.is_relative_to(group[0].path):
                group.append(r)
                break
        else:
            heads.append([r])
    if len(heads) > 1:
        names = ", ".join(repr(g[0].path.relative_to(base).as_posix() or ".") for g in heads)
        raise IngestError(f"several datasets found under {root}: {names}; choose one with ignore")

    group = heads[0]
    for r in group:
        _scan_root(r, base, lookup, ignored)
    best = max(group, key=lambda r: (len(r.found or []), -len(r.path.parts)))
    for r in group:
        if r is not best:
            log.warning("skipping duplicate dataset copy %s (using %s)", r.path, best.path)
    if best.error is not None:
        raise best.error
    return sorted(best.found or [], key=lambda f: (f.split, f.label, f.rel))


# --------------------------------------------------------------------------- images


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


def load_image(source: Path | bytes, *, max_pixels: int, max_side: int | None = None) -> np.ndarray:
    """Decode an image (a file, or its bytes) once to 2-D uint8 grayscale, EXIF-oriented."""
    fh: IO[bytes]
    if isinstance(source, bytes):
        if not source:
            raise BadImage("empty")
        fh = io.BytesIO(source)
    else:
        path = Path(source)
        try:
            if path.stat().st_size == 0:
                raise BadImage("empty")
            fh = path.open("rb")
        except OSError as e:
            raise BadImage("unreadable") from e
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


# --------------------------------------------------------------------------- ids and hashes


@lru_cache(maxsize=32)
def _compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    """Compile and validate a custom patient regex."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        msg = f"{PATIENT_PATTERN_KEY}: invalid regex {pattern!r}: {e}"
        raise IngestError(_one_line(msg)) from e
    if "patient" not in rx.groupindex and rx.groups < 1:
        msg = f"{PATIENT_PATTERN_KEY}: regex {pattern!r} needs a group or (?P<patient>...)"
        raise IngestError(msg)
    return rx


def patient_id(filename: str, pattern: str | None = None) -> str | None:
    """Patient id from an image file name (Kermany scheme, or a custom regex); None if no match."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    if pattern is not None:
        rx = _compile_patient_pattern(pattern)
        m = rx.search(name)
        if m is None:
            return None
        pid = m.group("patient") if "patient" in rx.groupindex else m.group(1)
        return pid or None
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for rx in KNOWN_PATIENT_PATTERNS:
        m = rx.match(stem)
        if m:
            return m.group(1)
    return None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()
