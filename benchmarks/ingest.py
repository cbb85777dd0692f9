"""Benchmark: ingest throughput (images/s) of the `download` stage on the real archive.

Runs `xray.data.intake.ingest.download` on a local zip source (default: the shared Kermany
training archive) into a temporary folder, once per worker count, and then the
`split` stage with default params on the result. Prints JSON and writes it to
reports/benchmarks/ingest.json.

    uv run --frozen python -m benchmarks.ingest [--archive PATH] [--workers 0 1]
        [--png-levels 1 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import xray.data.intake.ingest as stage
from xray.core.io import write_json
from xray.core.params import DataParams, SplitParams
from xray.data.intake.ingest import download
from xray.data.intake.source import probe
from xray.data.splitting import split

REAL_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/chest_xray_224_train.zip"
OUT_JSON = Path("reports/benchmarks/ingest.json")
DEFAULT_WORKERS = (0,)
"""Worker counts to time; 0 = all cores (the stage's default)."""


def run_once(archive: Path, workers: int, work: Path, png_level: int) -> dict[str, object]:
    """Ingest the archive once with `workers` processes; return timings and counts."""
    stage.INGEST_PNG_LEVEL = png_level  # read by the stage when it starts its workers
    params = DataParams(source=str(archive))
    record = work / "source.json"
    t0 = time.perf_counter()
    probe(params, record)
    t_probe = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = download(
        params,
        out_dir=work / "raw",
        quarantine_csv=work / "quarantine.csv",
        duplicates_csv=work / "duplicates.csv",
        workers=workers,
        record=record,
    )
    seconds = time.perf_counter() - t0
    return {
        "workers": workers or os.cpu_count(),
        "png_level": png_level,
        "probe_seconds": round(t_probe, 3),
        "seconds": round(seconds, 2),
        "images_per_s": round(counts["images"] / seconds, 1),
        **counts,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 2 when the archive is missing."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=REAL_ZIP)
    ap.add_argument("--workers", type=int, nargs="+", default=list(DEFAULT_WORKERS))
    ap.add_argument("--png-levels", type=int, nargs="+", default=[stage.INGEST_PNG_LEVEL])
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    args = ap.parse_args(argv)
    if not args.archive.exists():
        print(f"error: {args.archive}: not found", file=sys.stderr)
        return 2
    default_level = stage.INGEST_PNG_LEVEL
    runs = []
    split_counts: dict[str, dict[str, int]] = {}
    for level, workers in [(lv, w) for lv in args.png_levels for w in args.workers]:
        with tempfile.TemporaryDirectory(prefix="xray-bench-ingest-") as tmp:
            work = Path(tmp)
            runs.append(run_once(args.archive, workers, work, level))
            if not split_counts:
                split_counts = split(
                    SplitParams(),
                    manifest=work / "raw" / "manifest.csv",
                    out_dir=work / "splits",
                    counts_json=work / "split.json",
                    counts_csv=work / "split.csv",
                )
    stage.INGEST_PNG_LEVEL = default_level
    result = {
        "benchmark": "ingest",
        "archive": args.archive.name,
        "archive_bytes": args.archive.stat().st_size,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "stage_default": {"workers": os.cpu_count(), "png_level": default_level},
        "python": platform.python_version(),
        "params": "DataParams defaults (max_side 256), SplitParams defaults",
        "runs": runs,
        "split": split_counts,
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    from xray.core.runtime import setup_logging

    setup_logging()
    sys.exit(main())
