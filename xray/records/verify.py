"""`xray verify`: re-hash every tracked output and the DVC cache object behind it.

The cache is linked into the workspace (.dvc/config: hardlink, then symlink): an output and
its cache object are one file on disk, so one in-place edit of an output (as root, which
ignores the read-only bit) changes the cache object too, and `dvc status`, which trusts its
own hash records while size and mtime look unchanged, can stay clean. The project's stages
never edit an output in place (each writes a new file and renames it), so only a hand edit or
a fault does it. This check finds it: every output of dvc.lock is hashed again and compared
with the lock, and every cache object with the md5 that names it. A file and its linked cache
object are hashed once. docs/operations.md has the trade-off against a copying cache, measured.

`--record` and `--push` run it first (flows/pipeline.py): nothing poisoned is recorded or
pushed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xray.core.dvc_private import cache_files_dir, pipeline_outs, tree_md5
from xray.core.errors import WorkError
from xray.core.hashing import file_md5
from xray.core.io import write_json
from xray.reports.lineage import read_lock

HASH_THREADS = 2  # hashlib releases the GIL: two files hash at once on two cores
SHOWN = 5  # problems named in the error line (all are printed, one per line)
MEMO = Path(".xray") / "verified.json"
"""md5 by file identity from the last verify of a run (`remember`): unchanged files are not
read again, so a run where nothing changed verifies in a fraction of a second."""


@dataclass(frozen=True)
class Check:
    """One file to hash: the workspace file and its cache object, both named by `md5`."""

    path: str  # as dvc.lock names it (a folder's entries: folder/relpath)
    md5: str
    workspace: Path
    cache: Path | None  # None: a `cache: false` output (no cache object)


@dataclass(frozen=True)
class TreeCheck:
    """A `cache: false` folder: its files hashed into the md5 DVC records for a folder."""

    path: str
    md5: str  # with .dir
    workspace: Path


class VerifyError(WorkError):
    """A tracked output or cache object differs from its hash; the message names the first."""


def _object(cache: Path, md5: str) -> Path:
    """The cache object of an md5 (DVC 3 layout: files/md5/ab/cdef...)."""
    return cache / md5[:2] / md5[2:]


def _files(folder: Path) -> list[str]:
    """Relative paths of the files under folder."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _lock_outs(root: Path) -> tuple[Path, list[tuple[str, str, bool]]]:
    """The cache folder, and every output of dvc.lock: (path, md5, whether DVC caches it)."""
    cache = cache_files_dir(root)
    cached = {path.resolve(): use for path, use in pipeline_outs(root)}
    outs = [
        (
            str(out["path"]),
            str(out.get("md5") or ""),
            cached.get((root / out["path"]).resolve(), True),
        )
        for stage in read_lock(root).values()
        for out in stage.get("outs") or []
    ]
    return cache, outs


def _checks(root: Path) -> Iterator[Check | TreeCheck | str]:
    """Every file dvc.lock tracks, or a problem found while listing them (a line)."""
    cache, outs = _lock_outs(root)
    for rel, md5, use_cache in outs:
        where = root / rel
        if not md5.endswith(".dir"):
            yield Check(rel, md5, where, _object(cache, md5) if use_cache else None)
            continue
        if not use_cache:
            yield TreeCheck(rel, md5, where)
            continue
        listing = _object(cache, md5)
        if not listing.is_file():
            yield f"{rel}: the cache has no listing {md5} (dvc pull, or rerun its stage)"
            continue
        if file_md5(listing) != md5.removesuffix(".dir"):
            yield f"{rel}: cache listing {listing} does not match its name (poisoned)"
            continue
        entries = json.loads(listing.read_text())
        names = {e["relpath"] for e in entries}
        for e in entries:
            yield Check(
                f"{rel}/{e['relpath']}",
                e["md5"],
                where / e["relpath"],
                _object(cache, e["md5"]),
            )
        for name in _files(where) if where.is_dir() else []:
            if name not in names:
                yield f"{rel}/{name}: in the workspace, not in dvc.lock (added by hand?)"


def cached_objects(root: Path) -> set[str]:
    """Every cache object (md5, `.dir` listings included) that dvc.lock's cached outputs need,
    as a remote must hold them; a listing missing from the local cache: ValueError."""
    cache, outs = _lock_outs(root)
    found: set[str] = set()
    for rel, md5, use_cache in outs:
        if not md5 or not use_cache:
            continue
        found.add(md5)
        if md5.endswith(".dir"):
            listing = _object(cache, md5)
            if not listing.is_file():
                raise ValueError(f"{rel}: no cache listing {md5}")
            found |= {e["md5"] for e in json.loads(listing.read_text())}
    return found


