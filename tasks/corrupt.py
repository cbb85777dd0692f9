"""Stage `corrupt`: materialize corrupted copies of the test split as PNG files.

Writes ``data/corrupted/<family>/<severity>/<CLASS>/<name>.png`` and
``data/corrupted/manifest.csv``. Each image's randomness derives from (its content
hash, family, severity, seed) only, and each output file is written by exactly one
job, so the output is byte-identical across runs, machines and worker counts. The
folder is built aside (a hidden temporary sibling) and renamed when complete, so an
interrupted run leaves the previous ``data/corrupted`` untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tasks.corruptions import corrupt_image, rng_for
from tasks.io import png_bytes, read_csv, read_gray, staged_dir, write_csv
from tasks.params import CorruptParams, load_params

log = logging.getLogger("xray.corrupt")

RAW_DIR = Path("data/raw")
TEST_CSV = Path("data/splits/test.csv")
OUT_DIR = Path("data/corrupted")
MANIFEST = "manifest.csv"
FIELDS = ("path", "label", "family", "severity", "patient_id", "sha256", "source_path")
IMAGES_PER_TASK = 4  # source images per pool task (each task does every family x severity)

# One source image and everything made from it: (source file, sha256, seed, [(family,
# severity, out file)]). The image is decoded once per job, not once per output.
Job = tuple[str, str, int, list[tuple[str, int, str]]]


def default_workers() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _work(jobs: list[Job]) -> int:
    """Corrupt and write one chunk of source images (runs in a worker process)."""
    done = 0
    for src, sha, seed, outputs in jobs:
        try:
            image = read_gray(Path(src))
        except (OSError, ValueError) as e:
            raise ValueError(f"{src}: cannot read image ({e})") from None
        for family, severity, dst in outputs:
            out = corrupt_image(image, family, severity, rng_for(sha, family, severity, seed))
            Path(dst).write_bytes(png_bytes(out))
            done += 1
    return done


def _ignore_sigint() -> None:
    """Pool initializer: leave Ctrl-C to the parent, which cleans the staging folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _remove_stale_stages(out_dir: Path) -> None:
    """Delete staging folders a killed earlier run (SIGKILL, power loss) left beside out_dir."""
    if not out_dir.parent.exists():
        return
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        if stale.is_dir():
            log.warning("removing %s left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)


def plan(
    rows: Sequence[dict[str, str]],
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    raw_dir: Path,
    stage: Path,
) -> tuple[list[Job], list[dict[str, object]]]:
    """Jobs (one per source image) and manifest rows (family, severity, then test order)."""
    outputs: list[list[tuple[str, int, str]]] = [[] for _ in rows]
    manifest: list[dict[str, object]] = []
    seen: dict[Path, str] = {}
    for family in families:
        for severity in severities:
            for i, row in enumerate(rows):
                name = Path(row["path"]).stem + ".png"
                rel = Path(family) / str(severity) / row["label"] / name
                if rel in seen:
                    raise ValueError(
                        f"test split: {row['path']} and {seen[rel]} would both be written "
                        f"to {rel} (same class and file stem)"
                    )
                seen[rel] = row["path"]
                outputs[i].append((family, severity, str(stage / rel)))
                manifest.append(
                    {
                        "path": rel.as_posix(),
                        "label": row["label"],
                        "family": family,
                        "severity": severity,
                        "patient_id": row["patient_id"],
                        "sha256": row["sha256"],
                        "source_path": row["path"],
                    }
                )
    jobs = [
        (str(raw_dir / row["path"]), row["sha256"], seed, out)
        for row, out in zip(rows, outputs, strict=True)
    ]
    return jobs, manifest


def run_jobs(jobs: list[Job], workers: int) -> int:
    """Run jobs in `workers` processes (inline when 1); return the number of files written."""
    chunks = [jobs[i : i + IMAGES_PER_TASK] for i in range(0, len(jobs), IMAGES_PER_TASK)]
    if workers <= 1 or len(chunks) < 2:
        return sum(_work(c) for c in chunks)
    pool = ProcessPoolExecutor(min(workers, len(chunks)), initializer=_ignore_sigint)
    try:
        return sum(pool.map(_work, chunks))
    finally:
        # On an error or interrupt, drop queued chunks and let running ones end before the
        # caller removes the staging folder they write into.
        pool.shutdown(wait=True, cancel_futures=True)


def corrupt(
    params: CorruptParams,
    test_csv: Path = TEST_CSV,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = OUT_DIR,
    workers: int | None = None,
) -> int:
    """Materialize every (family, severity) of the test split; return the number of files."""
    rows = read_csv(test_csv)
    if not rows:
        raise ValueError(f"{test_csv}: the test split is empty")
    n_workers = workers if workers is not None else (params.workers or default_workers())
    _remove_stale_stages(out_dir)
    t0 = time.perf_counter()
    with staged_dir(out_dir) as stage:
        jobs, manifest = plan(rows, params.families, params.severities, params.seed, raw_dir, stage)
        for folder in sorted({Path(dst).parent for _, _, _, outs in jobs for *_, dst in outs}):
            folder.mkdir(parents=True, exist_ok=True)
        done = run_jobs(jobs, n_workers)
        write_csv(stage / MANIFEST, manifest, FIELDS)
    seconds = time.perf_counter() - t0
    log.info(
        "wrote %d corrupted images (%d families x %d severities x %d test images) "
        "with %d workers in %.1fs (%.0f images/s)",
        done,
        len(params.families),
        len(params.severities),
        len(rows),
        n_workers,
        seconds,
        done / seconds if seconds else 0.0,
    )
    return done


def main() -> None:
    """Run the stage from params.yaml."""
    corrupt(load_params().corrupt)


if __name__ == "__main__":
    from tasks.cli_support import run_stage

    def _sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # A terminated run (dvc/prefect cancel) unwinds through staged_dir and removes its folder.
    signal.signal(signal.SIGTERM, _sigterm)
    run_stage(main)
