"""The one way the project calls git: stripped stdout, or None / GitError on failure.

Used by the lineage record (xray/reports/lineage.py), the run record and registry
(xray/records/record.py, xray/records/registry.py, xray/records/legacy_tags.py) and the audit
(xray/records/audit.py). No commit, no ref is changed here on its own: callers say which git
command to run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from xray.core.errors import WorkError

GIT_TIMEOUT_S = 120


class GitError(WorkError):
    """A git command failed; the message is one line: the command and git's last line."""


def git(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = GIT_TIMEOUT_S,
) -> str | None:
    """Run `git args` in root: its stripped stdout; on failure None, or GitError when `check`.

    A missing git executable or a command past `timeout` counts as a failure.
    """
    try:
        r = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise GitError(f"git {args[0] if args else ''}: {e}") from None
        return None
    if r.returncode == 0:
        return r.stdout.strip()
    if check:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise GitError(f"git {args[0]}: {msg[-1] if msg else f'exit {r.returncode}'}")
    return None


def succeeds(root: Path, *args: str) -> bool:
    """True when `git args` exits 0 in root (e.g. `merge-base --is-ancestor A B`)."""
    return git(root, *args) is not None
