"""Shared training loop of train_base and finetune: seeds, callbacks, resume, dvclive, threshold."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

log = logging.getLogger("xray.training")

MONITOR = "val_auc"
LR_FACTOR = 0.5
LR_PATIENCE = 2
MIN_LR = 1e-6
AUGMENT = {
    "rotation": 0.03,
    "zoom": 0.1,
    "translation": 0.05,
    "contrast": 0.3,
    "brightness": 0.25,
    "noise": 0.015,
}


def configure(seed: int, deterministic: bool, threads: int) -> None:
    """Seed every generator; optionally make TF ops deterministic and pin thread counts."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))


def augmenter(seed: int) -> keras.Sequential:
    """On-the-fly augmentation for acquisition differences: pose, exposure, contrast, noise."""
    a = AUGMENT
    return keras.Sequential(
        [
            keras.layers.Rescaling(1.0 / 255.0),
            keras.layers.RandomRotation(a["rotation"], fill_mode="nearest", seed=seed),
            keras.layers.RandomZoom(a["zoom"], fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomTranslation(
                a["translation"], a["translation"], fill_mode="nearest", seed=seed + 2
            ),
            keras.layers.RandomContrast(a["contrast"], value_range=(0, 1), seed=seed + 3),
            keras.layers.RandomBrightness(a["brightness"], value_range=(0, 1), seed=seed + 4),
            keras.layers.GaussianNoise(a["noise"], seed=seed + 5),
            keras.layers.Rescaling(255.0),
        ],
        name="augment",
    )


def compile_model(model: keras.Model, learning_rate: float, weight_decay: float = 0.0) -> None:
    """Compile for binary classification with accuracy and ROC AUC."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


class BestWeights(keras.callbacks.Callback):
    """Keep the weights of the best validation epoch on disk, surviving a resumed run."""

    def __init__(self, folder: Path, monitor: str = MONITOR) -> None:
        super().__init__()
        self.folder, self.monitor = folder, monitor
        self.weights = folder / "best.weights.h5"
        self.state = folder / "best.json"
        self.best = -np.inf

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state.exists() and self.weights.exists():
            self.best = json.loads(self.state.read_text())["best"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get(self.monitor)
        if score is not None and score > self.best:
            self.best = float(score)
            self.folder.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(self.weights, overwrite=True)
            self.state.write_text(json.dumps({"best": self.best, "epoch": epoch + 1}))

    def restore(self) -> None:
        """Load the best weights into the model."""
        if self.weights.exists():
            self.model.load_weights(self.weights)


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
    train_ds: Any,
    val_ds: Any,
    *,
    epochs: int,
    patience: int,
    live_dir: Path,
    work_dir: Path,
    class_weight: dict[int, float] | None = None,
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Train with best-epoch selection on validation AUC, LR reduction, early stopping, resume.

    `work_dir` holds the resume state (BackupAndRestore) and the dvclive log while
    training; it is removed once the run completes and the log is copied to `live_dir`.
    """
    from dvclive import Live

    resuming = (work_dir / "backup").exists()
    if resuming:
        log.info("resuming from %s", work_dir / "backup")
    best = BestWeights(work_dir)
    with Live(
        dir=str(work_dir / "live"), resume=resuming, dvcyaml=None, save_dvc_exp=False, report=None
    ) as live:
        callbacks = [
            keras.callbacks.BackupAndRestore(str(work_dir / "backup")),
            best,
            keras.callbacks.ReduceLROnPlateau(
                MONITOR, mode="max", factor=LR_FACTOR, patience=LR_PATIENCE, min_lr=MIN_LR
            ),
            keras.callbacks.EarlyStopping(MONITOR, mode="max", patience=patience),
            LiveLogger(live),
        ]
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            callbacks=callbacks,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            verbose=2,
        )
        best.restore()
        live.summary["best_val_auc"] = float(best.best)
    if live_dir.exists():
        shutil.rmtree(live_dir)
    shutil.copytree(work_dir / "live", live_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return {"epochs_run": len(history.epoch), "best_val_auc": float(best.best)}


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximizing Youden's J (sensitivity + specificity - 1) on validation data."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p)
    j = tpr - fpr
    k = int(np.argmax(j))
    t = float(thresholds[k])
    return float(min(max(t, 1e-6), 1.0 - 1e-6))


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities of the positive class for uint8 images (N, H, W, 1)."""
    return model.predict(x.astype("float32"), batch_size=batch_size, verbose=0).reshape(-1)
