"""Wall time until validation accuracy (threshold 0.5) reaches a target, seed recipe vs default,
on the patient-grouped train/val split of the real training archive.

The seed recipe: seed_cnn at 150x150, Adam 1e-3, the seed's ImageDataGenerator augmentation
(decoding every epoch), no class weights. The default: params.yaml's train section with
this project's pipeline. Each recipe stops at the target or after --max-minutes.

    python -m benchmarks.time_to_accuracy [--target 0.9] [--max-minutes 12]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import keras

from benchmarks._common import machine, write_report
from xray.core.io import read_csv
from xray.core.params import load_params
from xray.models.architectures import build_model
from xray.models.dataset import class_weights, load_split, make_dataset
from xray.models.training import compile_model, configure, learning_rate
from xray.perturbations.augment import augmenter
from xray.perturbations.keras_seed import SEED_BLOG

SEED_SIZE = 150
SEED_LR = 1e-3
BATCH = 32
POSITIVE = "PNEUMONIA"


class Clock(keras.callbacks.Callback):
    """Record wall time and val accuracy per epoch; stop at the target or the time limit."""

    def __init__(self, t0: float, target: float, limit_s: float) -> None:
        super().__init__()
        self.t0, self.target, self.limit_s = t0, target, limit_s
        self.epochs: list[dict[str, float]] = []
        self.reached_s: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        now = time.perf_counter() - self.t0
        acc = float(logs.get("val_accuracy", 0.0))
        self.epochs.append(
            {
                "epoch": epoch + 1,
                "wall_s": round(now, 1),
                "val_accuracy": round(acc, 4),
                "val_auc": round(float(logs.get("val_auc", 0.0)), 4),
            }
        )
        print(self.epochs[-1], flush=True)
        if acc >= self.target and self.reached_s is None:
            self.reached_s = now
            self.model.stop_training = True
        elif now > self.limit_s:
            self.model.stop_training = True


def default_recipe(splits: Path, raw: Path, target: float, limit_s: float) -> dict[str, Any]:
    """params.yaml's train recipe."""
    p = load_params().train
    configure(p.seed, False, p.threads)
    t0 = time.perf_counter()
    x, y, _ = load_split(splits / "train.csv", p.image_size, POSITIVE, raw)
    xv, yv, _ = load_split(splits / "val.csv", p.image_size, POSITIVE, raw)
    steps = math.ceil(len(x) / p.batch_size)
    model = build_model(p.arch, p.image_size)
    lr = learning_rate(
        p.lr_schedule,
        p.learning_rate,
        epochs=p.epochs,
        steps_per_epoch=steps,
        warmup_epochs=p.warmup_epochs,
    )
    compile_model(model, lr, p.weight_decay)
    clock = Clock(t0, target, limit_s)
    model.fit(
        make_dataset(
            x,
            y,
            p.batch_size,
            shuffle_seed=p.seed,
            augment=augmenter(p.seed, p.augment_strength) if p.augment else None,
        ),
        validation_data=make_dataset(xv, yv, p.batch_size),
        epochs=p.epochs,
        class_weight=class_weights(y),
        callbacks=[clock],
        verbose=2,
    )
    return {
        "recipe": f"{p.arch}@{p.image_size} (params.yaml)",
        "reached_s": clock.reached_s,
        "epochs": clock.epochs,
    }


def seed_recipe(splits: Path, raw: Path, target: float, limit_s: float) -> dict[str, Any]:
    """The seed's model, optimizer and ImageDataGenerator pipeline."""
    import pandas as pd
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    configure(0, False, 0)
    t0 = time.perf_counter()
    rows = read_csv(splits / "train.csv")
    df = pd.DataFrame(
        {"filename": [str(raw / r["path"]) for r in rows], "class": [r["label"] for r in rows]}
    )
    gen = ImageDataGenerator(
        rotation_range=SEED_BLOG.rotation_range,
        shear_range=SEED_BLOG.shear_range,
        zoom_range=SEED_BLOG.zoom_range,
        horizontal_flip=True,
        brightness_range=SEED_BLOG.brightness_range,
        channel_shift_range=SEED_BLOG.channel_shift_range,
    )
    flow = gen.flow_from_dataframe(
        df,
        target_size=(SEED_SIZE, SEED_SIZE),
        color_mode="grayscale",
        class_mode="binary",
        batch_size=BATCH,
        shuffle=True,
        seed=0,
        validate_filenames=False,
    )
    xv, yv, _ = load_split(splits / "val.csv", SEED_SIZE, POSITIVE, raw)
    model = build_model("seed_cnn", SEED_SIZE)
    compile_model(model, SEED_LR, 0.0)
    clock = Clock(t0, target, limit_s)
    model.fit(
        flow, validation_data=make_dataset(xv, yv, BATCH), epochs=1000, callbacks=[clock], verbose=2
    )
    return {
        "recipe": "seed_cnn@150, Adam 1e-3, ImageDataGenerator",
        "reached_s": clock.reached_s,
        "epochs": clock.epochs,
    }


def main() -> None:
    """Run both recipes and report the time each needed to reach the target."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--splits", type=Path, default=Path("data/splits"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--max-minutes", type=float, default=12.0)
    ap.add_argument("--only", choices=("seed", "default"), default=None)
    a = ap.parse_args()
    start = machine()
    limit = a.max_minutes * 60
    results = {}
    if a.only in (None, "default"):
        results["default"] = default_recipe(a.splits, a.raw, a.target, limit)
    if a.only in (None, "seed"):
        results["seed"] = seed_recipe(a.splits, a.raw, a.target, limit)
    d, s = results.get("default", {}).get("reached_s"), results.get("seed", {}).get("reached_s")
    write_report(
        "time_to_accuracy",
        {
            "target_val_accuracy": a.target,
            "max_seconds_per_recipe": limit,
            "train_images": len(read_csv(a.splits / "train.csv")),
            **results,
            "speedup": round(s / d, 1) if d and s else None,
            "machine_start": start,
        },
    )


if __name__ == "__main__":
    main()
