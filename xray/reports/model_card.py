"""The model card (Mitchell et al. 2019) of a run, written at the end of the `evaluate` stage.

`write_model_card` reads what the stage wrote in its reports folder (metrics.json,
robustness.json, proxy.json, adaptation.json, predictions.csv) plus the split report
(split.json) and the lineage record (xray/reports/lineage.py), computes bootstrap 95%
intervals (xray/reports/bootstrap.py) and writes intervals.json, lineage.json and
model_card.md there. The sections are xray/reports/card_sections.py. Every byte is a function
of those files: no time, host, commit or run id (xray/records/artifacts.py appends the run
stamps to the copy it publishes as the Prefect artifact).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xray.core.io import read_csv, write_bytes_atomic, write_csv, write_json
from xray.reports import bootstrap
from xray.reports.card_sections import (
    ADAPT,
    caveats,
    TITLE,
    USE,
    data_section,
    metrics_section,
    model_details,
    proxy_targets_section,
    subgroups_section,
    threshold_of,
)
from xray.reports.lineage import LineageError, build_record, render_lineage

log = logging.getLogger("xray.model_card")

PREDICTIONS = "predictions.csv"
INTERVALS = "intervals.json"
LINEAGE = "lineage.json"
CARD = "model_card.md"
PREDICTION_FIELDS = ("path", "patient_id", "source_split", "label", "y")
PROB_DIGITS = 6


def write_predictions(
    path: Path,
    rows: Sequence[dict[str, str]],
    y: np.ndarray,
    scored: dict[str, Any],
) -> None:
    """Per-image P(positive) of every variant on the clean test set, in test.csv's order.

    `scored` maps a variant to its probabilities, or to (probabilities, threshold).
    """
    columns = {
        name: np.asarray(value[0] if isinstance(value, tuple) else value, dtype=float)
        for name, value in scored.items()
    }
    for name, p in columns.items():
        if len(p) != len(rows):
            raise ValueError(f"{path}: {name} has {len(p)} scores for {len(rows)} images")
    out = []
    for i, r in enumerate(rows):
        row = {k: r.get(k, "") for k in PREDICTION_FIELDS[:4]} | {"y": int(y[i])}
        row |= {name: f"{p[i]:.{PROB_DIGITS}f}" for name, p in columns.items()}
        out.append(row)
    write_csv(path, out, (*PREDICTION_FIELDS, *columns))


def _read_json(path: Path) -> Any:
    """A JSON report, or None when the stage did not write it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_reports(reports: Path) -> dict[str, Any]:
    """Everything the card is made of under `reports` (a missing report is None)."""
    names = ("metrics", "split", "robustness", "proxy", "adaptation")
    out: dict[str, Any] = {n: _read_json(reports / f"{n}.json") for n in names}
    pred = reports / PREDICTIONS
    out["predictions"] = read_csv(pred) if pred.exists() else None
    return out


def intervals(data: dict[str, Any]) -> dict[str, Any]:
    """Bootstrap 95% intervals: overall, by class and source split (patient-clustered, from the
    per-image predictions), by corruption family and proxy set (from confusion counts)."""
    out: dict[str, Any] = {
        "method": {
            "samples": bootstrap.SAMPLES,
            "seed": bootstrap.SEED,
            "level": bootstrap.LEVEL,
            "clean": "patients resampled with replacement (reports/predictions.csv)",
            "counts": "images resampled from the confusion counts (one class mix per set)",
        }
    }
    rows = data.get("predictions")
    metrics = data.get("metrics")
    if rows:
        variants = sorted(k for k in rows[0] if k not in PREDICTION_FIELDS)
        y = np.array([int(r["y"]) for r in rows])
        patients = [r["patient_id"] or r["path"] for r in rows]
        clean: dict[str, Any] = {}
        by_class: dict[str, Any] = {}
        by_split: dict[str, Any] = {}
        for v in variants:
            thr = threshold_of(metrics, v)
            if thr is None:
                continue
            p = np.array([float(r[v]) for r in rows])
            clean[v] = bootstrap.clustered(y, p, thr, patients)
            by_class[v], by_split[v] = {}, {}
            for key, into in (("label", by_class[v]), ("source_split", by_split[v])):
                for value in sorted({r[key] for r in rows}):
                    idx = [i for i, r in enumerate(rows) if r[key] == value]
                    sub = bootstrap.clustered(y[idx], p[idx], thr, [patients[i] for i in idx])
                    into[value] = {"images": len(idx), **sub}
        out |= {"clean": clean, "by_class": by_class, "by_source_split": by_split}
    robustness = data.get("robustness")
    if robustness:
        out["by_family"] = {
            v: {
                fam: {
                    "held_out": bool(f.get("held_out")),
                    **bootstrap.from_counts(list(f["severities"].values())),
                }
                for fam, f in m["families"].items()
            }
            for v, m in robustness["models"].items()
        }
    proxy = data.get("proxy")
    if proxy:
        out["proxy"] = {
            v: {name: bootstrap.from_counts(cells) for name, cells in sets.items()}
            for v, sets in proxy["variants"].items()
        }
    return out


def render_card(
    record: dict[str, Any] | None,
    data: dict[str, Any] | None = None,
    ci: dict[str, Any] | None = None,
) -> str:
    """The model card as markdown: every section, from the lineage record and the reports.

    `ci`: the intervals of `data` when already computed.
    """
    data = data or {}
    ci = ci if ci is not None else intervals(data)
    lines = [TITLE, ""]
    lines += model_details(record, data)
    lines += USE
    lines += data_section(record, data)
    lines += metrics_section(ci)
    lines += proxy_targets_section(data.get("proxy"))
    lines += subgroups_section(ci, data)
    lines += caveats(data)
    lines += ADAPT
    if record:
        lines += render_lineage(record)
    else:
        lines += ["## Lineage", "", "Lineage unavailable (no dvc.lock or models)."]
    return "\n".join(lines).rstrip() + "\n"


def model_card(reports: Path, root: Path = Path("."), *, source_json: Path) -> dict[str, Any]:
    """Card text (`card`), lineage record (`record`, None when unknown) and `intervals`.

    `root` holds dvc.lock and the models; `source_json` is the source's identity file.
    """
    try:
        record: dict[str, Any] | None = build_record(
            root, source_json=source_json, metrics_json=reports / "metrics.json"
        )
    except LineageError as e:
        log.warning("model card without lineage: %s", e)
        record = None
    data = read_reports(reports)
    ci = intervals(data)
    return {"card": render_card(record, data, ci), "record": record, "intervals": ci}


def write_model_card(
    reports: Path, root: Path = Path("."), *, source_json: Path
) -> dict[str, Any] | None:
    """Write intervals.json, lineage.json and model_card.md under `reports`; the record."""
    made = model_card(reports, root, source_json=source_json)
    write_json(reports / INTERVALS, made["intervals"])
    if made["record"] is not None:
        write_json(reports / LINEAGE, made["record"])
    write_bytes_atomic(reports / CARD, made["card"].encode())
    return made["record"]
