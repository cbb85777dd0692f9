"""Dataset layout discovery: which files of a source are labelled images, by the intake policy.

Every entry under the source gets one answer (docs/data-intake.md): a folder (real, or a
link to a folder inside the source) is walked; a regular file (or a link to one inside the
source) in a class folder is an image candidate; anything else there is skipped with a
reason (`Skipped`, listed in reports/quarantine.csv) without being opened: FIFOs, sockets,
devices, broken links, links to files outside the source, names that are not UTF-8, links
that loop, known non-image file types. A link to a folder outside the source is refused
(IngestError): nothing outside the source is ever read. Hidden entries (dot names,
__MACOSX) are not data: never opened, counted in `Layout.hidden`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xray.data.intake.entries import IngestError, file_kind, is_hidden, is_utf8, shown

log = logging.getLogger(__name__)

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
DIR, FILE = "dir", "file"
NOT_AN_IMAGE_TYPE = "not_an_image_type"
"""Skip reason of a known non-image file type; not counted as a broken image."""
OUTSIDE_DIR = "link_to_folder_outside_source"
LINK_LOOP = "link_loop"
NOT_COUNTED = frozenset({NOT_AN_IMAGE_TYPE, LINK_LOOP})
"""Skip reasons of entries that are not image candidates (not in data.max_bad_fraction)."""


@dataclass(frozen=True)
class Found:
    """One candidate image file discovered under a source root."""

    path: Path
    rel: str
    split: str
    label: str


@dataclass(frozen=True)
class Skipped:
    """An entry of a class folder that is not read, and why (a quarantine.csv row)."""

    rel: str
    reason: str


@dataclass(frozen=True)
class Entry:
    """One directory entry as the policy sees it: `kind` is dir, file or a skip reason."""

    path: Path
    kind: str
    real: Path | None = None


@dataclass
class Layout:
    """What find_layout found: candidates, skipped entries, hidden entries not opened."""

    found: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    hidden: int = 0


def classify(path: Path, base: Path) -> Entry:
    """The policy's kind of one entry (lstat/stat only: nothing is opened)."""
    if not is_utf8(path.name):
        return Entry(path, "name_not_utf8")
    try:
        st = os.lstat(path)
    except OSError:
        return Entry(path, "unreadable")
    real = path
    if stat.S_ISLNK(st.st_mode):
        try:
            real = path.resolve(strict=True)
            st = os.stat(real)
        except (OSError, RuntimeError):
            return Entry(path, "broken_link")
        if not real.is_relative_to(base):
            return Entry(path, OUTSIDE_DIR if stat.S_ISDIR(st.st_mode) else "link_outside_source")
    kind = file_kind(st.st_mode)
    return Entry(path, DIR if kind == "folder" else kind, real)


