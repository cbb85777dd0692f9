"""`xray audit`: which data, params and code produced a model, and which models came from data.

Records come from the workspace (reports/lineage.json, written by `evaluate`, checked against
dvc.lock) and from git history (every commit touching dvc.lock or run.json, e.g. the record
branch, and every commit a model tag names). Model tags are GTO's `<artifact>@v<semver>`
(xray/records/registry.py, the only registry: older `xray-model-vN` tags are read once they are
migrated into it, xray/records/legacy_tags.py); a version's record commit is the one its tag
names.
The run stamps (created, flow run id, git commit, host) are not in lineage.json: they come from
the record commit's run.json (xray/records/record.py), for records made before run.json from the
stamps their lineage.json carried, else the commit time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from xray.core.errors import EXIT_FAILED, XrayError
from xray.core.git import git
from xray.core.hashing import file_md5
from xray.records.record import RUN_JSON
from xray.records.registry import RegistryError, registrations
from xray.reports.lineage import (
    LINEAGE_JSON,
    LOCK_FILE,
    MODELS,
    LineageError,
    code_version,
    current_record,
    flatten,
    model_entry,
    parse_lock,
    read_lock,
)

HASH_RE = re.compile(r"[0-9a-fA-F]{6,32}(\.dir)?")
DATA_STAGES = ("download", "split", "corrupt")
METRIC_KEYS = ("accuracy", "auc", "sensitivity", "specificity")
# metrics.json `<model>.suite` (xray/reports/robustness.py suite_metrics): means over the
# corruption suite
SUITE_KEYS = ("mean_accuracy", "mean_auc", "heldout_mean_accuracy", "heldout_mean_auc", "mbe")


class AuditError(XrayError, ValueError):
    """The model or data hash is unknown, or the repository cannot be read: exit status 1."""

    exit_code = EXIT_FAILED


def _model_tags(root: Path) -> list[dict[str, Any]]:
    """Every GTO model tag: a dict of tag, artifact, commit, md5, version."""
    keys = ("tag", "artifact", "commit", "md5", "version")
    try:
        return [{k: r[k] for k in keys} for r in registrations(root)]
    except RegistryError:  # not a git repository: no tags
        return []


def _has(root: Path, commit: str, path: str) -> bool:
    """True when path exists at commit."""
    return git(root, "cat-file", "-e", f"{commit}:{path}") is not None


def _show_json(root: Path, commit: str, path: str) -> Any:
    """A JSON file at a commit, or None."""
    text = git(root, "show", f"{commit}:{path}")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _lock_commits(root: Path, tags: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(commit, date) of every commit that changed dvc.lock or run.json, or that a tag names.

    Oldest first. `--full-history` keeps a record commit whose dvc.lock equals its code parent's
    (a lock also committed on the code branch), which git's default simplification would drop.
    """
    fmt = "--format=%H%x09%ct%x09%cI"
    args = ("--all", "--reverse", "--topo-order", "--full-history", fmt, "--", LOCK_FILE, RUN_JSON)
    log = git(root, "log", *args)
    if log is None:
        raise AuditError(f"{root}: not a git repository")
    rows = [line.split("\t") for line in log.splitlines()]
    seen = {r[0] for r in rows}
    extra = sorted({t["commit"] for t in tags} - seen)
    if extra:
        shown = git(root, "show", "-s", fmt, *extra) or ""
        rows += [line.split("\t") for line in shown.splitlines() if line.count("\t") == 2]
        rows.sort(key=lambda r: int(r[1]))  # stable: log order among equal seconds
    return [(r[0], r[2]) for r in rows]


def history(root: Path) -> list[dict[str, Any]]:
    """Every model version in git history (oldest first): its record commit, tags, run stamps
    and the data hashes behind it.

    A version's record commit is the one its tag names, else the oldest commit with a run.json
    holding it, else the oldest commit holding it; `commits` lists every commit holding it.
    """
    tags = _model_tags(root)
    found: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for commit, date in _lock_commits(root, tags):
        text = git(root, "show", f"{commit}:{LOCK_FILE}")
        try:
            stages = parse_lock(text or "", f"{commit[:10]}:{LOCK_FILE}")
        except LineageError:
            continue
        entry = _version(stages, commit, date)
        if entry is not None:
            found.setdefault(entry["model_md5"], []).append((commit, date, entry))
    versions = []
    for md5, held in found.items():
        mine = [t for t in tags if t["md5"] == md5 and t["artifact"] == "finetuned"]
        tagged = {t["commit"] for t in mine}
        commit, date, entry = (
            next((h for h in held if h[0] in tagged), None)
            or next((h for h in held if _has(root, h[0], RUN_JSON)), None)
            or held[0]
        )
        lineage = _show_json(root, commit, str(LINEAGE_JSON)) or {}
        stamps = run_record(root, commit, date, lineage)
        models = {"finetuned": md5, "base": entry["base_md5"]}
        registry: dict[str, str] = {}
        for t in tags:  # artifact -> its GTO tag (the first, should a hash have two)
            if t["version"] and models.get(t["artifact"]) == t["md5"]:
                registry.setdefault(t["artifact"], t["tag"])
        entry.update(
            source_identity=(lineage.get("data") or {}).get("identity"),
            created=stamps["created"],
            flow_run_id=stamps["flow_run_id"],
            host=stamps["host"],
            tags=sorted(t["tag"] for t in mine),
            registry=registry,
            commits=[h[0] for h in held],
        )
        versions.append(entry)
    return versions


