"""Fine-tuning: the base model's tail adapted to corrupted images, for the `finetune` stage.

Freeze most of the base model (BatchNorm always frozen), recompile with a low learning rate
and train on the train split corrupted on the fly (xray/models/finetuning.py). With
`augmix_views`, each draw is trained beside AugMix copies of itself under a consistency loss
(xray/perturbations/augmix.py). Selection and the threshold use corrupted (and, with
`clean_fraction`, clean) validation images. The prior references of the model file come
from a function the caller passes (`references`, as in xray/models/base_training.py).
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
from xray.core.io import read_csv, write_csv
from xray.core.params import FinetuneParams, Params
from xray.models.architectures import load_model, read_meta, save_model
from xray.models.base_training import References
from xray.models.dataset import class_weights, labels_of, load_images, make_dataset, resize
from xray.models.distribute import localize, make_strategy, replicated, split_rows
from xray.models.finetuning import corrupted_batches, corrupted_val, freeze
from xray.models.resume import finish
from xray.models.threshold import choose_threshold
from xray.models.training import compile_model, configure, fit, predict
from xray.perturbations.augment import augmenter
from xray.perturbations.augmix import ConsistencyLoss, Views

log = logging.getLogger("xray.finetune")

LAYER_FIELDS = ("index", "name", "type", "trainable", "params")


def finetune(
    params: Params,
    *,
    train_csv: Path,
    val_csv: Path,
    raw_dir: Path,
    base_path: Path,
    model_path: Path,
    live_dir: Path,
    work_dir: Path,
    layers_csv: Path,
    references: References,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Fine-tune the base model's tail on corrupted training images; save with a new threshold."""
    p = params.finetune
    families = list(params.corrupt.finetune_families)  # never empty: xray/core/params.py checks
    severities = list(params.corrupt.severities)
    configure(p.seed, params.train.deterministic, params.train.threads)
    strategy = make_strategy(p.strategy, params.train.cpu_replicas, key="finetune.strategy")
    table: list[dict[str, Any]] = []
    build = _builder(p, base_path, table)
    with strategy.scope():
        model = build()
    meta = read_meta(base_path)
    size, positive = int(meta["image_size"]), meta["positive_class"]
    _write_layer_table(table, layers_csv)
    val = _images(p, (train_csv, val_csv), raw_dir, families, severities, size, positive)
    images, y_train, x_val, y_val = val["train"], val["y_train"], val["x"], val["y"]
    replicas = int(strategy.num_replicas_in_sync)
    n_train, n_val = split_rows(
        "finetune.batch_size", p.batch_size, replicas, len(images), len(x_val)
    )
    train_data = _train_data(p, images, val["shas"], y_train, families, severities, size, n_train)
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
    threshold = _save_finetuned(params, model, val, base_path, model_path, references)
    finish(work_dir)
    log.info(
        "fine-tuned in %.0fs (%d epochs), best corrupted-val AUC %.4f, threshold %.4f",
        seconds,
        summary["epochs_run"],
        summary["best_val_auc"],
        threshold,
    )
    return {**summary, "threshold": threshold, "seconds": seconds}


def _builder(
    p: FinetuneParams, base_path: Path, table: list[dict[str, Any]]
) -> Callable[[], keras.Model]:
    """build(): the base model, frozen and compiled (under the strategy; outside it for the
    output), its layer table in `table`. With AugMix, wrapped in `Views` and compiled with
    the consistency loss."""

    def build() -> keras.Model:
        model, _ = load_model(base_path)
        table[:] = freeze(model, p.trainable_layers, p.unfreeze_from)
        if p.augmix_views:
            model = Views(model, name="augmix")
            compile_model(model, p.learning_rate, loss=ConsistencyLoss(p.consistency))
        else:
            compile_model(model, p.learning_rate)
        return model

    return build


def _write_layer_table(table: list[dict[str, Any]], layers_csv: Path) -> None:
    """The frozen and trainable layers: a CSV for the reports and a log listing."""
    write_csv(layers_csv, table, LAYER_FIELDS)
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


def _images(
    p: FinetuneParams,
    csvs: tuple[Path, Path],
    raw_dir: Path,
    families: list[str],
    severities: list[int],
    size: int,
    positive: str,
) -> dict[str, Any]:
    """The training images as decoded (`train`, `shas`, `y_train`: corrupted per draw later);
    the selection images `x`, `y` (corrupted val, with clean val under `clean_fraction`),
    the clean val images, the threshold sets and the val prior."""
    train_rows = read_csv(csvs[0])
    images = load_images([raw_dir / r["path"] for r in train_rows], None)
    y_train = labels_of(train_rows, positive)
    val_rows = read_csv(csvs[1])
    val_raw = load_images([raw_dir / r["path"] for r in val_rows], None)
    x_val = corrupted_val(val_raw, val_rows, families, severities, p.seed, size)
    y_val = labels_of(val_rows, positive)
    x_clean = np.stack([resize(img, size) for img in val_raw])[..., None]
    val_prior = float(np.mean(y_val))
    threshold_sets = [(x_val, y_val)] + ([(x_clean, y_val)] if p.clean_fraction > 0 else [])
    if p.clean_fraction > 0:  # select and set the threshold on clean and corrupted val alike
        x_val = np.concatenate([x_val, x_clean])
        y_val = np.concatenate([y_val, y_val])
    return {
        "train": images,
        "shas": [r["sha256"] for r in train_rows],
        "y_train": y_train,
        "x": x_val,
        "y": y_val,
        "clean": x_clean,
        "threshold_sets": threshold_sets,
        "prior": val_prior,
    }


def _train_data(
    p: FinetuneParams,
    images: list[np.ndarray],
    shas: list[str],
    y_train: np.ndarray,
    families: list[str],
    severities: list[int],
    size: int,
    n_train: int,
) -> Callable[[int], Any]:
    """first_epoch -> a tf.data.Dataset of corrupted training batches from that epoch on."""
    import tensorflow as tf

    shape = (size, size, 1) if not p.augmix_views else (1 + p.augmix_views, size, size, 1)
    signature = (
        tf.TensorSpec((None, *shape), tf.float32),
        tf.TensorSpec((None,), tf.float32),
    )
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

    return train_data


def _save_finetuned(
    params: Params,
    model: keras.Model,
    val: dict[str, Any],
    base_path: Path,
    model_path: Path,
    references: References,
) -> float:
    """Choose the threshold on the selection images; save the model with its metadata."""
    p = params.finetune
    threshold = choose_threshold(val["y"], predict(model, val["x"], p.batch_size))
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
        "finetune_families": list(params.corrupt.finetune_families),
        "finetune_severities": list(params.corrupt.severities),
        "val_prior": round(val["prior"], 6),
        **references(model, val["clean"], val["threshold_sets"], p.batch_size),
    }
    save_model(model, model_path, new_meta)
    return threshold
