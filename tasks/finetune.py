"""Stage `finetune`: freeze most of the base model and adapt the rest to corrupted images.

Follows the Keras transfer-learning guide: freeze by ``trainable``, BatchNorm always
kept in inference mode (frozen), recompile, low learning rate. Training images are
the train split corrupted on the fly with fresh randomness each epoch by the same
(non-held-out) families the corrupt stage materializes for test; the materialized
test images are never read. With `augmix_views`, each draw is trained beside AugMix
copies of itself under a consistency loss (xray/perturbations/augmix.py). Selection uses corrupted
and clean validation images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import keras
import numpy as np

from xray.adaptation.references import source_references
from xray.core.hashing import bytes_sha256
from xray.core.io import read_csv, write_csv
from xray.core.params import Params, load_params
from xray.models.architectures import load_model, read_meta, save_model
from xray.models.dataset import RAW_DIR, class_weights, labels_of, load_images, make_dataset, resize
from xray.models.distribute import localize, make_strategy, replicated, split_rows
from xray.models.resume import finish
from xray.models.threshold import choose_threshold
from xray.models.training import compile_model, configure, fit, predict
from xray.perturbations.augment import AcquisitionAugment, augmenter
from xray.perturbations.augmix import ConsistencyLoss, Views, chain_augmenter, mixed_views
from xray.perturbations.corruptions import corrupt_image, rng_for

log = logging.getLogger("xray.finetune")

SPLITS_DIR = Path("data/splits")
BASE = Path("models/base.keras")
MODEL = Path("models/finetuned.keras")
LIVE_DIR = Path("dvclive/finetune")
WORK_DIR = Path("models/.finetune.work")
LAYERS_CSV = Path("reports/finetune_layers.csv")
CORRUPT_THREADS = 2
AUG_KEY_STRIDE = 1 << 32  # augmentation key of a batch: (seed, epoch * stride + first row)


def freeze(
    model: keras.Model, trainable_layers: int, unfreeze_from: str | None
) -> list[dict[str, Any]]:
    """Freeze all but the tail of the model; BatchNorm stays frozen. Return the layer table.

    The tail starts at the layer named `unfreeze_from`, or else at the N-th last layer
    that owns weights (BatchNorm not counted), N = `trainable_layers`.
    """
    layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
    names = [lyr.name for lyr in layers]
    if unfreeze_from is not None:
        if unfreeze_from not in names:
            raise ValueError(
                f"finetune.unfreeze_from: no layer named {unfreeze_from!r} in {model.name}"
            )
        start = names.index(unfreeze_from)
    else:
        weighted = [
            i
            for i, lyr in enumerate(layers)
            if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)
        ]
        start = weighted[-min(trainable_layers, len(weighted))]
    table = []
    for i, lyr in enumerate(layers):
        lyr.trainable = i >= start and not isinstance(lyr, keras.layers.BatchNormalization)
        table.append(
            {
                "index": i,
                "name": lyr.name,
                "type": type(lyr).__name__,
                "trainable": lyr.trainable,
                "params": int(sum(np.prod(w.shape) for w in lyr.weights)),
            }
        )
    return table


def pick(
    key: str, families: Sequence[str], severities: Sequence[int], seed: int
) -> tuple[str, int]:
    """Choose a (family, severity) for one draw, deterministically from its key."""
    rng = rng_for(key, "pick", 0, seed)
    return families[int(rng.integers(len(families)))], int(
        severities[int(rng.integers(len(severities)))]
    )


def corrupt_one(
    image: np.ndarray,
    key: str,
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    size: int,
    clean_fraction: float = 0.0,
) -> np.ndarray:
    """One corrupted (or, with probability `clean_fraction`, clean) resized copy of an image.

    Randomness comes from `key` only.
    """
    if clean_fraction > 0 and rng_for(key, "clean", 0, seed).random() < clean_fraction:
        return resize(image, size)
    family, severity = pick(key, families, severities, seed)
    out = corrupt_image(image, family, severity, rng_for(key, family, severity, seed))
    return resize(out, size)


def corrupted_val(
    images: Sequence[np.ndarray],
    rows: Sequence[dict[str, str]],
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    size: int,
) -> np.ndarray:
    """(N, size, size, 1): one fixed corrupted copy of each val image, as selection sees it."""
    return np.stack(
        [
            corrupt_one(img, f"{r['sha256']}|val", families, severities, seed, size)
            for img, r in zip(images, rows, strict=True)
        ]
    )[..., None]


def corrupted_batches(
    images: list[np.ndarray],
    shas: list[str],
    y: np.ndarray,
    *,
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    size: int,
    batch_size: int,
    clean_fraction: float = 0.0,
    first_epoch: int = 0,
    rows: int | None = None,
    augment: AcquisitionAugment | None = None,
    views: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches of freshly corrupted training images, from `first_epoch` on.

    `rows` (default: all) images of each epoch's order are used
    (xray.models.distribute.usable_rows).
    With `augment`, each batch then goes through it, keyed by (seed, epoch, batch): the
    same draws on a rerun or a resumed run. With `views`, each batch becomes
    (N, 1 + views, H, W, 1): the draws and their AugMix copies
    (xray.perturbations.augmix.mixed_views, keyed the same way).
    """
    n = len(images)
    chains = chain_augmenter(seed) if views else None
    with ThreadPoolExecutor(CORRUPT_THREADS) as pool:
        for epoch in range(first_epoch, 1 << 30):
            order = np.random.default_rng([seed, epoch]).permutation(n)[:rows]
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                keys = [f"{shas[i]}|train|{epoch}" for i in idx]
                xs = list(
                    pool.map(
                        lambda i, k: corrupt_one(
                            images[i], k, families, severities, seed, size, clean_fraction
                        ),
                        idx,
                        keys,
                    )
                )
                batch = np.stack(xs)[..., None]
                if augment is not None:
                    key = np.array([seed, epoch * AUG_KEY_STRIDE + start], np.int64)
                    batch = np.asarray(augment(batch, training=True, key=key))
                if chains is not None:
                    batch = mixed_views(batch, chains, views, (seed, epoch, start))
                yield batch.astype("float32"), y[idx].astype("float32")


