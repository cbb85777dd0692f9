"""After the stages: a durable git record per model (commit on a record branch, GTO tags).

The record is a commit on a branch (default `xray-records`) holding the workspace's tracked
code plus dvc.lock, params.yaml, the lineage reports and every `cache: false` output, built
with a private git index so neither the checked-out branch nor the working tree is touched
(a clone of the branch plus `dvc pull` is a workspace `dvc repro` finds up to date). Each new
hash of a dvc.yaml artifact (`base`, `finetuned`) gets a GTO tag `<artifact>@v<semver>` on it
(xray/records/registry.py, the only model registry; older `xray-model-vN` tags are migrated
into it first, xray/records/legacy_tags.py). A run whose recorded files equal the branch tip's
records nothing.

The other steps after the stages live beside it: param overrides (xray/runner/overrides.py),
`dvc push` (xray/records/remote.py) and the Prefect artifacts (xray/records/artifacts.py); git
itself is called through xray/core/git.py, DVC's pipeline index through
xray/core/dvc_private.py.

The run's stamps (when, which git commit and dirty files, which Prefect flow run, which host)
are not DVC outputs, so they never make dvc.lock differ between runs: they go into the
record commit as ``run.json`` (only on the record branch) and as message trailers, and into
the Prefect model card artifact.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xray.core.dvc_private import DvcError, pipeline_outs
from xray.core.errors import WorkError
from xray.core.git import GitError, succeeds
from xray.core.git import git as run_git
from xray.records.legacy_tags import migrate_legacy_tags
from xray.records.registry import RegistryError, artifact_hashes, register_models
from xray.reports.lineage import (
    LINEAGE_JSON,
    METRICS_JSON,
    MODEL_CARD,
    code_version,
    flow_run_id,
    read_lock,
)

DEFAULT_BRANCH = "xray-records"
RECORDED = (
    "dvc.lock",
    "params.yaml",
    "data/source.json",  # the source identity `xray probe` writes, where the project has it
    str(METRICS_JSON),
    str(LINEAGE_JSON),
    str(MODEL_CARD),
)
RUN_JSON = "run.json"  # the run stamps, in record commits only (xray/reports/lineage.py NOT_CODE)
FINETUNED_OUT = "models/finetuned.keras"
FALLBACK_IDENTITY = {"name": "xray pipeline", "email": "xray@localhost"}


class RecordError(WorkError):
    """Recording a run in git, or pushing to the DVC remote, failed."""


def git(root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run git in root and return its stripped stdout ('' on failure); `check`: RecordError."""
    try:
        return run_git(root, *args, env=env, check=check) or ""
    except GitError as e:
        raise RecordError(str(e)) from None


def _identity_env(root: Path) -> dict[str, str]:
    """The environment for commits: the repo's identity, or a fallback when none is set."""
    env = dict(os.environ)
    name = git(root, "config", "user.name", check=False) or FALLBACK_IDENTITY["name"]
    email = git(root, "config", "user.email", check=False) or FALLBACK_IDENTITY["email"]
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", name)
        env.setdefault(f"GIT_{role}_EMAIL", email)
    return env


def run_stamps(root: Path, run_id: str | None = None) -> dict[str, Any]:
    """This run's stamps: time, git commit (+ dirty code files), Prefect flow run id, host.

    `run_id` defaults to the flow run named in the environment (xray/reports/lineage.py
    FLOW_RUN_ENV).
    """
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "flow_run_id": run_id or flow_run_id(),
        "code": code_version(root),
        "host": socket.gethostname(),
    }


def _trailers(stamps: dict[str, Any]) -> str:
    """The run stamps as git trailers for the record commit message (run.json has them all)."""
    code = stamps.get("code") or {}
    values = {
        "Xray-Created": stamps.get("created"),
        "Xray-Flow-Run": stamps.get("flow_run_id") or "none",
        "Xray-Code-Commit": code.get("commit"),
        "Xray-Code-Dirty": str(code.get("dirty")).lower(),
        "Xray-Host": stamps.get("host"),
    }
    return "\n".join(f"{k}: {v}" for k, v in values.items())


def finetuned_md5(root: Path) -> str | None:
    """The finetuned model's hash in root/dvc.lock."""
    for stage in read_lock(root).values():
        for out in stage.get("outs") or []:
            if out.get("path") == FINETUNED_OUT:
                return out.get("md5")
    return None