def _key(path: Path) -> tuple[int, int, int, int, int]:
    """Identity of a file's content on disk: a hardlinked output and its cache object share it,
    and any write changes it (st_ctime cannot be set back by hand, unlike st_mtime)."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _load_memo(root: Path) -> dict[tuple[int, ...], str]:
    """The md5s the last verify computed, by file identity (empty when none or unreadable)."""
    try:
        rows = json.loads((root / MEMO).read_text())
        return {tuple(int(x) for x in key.split(":")): md5 for key, md5 in rows.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _save_memo(root: Path, memo: dict[tuple[int, ...], str]) -> None:
    """Keep the md5s for the next verify (a file not written since is not read again)."""
    write_json(root / MEMO, {":".join(map(str, key)): md5 for key, md5 in memo.items()})


def _problems(check: Check | TreeCheck, md5_of: Callable[[Path], str]) -> list[str]:
    """What differs for one file: the workspace copy against dvc.lock, the cache object against
    its name (a `cache: false` folder: its files against the folder's md5)."""
    if isinstance(check, TreeCheck):
        if not check.workspace.is_dir():
            return [f"{check.path}: missing in the workspace (rerun its stage)"]
        files = [(f, md5_of(check.workspace / f)) for f in _files(check.workspace)]
        if tree_md5(files) + ".dir" != check.md5:
            return [f"{check.path}: differs from dvc.lock (a file in it edited, added or gone)"]
        return []
    out = []
    if not check.workspace.is_file():
        out.append(f"{check.path}: missing in the workspace (dvc checkout)")
    elif md5_of(check.workspace) != check.md5:
        out.append(f"{check.path}: differs from dvc.lock (edited after its stage wrote it)")
    if check.cache is None:
        return out
    if not check.cache.is_file():
        out.append(f"{check.path}: no cache object {check.cache} (dvc commit, or dvc pull)")
    elif md5_of(check.cache) != check.md5:
        out.append(f"{check.path}: cache object {check.cache} does not match its md5 (poisoned)")
    return out


def verify(root: Path, remember: bool = False) -> dict[str, Any]:
    """Hash every tracked output and its cache object: {problems, files, bytes, seconds}.

    remember: reuse the md5 of a file whose identity (inode, size, mtime, ctime) is unchanged
    since the last verify that remembered (MEMO), as a run does before it pushes and records;
    `xray verify` hashes everything (a disk fault changes no ctime).
    """
    start = time.perf_counter()
    found = list(_checks(root))
    problems = [c for c in found if isinstance(c, str)]
    checks = [c for c in found if not isinstance(c, str)]
    known = _load_memo(root) if remember else {}
    memo: dict[tuple[int, ...], str] = {}
    lock = threading.Lock()

    def md5_of(path: Path) -> str:
        key = _key(path)
        with lock:
            md5 = memo.get(key) or known.get(key)
        if md5 is None:
            md5 = file_md5(path)
            hashed.append(key[2])
        with lock:
            memo[key] = md5
        return md5

    hashed: list[int] = []

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for lines in pool.map(lambda c: _problems(c, md5_of), checks):
            problems += lines
    files = sum(
        len(_files(c.workspace)) if isinstance(c, TreeCheck) and c.workspace.is_dir() else 1
        for c in checks
    )
    if remember:  # facts about file contents, whatever else differs
        _save_memo(root, memo)
    return {
        "problems": problems,
        "files": files,
        "bytes_hashed": sum(hashed),
        "seconds": round(time.perf_counter() - start, 2),
    }


def check_verified(root: Path, remember: bool = False) -> dict[str, Any]:
    """verify(), failing with one line when anything differs (before a record or a push)."""
    result = verify(root, remember)
    problems = result["problems"]
    if problems:
        shown = "; ".join(problems[:SHOWN])
        more = f" (and {len(problems) - SHOWN} more: xray verify)" if len(problems) > SHOWN else ""
        raise VerifyError(f"verify: {len(problems)} problem(s): {shown}{more}")
    return result


def mb(n: int) -> str:
    """Bytes as MB with one decimal."""
    return f"{n / 1e6:.1f} MB"


def summary(result: dict[str, Any]) -> str:
    """One line: what was hashed, how much, how long."""
    return (
        f"verified {result['files']} files and their cache objects "
        f"({mb(result['bytes_hashed'])} hashed in {result['seconds']} s)"
    )