def run_record(
    root: Path, commit: str, date: str | None = None, lineage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The run stamps of a record commit: created, flow_run_id, code, host.

    From its run.json; for records made before run.json, the stamps its lineage.json carried;
    else the commit time (`date`, read from git when not given) and nulls.
    """
    stamps = _show_json(root, commit, RUN_JSON)
    if not isinstance(stamps, dict):
        if lineage is None:
            lineage = _show_json(root, commit, str(LINEAGE_JSON)) or {}
        stamps = {k: lineage[k] for k in ("created", "flow_run_id", "code") if k in lineage}
    if not stamps.get("created"):
        stamps["created"] = date or git(root, "show", "-s", "--format=%cI", commit)
    return {
        "created": stamps.get("created"),
        "flow_run_id": stamps.get("flow_run_id"),
        "code": stamps.get("code") or {"commit": None, "dirty": None, "dirty_files": []},
        "host": stamps.get("host"),
    }


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
                return _workspace_answer(record, name, root)
    for entry in reversed(history(root)):
        lineage = _show_json(root, entry["commit"], str(LINEAGE_JSON))
        if not lineage:
            continue
        for name, m in lineage.get("models", {}).items():
            if m["md5"].startswith(md5):
                stamps = run_record(root, entry["commit"], entry["date"], lineage)
                answer = _answer(lineage, name, f"git {entry['commit']}", stamps, root)
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


def _workspace_answer(record: dict[str, Any], name: str, root: Path) -> dict[str, Any]:
    """The audit answer from the workspace's lineage.json; run stamps from the record of its
    finetuned model (the oldest commit holding it), else unknown (code: at audit time)."""
    finetuned = (record["models"].get("finetuned") or {}).get("md5")
    try:
        entry = next((e for e in history(root) if e["model_md5"] == finetuned), None)
    except AuditError:  # not a git repository
        entry = None
    if entry is None:
        stamps = {
            "created": None,
            "flow_run_id": None,
            "code": {**code_version(root), "note": "at audit time, not at training time"},
            "host": None,
        }
        return _answer(record, name, "workspace", stamps, root)
    stamps = run_record(root, entry["commit"], entry["date"])
    return _answer(record, name, f"workspace (run record: git {entry['commit']})", stamps, root)


def _answer(
    record: dict[str, Any], name: str, where: str, stamps: dict[str, Any], root: Path
) -> dict[str, Any]:
    """The audit answer for one model of a lineage record and the stamps of its run."""
    m = record["models"][name]
    tags = sorted(t["tag"] for t in _model_tags(root) if t["md5"] == m["md5"])
    return {
        "model": m["path"],
        "md5": m["md5"],
        "stage": m["stage"],
        "upstream": m["upstream"],
        "data": record["data"],
        "params": m["params"],
        "code": stamps["code"],
        "versions": record["versions"],
        "created": stamps["created"],
        "flow_run_id": stamps["flow_run_id"],
        "host": stamps.get("host"),
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
    note = f" ({code['note']})" if code.get("note") else ""
    lines.append(f"code:         git {code.get('commit')} (dirty: {code.get('dirty')}){note}")
    if code.get("dirty_files"):
        lines.append(f"  dirty files: {', '.join(code['dirty_files'])}")
    for k, v in (a.get("versions") or {}).items():
        lines.append(f"{k + ':':<14}{v}")
    lines.append(f"created:      {a.get('created')}")
    lines.append(f"flow run:     {a.get('flow_run_id') or 'none'}")
    lines.append(f"record from:  {a.get('source')}")
    lines.append("metrics:")
    for dataset, values in (a.get("metrics") or {}).items():
        keys = SUITE_KEYS if dataset == "suite" else METRIC_KEYS
        shown = [f"{k} {values[k]:.4f}" for k in keys if isinstance(values.get(k), int | float)]
        if shown:
            lines.append(f"  {dataset}: " + ", ".join(shown))
    return "\n".join(lines)


def format_history(entries: list[dict[str, Any]]) -> str:
    """History or reverse-lookup entries for people: one block per model version."""
    if not entries:
        return "no model versions found"
    out = []
    for e in entries:
        tags = ", ".join(e.get("tags") or []) or "(untagged)"
        created = e.get("created") or e["date"]
        out.append(f"{tags}  model {e['model_md5']}")
        out.append(
            f"    record {e['commit'][:12]}  created {created}  "
            f"flow run {e.get('flow_run_id') or 'none'}"
        )
        base = (e.get("registry") or {}).get("base") or "(untagged)"
        out.append(f"    {'base model':<24} {e.get('base_md5')}  {base}")
        out += [f"    {p:<24} {h}" for p, h in e["data"].items()]
        content = (e.get("source_identity") or {}).get("content_sha256")
        if content:
            out.append(f"    {'source content_sha256':<24} {content}")
    return "\n".join(out)
