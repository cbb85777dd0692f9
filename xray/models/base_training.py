"""Base training: the classifier trained on the clean train split, selected on val only.

`train_base` is what the `train_base` stage runs (tasks/train_base.py gives it params and
paths): load the splits, fit under the distribution strategy with resumable checkpoints,
choose the threshold on val and seeded augmented copies of it (`threshold_sets`), and save
the model with its metadata. The prior references of the model file come from a function
the caller passes (`references`: xray.adaptation.adapt.source_references for the stage),
so that this layer does not import the adaptation layer above it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from xray.core.hashing import bytes_sha256
from xray.core.io import read_csv
from xray.core.params import Params, TrainParams
from xray.models.architectures import build_model, save_model
from xray.models.dataset import class_weights, image_cache, load_split, make_dataset
from xray.models.distribute import (
    discard,
    is_chief,
    localize,
    make_strategy,
    replicated,
    shard,
    split_rows,
    worker_dirs,
)
from xray.models.resume import advance, finish
from xray.models.threshold import choose_threshold
from xray.models.training import compile_model, configure, fit, learning_rate, precision, predict
from xray.perturbations.augment import augmenter
from xray.perturbations.mixup import mixup

log = logging.getLogger("xray.train_base")

THRESHOLD_AUG_COPIES = 2  # augmented copies of the val set joined to it for the threshold
THRESHOLD_AUG_SEED_OFFSET = 1000  # their augmentation seed: train.seed + this
MIXUP_SEED_OFFSET = 2000  # mixup's draws: train.seed + this

ThresholdSets = list[tuple[np.ndarray, np.ndarray]]
# (model, clean val images, threshold sets, batch size) -> the prior references of its file
References = Callable[[keras.Model, np.ndarray, ThresholdSets, int], dict[str, float]]


def threshold_sets(x_val: np.ndarray, y_val: np.ndarray, p: TrainParams) -> ThresholdSets:
    """The val images and seeded augmented copies of them, as (images, labels) pairs.

    A threshold fitted on clean validation images alone hugs their nearly separable scores
    (0.15 on the real archive); adding copies under the training augmentation (exposure,
    contrast, pose, blur, noise: the acquisition shift the model must survive) moves it to
    where it also holds under shift. Without augmentation, the clean images only.
    """
    sets = [(x_val, y_val)]
    if p.augment and p.augment_strength > 0:
        import tensorflow as tf

        keras.utils.set_random_seed(p.seed + THRESHOLD_AUG_SEED_OFFSET)  # same copies every run
        aug = augmenter(p.seed + THRESHOLD_AUG_SEED_OFFSET, p.augment_strength)
        for _ in range(THRESHOLD_AUG_COPIES):
            shifted = np.concatenate(
                [
                    aug(tf.cast(x_val[i : i + p.batch_size], "float32"), training=True).numpy()
                    for i in range(0, len(x_val), p.batch_size)
                ]
            )
            sets.append((shifted, y_val))  # floats 0..255, as the model takes them
    return sets


def train_base(
    params: Params,
    *,
    train_csv: Path,
    val_csv: Path,
    raw_dir: Path,
    model_path: Path,
    live_dir: Path,
    work_dir: Path,
    references: References,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train params.train.arch on the train split; save the best-on-val model with its threshold.

    Under `train.strategy` multi_worker, a non-chief worker trains in step with the chief
    and returns without writing the model or the dvclive log. The decoded images stay in
    memory or go to files beside the model (`compute.cache`): the outputs are the same.
    """
    p, c = params.train, params.compute
    configure(p.seed, p.deterministic, p.threads)
    strategy = make_strategy(p.strategy, p.cpu_replicas)  # a bad setup fails before any I/O
    n_train, n_val = (len(read_csv(csv)) for csv in (train_csv, val_csv))
    copies = 3 if p.augment and p.augment_strength > 0 else 1  # + the prepared two channels
    nbytes = (n_train * copies + n_val) * p.image_size**2
    with image_cache(c.cache, nbytes, c.cache_memory_mb, model_path) as cache:
        x_train, y_train, x_val, y_val = _load_splits(params, train_csv, val_csv, raw_dir, cache)
        fingerprint = p.model_dump_json() + bytes_sha256(
            train_csv.read_bytes() + val_csv.read_bytes()
        )
        model, summary, seconds = _fit_base(
            params,
            strategy,
            (x_train, y_train, x_val, y_val),
            live_dir,
            work_dir,
            callbacks,
            fingerprint,
        )
        if not is_chief(strategy):
            log.info("non-chief worker: trained in %.0fs; the chief writes the model", seconds)
            return {**summary, "chief": False, "seconds": seconds}
        threshold = _save_base(
            params, model, summary, (x_train, y_train, x_val, y_val), model_path, references
        )
        finish(work_dir)
        log.info(
            "trained %s in %.0fs (%d epochs, %.1f images/s), best val AUC %.4f, threshold %.4f",
            p.arch,
            seconds,
            summary["epochs_run"],
            summary["epochs_run"] * len(x_train) / seconds,
            summary["best_val_auc"],
            threshold,
        )
        return {**summary, "chief": True, "threshold": threshold, "seconds": seconds}


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_val, y_val


