"""Lineage of the models: which data, params and code produced them, read from dvc.lock.

`build_record` gives the lineage record that xray/reports/model_card.py writes at the end of the
`evaluate` stage as ``reports/lineage.json`` (machine-readable) and renders with
`render_lineage` as the last section of ``reports/model_card.md``. Both are DVC outputs, so
they are a pure function of the stage's deps and params: no time, git commit, host or flow
run id (code identity is the md5 of each stage's code deps in dvc.lock). Those run stamps go
to the run record instead (`xray/records/record.py`: ``run.json`` on the record branch and the
Prefect artifacts); `code_version` and `flow_run_id` below supply them. The audit command
(`xray/records/audit.py`) reads the records back, also from git history.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from xray.core.yaml_text import load_yaml
from xray.core.git import git
from xray.core.hashing import file_md5

LOCK_FILE = "dvc.lock"
RAW_OUT = "data/raw"
# The evaluate stage's outputs as xray/records reads them back from a run's commit (dvc.yaml
# names them; the stage itself gets its reports folder from its cmd).
METRICS_JSON = Path("reports/metrics.json")
LINEAGE_JSON = Path("reports/lineage.json")
MODEL_CARD = Path("reports/model_card.md")
MODELS = {"finetuned": "models/finetuned.keras", "base": "models/base.keras"}
FLOW_RUN_ENV = ("XRAY_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID")
VERSION_PACKAGES = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "keras": ("keras",),
    "prefect": ("prefect",),
    "dvc": ("dvc",),
}
# Not "code": recorded themselves, so they do not make the tree dirty (run.json: the run
# record, xray/records/record.py RUN_JSON, in the tree only when the record branch is checked out).
NOT_CODE = (
    "dvc.lock",
    "params.yaml",
    "run.json",
    "reports/",
    "dvclive/",
    "data/",
    "models/",
    ".dvc/",  # DVC's config (a remote added with `dvc remote add -d`): no output depends on it
)
CODE_NOTE = "the md5 of each stage's code deps in dvc.lock; the git commit is in the run record"

log = logging.getLogger("xray.lineage")


class LineageError(ValueError):
    """dvc.lock or a record is missing or does not describe the model."""


def parse_lock(text: str, source: str = LOCK_FILE) -> dict[str, dict[str, Any]]:
    """The `stages` mapping of a dvc.lock text."""
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise LineageError(f"{source}: not valid YAML ({e})") from None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        raise LineageError(f"{source}: no `stages` mapping")
    return stages


def read_lock(root: Path) -> dict[str, dict[str, Any]]:
    """The stages of root/dvc.lock."""
    path = root / LOCK_FILE
    if not path.exists():
        raise LineageError(f"{path}: missing (run the pipeline first)")
    return parse_lock(path.read_text(), str(path))


def _entries(stage: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The deps or outs of a lock stage as {path, md5} dicts."""
    return [
        {"path": e["path"], "md5": e.get("md5") or e.get("etag") or ""}
        for e in stage.get(kind) or []
        if isinstance(e, dict) and "path" in e
    ]


def out_owner(stages: dict[str, dict[str, Any]], path: str) -> str | None:
    """The stage whose output is `path` or a folder holding it."""
    for name, stage in stages.items():
        for out in _entries(stage, "outs"):
            if path == out["path"] or path.startswith(out["path"].rstrip("/") + "/"):
                return name
    return None


def producer(stages: dict[str, dict[str, Any]], md5: str) -> tuple[str, str] | None:
    """(stage, path) of the output whose md5 starts with `md5`."""
    md5 = md5.lower()
    for name, stage in stages.items():
        for out in _entries(stage, "outs"):
            if out["md5"] and out["md5"].startswith(md5):
                return name, out["path"]
    return None


def stage_params(stage: dict[str, Any]) -> dict[str, Any]:
    """The params values a lock stage ran with (params.yaml keys)."""
    out: dict[str, Any] = {}
    for values in (stage.get("params") or {}).values():
        out.update(values or {})
    return out


