"""Benchmark: corruption materialization images/s, local executor vs 1, 2 and 4 Dask workers.

Runs ``xray.perturbations.materialize.corrupt`` over the whole suite on the same source
images: with the local executor in-process (1 worker, the no-parallelism baseline) and on a
process pool of all cores, then on a dask.distributed LocalCluster of 1, 2 and 4
single-threaded worker processes on 127.0.0.1, reached by address as a remote scheduler would
be. Each cluster is started and its workers import the stage's code before the clock starts
(that time is reported apart), so the rates compare materialization, bytes shipped both ways
included.
Scaling efficiency = (images/s at n Dask workers / images/s at 1 Dask worker) / n. Sources:
a class-stratified sample of the real archive when present, else generated images. All
outputs must be byte-identical. Prints JSON, writes reports/benchmarks/dask_corrupt.json.

    uv run --frozen python -m benchmarks.dask_corrupt [--images 48] [--workers 1 2 4]
        [--local-workers 1 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, write_report
from benchmarks.corrupt import ARCHIVE, SPLIT_FIELDS, extract_sample, tree_digest
from xray.core.compute import LOOPBACK_ANY_PORT, default_workers, fingerprint
from xray.core.io import png_bytes, write_csv
from xray.core.params import ComputeParams, CorruptParams
from xray.perturbations.corruptions import FAMILIES, SEVERITIES
from xray.perturbations.materialize import WORKER_MODULES, corrupt

NAME = "dask_corrupt"
DEFAULT_IMAGES = 48  # 24 tasks of 2 images: an even share at 1, 2 and 4 workers
DEFAULT_WORKERS = (1, 2, 4)
SYNTHETIC_SIDE = 224  # the real archive's image size
SYNTHETIC_SEED = 0


def synthetic_sample(n: int, dest: Path) -> Path:
    """Write n textured grayscale PNGs (both classes) and their test.csv; return its path."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    yy, xx = np.mgrid[0:SYNTHETIC_SIDE, 0:SYNTHETIC_SIDE]
    rows = []
    for i in range(n):
        label = ("NORMAL", "PNEUMONIA")[i % 2]
        base = 110 + 50 * np.sin(xx / (5 + i % 7)) * np.cos(yy / (9 + i % 5))
        img = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        data = png_bytes(img)
        rel = Path("images") / "test" / label / f"IM-{i:04d}-0001.png"
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
        rows.append(
            {
                "path": rel.as_posix(),
                "label": label,
                "source_split": "test",
                "patient_id": f"IM-{i:04d}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": SYNTHETIC_SIDE,
                "height": SYNTHETIC_SIDE,
            }
        )
    csv = dest / "test.csv"
    write_csv(csv, rows, SPLIT_FIELDS)
    return csv


def timed_run(
    params: CorruptParams, csv: Path, raw: Path, out: Path, on: ComputeParams
) -> dict[str, object]:
    """One corrupt-stage run; its rate and the digest of everything it wrote."""
    t0 = time.perf_counter()
    n = corrupt(params, csv, raw, out, compute=on)
    seconds = time.perf_counter() - t0
    digest = tree_digest(out)["sha256"]
    rate = round(n / seconds, 1)
    return {"images": n, "seconds": round(seconds, 2), "images_per_s": rate, "digest": digest}


def main() -> None:
    """Run the benchmark and write its JSON."""
    from distributed import Client, LocalCluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--synthetic", action="store_true", help="generated images even if present")
    ap.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    ap.add_argument("--workers", type=int, nargs="+", default=list(DEFAULT_WORKERS))
    ap.add_argument("--local-workers", type=int, nargs="+", default=[1, default_workers()])
    ap.add_argument("--severities", type=int, nargs="+", default=list(SEVERITIES))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = CorruptParams(families=tuple(FAMILIES), severities=tuple(args.severities))
    use_archive = args.archive.exists() and not args.synthetic
    result: dict[str, object] = {
        "source": str(args.archive) if use_archive else f"synthetic {SYNTHETIC_SIDE}px",
        "families": len(params.families),
        "severities": list(params.severities),
        "cpu_cores": default_workers(),
        "machine_start": machine(),
    }
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="xray-bench-dask-") as tmp:
        root = Path(tmp)
        raw = root / "raw"
        if use_archive:
            csv = extract_sample(args.archive, args.images, raw)
        else:
            csv = synthetic_sample(args.images, raw)
        result["source_images"] = sum(1 for _ in raw.rglob("*.png"))
        for n in args.local_workers:  # 1 = in this process: the no-parallelism baseline
            local = ComputeParams(executor="local", workers=n)
            run = timed_run(params, csv, raw, root / f"local{n}" / "corrupted", local)
            runs.append({"executor": "local", "workers": n, **run})
            print(json.dumps(runs[-1]), flush=True)
        for n in args.workers:
            t0 = time.perf_counter()
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=LOOPBACK_ANY_PORT,
                silence_logs=logging.ERROR,
            )
            with Client(cluster) as client:  # imports the stage's code on every worker
                client.run(fingerprint, list(WORKER_MODULES))
            started = time.perf_counter() - t0
            try:
                on = ComputeParams(executor="dask", dask_address=cluster.scheduler_address)
                run = timed_run(params, csv, raw, root / f"dask{n}" / "corrupted", on)
            finally:
                cluster.close()
            start = round(started, 2)
            runs.append({"executor": "dask", "workers": n, "cluster_start_seconds": start, **run})
            print(json.dumps(runs[-1]), flush=True)
    result["byte_identical"] = len({r.pop("digest") for r in runs}) == 1
    one = next((r for r in runs if r["executor"] == "dask" and r["workers"] == 1), None)
    for r in runs:
        if one is not None and r["executor"] == "dask":
            speedup = float(r["images_per_s"]) / float(one["images_per_s"])
            r["speedup_vs_1_worker"] = round(speedup, 2)
            r["scaling_efficiency"] = round(speedup / int(r["workers"]), 2)
    result["runs"] = runs
    result["note"] = (
        "scaling_efficiency = speedup vs 1 Dask worker / workers; workers beyond cpu_cores "
        "share cores (expect no gain there), and the load average shows other work on them"
    )
    write_report(NAME, result)


if __name__ == "__main__":
    main()
