"""Overhead of a scheduled run where nothing changed: the flow over an up-to-date workspace.

Usage: python benchmarks/nochange_run.py WORKDIR [--remote DIR] [--branch NAME]
WORKDIR must be a git checkout where the pipeline already ran (every stage cached). Runs the
flow as the nightly deployment would (push + record + artifacts) and prints JSON with the total
and per-stage seconds; also writes reports/benchmarks/nochange_run.json (in the cwd).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prefect import flow

OUT = Path("reports/benchmarks/nochange_run.json")


@flow
def _warmup() -> None:
    """Start the (ephemeral or configured) API connection before timing."""


def main() -> None:
    """Time one no-change run and report what it recorded."""
    from flows.pipeline import pipeline
    from flows.record import git

    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--remote")
    ap.add_argument("--branch", default="xray-records")
    args = ap.parse_args()
    root = args.workdir.resolve()
    _warmup()
    tip = git(root, "rev-parse", "--verify", "-q", args.branch, check=False)
    tags = git(root, "tag", "--list", "xray-model-v*").split()
    t0 = time.perf_counter()
    results = pipeline(
        workdir=str(root), push=True, remote=args.remote, record=True, branch=args.branch
    )
    total = time.perf_counter() - t0
    stage_s = {r["stage"]: r["seconds"] for r in results}
    report = {
        "total_s": round(total, 2),
        "stages_s": stage_s,
        "stages_sum_s": round(sum(stage_s.values()), 2),
        "after_stages_and_prefect_s": round(total - sum(stage_s.values()), 2),
        "stages_run": [r["stage"] for r in results if r["ran"]],
        "new_record_commit": git(root, "rev-parse", "--verify", "-q", args.branch, check=False)
        != tip,
        "new_tags": sorted(set(git(root, "tag", "--list", "xray-model-v*").split()) - set(tags)),
    }
    text = json.dumps(report, indent=2)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
