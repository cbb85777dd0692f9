"""The older model tags `xray-model-vN`, migrated once into the GTO registry.

Before the GTO registry (xray/records/registry.py) was the only one, each new finetuned model
hash also got an annotated tag `xray-model-vN` (message `xray model <md5>`) on its record
commit. `migrate_legacy_tags` registers in GTO, at the commit each such tag names and in the
order of N, every artifact hash there that has no GTO version yet: `finetuned` with the md5 the
tag's message names, the other dvc.yaml artifacts (`base`) from that commit's dvc.lock. A
model that already has a GTO version keeps it, so the migration is idempotent.

The record step (xray/records/record.py) runs it before registering its own models, so the
first recorded run after the upgrade migrates a repository's old tags. Nothing reads the old
tags after that (`xray audit` reads GTO only); they are left in place, and can be deleted
with `git tag -d` once migrated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from xray.core.git import git
from xray.records.registry import artifact_hashes, register_models

LEGACY_PREFIX = "xray-model-v"
LEGACY_SUBJECT = "xray model "


def legacy_tags(root: Path) -> list[dict[str, Any]]:
    """The `xray-model-vN` tags, by N: tag, number, commit and the finetuned md5 it names."""
    fmt = "%(refname:short)%09%(objectname)%09%(*objectname)%09%(contents:subject)"
    out = git(root, "for-each-ref", f"refs/tags/{LEGACY_PREFIX}*", f"--format={fmt}") or ""
    found = []
    for line in out.splitlines():
        tag, obj, peeled, subject = [*line.split("\t"), "", "", ""][:4]
        number = re.fullmatch(rf"{LEGACY_PREFIX}(\d+)", tag)
        if number is None or not subject.startswith(LEGACY_SUBJECT):
            continue
        md5 = subject.removeprefix(LEGACY_SUBJECT).strip()
        found.append({"tag": tag, "n": int(number.group(1)), "commit": peeled or obj, "md5": md5})
    return sorted(found, key=lambda t: t["n"])


def migrate_legacy_tags(root: Path, name: str, email: str) -> dict[str, dict[str, str]]:
    """Register in GTO the models every `xray-model-vN` tag names: old tag -> its GTO tags."""
    migrated = {}
    for old in legacy_tags(root):
        hashes = {**artifact_hashes(root, old["commit"]), "finetuned": old["md5"]}
        migrated[old["tag"]] = register_models(root, old["commit"], name, email, hashes)
    return migrated
