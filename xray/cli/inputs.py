"""Images given on the command line: expand files, folders and zips; decode them as ingest does.

Shared by `xray predict` (xray/cli/predict.py) and `xray adapt` (xray/cli/adapt.py): a path is
an image file, a folder (its JPEG/PNG files, sorted) or a .zip (its JPEG/PNG members, as
`ARCHIVE.zip/MEMBER` paths); every image is decoded as the download stage's ingest does and
resized to the model's input size.
"""

from __future__ import annotations

import functools
import stat
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TextIO

import numpy as np

from xray.core.params import DataParams
from xray.data.intake.images import IMAGE_SUFFIXES, BadImage, load_image
from xray.models.dataset import resize

DEFAULTS = DataParams()  # decode exactly as ingest does: same pixel limit, same longest side


def _zip_images(archive: Path) -> list[str] | str:
    """The image members of a zip (sorted), or why none can be listed."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile) as e:
        return f"not a readable zip ({e})"
    return sorted(n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES)


def _unsafe_member(name: str) -> bool:
    """A member name that would read as another path (absolute, `..`, backslashes): never
    shown as `ARCHIVE.zip/NAME`, which would name a file outside the archive."""
    parts = PurePosixPath(name).parts
    return name.startswith("/") or "\\" in name or ".." in parts or not parts


def _special(path: Path) -> str | None:
    """Why a folder entry that is neither a folder nor a regular file is skipped, else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a broken link" if path.is_symlink() else "unreadable"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file ({kind}), not read"


def _folder_images(folder: Path) -> Iterator[tuple[Path, str | None]]:
    """The JPEG/PNG files under a folder (sorted), and each entry skipped, with why."""
    entries = sorted(folder.rglob("*"))
    found = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [(p, why) for p in entries if (why := _special(p)) is not None]
    if not found and not skipped:
        yield folder, "no JPEG/PNG images in this folder"
    yield from sorted([(p, None) for p in found] + skipped, key=lambda e: e[0])


def zip_member(path: Path) -> tuple[Path, str] | None:
    """(archive, member) when path names a file inside a .zip (`images.zip/NORMAL/a.png`)."""
    for parent in path.parents:
        if parent.suffix.lower() == ".zip" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


@functools.lru_cache(maxsize=4)
def _open_zip(archive: Path) -> zipfile.ZipFile:
    """An open zip, kept for the next member (predicting a zip reads every member in turn)."""
    return zipfile.ZipFile(archive)


def expand(paths: Sequence[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files as given, image files under folders and in .zip files (sorted); errors for missing.

    A zip's images come as `ARCHIVE.zip/MEMBER` paths (the corrupt stage's
    data/corrupted/<family>/<severity>.zip, say), which `prepare` reads from the archive.
    """
    for path in paths:
        path = Path(path)
        if path.suffix.lower() == ".zip" and path.is_file():
            members = _zip_images(path)
            if isinstance(members, str):
                yield path, members
            elif not members:
                yield path, "no JPEG/PNG images in this zip"
            else:
                for name in members:
                    if _unsafe_member(name):
                        yield path, f"member {name!r}: absolute or '..' name, not read"
                    else:
                        yield path / name, None
        elif path.is_dir():
            yield from _folder_images(path)
        elif path.exists():
            yield path, None
        else:
            yield path, "no such file or folder"


def prepare(path: Path, size: int) -> np.ndarray:
    """Decode any image as ingest does (grayscale, EXIF-oriented, shrunk), then resize.

    A path inside a .zip (as `expand` yields them) is read from the archive.
    """
    source: Path | bytes = path
    inside = zip_member(path) if not path.exists() else None
    if inside is not None:
        try:
            source = _open_zip(inside[0]).read(inside[1])
        except (KeyError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"not readable from {inside[0]} ({e})") from None
    try:
        gray = load_image(source, max_pixels=DEFAULTS.max_pixels, max_side=DEFAULTS.max_side)
    except BadImage as e:
        raise ValueError(f"not a usable image ({e.reason})") from None
    return resize(gray, size)


def read_images(
    paths: Sequence[Path], size: int, err: TextIO, level: str = "warning"
) -> tuple[list[Path], np.ndarray, int]:
    """Decode every image under the paths: (paths read, (N, size, size, 1) uint8, failures).

    Each unreadable file or empty/missing path is one line on `err`, `level: PATH: why`.
    """
    good: list[Path] = []
    arrays: list[np.ndarray] = []
    failed = 0
    for path, problem in expand(paths):
        if problem is None:
            try:
                arrays.append(prepare(path, size))
                good.append(path)
            except ValueError as e:
                problem = str(e)
        if problem is not None:
            failed += 1
            print(f"{level}: {path}: {problem}", file=err)
    images = np.stack(arrays)[..., None] if arrays else np.zeros((0, size, size, 1), np.uint8)
    return good, images.astype(np.uint8), failed
