"""Input pipeline images/s: tasks.data (decode once, cache, tf.data + Keras augmentation)
versus the seed's ImageDataGenerator (decode every epoch), same files, same size, one run.

    python -m benchmarks.input_pipeline [--split data/splits/train.csv] [--limit 1024]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import machine, write_report
from tasks.corruptions import SEED_BLOG
from tasks.data import RAW_DIR, labels_of, load_images, make_dataset
from tasks.io import read_csv
from tasks.training import augmenter

EPOCHS = 3
BATCH = 32
SEED = 0


def ours(
    paths: list[Path], y: np.ndarray, size: int, epochs: int, augment: bool = True
) -> dict[str, float]:
    """Decode once into memory, then `epochs` passes of (augmented) tf.data batches."""
    t0 = time.perf_counter()
    x = load_images(paths, size)
    decode = time.perf_counter() - t0
    ds = make_dataset(x, y, BATCH, shuffle_seed=SEED, augment=augmenter(SEED) if augment else None)
    per_epoch = []
    for _ in range(epochs):
        t = time.perf_counter()
        n = sum(int(b[0].shape[0]) for b in ds)
        per_epoch.append(time.perf_counter() - t)
    total = decode + sum(per_epoch)
    return {
        "decode_s": round(decode, 2),
        "epoch_s": [round(s, 2) for s in per_epoch],
        "images_per_s_cached_epoch": round(n / min(per_epoch), 1),
        "images_per_s_overall": round(n * epochs / total, 1),
    }


def seed_generator(
    paths: list[Path], labels: list[str], size: int, epochs: int, augment: bool = True
) -> dict:
    """The seed's ImageDataGenerator.flow_from_dataframe (with its augmentation), per epoch."""
    import pandas as pd
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    ranges = {
        "rotation_range": SEED_BLOG.rotation_range,
        "shear_range": SEED_BLOG.shear_range,
        "zoom_range": SEED_BLOG.zoom_range,
        "horizontal_flip": True,
        "brightness_range": SEED_BLOG.brightness_range,
        "channel_shift_range": SEED_BLOG.channel_shift_range,
    }
    gen = ImageDataGenerator(rescale=1.0 / 255, **(ranges if augment else {}))
    df = pd.DataFrame({"filename": [str(p) for p in paths], "class": labels})
    flow = gen.flow_from_dataframe(
        df,
        target_size=(size, size),
        color_mode="grayscale",
        class_mode="binary",
        batch_size=BATCH,
        shuffle=True,
        seed=SEED,
        validate_filenames=False,
    )
    per_epoch = []
    for _ in range(epochs):
        t = time.perf_counter()
        n = 0
        for i in range(len(flow)):
            n += len(flow[i][0])
        per_epoch.append(time.perf_counter() - t)
    return {
        "epoch_s": [round(s, 2) for s in per_epoch],
        "images_per_s_best_epoch": round(n / min(per_epoch), 1),
        "images_per_s_overall": round(n * epochs / sum(per_epoch), 1),
    }


def main() -> None:
    """Run both pipelines over the same files and report images/s and the speed-up."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", type=Path, default=Path("data/splits/train.csv"))
    ap.add_argument("--raw", type=Path, default=RAW_DIR)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--limit", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    a = ap.parse_args()
    rows = read_csv(a.split)[: a.limit]
    paths = [a.raw / r["path"] for r in rows]
    start = machine()
    y, labels = labels_of(rows, "PNEUMONIA"), [r["label"] for r in rows]
    mine = ours(paths, y, a.size, a.epochs)
    seed = seed_generator(paths, labels, a.size, a.epochs)
    mine_plain = ours(paths, y, a.size, a.epochs, augment=False)
    seed_plain = seed_generator(paths, labels, a.size, a.epochs, augment=False)
    write_report(
        "input_pipeline",
        {
            "images": len(rows),
            "image_size": a.size,
            "epochs": a.epochs,
            "ours": mine,
            "seed_image_data_generator": seed,
            "speedup_steady_state": round(
                mine["images_per_s_cached_epoch"] / seed["images_per_s_best_epoch"], 1
            ),
            "speedup_overall": round(
                mine["images_per_s_overall"] / seed["images_per_s_overall"], 1
            ),
            "without_augmentation": {
                "ours": mine_plain,
                "seed_image_data_generator": seed_plain,
                "speedup_steady_state": round(
                    mine_plain["images_per_s_cached_epoch"] / seed_plain["images_per_s_best_epoch"],
                    1,
                ),
                "speedup_overall": round(
                    mine_plain["images_per_s_overall"] / seed_plain["images_per_s_overall"], 1
                ),
            },
            "goal": ">= 10x",
            "machine_start": start,
        },
    )


if __name__ == "__main__":
    main()
