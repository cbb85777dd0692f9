"""Stage `corrupt`: materialize corrupted copies of the test split as PNG files.

Writes ``data/corrupted/<family>/<severity>/<CLASS>/<name>.png`` and
``data/corrupted/manifest.csv``. Each image's randomness derives from (its content
hash, family, severity, seed) only, and each output file is written by exactly one
job, so the output is byte-identical across runs, machines, worker counts and executors
(`compute.executor`: local processes or a Dask cluster, see tasks/compute.py). Workers
get the source bytes and return PNG bytes; only this process writes files. The
folder is built aside (a hidden temporary sibling) and renamed when complete, so an
interrupted run leaves the previous ``data/corrupted`` untouched.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from tasks.compute import Runner
from tasks.corruptions import corrupt_image, rng_for
from tasks.io import decode_gray, png_bytes, read_csv, staged_dir, write_csv
from tasks.params import ComputeParams, CorruptParams, load_params

log = logging.getLogger("xray.corrupt")

RAW_DIR = Path("data/raw")
TEST_CSV = Path("data/splits/test.csv")
OUT_DIR = Path("data/corrupted")
MANIFEST = "manifest.csv"
FIELDS = ("path", "label", "family", "severity", "patient_id", "sha256", "source_path")
IMAGES_PER_TASK = 4  # source images per task (each task does every family x severity)
WORKER_MODULES = ("tasks.corrupt", "tasks.corruptions", "tasks.io")
"""The code a worker runs for this stage: a Dask worker must have the same (checked)."""

# One source image and everything made from it: (source file, sha256, seed, [(family,
# severity, output path relative to the output folder)]). Decoded once per job.
Job = tuple[str, str, int, list[tuple[str, int, str]]]
# What a worker gets for a job: the same with the source file's bytes, so it needs no
# access to the workspace; it returns [(relative output path, PNG bytes)].
Task = tuple[str, bytes, str, int, list[tuple[str, int, str]]]


def _work(tasks: list[Task]) -> list[tuple[str, bytes]]:
    """Corrupt one chunk of source images, bytes in, PNG bytes out (runs on a worker)."""
    out = []
    for src, data, sha, seed, outputs in tasks:
        try:
            image = decode_gray(data)
        except (OSError, ValueError) as e:
            raise ValueError(f"{src}: cannot read image ({e})") from None
        for family, severity, rel in outputs:
            corrupted = corrupt_image(image, family, severity, rng_for(sha, family, severity, seed))
            out.append((rel, png_bytes(corrupted)))
    return out


def _load(chunk: list[Job]) -> list[Task]:
    """Read a chunk's source files here, in the stage process, for a worker anywhere."""
    tasks = []
    for src, sha, seed, outputs in chunk:
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise ValueError(f"{src}: cannot read image ({e.strerror or e})") from None
        tasks.append((src, data, sha, seed, outputs))
    return tasks


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
                outputs[i].append((family, severity, rel.as_posix()))
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


def run_jobs(jobs: list[Job], runner: Runner, stage: Path) -> int:
    """Run jobs on the runner's executor, writing results under stage; return the file count."""
    chunks = [jobs[i : i + IMAGES_PER_TASK] for i in range(0, len(jobs), IMAGES_PER_TASK)]
    done = 0
    for results in runner.imap(_work, chunks, _load):
        for rel, data in results:
            (stage / rel).write_bytes(data)
        done += len(results)
    return done


def corrupt(
    params: CorruptParams,
    test_csv: Path = TEST_CSV,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = OUT_DIR,
    workers: int | None = None,
    compute: ComputeParams | None = None,
) -> int:
    """Materialize every (family, severity) of the test split; return the number of files.

    `compute` chooses the executor (default: local processes); `workers`, when given,
    overrides its worker count.
    """
    rows = read_csv(test_csv)
    if not rows:
        raise ValueError(f"{test_csv}: the test split is empty")
    compute = compute or ComputeParams()
    if workers is not None:
        compute = compute.model_copy(update={"workers": workers})
    jobs, manifest = plan(rows, params.families, params.severities, params.seed, raw_dir)
    _remove_stale_stages(out_dir)
    t0 = time.perf_counter()
    with Runner(compute, WORKER_MODULES) as runner, staged_dir(out_dir) as stage:
        for folder in sorted({(stage / rel).parent for *_, outs in jobs for *_, rel in outs}):
            folder.mkdir(parents=True, exist_ok=True)
        done = run_jobs(jobs, runner, stage)
        where = runner.where
        write_csv(stage / MANIFEST, manifest, FIELDS)
    seconds = time.perf_counter() - t0
    log.info(
        "wrote %d corrupted images (%d families x %d severities x %d test images) "
        "on %s in %.1fs (%.0f images/s)",
        done,
        len(params.families),
        len(params.severities),
        len(rows),
        where,
        seconds,
        done / seconds if seconds else 0.0,
    )
    return done


def main() -> None:
    """Run the stage from params.yaml."""
    params = load_params()
    corrupt(params.corrupt, compute=params.compute)


if __name__ == "__main__":
    from tasks.cli_support import run_stage

    def _sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # A terminated run (dvc/prefect cancel) unwinds through staged_dir and removes its folder.
    signal.signal(signal.SIGTERM, _sigterm)
    run_stage(main)
