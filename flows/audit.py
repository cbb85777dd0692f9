"""`xray audit`: which data, params and code produced a model, and which models came from data.

Records come from the workspace (reports/lineage.json, written by `evaluate`, checked against
dvc.lock) and from git history (every commit touching dvc.lock, e.g. the record branch).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tasks.lineage import (
    LINEAGE_JSON,
    LOCK_FILE,
    MODELS,
    LineageError,
    code_version,
    current_record,
    file_md5,
    flatten,
    model_entry,
    parse_lock,
    read_lock,
)

HASH_RE = re.compile(r"[0-9a-fA-F]{6,32}(\.dir)?")
DATA_STAGES = ("download", "split", "corrupt")


class AuditError(ValueError):
    """The model or data hash is unknown, or the repository cannot be read."""


def _git(root: Path, *args: str) -> str | None:
    """Stripped stdout of a git command, None on failure."""
    r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def _model_tags(root: Path) -> list[tuple[str, str, str]]:
    """(tag, commit, model hash) of every `xray-model-vN` tag."""
    fmt = "%(refname:short)%09%(objectname)%09%(*objectname)%09%(contents:subject)"
    out = _git(root, "for-each-ref", "refs/tags/xray-model-v*", f"--format={fmt}") or ""
    tags = []
    for line in out.splitlines():
        name, obj, peeled, subject = [*line.split("\t"), "", "", ""][:4]
        tags.append((name, peeled or obj, subject.removeprefix("xray model ").strip()))
    return tags


def _tags_by_commit(root: Path) -> dict[str, list[str]]:
    """commit -> model tags pointing at it."""
    tags: dict[str, list[str]] = {}
    for name, commit, _ in _model_tags(root):
        tags.setdefault(commit, []).append(name)
    return tags


def _show_json(root: Path, commit: str, path: str) -> Any:
    """A JSON file at a commit, or None."""
    text = _git(root, "show", f"{commit}:{path}")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def history(root: Path) -> list[dict[str, Any]]:
    """Every model version in git history (oldest first), with the data hashes behind it."""
    log = _git(root, "log", "--all", "--reverse", "--format=%H%x09%cI", "--", LOCK_FILE)
    if log is None:
        raise AuditError(f"{root}: not a git repository")
    tags = _tags_by_commit(root)
    versions: dict[str, dict[str, Any]] = {}
    for line in log.splitlines():
        commit, date = line.split("\t")
        text = _git(root, "show", f"{commit}:{LOCK_FILE}")
        try:
            stages = parse_lock(text or "", f"{commit[:10]}:{LOCK_FILE}")
        except LineageError:
            continue
        entry = _version(stages, commit, date)
        if entry is None:
            continue
        lineage = _show_json(root, commit, str(LINEAGE_JSON)) or {}
        entry["source_identity"] = (lineage.get("data") or {}).get("identity")
        entry["flow_run_id"] = lineage.get("flow_run_id")
        entry["tags"] = tags.get(commit, [])
        seen = versions.get(entry["model_md5"])
        if seen is None:
            versions[entry["model_md5"]] = entry
        else:
            seen["tags"] = sorted(set(seen["tags"]) | set(entry["tags"]))
            seen.setdefault("commits", [seen["commit"]]).append(commit)
    return list(versions.values())


def _version(stages: dict[str, Any], commit: str, date: str) -> dict[str, Any] | None:
    """One history entry from a dvc.lock: the finetuned model and its data hashes."""
    model = next(
        (
            o.get("md5")
            for s in stages.values()
            for o in s.get("outs") or []
            if o.get("path") == MODELS["finetuned"]
        ),
        None,
    )
    if not model:
        return None
    entry = model_entry(stages, model)
    data = {e["path"]: e["md5"] for e in entry["upstream"] if e["stage"] in DATA_STAGES}
    base = next((e["md5"] for e in entry["upstream"] if e["path"] == MODELS["base"]), None)
    return {"model_md5": model, "base_md5": base, "commit": commit, "date": date, "data": data}


def models_for_data(root: Path, data_hash: str) -> list[dict[str, Any]]:
    """Model versions whose upstream data (any data stage output or source content) matches."""
    want = data_hash.lower().removesuffix(".dir")
    found = []
    for entry in history(root):
        hashes = [h.removesuffix(".dir") for h in entry["data"].values()]
        identity = entry.get("source_identity") or {}
        hashes += [str(v) for k, v in identity.items() if "sha256" in k]
        if any(h.startswith(want) for h in hashes):
            found.append(entry)
    return found


def resolve_hash(root: Path, model: str) -> tuple[str, str | None]:
    """(md5, path) of a model given as a file path or a content hash prefix."""
    path = Path(model)
    if not path.is_absolute():
        path = root / path
    if path.is_file():
        return file_md5(path), model
    if HASH_RE.fullmatch(model):
        return model.lower(), None
    raise AuditError(f"{model}: neither a model file nor a content hash")


def audit(root: Path, model: str) -> dict[str, Any]:
    """Everything known about one model: lineage, provenance and metrics."""
    md5, path = resolve_hash(root, model)
    record = current_record(root)
    if record:
        for name, m in record["models"].items():
            if m["md5"].startswith(md5):
                return _answer(record, name, "workspace", root)
    for entry in reversed(history(root)):
        lineage = _show_json(root, entry["commit"], str(LINEAGE_JSON))
        if not lineage:
            continue
        for name, m in lineage.get("models", {}).items():
            if m["md5"].startswith(md5):
                answer = _answer(lineage, name, f"git {entry['commit']}", root)
                answer["recorded"] = {"commit": entry["commit"], "tags": entry["tags"]}
                return answer
    try:
        stages = read_lock(root)
        entry = model_entry(stages, md5, path)
    except LineageError:
        raise AuditError(f"{model}: hash {md5} is in neither dvc.lock nor any record") from None
    return {
        "model": entry["path"],
        **entry,
        "source": "dvc.lock (no lineage record: provenance unknown)",
        "code": {**code_version(root), "note": "at audit time, not at training time"},
    }


def _answer(record: dict[str, Any], name: str, where: str, root: Path) -> dict[str, Any]:
    """The audit answer for one model of a lineage record."""
    m = record["models"][name]
    tags = [name for name, _, md5 in _model_tags(root) if md5 == m["md5"]]
    return {
        "model": m["path"],
        "md5": m["md5"],
        "stage": m["stage"],
        "upstream": m["upstream"],
        "data": record["data"],
        "params": m["params"],
        "code": record["code"],
        "versions": record["versions"],
        "created": record["created"],
        "flow_run_id": record.get("flow_run_id"),
        "metrics": (record.get("metrics") or {}).get(name),
        "source": where,
        "tags": tags,
    }


def format_audit(a: dict[str, Any]) -> str:
    """The audit answer for people."""
    lines = [
        f"model:        {a['model']}",
        f"md5:          {a['md5']}",
        f"produced by:  stage {a['stage']}",
    ]
    if a.get("tags"):
        lines.append(f"tags:         {', '.join(a['tags'])}")
    lines.append("upstream outputs (back to the raw data):")
    lines += [f"  {e['stage']:<11} {e['path']:<28} {e['md5']}" for e in a["upstream"]]
    data = a.get("data") or {}
    lines.append(f"data source:  {data.get('source')}")
    for k, v in (data.get("identity") or {}).items():
        lines.append(f"  {k}: {v}")
    lines.append("params:")
    for stage, values in a["params"].items():
        for k, v in flatten(values):
            lines.append(f"  {stage:<11} {k} = {json.dumps(v)}")
    code = a.get("code") or {}
    lines.append(f"code:         git {code.get('commit')} (dirty: {code.get('dirty')})")
    for k, v in (a.get("versions") or {}).items():
        lines.append(f"{k + ':':<14}{v}")
    lines.append(f"created:      {a.get('created')}")
    lines.append(f"flow run:     {a.get('flow_run_id') or 'none'}")
    lines.append(f"record from:  {a.get('source')}")
    lines.append("metrics:")
    for dataset, values in (a.get("metrics") or {}).items():
        keys = ("accuracy", "auc", "sensitivity", "specificity")
        lines.append(
            f"  {dataset}: " + ", ".join(f"{k} {values[k]:.4f}" for k in keys if k in values)
        )
    return "\n".join(lines)


def format_history(entries: list[dict[str, Any]]) -> str:
    """History or reverse-lookup entries for people: one block per model version."""
    if not entries:
        return "no model versions found"
    out = []
    for e in entries:
        tags = ", ".join(e["tags"]) or "(untagged)"
        out.append(f"{tags}  model {e['model_md5']}  commit {e['commit'][:12]}  {e['date']}")
        out += [f"    {p:<24} {h}" for p, h in e["data"].items()]
        content = (e.get("source_identity") or {}).get("content_sha256")
        if content:
            out.append(f"    {'source content_sha256':<24} {content}")
    return "\n".join(out)