class Walker:
    """Lists the folders of one source root by the intake policy; counts hidden entries."""

    def __init__(self, base: Path, name: str):
        self.base = base
        self.name = name
        self.hidden = 0

    def rel(self, path: Path) -> str:
        """Path relative to the root, printable and UTF-8 safe."""
        return shown(path.relative_to(self.base).as_posix()) or "."

    def listdir(self, folder: Path, ignore: frozenset[str] = frozenset()) -> list[Entry]:
        """Visible, non-ignored entries of a folder, sorted by name; refuses outside folders."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            raise IngestError(f"{self.name}: {self.rel(folder)}: cannot list ({e.strerror})") from e
        out = []
        for name in names:
            if is_hidden(name):
                self.hidden += 1
                continue
            if name.lower() in ignore:
                continue
            entry = classify(folder / name, self.base)
            if entry.kind == OUTSIDE_DIR:
                raise IngestError(
                    f"{self.name}: {self.rel(entry.path)} is a link to a folder outside the "
                    "source; nothing outside it is read (copy the folder in, or point "
                    "data.source at it)"
                )
            out.append(entry)
        return out

    def walk(self, folder: Path, seen: tuple[Path, ...] = ()) -> Iterator[Entry]:
        """Every entry under folder, depth first (files before subfolders); loops skipped."""
        real = folder.resolve()
        entries = self.listdir(folder)
        dirs = [e for e in entries if e.kind == DIR]
        yield from (e for e in entries if e.kind != DIR)
        for d in dirs:
            if d.real in (*seen, real):
                yield Entry(d.path, LINK_LOOP)
            else:
                yield d
                yield from self.walk(d.path, (*seen, real))


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


@dataclass
class _Root:
    """A dataset copy: a folder holding split folders, or class folders directly."""

    path: Path
    split_dirs: dict[Path, str]  # split folder -> split; empty for a flat root
    layout: Layout | None = None
    error: IngestError | None = None


def _scan_class(walker: Walker, cdir: Path, split: str, label: str, out: Layout) -> None:
    """Sort the entries under one class folder into candidates and skipped entries."""
    for e in walker.walk(cdir):
        if e.kind == DIR:
            continue
        rel = walker.rel(e.path)
        if e.kind != FILE:
            out.skipped.append(Skipped(rel, e.kind))
        elif e.path.suffix.lower() in NON_IMAGE_SUFFIXES:
            out.skipped.append(Skipped(rel, NOT_AN_IMAGE_TYPE))
        else:
            out.found.append(Found(e.path, rel, split, label))


def _scan_root(root: _Root, walker: Walker, lookup: dict[str, str], ignore: frozenset[str]) -> None:
    """Collect the entries of one dataset copy, or record the layout error it hits."""
    groups = root.split_dirs.items() if root.split_dirs else [(root.path, FLAT_SPLIT)]
    layout = Layout()
    try:
        for split_dir, split in groups:
            for e in walker.listdir(split_dir, ignore):
                if e.kind != DIR:
                    continue
                label = lookup.get(e.path.name.lower())
                if label is None:
                    raise IngestError(
                        f"unknown class folder {walker.rel(e.path)!r} (add it to class_map or "
                        "ignore)"
                    )
                _scan_class(walker, e.path, split, label, layout)
    except IngestError as e:
        root.error = e
    root.layout = layout


def _dataset_roots(walker: Walker, lookup: dict[str, str], ignored: frozenset[str]) -> list[_Root]:
    """Every folder that looks like a dataset copy (split folders of classes, or classes)."""
    class_kids: dict[Path, list[Path]] = {}
    split_kids: dict[Path, list[Path]] = {}
    stack: list[tuple[Path, tuple[Path, ...]]] = [(walker.base, ())]
    while stack:
        d, seen = stack.pop()
        real = d.resolve()
        keep = [e for e in walker.listdir(d, ignored) if e.kind == DIR and e.real not in seen]
        class_kids[d] = [e.path for e in keep if e.path.name.lower() in lookup]
        split_kids[d] = [e.path for e in keep if e.path.name.lower() in SPLIT_ALIASES]
        for e in reversed(keep):
            if e.path.name.lower() not in lookup and e.real != real:  # never descend into classes
                stack.append((e.path, (*seen, real)))

    roots: list[_Root] = []
    split_roots: set[Path] = set()
    for d in sorted(class_kids, key=lambda p: (len(p.parts), str(p))):
        if any(class_kids.get(s) for s in split_kids[d]):
            if class_kids[d]:
                raise IngestError(f"{walker.rel(d)!r}: mixed layout, both split and class folders")
            # every split folder is scanned, so e.g. test/ holding only COVID/ still errors
            roots.append(_Root(d, {s: SPLIT_ALIASES[s.name.lower()] for s in split_kids[d]}))
            split_roots.add(d)
        elif class_kids[d] and not (d.name.lower() in SPLIT_ALIASES and d.parent in split_roots):
            roots.append(_Root(d, {}))
    return roots


def find_layout(
    root: Path,
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
    ignore: Sequence[str] = (),
    name: str | None = None,
) -> Layout:
    """Candidates and skipped entries under root in any supported layout, one copy only.

    `name` is how the source is named in errors (default: root), e.g. an archive's name
    when root is the temporary folder it was extracted to.
    """
    shown_name = shown(name if name is not None else str(root))
    base = Path(root).resolve()
    if not base.is_dir():
        raise IngestError(f"{shown_name}: not a directory")
    lookup = _class_lookup(classes, class_map)
    ignored = frozenset(n.lower() for n in ignore)
    walker = Walker(base, shown_name)
    roots = _dataset_roots(walker, lookup, ignored)
    if not roots:
        raise IngestError(
            f"{shown_name}: no class folders named like {sorted(set(lookup.values()))}"
        )

    heads: list[list[_Root]] = []  # groups of nested copies of the same dataset
    for r in roots:
        for group in heads:
            if r.path.is_relative_to(group[0].path):
                group.append(r)
                break
        else:
            heads.append([r])
    if len(heads) > 1:
        names = ", ".join(repr(walker.rel(g[0].path)) for g in heads)
        raise IngestError(
            f"several datasets found under {shown_name}: {names}; choose one with ignore"
        )

    group = heads[0]
    walker.hidden = 0  # count those of the class folders only
    for r in group:
        _scan_root(r, walker, lookup, ignored)
    best = max(group, key=lambda r: (len(r.layout.found if r.layout else []), -len(r.path.parts)))
    for r in group:
        if r is not best:
            log.warning("skipping duplicate dataset copy %s (using %s)", r.path, best.path)
    if best.error is not None:
        raise best.error
    layout = best.layout or Layout()
    layout.found.sort(key=lambda f: (f.split, f.label, f.rel))
    layout.skipped.sort(key=lambda s: s.rel)
    layout.hidden = walker.hidden
    return layout


def find_images(
    root: Path,
    classes: Sequence[str],
    *,
    class_map: Mapping[str, str] | None = None,
    ignore: Sequence[str] = (),
) -> list[Found]:
    """Labelled candidate images under root (find_layout without the skipped entries)."""
    return find_layout(root, classes, class_map=class_map, ignore=ignore).found
