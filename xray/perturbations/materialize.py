"""The corrupt stage's work: materialize corrupted copies of the test split as PNG images.

Writes one uncompressed (stored) zip of PNGs per family and severity,
``<out>/<family>/<severity>.zip`` with members ``<CLASS>/<name>.png`` in test-split
order, and ``<out>/manifest.csv`` listing every image (archive, member, label,
family, severity, patient, the PNG's sha256, its source). 85 files instead of tens of
thousands: `dvc status` and DVC's cache handle a few large files quickly, and a stored zip
costs no decompression to read (the PNGs are compressed already). Zip members carry a
fixed timestamp and mode, so the archives are deterministic.

Each image's randomness derives from (its source's content hash, family, severity, seed)
only, and each image is made by exactly one job, so the output is byte-identical across
runs, machines, worker counts and executors (`compute.executor`: local processes or a Dask
cluster, see xray/core/compute.py). Workers get the source bytes and return PNG bytes; only
this process writes files. The folder is built aside (a hidden temporary sibling) and
renamed when complete, so an interrupted run leaves the previous output untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from xray.core.compute import Runner, keep_freed_memory
from xray.core.io import (
    decode_gray,
    png_bytes_fast,
    read_csv,
    staged_dir,
    write_csv,
    zip_member_info,
)
from xray.core.params import ComputeParams, CorruptParams
from xray.core.progress import Progress
from xray.perturbations.corruptions import corrupt_image, rng_for

log = logging.getLogger("xray.corrupt")

MANIFEST = "manifest.csv"
FIELDS = (
    "archive",  # <family>/<severity>.zip, relative to the manifest's folder
    "member",  # <CLASS>/<name>.png inside it
    "label",
    "family",
    "severity",
    "patient_id",
    "sha256",  # of the corrupted PNG (the member's bytes)
    "source_path",  # the clean image, relative to data/raw
    "source_sha256",
)
IMAGES_PER_TASK = 2  # source images per task (every family x severity): a short tail
WORKER_MODULES = (
    "xray.perturbations.materialize",
    "xray.perturbations.corruptions",
    "xray.perturbations.numeric",
    "xray.perturbations.keras_seed",
    "xray.perturbations.medmnist",
    "xray.perturbations.held_out",
    "xray.perturbations.names",
    "xray.core.io",
)
"""The code a worker runs for this stage: a Dask worker must have the same (checked)."""

# One output image: (family, severity, archive relative to the output folder, member).
Output = tuple[str, int, str, str]
# One source image and everything made from it: (source file, sha256, seed, [Output]).
# Decoded once per job.
Job = tuple[str, str, int, list[Output]]
# What a worker gets for a job: the same with the source file's bytes, so it needs no
# access to the workspace; it returns [(archive, member, PNG bytes, sha256 of the PNG)].
Task = tuple[str, bytes, str, int, list[Output]]
Result = tuple[str, str, bytes, str]


def _work(tasks: list[Task]) -> list[Result]:
    """Corrupt one chunk of source images, bytes in, PNG bytes out (runs on a worker)."""
    keep_freed_memory()  # image temporaries reuse memory: 2x faster, same bytes
    out = []
    for src, data, sha, seed, outputs in tasks:
        try:
            image = decode_gray(data)
        except (OSError, ValueError) as e:
            raise ValueError(f"{src}: cannot read image ({e})") from None
        for family, severity, archive, member in outputs:
            corrupted = corrupt_image(image, family, severity, rng_for(sha, family, severity, seed))
            png = png_bytes_fast(corrupted)
            out.append((archive, member, png, hashlib.sha256(png).hexdigest()))
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


def archive_name(family: str, severity: int) -> str:
    """The zip of one family and severity, relative to the output folder."""
    return f"{family}/{severity}.zip"


def plan(
    rows: Sequence[dict[str, str]],
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    raw_dir: Path,
) -> tuple[list[Job], list[dict[str, object]]]:
    """Jobs (one per source image) and manifest rows (family, severity, then test order).

    The manifest rows' `sha256` (of the corrupted PNG) is filled in as the images are made.
    """
    outputs: list[list[Output]] = [[] for _ in rows]
    manifest: list[dict[str, object]] = []
    seen: dict[str, str] = {}
    for row in rows:
        member = f"{row['label']}/{Path(row['path']).stem}.png"
        if member in seen:
            raise ValueError(
                f"test split: {row['path']} and {seen[member]} would both be written "
                f"as {member} (same class and file stem)"
            )
        seen[member] = row["path"]
    for family in families:
        for severity in severities:
            archive = archive_name(family, severity)
            for i, row in enumerate(rows):
                member = f"{row['label']}/{Path(row['path']).stem}.png"
                outputs[i].append((family, severity, archive, member))
                manifest.append(
                    {
                        "archive": archive,
                        "member": member,
                        "label": row["label"],
                        "family": family,
                        "severity": severity,
                        "patient_id": row["patient_id"],
                        "sha256": "",
                        "source_path": row["path"],
                        "source_sha256": row["sha256"],
                    }
                )
    jobs = [
        (str(raw_dir / row["path"]), row["sha256"], seed, out)
        for row, out in zip(rows, outputs, strict=True)
    ]
    return jobs, manifest


def run_jobs(jobs: list[Job], runner: Runner, stage: Path) -> dict[tuple[str, str], str]:
    """Run jobs on the runner's executor, writing the zips under stage.

    Results come back in job order, so every zip gets its members in test-split order.
    Returns the sha256 of every image by (archive, member).
    """
    chunks = [jobs[i : i + IMAGES_PER_TASK] for i in range(0, len(jobs), IMAGES_PER_TASK)]
    archives = sorted({archive for *_, outs in jobs for _, _, archive, _ in outs})
    shas: dict[tuple[str, str], str] = {}
    total = sum(len(outs) for *_, outs in jobs)
    with contextlib.ExitStack() as stack:
        zips = {}
        for archive in archives:
            (stage / archive).parent.mkdir(parents=True, exist_ok=True)
            zips[archive] = stack.enter_context(
                zipfile.ZipFile(stage / archive, "w", zipfile.ZIP_STORED)
            )
        progress = stack.enter_context(Progress(total, "corrupt", log, unit="images"))
        for results in runner.imap(_work, chunks, _load):
            for archive, member, data, sha in results:
                zips[archive].writestr(zip_member_info(member), data)
                shas[(archive, member)] = sha
            progress.update(len(results))
    return shas


def corrupt(
    params: CorruptParams,
    test_csv: Path,
    raw_dir: Path,
    out_dir: Path,
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
        shas = run_jobs(jobs, runner, stage)
        where = runner.where
        for row in manifest:
            row["sha256"] = shas[(str(row["archive"]), str(row["member"]))]
        write_csv(stage / MANIFEST, manifest, FIELDS)
    done = len(shas)
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
