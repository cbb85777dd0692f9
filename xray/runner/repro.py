"""DVC around the stages: which are stale (one `dvc status`), and a failed stage's outputs back.

DVC deletes a stage's outputs before it runs the stage and writes `dvc.lock` only when the
stage succeeds, so after a failure the lock still describes the previous outputs: `dvc
checkout STAGE` puts back those the cache has. `xray repro` (a thin wrapper over `dvc
repro`) and the Prefect flow (`flows/pipeline.py`) both do that after a failed stage.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from xray.core.errors import WorkError
from xray.core.process import CHILD_DIES_WITH_US, run_env
from xray.core.yaml_text import load_yaml

DVC = [sys.executable, "-m", "dvc"]
RESTORE_TIMEOUT_S = 3600  # a checkout of 53k images from the cache takes minutes on a slow disk
RUNNING_RE = re.compile(r"^Running stage '([^']+)'")
UNCACHED_KEPT = Path(".xray") / "uncached"
"""Where a running stage's `cache: false` outputs wait (per stage) until it succeeds."""
REPRO_STOP_GRACE_S = 30  # `xray repro` waits this long after a second signal before SIGKILL


class StatusError(WorkError):
    """`dvc status` could not say which stages are stale."""


def dvc_env() -> dict[str, str]:
    """This environment with this interpreter's bin folder first on PATH (for stage commands)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def error_text(line: str) -> str:
    """An error line without its `error:`/`ERROR:` prefix."""
    head, sep, rest = line.strip().partition(":")
    return rest.strip() if sep and head.lower() == "error" else line.strip()


def _norm(path: str) -> str:
    """A dvc.yaml path in one spelling: relative, no trailing slash."""
    return os.path.normpath(path).replace(os.sep, "/")


def _paths(entries: Iterable[Any]) -> list[str]:
    """The paths of dvc.yaml deps/outs entries (a string, or a one-key mapping with options)."""
    out = []
    for entry in entries or []:
        out.extend([entry] if isinstance(entry, str) else list(entry))
    return [_norm(p) for p in out]


def _overlaps(a: str, b: str) -> bool:
    """True when one path is the other or lies inside it (DVC's dep-on-out rule)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def stage_graph(root: Path) -> dict[str, list[str]]:
    """Each dvc.yaml stage, in file order, with the stages whose outputs it depends on."""
    spec = load_yaml((root / "dvc.yaml").read_text()) or {}
    stages = spec.get("stages") or {}
    outs = {
        name: _paths(s.get("outs", [])) + _paths(s.get("metrics", [])) + _paths(s.get("plots", []))
        for name, s in stages.items()
    }
    return {
        name: [
            up
            for up in stages
            if up != name
            and any(_overlaps(d, o) for d in _paths(s.get("deps", [])) for o in outs[up])
        ]
        for name, s in stages.items()
    }


def with_downstream(stale: Iterable[str], graph: dict[str, list[str]]) -> set[str]:
    """The stale stages plus every stage downstream of one (DVC sees those only later)."""
    closure = set(stale)
    changed = True
    while changed:
        grown = {s for s, ups in graph.items() if any(u in closure for u in ups)} - closure
        closure |= grown
        changed = bool(grown)
    return closure


def dvc_status(root: Path, stages: Iterable[str]) -> set[str]:
    """The `stages` that `dvc status` reports changed (one pass over the whole pipeline)."""
    from xray.core.dvc_private import DvcError, changed_stages

    try:
        return changed_stages(root) & set(stages)
    except (DvcError, OSError) as e:
        raise StatusError(f"dvc status: {e}") from None


def stale_stages(root: Path, selected: list[str]) -> tuple[list[str], set[str]]:
    """The selected stages to run, in graph order, and those `dvc status` itself reported."""
    reported = dvc_status(root, selected)
    closure = with_downstream(reported, stage_graph(root))
    return [s for s in selected if s in closure], reported


def lock_outs(root: Path, stage: str) -> list[str] | None:
    """The output paths dvc.lock records for `stage`; None when it has no entry."""
    try:
        lock = load_yaml((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    entry = (lock.get("stages") or {}).get(stage)
    if not isinstance(entry, dict):
        return None
    return [o["path"] for o in entry.get("outs") or [] if isinstance(o, dict) and "path" in o]


def uncached_outs(root: Path, stage: str) -> list[str]:
    """The `cache: false` outputs (outs, metrics, plots) dvc.yaml declares for `stage`."""
    try:
        spec = (load_yaml((root / "dvc.yaml").read_text()) or {})["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []
    found = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind) or []:
            if isinstance(entry, dict):
                found += [
                    p for p, o in entry.items() if isinstance(o, dict) and o.get("cache") is False
                ]
    return found


def _copy(src: Path, dest: Path) -> None:
    """Copy a file or folder to dest (replacing it), as new files (never links into a cache)."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)


def keep_uncached(root: Path, stages: Iterable[str]) -> None:
    """Copy the stages' `cache: false` outputs aside before they run: DVC deletes them first
    and its cache has no copy, so a failed stage would otherwise lose them."""
    for stage in stages:
        kept = root / UNCACHED_KEPT / stage
        shutil.rmtree(kept, ignore_errors=True)
        for rel in uncached_outs(root, stage):
            if (root / rel).exists():
                _copy(root / rel, kept / rel)


def drop_kept(root: Path, stages: Iterable[str]) -> None:
    """Forget the copies keep_uncached made (the stages succeeded)."""
    for stage in stages:
        shutil.rmtree(root / UNCACHED_KEPT / stage, ignore_errors=True)


def _put_back_uncached(root: Path, stage: str) -> list[str]:
    """The failed stage's `cache: false` outputs as they were before it ran; which came back."""
    kept = root / UNCACHED_KEPT / stage
    back = []
    for rel in uncached_outs(root, stage):
        if (kept / rel).exists():
            _copy(kept / rel, root / rel)
            back.append(rel)
    shutil.rmtree(kept, ignore_errors=True)
    return back


def restore_outputs(root: Path, stage: str, env: dict[str, str] | None = None) -> str:
    """Check out the failed stage's previous outputs as dvc.lock records them (and its
    `cache: false` outputs from the copies keep_uncached made); what happened."""
    back = _put_back_uncached(root, stage)
    outs = lock_outs(root, stage)
    if not outs:
        return "it had no previous outputs to restore (none in dvc.lock)"
    try:
        proc = subprocess.run(
            [*DVC, "checkout", "--force", stage],  # --force: drop the failed run's partial outputs
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=RESTORE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"restoring its previous outputs failed (dvc checkout {stage}): {e}"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        why = " ".join(lines[:4]) or f"exit {proc.returncode}"
        return f"restoring its previous outputs failed (dvc checkout {stage}): {why}"
    missing = [o for o in outs if not (root / o).exists() and o not in back]
    if missing:  # `cache: false` outputs not kept aside: DVC removed them, holds no copy
        return (
            f"its previous outputs were restored (dvc checkout {stage}) "
            f"except {', '.join(missing)} (not in the DVC cache)"
        )
    return f"its previous outputs were restored (dvc checkout {stage})"


def repro(root: Path, dvc_args: list[str]) -> int:
    """`dvc repro DVC_ARGS`, output passed through; a failed stage's previous outputs restored.

    Ctrl-C or SIGTERM goes to DVC (and the stage) once; a second one SIGKILLs them after
    REPRO_STOP_GRACE_S. Either way the stage that was running gets its outputs back.
    """
    stages = list(stage_graph(root)) if (root / "dvc.yaml").exists() else []
    keep_uncached(root, stages)  # any of them may run; their `cache: false` outputs are small
    try:
        return _repro(root, dvc_args)
    finally:
        drop_kept(root, stages)


def _repro(root: Path, dvc_args: list[str]) -> int:
    """repro() without the copies of the `cache: false` outputs."""
    with run_env(root) as run_vars:
        return _repro_in(root, dvc_args, run_vars)


def _repro_in(root: Path, dvc_args: list[str], run_vars: dict[str, str]) -> int:
    """_repro() with the run's temporary folder."""
    proc = subprocess.Popen(
        [*DVC, "repro", *dvc_args],
        cwd=root,
        env=dvc_env() | run_vars,
        preexec_fn=CHILD_DIES_WITH_US,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # the signals reach it once, from us
    )
    signals: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        """Pass the first signal on to DVC's process group; on the next, kill it."""
        signals.append(signum)
        with contextlib.suppress(ProcessLookupError):
            if len(signals) == 1:
                os.killpg(proc.pid, signum)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=REPRO_STOP_GRACE_S)
                os.killpg(proc.pid, signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    running: str | None = None
    first_error: str | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            match = RUNNING_RE.match(line)
            if match:
                running, first_error = match.group(1), None
            elif line.startswith("Updating lock file"):  # that stage succeeded
                running = None
            elif first_error is None and line.startswith(("error:", "ERROR:")):
                first_error = error_text(line)
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if rc == 0:
        return 0
    if running is None:  # DVC stopped before running any stage: nothing was removed
        return rc
    why = first_error or (f"stopped by {signal.Signals(signals[0]).name}" if signals else "")
    note = restore_outputs(root, running.rpartition(":")[2], dvc_env())
    print(f"error: stage {running} failed (exit {rc}): {why}; {note}", file=sys.stderr)
    return 130 if signals else rc
