"""Benchmark: a full `dvc repro` timed stage by stage, so every change shows its cost.

Clones this repository (its committed HEAD) into a workspace (a temporary folder, or
``--workdir``), sets ``data.source`` (default: the real archive; ``--source synthetic`` for a
quick check), records the source (``xray probe``), then runs each stage of ``dvc.yaml`` in
order with ``dvc repro --single-item`` and times it; then times ``dvc status`` (warm, the
median of ``--status-repeat``) and measures the bytes on disk of the workspace's outputs and
of ``.dvc/cache`` (``du``: a file linked into both counts once; see cache.type). Prints JSON
and writes ``reports/benchmarks/pipeline.json`` (``pipeline_synthetic.json`` for the
synthetic source) in the current folder.

    python -m benchmarks.pipeline [--source synthetic|PATH] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import REPO, machine, write_report

ARCHIVE = Path("../shared/datasets/chest_xray_224_train.zip")
OUTPUT_DIRS = ("data", "models", "reports", "dvclive")


def _env() -> dict[str, str]:
    """This interpreter's folder first on PATH: the stages' `python` and `dvc` are this venv's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def timed(cmd: list[str], cwd: Path) -> float:
    """Run cmd in cwd; its wall seconds (exits with its output on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return round(seconds, 2)


def disk_bytes(*paths: Path) -> int:
    """Bytes allocated under the paths together (du -s -B1 -c: a hardlinked file counts once)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(
        ["du", "-s", "-B1", "-c", *existing], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def prepare(work: Path, source: str) -> None:
    """Clone the repository into work and point data.source at the source."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    params = work / "params.yaml"
    text = params.read_text()
    current = yaml.safe_load(text)["data"]["source"]
    params.write_text(text.replace(f"source: {current}", f"source: {source}", 1))
    if yaml.safe_load(params.read_text())["data"]["source"] != source:
        sys.exit(f"error: {params}: could not set data.source")


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ARCHIVE), help="synthetic, or an archive/folder")
    ap.add_argument("--workdir", type=Path, help="build here (must not exist) instead of a tmp")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    ap.add_argument("--status-repeat", type=int, default=3)
    args = ap.parse_args()
    source = args.source
    if source != "synthetic":
        if not Path(source).exists():
            sys.exit(f"error: {source}: data source not found")
        source = str(Path(source).resolve())
    if args.workdir and args.workdir.exists():
        sys.exit(f"error: {args.workdir}: already exists")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xray-bench-pipeline-")) / "ws"
    result: dict[str, Any] = {"source": source, "workspace": str(work), "machine": machine()}
    try:
        prepare(work, source)
        result["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=work, capture_output=True, text=True
        ).stdout.strip()
        dvc = [sys.executable, "-m", "dvc"]
        result["probe_seconds"] = timed([sys.executable, "-m", "xray.cli.main", "probe"], work)
        stages = list(yaml.safe_load((work / "dvc.yaml").read_text())["stages"])
        result["stages"] = {}
        for stage in stages:
            seconds = timed([*dvc, "repro", "--single-item", stage], work)
            result["stages"][stage] = seconds
            print(f"{stage}: {seconds}s", file=sys.stderr, flush=True)
        result["total_seconds"] = round(sum(result["stages"].values()), 2)
        timed([*dvc, "status"], work)  # warms DVC's state database for these paths
        runs = [timed([*dvc, "status"], work) for _ in range(max(1, args.status_repeat))]
        result["dvc_status_seconds"] = statistics.median(runs)
        result["dvc_status_runs"] = runs
        outputs = [work / d for d in OUTPUT_DIRS]
        result["disk_bytes"] = {
            "outputs": disk_bytes(*outputs),
            "dvc_cache": disk_bytes(work / ".dvc" / "cache"),
            "together": disk_bytes(*outputs, work / ".dvc" / "cache"),
        }
        result["corrupted_files"] = sum(
            1 for p in (work / "data/corrupted").rglob("*") if p.is_file()
        )
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(work.parent, ignore_errors=True)
    name = "pipeline" if args.source != "synthetic" else "pipeline_synthetic"
    write_report(name, result)


if __name__ == "__main__":
    main()
