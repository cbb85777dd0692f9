"""The model registry in git: GTO registration tags for the artifacts declared in dvc.yaml.

Each recorded model version gets, per artifact under `artifacts:` in dvc.yaml (`base`,
`finetuned`) whose hash is new, an annotated tag `<artifact>@v<semver>` made by GTO
(`gto.api.register`) on the record commit: the first version is v0.1.0, later ones bump the
minor number. The tagged commit's dvc.lock says which model file hash a version is, so
`gto show` lists the versions and `xray audit --history` maps them back to model hashes (from
the tag's message when that commit's dvc.yaml declares no artifact, e.g. a migrated older tag).

This is the project's only model registry: the older `xray-model-vN` tags are migrated into it
by xray/records/legacy_tags.py.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from xray.core.errors import WorkError
from xray.core.git import git
from xray.core.yaml_text import load_yaml
from xray.reports.lineage import LOCK_FILE, LineageError, parse_lock

DVC_YAML = "dvc.yaml"
FIRST_VERSION = "v0.1.0"
MESSAGE = "Registering artifact {name} version {version} (md5 {md5})"  # GTO's, plus the hash
MESSAGE_MD5 = re.compile(r"\(md5 ([0-9a-f]{32})\)")


class RegistryError(WorkError):
    """A GTO tag could not be read or written."""


@cache
def _artifacts_at(root: Path, commit: str) -> dict[str, str]:
    """Artifact name -> path, from dvc.yaml `artifacts:` at a commit ({} when none)."""
    try:
        data = load_yaml(git(root, "show", f"{commit}:{DVC_YAML}") or "") or {}
    except yaml.YAMLError:
        return {}
    found = data.get("artifacts") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v["path"]) for k, v in found.items() if isinstance(v, dict) and "path" in v}


@cache
def _hashes_at(root: Path, commit: str) -> dict[str, str]:
    """Output path -> md5 in dvc.lock at a commit ({} when it has none)."""
    text = git(root, "show", f"{commit}:{LOCK_FILE}")
    try:
        stages = parse_lock(text or "", f"{commit[:10]}:{LOCK_FILE}")
    except LineageError:
        return {}
    return {
        o["path"]: o["md5"]
        for s in stages.values()
        for o in s.get("outs") or []
        if o.get("path") and o.get("md5")
    }


def artifact_hashes(root: Path, commit: str) -> dict[str, str]:
    """Artifact name -> model md5 at a commit, for the dvc.yaml artifacts its dvc.lock holds."""
    hashes = _hashes_at(root, commit)
    return {n: hashes[p] for n, p in _artifacts_at(root, commit).items() if p in hashes}


def registrations(root: Path) -> list[dict[str, Any]]:
    """Every active GTO registration tag: tag, artifact, version, commit, md5, created."""
    from gto.constants import Action
    from gto.tag import parse_name

    fmt = (
        "%(refname:short)%09%(objectname)%09%(*objectname)%09%(creatordate:iso-strict)"
        "%09%(contents:subject)"
    )
    out = git(root, "for-each-ref", "refs/tags", f"--format={fmt}")
    if out is None:
        raise RegistryError(f"{root}: not a git repository")
    found, dropped = [], set()
    for line in out.splitlines():
        tag, obj, peeled, created, subject = [*line.split("\t"), "", "", "", ""][:5]
        parsed = parse_name(tag, raise_on_fail=False)
        action = parsed.get("action")
        if action == Action.DEREGISTER:
            dropped.add((parsed["name"], parsed["version"]))
        if action != Action.REGISTER or "counter" in parsed:
            continue
        commit = peeled or obj
        md5 = artifact_hashes(root, commit).get(parsed["name"])
        if md5 is None and (m := MESSAGE_MD5.search(subject)):
            md5 = m.group(1)
        entry = {"tag": tag, "artifact": parsed["name"], "version": parsed["version"]}
        found.append({**entry, "commit": commit, "md5": md5, "created": created})
    found.sort(key=lambda r: (r["created"], r["tag"]))
    return [r for r in found if (r["artifact"], r["version"]) not in dropped]


def next_version(versions: list[str]) -> str:
    """The version after the greatest of `versions` (minor bump), or v0.1.0 for the first."""
    from gto.versions import SemVer

    if not versions:
        return FIRST_VERSION
    return max(SemVer(v) for v in versions).bump_minor().version


def register_models(
    root: Path, commit: str, name: str, email: str, hashes: dict[str, str] | None = None
) -> dict[str, str]:
    """Register at commit each artifact whose md5 has no version yet; artifact -> its tag.

    `hashes` (artifact -> md5) defaults to the dvc.yaml artifacts in the commit's dvc.lock.
    """
    from gto import api as gto_api
    from gto.exceptions import GTOException

    _artifacts_at.cache_clear()
    _hashes_at.cache_clear()
    known = registrations(root)
    tags: dict[str, str] = {}
    if hashes is None:
        hashes = artifact_hashes(root, commit)
    for artifact, md5 in sorted(hashes.items()):
        same = [r for r in known if r["artifact"] == artifact and r["md5"] == md5]
        if same:
            tags[artifact] = min(same, key=lambda r: r["created"])["tag"]
            continue
        version = next_version([r["version"] for r in known if r["artifact"] == artifact])
        message = MESSAGE.format(name=artifact, version=version, md5=md5)
        try:
            gto_api.register(
                str(root),
                artifact,
                commit,
                version=version,
                message=message,
                author=name,
                author_email=email,
            )
        except GTOException as e:
            raise RegistryError(f"gto register {artifact} {version}: {e}") from None
        tags[artifact] = f"{artifact}@{version}"
    return tags