def _load_splits(
    params: Params, train_csv: Path, val_csv: Path, raw_dir: Path, cache: Path | None
) -> Arrays:
    """The train and val images and labels, in memory or in files in `cache`."""
    p = params.train
    positive = params.data.positive_class
    t0 = time.perf_counter()
    x_train, y_train, _ = load_split(train_csv, p.image_size, positive, raw_dir, cache)
    x_val, y_val, _ = load_split(val_csv, p.image_size, positive, raw_dir, cache)
    log.info(
        "loaded %d train / %d val images in %.1fs",
        len(x_train),
        len(x_val),
        time.perf_counter() - t0,
    )
    return x_train, y_train, x_val, y_val


def _fit_base(
    params: Params,
    strategy: Any,
    arrays: Arrays,
    live_dir: Path,
    work_dir: Path,
    callbacks: Sequence[keras.callbacks.Callback],
    fingerprint: str,
) -> tuple[keras.Model, dict[str, Any], float]:
    """The model fitted under the strategy (localized for the output), its summary, seconds.

    A non-chief worker's own work folder is discarded here: it writes nothing.
    """
    p = params.train
    x_train, y_train, x_val, y_val = arrays
    replicas = int(strategy.num_replicas_in_sync)
    n_train, n_val = split_rows(
        "train.batch_size", p.batch_size, replicas, len(x_train), len(x_val)
    )
    if n_train < len(x_train) or n_val < len(x_val):
        log.info(
            "%d replicas: a last batch of fewer images than replicas is left out "
            "(train %d of %d images per epoch, val %d of %d for the epoch metrics)",
            replicas,
            n_train,
            len(x_train),
            n_val,
            len(x_val),
        )
    steps = math.ceil(n_train / p.batch_size)
    build = _builder(p, steps)
    with strategy.scope():
        model = build()
    augment = p.augment and p.augment_strength > 0
    train_ds = make_dataset(
        x_train,
        y_train,
        p.batch_size,
        shuffle_seed=p.seed,
        augment=augmenter(p.seed, p.augment_strength) if augment else None,
        drop_remainder=n_train < len(x_train),
    )
    if p.mixup:
        train_ds = mixup(train_ds, p.mixup, p.seed + MIXUP_SEED_OFFSET)
    train_ds = shard(train_ds)
    val_ds = shard(make_dataset(x_val[:n_val], y_val[:n_val], p.batch_size))
    run_work_dir, run_live_dir = worker_dirs(strategy, work_dir, live_dir)
    t0 = time.perf_counter()
    with replicated(model, strategy, train_ds):
        summary = fit(
            model,
            lambda first_epoch: advance(train_ds, first_epoch),
            val_ds,
            epochs=p.epochs,
            patience=p.patience,
            live_dir=run_live_dir,
            work_dir=run_work_dir,
            class_weight=class_weights(y_train),
            steps_per_epoch=steps,
            reduce_on_plateau=p.lr_schedule == "plateau",
            extra_callbacks=callbacks,
            fingerprint=fingerprint,
        )
    seconds = time.perf_counter() - t0
    summary["replicas"] = replicas
    model = localize(model, strategy, build)
    if not is_chief(strategy):
        discard(run_work_dir)
    return model, summary, seconds


def _builder(p: TrainParams, steps: int) -> Callable[[], keras.Model]:
    """build(): the compiled model, under the strategy to train, outside it for the output."""
    lr = learning_rate(
        p.lr_schedule,
        p.learning_rate,
        epochs=p.epochs,
        steps_per_epoch=steps,
        warmup_epochs=p.warmup_epochs,
    )

    def build() -> keras.Model:
        with precision(p.mixed_precision):
            model = build_model(p.arch, p.image_size, p.weights, p.normalize, p.crop)
        compile_model(model, lr, p.weight_decay, jit_compile=p.jit_compile)
        return model

    return build


def _save_base(
    params: Params,
    model: keras.Model,
    summary: dict[str, Any],
    arrays: Arrays,
    model_path: Path,
    references: References,
) -> float:
    """Choose the threshold, save the model with its metadata; the threshold."""
    p = params.train
    _, y_train, x_val, y_val = arrays
    sets = threshold_sets(x_val, y_val, p)
    threshold = choose_threshold(
        np.concatenate([y for _, y in sets]),
        np.concatenate([predict(model, x, p.batch_size) for x, _ in sets]),
    )
    meta = {
        "arch": p.arch,
        "normalize": p.normalize,
        "crop": p.crop,
        "mixup": p.mixup,
        "image_size": p.image_size,
        "channels": 1,
        "classes": list(params.data.classes),
        "positive_class": params.data.positive_class,
        "threshold": threshold,
        "threshold_rule": "youden_j_midplateau_on_val_and_augmented_val",
        "stage": "train_base",
        "best_epoch": summary["best_epoch"],
        "val_auc": summary["best_val_auc"],
        "train_prior": round(float(np.mean(y_train)), 6),
        "val_prior": round(float(np.mean(y_val)), 6),
        **references(model, x_val, sets, p.batch_size),
    }
    save_model(model, model_path, meta)
    return threshold
