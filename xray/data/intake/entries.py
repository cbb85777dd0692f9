"""What the intake modules share: their error type and the names never read."""

from __future__ import annotations

import stat

from xray.core.errors import InputError

JUNK_DIRS = frozenset({"__macosx"})
"""Folder names (lower case) skipped everywhere: macOS resource-fork junk."""


class IngestError(InputError):
    """Bad archive, layout or parameter; the message is one line naming the culprit."""


def shown(text: str) -> str:
    """A file name fit to print and to write as UTF-8: undecodable bytes as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (decoded by the OS as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_hidden(name: str) -> bool:
    """True for dot-files/folders (.DS_Store, ._*, .git) and macOS junk folders."""
    return name.startswith(".") or name.lower() in JUNK_DIRS


def is_junk_member(name: str) -> bool:
    """True for macOS junk archive members (__MACOSX/ folders, AppleDouble '._*' files)."""
    parts = [p for p in name.split("/") if p]
    return any(p.lower() in JUNK_DIRS for p in parts) or bool(parts and parts[-1].startswith("._"))


SPECIAL_KINDS = (
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "device"),
    (stat.S_ISBLK, "device"),
    (stat.S_ISDIR, "folder"),
)


def file_kind(mode: int) -> str:
    """'file' for a regular file, else what it is: fifo, socket, device, folder or special."""
    if stat.S_ISREG(mode):
        return "file"
    return next((kind for test, kind in SPECIAL_KINDS if test(mode)), "special")
