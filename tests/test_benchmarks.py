"""Benchmarks run end to end on a tiny generated split (numbers are not checked: timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from test_models import write_tiny_split


def test_input_pipeline_benchmark_writes_every_ratio(tmp_path: Path) -> None:
    raw, splits = write_tiny_split(tmp_path / "data", n=16, size=48)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = ["--split", str(splits / "train.csv"), "--raw", str(raw), "--size", "32"]
    subprocess.run(
        [sys.executable, "-m", "benchmarks.input_pipeline", *args, "--epochs", "1"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads((tmp_path / "reports/benchmarks/input_pipeline.json").read_text())
    assert report["images"] == 16
    assert set(report["ours"]) == {"acquisition", "acquisition_bilinear", "seed_set", "none"}
    for ratio in report["speedup"].values():
        assert set(ratio) == {
            "images_per_s_median_epoch",
            "images_per_s_best_epoch",
            "images_per_s_overall",
            "images_per_cpu_s",
        }
        assert all(v > 0 for v in ratio.values())
