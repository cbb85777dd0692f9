"""Prefect artifacts of a run: the metrics table, the dvc.lock lineage table, the model card.

The card is the one the `evaluate` stage writes (xray/reports/model_card.py; rendered from the
same reports, the same bytes, when the file is missing) plus a "Run provenance" section with
the run's stamps, which the DVC outputs must not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xray.core.stage import dvc_yaml_paths
from xray.records.record import run_stamps
from xray.reports.lineage import LineageError, build_record, current_record, flatten, read_lock
from xray.reports.model_card import CARD, model_card

METRICS_KEY = "xray-metrics"
LINEAGE_KEY = "xray-lineage"
CARD_KEY = "xray-model-card"


def render_stamps(stamps: dict[str, Any]) -> str:
    """The run stamps as a markdown section (appended to the model card artifact)."""
    code = stamps.get("code") or {}
    lines = ["", "## Run provenance", ""]
    lines.append(f"- created: {stamps.get('created')}")
    lines.append(f"- Prefect flow run: {stamps.get('flow_run_id') or 'none (not run by a flow)'}")
    lines.append(f"- git commit: `{code.get('commit')}` (dirty: {code.get('dirty')})")
    if code.get("dirty_files"):
        lines.append("- dirty files: " + ", ".join(f"`{f}`" for f in code["dirty_files"]))
    lines.append(f"- host: {stamps.get('host')}")
    return "\n".join(lines) + "\n"


def publish_artifacts(root: Path, stamps: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prefect artifacts for this run: metrics table, lineage table, markdown model card.

    The card is reports/model_card.md's (rendered again from the same reports) plus a "Run
    provenance" section with this run's stamps (`stamps`, else `run_stamps` now).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if stamps is None:
        stamps = run_stamps(root)
    try:
        paths = dvc_yaml_paths("evaluate", root)  # its reports folder and the source identity
        record = current_record(root) or build_record(
            root, source_json=paths["source_json"], metrics_json=paths["reports"] / "metrics.json"
        )
    except LineageError as e:
        return {"artifacts": [], "reason": str(e)}
    rows = [
        {"model": m, "dataset": d, **{k: v for k, v in vals.items() if not isinstance(v, dict)}}
        for m, sets in (record.get("metrics") or {}).items()
        for d, vals in sets.items()
    ]
    create_table_artifact(rows, key=METRICS_KEY, description="Evaluation metrics")
    lineage = []
    for name, stage in read_lock(root).items():
        lineage.append(
            {
                "stage": name,
                "outs": "; ".join(f"{o['path']}={o.get('md5', '')}" for o in stage.get("outs", [])),
                "deps": "; ".join(f"{d['path']}={d.get('md5', '')}" for d in stage.get("deps", [])),
                "params": "; ".join(
                    f"{k}={json.dumps(v)}"
                    for p in (stage.get("params") or {}).values()
                    for k, v in flatten(p or {})
                ),
            }
        )
    create_table_artifact(lineage, key=LINEAGE_KEY, description="dvc.lock lineage")
    create_markdown_artifact(card_markdown(root, stamps), key=CARD_KEY, description="Model card")
    return {"artifacts": [METRICS_KEY, LINEAGE_KEY, CARD_KEY]}


def card_markdown(root: Path, stamps: dict[str, Any]) -> str:
    """The model card `evaluate` wrote (rendered from root's reports when it is missing) plus
    the run's provenance section.

    Rendering it again would give the same bytes (tests/test_model_card.py) at the cost of the
    bootstrap intervals (about 0.4 s a run, most of a no-change run's artifacts).
    """
    paths = dvc_yaml_paths("evaluate", root)  # its reports folder and the source identity
    try:
        card = (paths["reports"] / CARD).read_text()
    except FileNotFoundError:
        card = model_card(paths["reports"], root, source_json=paths["source_json"])["card"]
    return card + render_stamps(stamps)