def upstream(stages: dict[str, dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    """Every output feeding `stage`, transitively back to the raw data: {stage, path, md5}."""
    seen: dict[str, dict[str, Any]] = {}
    todo = [stage]
    visited: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in visited or name not in stages:
            continue
        visited.add(name)
        for dep in _entries(stages[name], "deps"):
            owner = out_owner(stages, dep["path"])
            if owner is None or owner == name:
                continue
            seen.setdefault(dep["path"], {"stage": owner, **dep})
            for out in _entries(stages[owner], "outs"):  # a file inside a folder output:
                if dep["path"].startswith(out["path"].rstrip("/") + "/"):  # the folder too
                    seen.setdefault(out["path"], {"stage": owner, **out})
            todo.append(owner)
    order = list(stages)
    return sorted(seen.values(), key=lambda e: (order.index(e["stage"]), e["path"]))


def lineage_params(stages: dict[str, dict[str, Any]], stage: str) -> dict[str, dict[str, Any]]:
    """Params per stage for `stage` and everything upstream of it."""
    names = {stage} | {e["stage"] for e in upstream(stages, stage)}
    return {n: stage_params(stages[n]) for n in stages if n in names}


def model_entry(stages: dict[str, dict[str, Any]], md5: str, path: str | None = None) -> dict:
    """The lineage of one model output: hash, producing stage, upstream outputs, params."""
    found = producer(stages, md5)
    if found is None:
        raise LineageError(f"dvc.lock: no stage output has hash {md5}")
    stage, out_path = found
    full = next(o["md5"] for o in _entries(stages[stage], "outs") if o["path"] == out_path)
    return {
        "path": path or out_path,
        "md5": full,
        "stage": stage,
        "upstream": upstream(stages, stage),
        "params": lineage_params(stages, stage),
    }


def code_version(root: Path) -> dict[str, Any]:
    """Git commit of root and whether tracked code differs from it (outputs/params excluded)."""
    commit = git(root, "rev-parse", "HEAD", timeout=30)
    if commit is None:
        return {"commit": None, "dirty": None, "dirty_files": []}
    files = (git(root, "diff", "--name-only", "HEAD", timeout=30) or "").splitlines()
    dirty = [f for f in files if not f.startswith(NOT_CODE)]
    return {"commit": commit, "dirty": bool(dirty), "dirty_files": dirty}


def versions() -> dict[str, str | None]:
    """Installed TensorFlow, Keras, Prefect and DVC versions (from package metadata)."""
    out: dict[str, str | None] = {}
    for name, dists in VERSION_PACKAGES.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def flow_run_id() -> str | None:
    """The Prefect flow run this process runs under, if any (set by flows/pipeline.py)."""
    for var in FLOW_RUN_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return None


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_record(
    root: Path = Path("."), *, source_json: Path, metrics_json: Path
) -> dict[str, Any]:
    """The lineage record of root's models: hashes from the files, the rest from dvc.lock.

    `source_json` (the source's identity, data/raw/source.json in the pipeline) and
    `metrics_json` (the evaluate stage's metrics) are read as given, not under root.

    Deterministic: the same dvc.lock, models, source identity, metrics and installed packages
    give the same record (run stamps are the run record's, see the module docstring).
    """
    stages = read_lock(root)
    models: dict[str, Any] = {}
    for name, rel in MODELS.items():
        path = root / rel
        if not path.exists():
            continue
        md5 = file_md5(path)
        try:
            models[name] = model_entry(stages, md5, rel)
        except LineageError:
            raise LineageError(
                f"{rel}: hash {md5} is not in dvc.lock (stale lock: rerun its stage)"
            ) from None
    if not models:
        raise LineageError(f"{root}: no model under models/")
    raw = next(
        (o for o in _entries(stages.get("download", {}), "outs") if o["path"] == RAW_OUT), None
    )
    return {
        "models": models,
        "data": {
            "source": stage_params(stages.get("download", {})).get("data", {}).get("source"),
            "identity": _read_json(source_json),
            "raw_md5": raw["md5"] if raw else None,
        },
        "versions": versions(),
        "metrics": _read_json(metrics_json),
    }


def flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested params as (dotted key, value) pairs."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def current_record(root: Path) -> dict[str, Any] | None:
    """root/reports/lineage.json when every model it names still has those bytes, else None."""
    record = _read_json(root / LINEAGE_JSON)
    if not isinstance(record, dict) or not record.get("models"):
        return None
    for m in record["models"].values():
        path = root / m["path"]
        if not path.is_file() or file_md5(path) != m["md5"]:
            return None
    return record


def _fmt(value: Any) -> str:
    """A value for a markdown table cell."""
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|")


def render_lineage(record: dict[str, Any], heading: str = "##") -> list[str]:
    """The lineage part of the model card as markdown lines: models, data, upstream, params."""
    data, ver = record["data"], record["versions"]
    identity = data.get("identity") or {}
    sub = heading + "#"
    lines = [f"{heading} Lineage", ""]
    lines += [
        "From dvc.lock (md5 = DVC content hashes); run stamps (time, commit, flow run) are in the",
        "run record, not here, so these bytes depend only on the stage's inputs.",
        "",
        f"{sub} Models",
        "",
        "| model | path | md5 | produced by |",
        "|---|---|---|---|",
    ]
    for name, m in record["models"].items():
        lines.append(f"| {name} | {m['path']} | `{m['md5']}` | {m['stage']} |")
    lines += ["", f"{sub} Data", ""]
    lines.append(f"- source: `{data.get('source')}`")
    lines.append(f"- raw data (data/raw) md5: `{data.get('raw_md5')}`")
    for key, value in identity.items():
        lines.append(f"- source {key}: `{_fmt(value)}`")
    main = record["models"].get("finetuned") or next(iter(record["models"].values()))
    lines += ["", f"{sub} Upstream outputs", "", "| stage | output | md5 |", "|---|---|---|"]
    for e in main["upstream"]:
        lines.append(f"| {e['stage']} | {e['path']} | `{e['md5']}` |")
    lines += ["", f"{sub} Params", "", "| stage | key | value |", "|---|---|---|"]
    for stage, values in main["params"].items():
        for key, value in flatten(values):
            lines.append(f"| {stage} | {key} | {_fmt(value)} |")
    lines += ["", f"{sub} Provenance", ""]
    lines.append(f"- code: {CODE_NOTE}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    return lines
