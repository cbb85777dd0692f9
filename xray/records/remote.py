"""`dvc push` of a run's data and models, to a remote found through DVC's config
(xray/core/dvc_private.py).

`resolve_remote` takes a configured name, or a folder/URL, reused when a remote has that URL,
else added to .dvc/config.local as `xray-<hash>`; the default remote is never changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from xray.core.dvc_private import DvcError, add_local_remote, remote_config
from xray.core.errors import WorkError
from xray.core.io import write_json
from xray.records.verify import cached_objects

REMOTE_NAME = "xray"  # folders/URLs not yet configured: remote `xray-<hash>`
DVC = (sys.executable, "-m", "dvc")
PUSH_TIMEOUT_S = 3600
PUSHED = Path(".xray") / "pushed.json"
"""remote URL -> sha256 of the dvc.lock last pushed there (cloud remotes: skip a no-op push)."""


class RemoteError(WorkError):
    """No usable DVC remote, or `dvc push` failed; the message is one line."""


def configured_remotes(root: Path) -> tuple[dict[str, str], str | None]:
    """The DVC remotes of root (name -> URL, local paths absolute) and the default's name."""
    try:
        return remote_config(root)
    except DvcError as e:
        raise RemoteError(f"{root}: cannot read the DVC config ({e})") from None


def remote_url(root: Path, remote: str) -> str:
    """A folder (relative to root, `~` expanded) made absolute; a URL (`scheme://`) as given."""
    if re.match(r"\w+://", remote):
        return remote
    return str((root / Path(remote).expanduser()).resolve())


def derived_remote_name(url: str) -> str:
    """The remote name given to a folder or URL that no configured remote names: `xray-<hash>`."""
    return f"{REMOTE_NAME}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def resolve_remote(root: Path, remote: str | None) -> str:
    """The DVC remote name to push to: `remote` as a configured name, folder or URL, else default.

    A folder or URL that no configured remote has is added to .dvc/config.local as
    `xray-<hash>` (the default remote is left as it is).
    """
    remotes, default = configured_remotes(root)
    if not remote:
        if not default:
            raise RemoteError(
                "dvc push: no DVC remote configured (run `dvc remote add -d NAME PATH` "
                "or set the deployment's `remote` parameter)"
            )
        return default
    if remote in remotes:
        return remote
    bare = "/" not in remote and not re.match(r"\w+://|~", remote)
    if bare and not (root / remote).is_dir():
        raise RemoteError(f"dvc push: no remote or folder named {remote!r} (see `dvc remote list`)")
    url = remote_url(root, remote)
    same = sorted(n for n, u in remotes.items() if u.rstrip("/") == url.rstrip("/"))
    if same:
        return default if default in same else same[0]
    name = derived_remote_name(url)
    try:
        add_local_remote(root, name, url)
    except DvcError as e:
        raise RemoteError(f"dvc remote add {name}: {e}") from None
    return name


def _has_everything(root: Path, url: str) -> bool:
    """Whether the remote at url holds every cache object dvc.lock needs: for a local folder,
    each object looked up (DVC 3 layout, files/md5/ab/cdef...); for other remotes, whether this
    workspace pushed this very dvc.lock to it before (PUSHED: a listing would cost more than
    the push it saves)."""
    if re.match(r"\w+://", url):
        return _pushed(root).get(url) == _lock_digest(root)
    try:
        objects = cached_objects(root)
    except (OSError, ValueError, WorkError):
        return False
    store = Path(url) / "files" / "md5"
    return bool(objects) and all((store / o[:2] / o[2:]).is_file() for o in objects)


def _lock_digest(root: Path) -> str:
    """sha256 of dvc.lock (empty when there is none)."""
    lock = root / "dvc.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else ""


def _pushed(root: Path) -> dict[str, str]:
    """remote URL -> sha256 of the dvc.lock last pushed to it from this workspace."""
    try:
        data = json.loads((root / PUSHED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dvc_push(root: Path, remote: str | None) -> dict[str, Any]:
    """Push the cache to `remote`: a remote name, URL or folder (relative to root), or default.

    Skipped when the remote already has everything dvc.lock needs (a run that changed nothing).
    """
    name = resolve_remote(root, remote)
    remotes, _ = configured_remotes(root)
    url = remotes.get(name, "")
    if url and _has_everything(root, url):
        return {"remote": name, "output": "skipped: the remote has every object", "skipped": True}
    r = subprocess.run(
        [*DVC, "push", "-r", name],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=PUSH_TIMEOUT_S,
    )
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        last = out.splitlines()[-1] if out else f"exit {r.returncode}"
        raise RemoteError(f"dvc push: {last}")
    if url:
        write_json(root / PUSHED, _pushed(root) | {url: _lock_digest(root)})
    return {"remote": name, "output": out.splitlines()[-1] if out else "", "skipped": False}
