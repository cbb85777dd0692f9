"""Stage `corrupt`: materialize corrupted copies of the test split as PNG files.

Writes ``data/corrupted/<family>/<severity>/<CLASS>/<name>.png`` and
``data/corrupted/manifest.csv``. Each image's randomness derives from (its content
hash, family, severity, seed) only, so the output is byte-identical across runs,
machines and worker counts. The folder is built aside and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tasks.corruptions import corrupt_image, rng_for
from tasks.io import png_bytes, read_csv, read_gray, staged_dir, write_csv
from tasks.params import CorruptParams, load_params

log = logging.getLogger("xray.corrupt")

RAW_DIR = Path("data/raw")
TEST_CSV = Path("data/splits/test.csv")
OUT_DIR = Path("data/corrupted")
FIELDS = ("path", "label", "family", "severity", "patient_id", "sha256", "source_path")
CHUNK = 16

Job = tuple[str, str, int, int, str, str]  # source file, sha256, severity, seed, family, out file


def _work(jobs: list[Job]) -> int:
    """Corrupt and write one chunk of images (runs in a worker process)."""
    for src, sha, severity, seed, family, dst in jobs:
        image = read_gray(Path(src))
        out = corrupt_image(image, family, severity, rng_for(sha, family, severity, seed))
        Path(dst).write_bytes(png_bytes(out))
    return len(jobs)


def corrupt(
    params: CorruptParams,
    test_csv: Path = TEST_CSV,
    raw_dir: Path = RAW_DIR,
    out_dir: Path = OUT_DIR,
    workers: int | None = None,
) -> int:
    """Materialize every (family, severity) of the test split; return the number of files."""
    rows = read_csv(test_csv)
    n_workers = workers if workers is not None else (params.workers or os.cpu_count() or 1)
    with staged_dir(out_dir) as stage:
        jobs: list[Job] = []
        manifest = []
        for family in params.families:
            for severity in params.severities:
                for row in rows:
                    rel = (
                        Path(family)
                        / str(severity)
                        / row["label"]
                        / (Path(row["path"]).stem + ".png")
                    )
                    (stage / rel.parent).mkdir(parents=True, exist_ok=True)
                    jobs.append(
                        (
                            str(raw_dir / row["path"]),
                            row["sha256"],
                            severity,
                            params.seed,
                            family,
                            str(stage / rel),
                        )
                    )
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
        chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
        if n_workers <= 1 or len(chunks) < 2:
            done = sum(_work(c) for c in chunks)
        else:
            with ProcessPoolExecutor(min(n_workers, len(chunks))) as pool:
                done = sum(pool.map(_work, chunks))
        write_csv(stage / "manifest.csv", manifest, FIELDS)
    log.info(
        "wrote %d corrupted images (%d families x %d severities x %d test images) with %d workers",
        done,
        len(params.families),
        len(params.severities),
        len(rows),
        n_workers,
    )
    return done


def main() -> None:
    """Run the stage from params.yaml."""
    corrupt(load_params().corrupt)


if __name__ == "__main__":
    from tasks.cli_support import run_stage

    run_stage(main)
