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


def test_adaptation_benchmark_scores_every_variant_on_the_proxy(tmp_path: Path) -> None:
    import keras

    from tasks.models import build_model, save_model

    write_tiny_split(tmp_path / "data", n=40, size=32)
    (tmp_path / "params.yaml").write_text(
        "evaluate:\n  proxy_shifts: [equalize, collimation]\n  proxy_prior: 0.3\n"
        "adapt:\n  min_images: 8\n  batch_size: 16\n"
    )
    keras.utils.set_random_seed(0)
    meta = {"image_size": 32, "threshold": 0.5, "classes": ["NORMAL", "PNEUMONIA"]}
    save_model(build_model("xray_net", 32), tmp_path / "models/base.keras", meta)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = ["--workdir", str(tmp_path), "--models", "base", "--variants", "none,adabn+prior"]
    subprocess.run(
        [sys.executable, "-m", "benchmarks.adaptation", *args],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads((tmp_path / "reports/benchmarks/adaptation.json").read_text())
    variants = report["models"]["base"]
    assert set(variants) == {"none", "adabn+prior"}
    for v in variants.values():
        assert set(v["summary"]) == {"val", "val@0.3"}
        assert len(v["sets"]) == 6  # clean + 2 shifts, at 2 balances
    assert variants["adabn+prior"]["sets"]["val/clean"]["prior_estimate"] is not None
