"""Benchmarks run end to end on a tiny generated split (numbers are not checked: timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_models import write_tiny_split


def run_benchmark(name: str, args: list[str], cwd: Path) -> dict:
    """Run `python -m benchmarks.NAME ARGS` in cwd with this checkout on the path; its report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads((cwd / f"reports/benchmarks/{name}.json").read_text())


def test_input_pipeline_benchmark_writes_every_ratio(tmp_path: Path) -> None:
    raw, splits = write_tiny_split(tmp_path / "data", n=16, size=48)
    args = ["--split", str(splits / "train.csv"), "--raw", str(raw), "--size", "32"]
    report = run_benchmark("input_pipeline", [*args, "--epochs", "1"], tmp_path)
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

    from xray.models.architectures import build_model, save_model

    write_tiny_split(tmp_path / "data", n=40, size=32)
    (tmp_path / "params.yaml").write_text(
        "evaluate:\n  proxy_shifts: [equalize, collimation]\n  proxy_priors: [0.3]\n"
        "adapt:\n  min_images: 8\n  batch_size: 16\n"
    )
    keras.utils.set_random_seed(0)
    meta = {"image_size": 32, "threshold": 0.5, "classes": ["NORMAL", "PNEUMONIA"]}
    save_model(build_model("xray_net", 32), tmp_path / "models/base.keras", meta)
    args = ["--workdir", str(tmp_path), "--models", "base", "--variants", "none,adabn+prior"]
    report = run_benchmark("adaptation", args, tmp_path)
    variants = report["models"]["base"]
    assert set(variants) == {"none", "adabn+prior"}
    for v in variants.values():
        assert set(v["summary"]) == {"val", "val@0.3"}
        assert len(v["sets"]) == 6  # clean + 2 shifts, at 2 balances
    assert variants["adabn+prior"]["sets"]["val/clean"]["prior_estimate"] is not None


def test_finetune_options_benchmark_scores_each_option_on_val_only(tmp_path: Path) -> None:
    import keras

    from xray.models.architectures import build_model, save_model

    write_tiny_split(tmp_path / "data", n=24, size=40)
    (tmp_path / "params.yaml").write_text(
        "train:\n  threads: 1\n"
        "finetune:\n  trainable_layers: 3\n  epochs: 1\n  batch_size: 8\n"
        "corrupt:\n  families: [seed, jpeg, zoom_blur]\n  severities: [1, 3]\n"
        "  held_out: [zoom_blur]\n"
        "evaluate:\n  proxy_shifts: [equalize, collimation]\n"
    )
    keras.utils.set_random_seed(0)
    meta = {
        "arch": "xray_net",
        "image_size": 32,
        "classes": ["NORMAL", "PNEUMONIA"],
        "positive_class": "PNEUMONIA",
        "threshold": 0.5,
    }
    save_model(build_model("xray_net", 32), tmp_path / "models/base.keras", meta)
    args = ["--option", "default:", "--option", "aug:augment_strength=1.0", "--wise", "0.5"]
    report = run_benchmark("finetune_options", args, tmp_path)
    assert set(report["models"]) == {"base", "default", "aug", "wise_0.5"}
    assert report["models"]["aug"]["overrides"] == {"augment_strength": 1.0}
    sets = set(report["models"]["base"]["sets"])
    assert sets == {"clean", "finetune_families", *(f"held_out/zoom_blur/{s}" for s in (1, 3, 5))}
    assert "called_positive" in report["models"]["default"]["sets"]["held_out/zoom_blur/5"]
    for row in report["table"].values():
        assert set(row) == {
            "clean",
            "finetune_families",
            "held_out_mean",
            "proxy_mean_accuracy",
            "proxy_mean_auc",
        }