def record_run(
    root: Path,
    branch: str = DEFAULT_BRANCH,
    flow_run_id: str | None = None,
    stamps: dict[str, Any] | None = None,
) -> dict:
    """Commit the run's lock, params and reports on `branch`; register new models. Idempotent.

    `tag` in the answer is the finetuned model's GTO tag, `registry` every artifact's.

    The commit also holds RUN_JSON, the run's stamps (`stamps`, else `run_stamps` now); they
    are left out of the comparison with the tip, so a run that changed nothing records nothing.
    """
    if not git(root, "rev-parse", "--is-inside-work-tree", check=False):
        raise RecordError(f"{root}: not a git repository (cannot record the run)")
    head = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    if not head:
        raise RecordError(f"{root}: the git repository has no commit yet")
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith(("-", "/")):
        raise RecordError(f"record branch: bad name {branch!r}")
    md5 = finetuned_md5(root)
    if md5 is None:
        raise RecordError(f"{root}/dvc.lock: no {FINETUNED_OUT} output (did finetune run?)")
    if stamps is None:
        stamps = run_stamps(root, flow_run_id)
    run_id = stamps.get("flow_run_id")
    env = _identity_env(root)
    ref = f"refs/heads/{branch}"
    tip = git(root, "rev-parse", "--verify", "-q", ref, check=False) or None
    recorded = dict.fromkeys([*RECORDED, *uncached_outputs(root)])
    files = [f for f in recorded if (root / f).exists()] + _dvc_gitignores(root)
    with tempfile.TemporaryDirectory() as tmp:
        env_idx = env | {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(root, "read-tree", head, env=env_idx)
        git(root, "add", "-u", env=env_idx)  # the code as it ran, dirty or not
        git(root, "add", "-f", "--", *files, env=env_idx)
        stamps_file = Path(tmp) / RUN_JSON
        stamps_text = json.dumps(stamps, indent=2, sort_keys=True) + "\n"
        stamps_file.write_text(stamps_text)
        blob = git(root, "hash-object", "-w", "--", str(stamps_file))
        git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{RUN_JSON}", env=env_idx)
        tree = git(root, "write-tree", env=env_idx)
    if tip and all(_blob(root, tree, f) == _blob(root, tip, f) for f in files):
        registry = _register(root, tip, md5, env)  # tags a run stopped before them left out
        return {
            "recorded": False,
            "branch": branch,
            "commit": tip,
            "tag": registry.get("finetuned"),
            "registry": registry,
        }
    parents = [tip] if tip else []
    if not tip or not _is_ancestor(root, head, tip):
        parents.append(head)
    run = f" (flow run {run_id})" if run_id else ""
    message = f"xray: record model {md5[:12]}{run}\n\n{_trailers(stamps)}"
    args = ["commit-tree", tree, "-m", message]
    for p in parents:
        args += ["-p", p]
    commit = git(root, *args, env=env)
    git(root, "update-ref", ref, commit, tip or "0" * 40, env=env)
    if git(root, "symbolic-ref", "-q", "HEAD", check=False) == ref:
        (root / RUN_JSON).write_text(stamps_text)  # so the checkout matches the record
        git(root, "reset", "-q", env=env)  # the checked-out branch moved: refresh its index
    registry = _register(root, commit, md5, env)
    return {
        "recorded": True,
        "branch": branch,
        "commit": commit,
        "tag": registry.get("finetuned"),
        "registry": registry,
    }


def _register(root: Path, commit: str, md5: str, env: dict[str, str]) -> dict[str, str]:
    """GTO tags (`<artifact>@v<semver>`) for the models at commit that have none yet.

    The dvc.yaml artifacts in the commit's dvc.lock, and `finetuned` (hash md5) always, even
    where dvc.yaml declares no such artifact. Older `xray-model-vN` tags are migrated first
    (once: the migration is idempotent), so their models keep the lower versions.
    """
    name, email = env["GIT_COMMITTER_NAME"], env["GIT_COMMITTER_EMAIL"]
    try:
        migrate_legacy_tags(root, name, email)
        hashes = {"finetuned": md5, **artifact_hashes(root, commit)}
        return register_models(root, commit, name, email, hashes)
    except RegistryError as e:
        raise RecordError(str(e)) from None


def uncached_outputs(root: Path) -> list[str]:
    """The pipeline's `cache: false` outputs (in git, not the DVC remote), from DVC's index."""
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return []
    base = root.resolve()
    try:
        paths = [path for path, cached in pipeline_outs(base) if not cached]
    except DvcError as e:
        raise RecordError(f"{root}/dvc.yaml: cannot read the pipeline ({e})") from None
    return sorted({p.relative_to(base).as_posix() for p in paths if p.is_relative_to(base)})


def _dvc_gitignores(root: Path) -> list[str]:
    """The .gitignore files DVC wrote for its outputs (so a checkout of the record is clean)."""
    listed = git(root, "ls-files", "--others", "--exclude-standard", "--", "*.gitignore")
    return [f for f in listed.splitlines() if f.endswith(".gitignore")]


def _blob(root: Path, treeish: str, path: str) -> str:
    """The blob id of path in a tree or commit ('' when absent)."""
    return git(root, "rev-parse", "--verify", "-q", f"{treeish}:{path}", check=False)


def _is_ancestor(root: Path, a: str, b: str) -> bool:
    """True when commit a is an ancestor of (or equal to) b."""
    return succeeds(root, "merge-base", "--is-ancestor", a, b)