def finetune(
    params: Params,
    splits_dir: Path = SPLITS_DIR,
    base_path: Path = BASE,
    model_path: Path = MODEL,
    live_dir: Path = LIVE_DIR,
    work_dir: Path = WORK_DIR,
    layers_csv: Path = LAYERS_CSV,
    raw_dir: Path = RAW_DIR,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Fine-tune the base model's tail on corrupted training images; save with a new threshold."""
    import tensorflow as tf

    p = params.finetune
    families = list(params.corrupt.finetune_families)  # never empty: xray/core/params.py checks
    severities = list(params.corrupt.severities)
    configure(p.seed, params.train.deterministic, params.train.threads)
    strategy = make_strategy(p.strategy, params.train.cpu_replicas, key="finetune.strategy")
    table: list[dict[str, Any]] = []

    def build() -> keras.Model:
        """The base model, frozen and compiled (under the strategy; outside it for the output).

        With AugMix, wrapped in `Views` and compiled with the consistency loss.
        """
        model, _ = load_model(base_path)
        table[:] = freeze(model, p.trainable_layers, p.unfreeze_from)
        if p.augmix_views:
            model = Views(model, name="augmix")
            compile_model(model, p.learning_rate, loss=ConsistencyLoss(p.consistency))
        else:
            compile_model(model, p.learning_rate)
        return model

    with strategy.scope():
        model = build()
    meta = read_meta(base_path)
    size, positive = int(meta["image_size"]), meta["positive_class"]
    write_csv(layers_csv, table, ("index", "name", "type", "trainable", "params"))
    trainable = [r for r in table if r["trainable"] and r["params"]]
    log.info(
        "trainable layers (%d of %d, %d weights):\n%s",
        len(trainable),
        len(table),
        sum(r["params"] for r in trainable),
        "\n".join(
            f"  {r['index']:3d} {r['name']:<24} {r['type']:<20} {r['trainable']!s:<5} {r['params']}"
            for r in table
        ),
    )

    train_rows = read_csv(splits_dir / "train.csv")
    val_rows = read_csv(splits_dir / "val.csv")
    images = load_images([raw_dir / r["path"] for r in train_rows], None)
    y_train = labels_of(train_rows, positive)
    val_raw = load_images([raw_dir / r["path"] for r in val_rows], None)
    x_val = corrupted_val(val_raw, val_rows, families, severities, p.seed, size)
    y_val = labels_of(val_rows, positive)
    x_clean = np.stack([resize(img, size) for img in val_raw])[..., None]
    val_prior = float(np.mean(y_val))
    threshold_sets = [(x_val, y_val)] + ([(x_clean, y_val)] if p.clean_fraction > 0 else [])
    if p.clean_fraction > 0:  # select and set the threshold on clean and corrupted val alike
        x_val = np.concatenate([x_val, x_clean])
        y_val = np.concatenate([y_val, y_val])

    replicas = int(strategy.num_replicas_in_sync)
    n_train, n_val = split_rows(
        "finetune.batch_size", p.batch_size, replicas, len(images), len(x_val)
    )
    shape = (size, size, 1) if not p.augmix_views else (1 + p.augmix_views, size, size, 1)
    signature = (
        tf.TensorSpec((None, *shape), tf.float32),
        tf.TensorSpec((None,), tf.float32),
    )
    shas = [r["sha256"] for r in train_rows]
    augment = augmenter(p.seed, p.augment_strength) if p.augment_strength > 0 else None

    def train_data(first_epoch: int) -> tf.data.Dataset:
        """Corrupted training batches whose first pass is epoch `first_epoch`."""
        return tf.data.Dataset.from_generator(
            lambda: corrupted_batches(
                images,
                shas,
                y_train,
                families=families,
                severities=severities,
                seed=p.seed,
                size=size,
                batch_size=p.batch_size,
                clean_fraction=p.clean_fraction,
                first_epoch=first_epoch,
                rows=n_train,
                augment=augment,
                views=p.augmix_views,
            ),
            output_signature=signature,
        ).prefetch(2)

    val_ds = make_dataset(x_val[:n_val], y_val[:n_val], p.batch_size)
    t0 = time.perf_counter()
    with replicated(model, strategy, train_data(0)):
        summary = fit(
            model,
            train_data,
            val_ds,
            epochs=p.epochs,
            patience=p.patience,
            live_dir=live_dir,
            work_dir=work_dir,
            class_weight=class_weights(y_train),
            steps_per_epoch=math.ceil(n_train / p.batch_size),
            extra_callbacks=callbacks,
            fingerprint=p.model_dump_json() + bytes_sha256(base_path.read_bytes()),
        )
    seconds = time.perf_counter() - t0
    summary["replicas"] = replicas
    model = localize(model, strategy, build)
    if isinstance(model, Views):
        model = model.inner
    threshold = choose_threshold(y_val, predict(model, x_val, p.batch_size))
    new_meta = {
        **read_meta(base_path),
        "threshold": threshold,
        "stage": "finetune",
        "threshold_rule": "youden_j_midplateau_on_clean_and_corrupted_val"
        if p.clean_fraction > 0
        else "youden_j_midplateau_on_corrupted_val",
        "finetune_clean_fraction": p.clean_fraction,
        "finetune_augmix_views": p.augmix_views,
        "finetune_consistency": p.consistency if p.augmix_views else 0.0,
        "finetune_families": families,
        "finetune_severities": severities,
        "val_prior": round(val_prior, 6),
        **source_references(model, x_clean, threshold_sets, p.batch_size),
    }
    save_model(model, model_path, new_meta)
    finish(work_dir)
    log.info(
        "fine-tuned in %.0fs (%d epochs), best corrupted-val AUC %.4f, threshold %.4f",
        seconds,
        summary["epochs_run"],
        summary["best_val_auc"],
        threshold,
    )
    return {**summary, "threshold": threshold, "seconds": seconds}


def main() -> None:
    """Run the stage from params.yaml."""
    finetune(load_params())


if __name__ == "__main__":
    from xray.core.runtime import run_stage

    run_stage(main)