def test_base_options_benchmark_scores_each_option_and_seed_on_val_and_the_proxy(
    tmp_path: Path,
) -> None:
    from benchmarks.base_options import spread

    write_tiny_split(tmp_path / "data", n=24, size=40)
    (tmp_path / "params.yaml").write_text(
        "train:\n  threads: 1\n  image_size: 32\n  batch_size: 8\n  warmup_epochs: 0\n"
        "  augment: false\n"
        "evaluate:\n  proxy_shifts: [equalize, collimation]\n  proxy_priors: [0.5]\n"
    )
    args = ["--option", "crop:crop=0.125,mixup=0.2", "--seeds", "7", "--epochs", "1"]
    report = run_benchmark("base_options", args, tmp_path)
    assert report["complete"] is True
    run = report["runs"]["crop/seed7"]
    assert run["overrides"] == {"crop": 0.125, "mixup": 0.2} and run["seed"] == 7
    kinds = run["scores"]
    assert kinds["shift"]["sets"] == 2 and kinds["balance"]["sets"] == 2  # no test split read
    assert kinds["damage"]["sets"] == 2 and kinds["clean"]["sets"] == 1
    assert set(kinds["balance"]) == {"sets", "auc", "ece", "accuracy", "spec_at_sens95"}
    assert report["options"]["crop"]["seeds"] == 1
    # over seeds: mean and sample standard deviation of every kind's metrics and the time
    other = {**run, "train_seconds": run["train_seconds"] + 2.0}
    other["scores"] = {k: {**v, "auc": v["auc"] - 0.1} for k, v in kinds.items()}
    both = spread([run, other])
    assert both["train_seconds"]["sd"] == pytest.approx(1.414, abs=0.05)
    assert both["shift"]["auc"]["mean"] == pytest.approx(kinds["shift"]["auc"] - 0.05, abs=1e-4)
    assert both["shift"]["auc"]["sd"] == pytest.approx(0.0707, abs=1e-3)
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.base_options", "--option", "bad:crop=0.9"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )  # a bad option stops before any training, in one line naming it and the key
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --option bad: train.crop")


REAL_ARCHIVE = ROOT.parent / "shared" / "datasets" / "chest_xray_224_train.zip"


@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason="the real archive is not here")
def test_corrupt_benchmark_runs_the_baseline_beside_the_current_code(tmp_path: Path) -> None:
    args = ["--archive", str(REAL_ARCHIVE), "--images", "2", "--severities", "1"]
    report = run_benchmark("corrupt", [*args, "--workers", "1", "2"], tmp_path)
    runs = {(r["code"], r["workers"]): r for r in report["runs"]}
    assert set(runs) == {(c, w) for c in ("baseline", "current") for w in (1, 2)}
    assert all(r["images"] == 2 * 17 for r in runs.values())
    assert runs["baseline", 1]["files"] == 2 * 17 + 1  # one PNG per image + manifest
    assert runs["current", 1]["files"] == 17 + 1  # one zip per family x severity + manifest
    assert report["current_byte_identical_across_workers"] is True
    assert set(report["speedup"]) == {"1", "2"}


def test_evaluate_benchmark_carves_both_layouts_with_the_same_images(tmp_path: Path) -> None:
    from test_corrupt import make_split

    from benchmarks.evaluate import carve
    from xray.core.io import read_csv, read_gray, write_csv
    from xray.core.params import CorruptParams
    from xray.models.dataset import load_members
    from xray.perturbations.materialize import corrupt

    ws = tmp_path / "ws"
    raw, csv = make_split(ws / "data")
    (ws / "data/splits").mkdir(parents=True, exist_ok=True)
    rows = read_csv(csv)
    write_csv(ws / "data/splits/test.csv", rows, list(rows[0]))
    write_csv(ws / "data/splits/val.csv", rows, list(rows[0]))
    corrupt(CorruptParams(families=("jpeg", "elastic"), severities=(1, 2)), csv, raw,
            ws / "data/corrupted", workers=1)  # fmt: skip
    for name in ("models", "dvclive"):
        (ws / name).mkdir()
    (ws / "params.yaml").write_text("{}\n")
    dest = tmp_path / "carved"
    dest.mkdir()
    counts = carve(ws, dest, images=4, val_images=2)
    assert counts == {"test_images": 4, "corrupted_images": 4 * 2 * 2}
    new = read_csv(dest / "current/data/corrupted/manifest.csv")
    old = read_csv(dest / "baseline/data/corrupted/manifest.csv")
    assert len(new) == len(old) == 16
    zipped = load_members(dest / "current/data/corrupted", new, None)
    for r, image in zip(old, zipped, strict=True):
        assert (read_gray(dest / "baseline/data/corrupted" / r["path"]) == image).all()


