"""The fit loop shared by train_base and finetune: seeds, precision, optimizer, callbacks, dvclive.

Resuming after a kill lives in xray/models/resume.py, the decision threshold in
xray/models/threshold.py.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from xray.core.progress import EpochProgress
from xray.models.resume import LIVE, MONITOR, BestWeights, Checkpoint, resume_point

log = logging.getLogger("xray.training")

LR_FACTOR = 0.5
LR_PATIENCE = 2
MIN_LR = 1e-6
COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of the peak rate


def configure(seed: int, deterministic: bool, threads: int) -> None:
    """Seed every generator; optionally make TF ops deterministic and pin thread counts."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TF already started in this process (tests, notebooks)
            log.warning("train.threads: TF is already initialized; thread counts unchanged")


def learning_rate(
    schedule: str, peak: float, *, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate (for `constant` and `plateau`) or linear warmup then cosine decay."""
    if schedule != "cosine":
        return peak
    warmup = warmup_epochs * steps_per_epoch
    total = max(epochs * steps_per_epoch - warmup, 1)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            peak * COSINE_FLOOR, total, alpha=COSINE_FLOOR, warmup_target=peak, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(peak, total, alpha=COSINE_FLOOR)


@contextlib.contextmanager
def precision(mixed: bool) -> Iterator[None]:
    """Build layers under the mixed_bfloat16 policy when `mixed`, restoring the old policy."""
    old = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    weight_decay: float = 0.0,
    jit_compile: bool = False,
    loss: keras.losses.Loss | None = None,
) -> None:
    """Compile for binary classification with accuracy and ROC AUC (default loss: BCE)."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=loss or keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
        jit_compile=jit_compile,
    )


class LiveLogger(keras.callbacks.Callback):
    """Log each epoch's metrics and learning rate to dvclive."""

    def __init__(self, live: Any) -> None:
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in sorted((logs or {}).items()):
            split = "eval" if name.startswith("val_") else "train"
            self.live.log_metric(f"{split}/{name.removeprefix('val_')}", float(value))
        self.live.log_metric(
            "lr", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        )
        self.live.next_step()


def fit(
    model: keras.Model,
    train_data: Callable[[int], Any],
    val_ds: Any,
    *,
    epochs: int,
    patience: int,
    live_dir: Path,
    work_dir: Path,
    class_weight: dict[int, float] | None = None,
    steps_per_epoch: int | None = None,
    reduce_on_plateau: bool = True,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    fingerprint: str = "",
) -> dict[str, Any]:
    """Train with best-epoch selection on validation AUC, LR reduction, early stopping, resume.

    `train_data(first_epoch)` gives the training data whose next pass is epoch
    `first_epoch` (0-based). `work_dir` holds the per-epoch checkpoints (see Checkpoint)
    and the dvclive log while training; the log is copied to `live_dir` at the end, and
    the caller removes `work_dir` with `finish` once its outputs are saved. A leftover
    state from a run with another `fingerprint` (other params or inputs) is discarded.
    """
    from dvclive import Live

    checkpoint, first = resume_point(work_dir, fingerprint, epochs)
    live_work = work_dir / LIVE
    best = BestWeights(work_dir, MONITOR)
    with Live(
        dir=str(live_work),
        resume=checkpoint is not None,
        dvcyaml=None,
        save_dvc_exp=False,
        report=None,
    ) as live:
        live.step = first  # dvclive's own resume re-uses step 0 after one epoch
        stateful: list[keras.callbacks.Callback] = []
        if reduce_on_plateau:
            stateful.append(
                keras.callbacks.ReduceLROnPlateau(
                    MONITOR, mode="max", factor=LR_FACTOR, patience=LR_PATIENCE, min_lr=MIN_LR
                )
            )
        stateful.append(keras.callbacks.EarlyStopping(MONITOR, mode="max", patience=patience))
        callbacks = [
            best,
            *stateful,
            LiveLogger(live),
            Checkpoint(work_dir, epochs, best, stateful, live_work, restore_from=checkpoint),
            *extra_callbacks,
            EpochProgress(epochs, "training", logging.getLogger(f"xray.{live_dir.name}")),
        ]
        history = model.fit(
            train_data(first),
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=first,
            callbacks=callbacks,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            verbose=0,
        )
        best.restore()
        best_epoch = best.best_epoch()
        live.summary["best_val_auc"] = float(best.best)
        live.summary["best_epoch"] = best_epoch
    if live_dir.exists():
        shutil.rmtree(live_dir)
    shutil.copytree(live_work, live_dir)
    return {
        "epochs_run": len(history.epoch),
        "first_epoch": history.epoch[0] + 1 if history.epoch else None,
        "best_val_auc": float(best.best),
        "best_epoch": best_epoch,
    }


_FORWARD: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def _forward(model: keras.Model) -> Any:
    """The model's inference pass compiled once per model (any batch size), BatchNorm folded.

    Faster than `model.predict`, which builds a tf.data pipeline on every call (and logs a
    TensorFlow error line each time); reads the model's current weights on every call
    (xray/models/inference.py).
    """
    if model not in _FORWARD:
        from xray.models.inference import forward

        _FORWARD[model] = forward([model])
    return _FORWARD[model]


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities of the positive class for uint8 images (N, H, W, 1)."""
    return _forward(model).scores(x, batch_size)[0]
