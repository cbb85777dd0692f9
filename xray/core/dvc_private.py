"""Every use of DVC's private Python API, in one place (tests/test_dvc_private.py guards each).

DVC's public Python API is `dvc.api` (open, read, get_url, params_show, metrics_show,
DVCFileSystem, ...) plus the `dvc` command; neither lists which pipeline outputs are
`cache: false`, reads or writes the remote config, names the cache folder, or gives the md5
DVC records for a folder.
For those the project calls DVC internals, pinned by uv.lock. What is used, why, and the
public path to take if an upgrade breaks it:

- `dvc.repo.Repo(root).index.outs`, each `Output.fs_path` and `Output.use_cache`
  (`pipeline_outs`, for xray/records/record.py): the `cache: false` outputs a record commits.
  Fallback: read `outs:` from dvc.yaml (a documented format; this project's has no templating).
- `Repo(root).config["remote"]` / `["core"]["remote"]` (`remote_config`, for
  xray/records/remote.py): the remotes with local paths made absolute, and the default.
  Fallback: `dvc remote list` and `dvc remote default` (tab-separated name, URL).
- `Repo(root).cache.local.path` (`cache_files_dir`, for xray/records/verify.py): the folder of
  the md5-named cache objects (`cache.dir` honoured). Fallback: `dvc cache dir` plus
  `files/md5`.
- The md5 DVC records for a folder (`tree_md5`, for xray/records/verify.py): of the JSON list
  of its files' `{"md5", "relpath"}`, sorted, keys sorted (dvc_data's `Tree.as_bytes`), plus
  `.dir`. A `cache: false` folder has no listing in the cache to read it from.
  Fallback: `dvc status` names a modified folder (without the file).
- `Repo(root).config.edit("local")` (`add_local_remote`, for xray/records/remote.py): a remote
  added to .dvc/config.local. Fallback: `dvc remote add --local NAME URL`.
- `Repo(root).status()` (`changed_stages`, for xray/runner/repro.py): what `dvc status --json`
  prints, in this process. The command costs a Python start and DVC's import (~2 s here) and,
  given stage names, parses dvc.yaml and dvc.lock once per name (~0.4 s each); in-process, with
  no targets, a no-change run's check takes ~0.7 s. It runs inside `dvc.repo.lock_repo(repo)`
  (the lock DVC's own commands take), so the pipeline index it builds is still there to list
  the outputs for `pipeline_outs` (DVC drops it when its lock is released: a second build,
  ~0.4 s). Fallback: `dvc status --json` (no targets).

`one_repo(root)` opens one Repo for every helper above that runs inside it (a run's status,
verify, push check and record each opened their own: ~0.5 s apiece); `forget_repo(root)`
drops it after a stage ran (dvc.lock changed under it).

`dvc.exceptions.DvcException` (DVC's documented base error) becomes `DvcError`, one line.
Everything else in the project reaches DVC through the `dvc` command (xray/runner/repro.py,
`dvc push` in xray/records/remote.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xray.core.errors import WorkError
from xray.core.text import one_line


class DvcError(WorkError):
    """DVC could not read or change the project's pipeline or config; the message is one line."""


_SHARED: dict[Path, Any] = {}
"""Roots inside `one_repo`: their Repo once a helper opened it (None until then)."""
_OUTS: dict[Path, list[tuple[Path, bool]]] = {}
"""Roots inside `one_repo`: `pipeline_outs` as listed by the status check (until forgotten)."""


@contextmanager
def _repo(root: Path) -> Iterator[Any]:
    """DVC's Repo object of root (inside `one_repo`, the one it holds); a DvcException on entry
    or inside becomes DvcError."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    key = Path(root).resolve()
    try:
        if key not in _SHARED:
            with Repo(str(root)) as repo:
                yield repo
            return
        if _SHARED[key] is None:
            _SHARED[key] = Repo(str(root))
        yield _SHARED[key]
    except DvcException as e:
        raise DvcError(one_line(e)) from None


@contextmanager
def one_repo(root: Path) -> Iterator[None]:
    """Inside: the helpers of this module share one Repo of root (opened by the first of them).

    For checks that change nothing DVC reads (dvc.yaml, dvc.lock, .dvc/config) while it is
    open: a stage run in between needs a fresh one (its index would be stale).
    """
    key = Path(root).resolve()
    if key in _SHARED:  # nested: the outer one holds it
        yield
        return
    _SHARED[key] = None
    try:
        yield
    finally:
        repo = _SHARED.pop(key)
        _OUTS.pop(key, None)
        if repo is not None:
            repo.close()


def forget_repo(root: Path) -> None:
    """Inside `one_repo`: close the Repo held for root; the next helper opens a fresh one.

    For after a stage ran: it rewrote dvc.lock, and the held Repo's index is stale.
    """
    key = Path(root).resolve()
    _OUTS.pop(key, None)
    repo = _SHARED.get(key)
    if repo is not None:
        _SHARED[key] = None
        repo.close()


def changed_stages(root: Path) -> set[str]:
    """The stages `dvc status` reports changed (all of root's pipeline, one pass)."""
    from dvc.repo import lock_repo

    key = Path(root).resolve()
    with _repo(root) as repo, lock_repo(repo):
        report = repo.status()
        if key in _SHARED:  # inside one_repo: the outputs from the same index, for later
            _OUTS[key] = _outs(repo)
    return {str(name).rpartition(":")[2] for name in report}  # "sub/dvc.yaml:stage" -> "stage"


def _outs(repo: Any) -> list[tuple[Path, bool]]:
    return [(Path(o.fs_path), bool(o.use_cache)) for o in repo.index.outs]


def pipeline_outs(root: Path) -> list[tuple[Path, bool]]:
    """Every output of root's pipeline (dvc.yaml and .dvc files): (absolute path, use_cache)."""
    key = Path(root).resolve()
    if key in _OUTS:  # listed by the status check of this one_repo
        return list(_OUTS[key])
    with _repo(root) as repo:
        return _outs(repo)


def cache_files_dir(root: Path) -> Path:
    """The folder of root's DVC cache objects, named by md5 (`<cache.dir>/files/md5`)."""
    with _repo(root) as repo:
        return Path(repo.cache.local.path)


def tree_md5(files: list[tuple[str, str]]) -> str:
    """The md5 DVC records for a folder of (relpath, md5) files, without its `.dir` suffix."""
    ordered = sorted(files)  # by relpath, as a string
    listing = [{"md5": md5, "relpath": rel} for rel, md5 in ordered]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def remote_config(root: Path) -> tuple[dict[str, str], str | None]:
    """The DVC remotes of root (name -> URL, local paths absolute) and the default's name."""
    with _repo(root) as repo:
        config = repo.config
        remotes = {name: str(conf.get("url", "")) for name, conf in config["remote"].items()}
        return remotes, config["core"].get("remote")


def add_local_remote(root: Path, name: str, url: str) -> None:
    """Add remote `name` with `url` to root's .dvc/config.local (the default is not changed)."""
    with _repo(root) as repo, repo.config.edit("local") as conf:
        conf["remote"][name] = {"url": url}