def test_pipeline_benchmark_counts_linked_files_once(tmp_path: Path) -> None:
    from benchmarks.pipeline import disk_bytes

    a, b = tmp_path / "ws", tmp_path / "cache"
    a.mkdir()
    b.mkdir()
    (b / "blob").write_bytes(os.urandom(64 * 1024))
    os.link(b / "blob", a / "blob")
    together = disk_bytes(a, b)
    assert disk_bytes(a) >= 64 * 1024 and disk_bytes(b) >= 64 * 1024
    assert together < disk_bytes(a) + disk_bytes(b)
    assert disk_bytes(tmp_path / "missing") == 0


def test_scale_benchmark_sizes_the_source_and_measures_a_process_tree(tmp_path: Path) -> None:
    from benchmarks.scale import measured, patients_for
    from xray.core.params import SyntheticParams
    from xray.data.intake.synthetic import count

    classes = ("NORMAL", "PNEUMONIA")
    synthetic = SyntheticParams().model_dump()
    ppc = patients_for(5216, synthetic, classes)  # the real archive's image count
    images = count(SyntheticParams(**{**synthetic, "patients_per_class": ppc}), classes)
    assert abs(images - 5216) <= 4  # a patient more or less moves it by ~7 (both classes)
    # the memory of a grandchild is in the tree's sum and in the largest process
    child = "import time; b = b'x' * 200_000_000; time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    m = measured([sys.executable, "-c", parent], tmp_path, dict(os.environ), tmp_path / "log")
    assert m["peak_rss_bytes"] >= 200_000_000 and m["max_process_rss_bytes"] >= 200_000_000
    assert m["seconds"] >= 1.5 and m["cpu_seconds"] > 0


@pytest.mark.slow
def test_scale_benchmark_runs_every_stage_at_a_tiny_size(tmp_path: Path) -> None:
    cut = [
        "train.augment=false",
        "corrupt.families=[seed, jpeg]",
        "corrupt.held_out=[jpeg]",
        "corrupt.severities=[3]",
        "evaluate.proxy_shifts=[equalize]",
        "evaluate.proxy_priors=[0.5]",
        "adapt.models=[]",
        "finetune.augmix_views=0",
    ]
    args = ["--sizes", "40", "--epochs", "1", "--train-size", "32", "--repeat", "1"]
    report = run_benchmark("scale", [*args, *(a for c in cut for a in ("--set", c))], tmp_path)
    assert report["complete"] is True and report["sizes"] == [40]
    assert abs(report["images"]["40"] - 40) <= 4
    assert report["cut"]["corrupt.families"] == ["seed", "jpeg"]
    stages = ("download", "split", "corrupt", "train_base", "finetune", "evaluate")
    assert report["stage_order"] == list(stages) and set(report["stages"]) == set(stages)
    for stage in stages:
        m = report["stages"][stage]["40"]
        for key in ("seconds", "seconds_per_image", "peak_rss_bytes", "max_process_rss_bytes"):
            assert m[key] > 0, (stage, key)
        assert m["out_bytes"] > 0 and m["out_files"] > 0 and m["cache_files"] > 0
    assert report["stages"]["download"]["40"]["out_files"] >= 40  # one PNG per image
    assert report["dvc_status_seconds"]["40"] > 0 and report["noop_run_seconds"]["40"] > 0
    noop = report["noop_run"]["40"]
    assert noop["dvc_lock_unchanged"] is True
    assert any("none (all cached)" in line for line in noop["stages_run_lines"])
    assert "up to date" in report["stale_after_stages"]["40"]
    assert report["disk"]["40"]["together_bytes"] > 0
