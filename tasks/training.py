"""Shared training loop of train_base and finetune: seeds, callbacks, resume, dvclive, threshold."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
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
    "rotation": 0.03,  # fraction of a full turn (0.03 = +-10.8 degrees)
    "zoom": 0.1,
    "translation": 0.05,
    "contrast": 0.3,
    "brightness": 0.2,
    "gamma": 0.3,  # log-gamma range: exposure curve differences
    "blur": 1.0,  # blend toward a 5x5 Gaussian blur (and up to half as much sharpening)
    "noise": 0.03,  # max per-image noise standard deviation, 0..1 pixel scale
}
BLUR_SIGMA = 1.2
BLUR_RADIUS = 2
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


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """A normalized 1-D Gaussian (2*radius+1 taps): the blur runs as two separable passes."""
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-(t**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


class AcquisitionAugment(keras.layers.Layer):
    """On-the-fly augmentation for acquisition differences, fused into one pass per batch.

    One projective resampling for rotation, zoom and translation (not one per layer),
    then per-image blur/sharpen, contrast, brightness, gamma and Gaussian noise.
    Takes and returns 0..255 float pixels (N, H, W, 1); identity outside training.
    """

    def __init__(
        self,
        strength: float = 1.0,
        seed: int = 0,
        ranges: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.strength, self.seed = float(strength), int(seed)
        unknown = set(ranges or {}) - set(AUGMENT)
        if unknown:
            raise ValueError(
                f"augmentation ranges: unknown {sorted(unknown)}; known {list(AUGMENT)}"
            )
        self.base_ranges = {**AUGMENT, **(ranges or {})}
        self.ranges = {k: v * self.strength for k, v in self.base_ranges.items()}
        self.kernel = _gaussian_kernel(BLUR_SIGMA, BLUR_RADIUS)

    def get_config(self) -> dict[str, Any]:
        """Layer config (strength and seed)."""
        config = {**super().get_config(), "strength": self.strength, "seed": self.seed}
        return config if self.base_ranges == AUGMENT else {**config, "ranges": self.base_ranges}

    def call(self, images: Any, training: bool = True) -> Any:
        """Augment a batch when training."""
        import tensorflow as tf

        if not training:
            return images
        r, seed = self.ranges, self.seed
        x = tf.cast(images, tf.float32) / 255.0
        n = tf.shape(x)[0]
        h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
        draws = tf.random.uniform([10, n], 0.0, 1.0, seed=seed + 1)  # per-image scalars

        def uniform(k: int, lo: float, hi: float) -> Any:
            return lo + (hi - lo) * draws[k]

        def per_image(v: Any) -> Any:
            return tf.reshape(v, [-1, 1, 1, 1])

        theta = uniform(1, -1.0, 1.0) * (2.0 * np.pi * r["rotation"])
        scale = uniform(2, 1.0 - r["zoom"], 1.0 + r["zoom"])  # input pixels per output pixel
        tx = uniform(3, -1.0, 1.0) * r["translation"] * w
        ty = uniform(4, -1.0, 1.0) * r["translation"] * h
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        cos, sin = tf.cos(theta) * scale, tf.sin(theta) * scale
        zeros = tf.zeros_like(cos)
        rows = [cos, -sin, cx - cos * cx + sin * cy + tx, sin, cos, cy - sin * cx - cos * cy + ty]
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=tf.stack([*rows, zeros, zeros], axis=1),
            output_shape=tf.shape(x)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )
        if r["blur"] > 0:
            taps = self.kernel.shape[0]
            blurred = tf.nn.depthwise_conv2d(
                tf.nn.depthwise_conv2d(
                    x, self.kernel.reshape(taps, 1, 1, 1), [1, 1, 1, 1], padding="SAME"
                ),
                self.kernel.reshape(1, taps, 1, 1),
                [1, 1, 1, 1],
                padding="SAME",
            )
            top = min(r["blur"], 1.0)
            x = x + per_image(uniform(5, -0.5 * top, top)) * (blurred - x)
        # Contrast about the image mean and brightness as one affine map, then gamma as
        # exp(g * log x): tf.pow with a tensor exponent costs about 4x as much on a CPU.
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        c = per_image(uniform(6, 1.0 - r["contrast"], 1.0 + r["contrast"]))
        x = x * c + (mean * (1.0 - c) + per_image(uniform(7, -r["brightness"], r["brightness"])))
        if r["gamma"] > 0:
            x = tf.clip_by_value(x, 1e-6, 1.0)
            x = tf.exp(tf.math.log(x) * per_image(tf.exp(uniform(8, -r["gamma"], r["gamma"]))))
        if r["noise"] <= 0:
            return tf.clip_by_value(x, 0.0, 1.0) * 255.0
        # The noise field from a stateless generator (about 10x cheaper per pixel than the
        # stateful op), keyed by a seed drawn from the layer's seeded stream: still
        # reproducible, still new noise on every batch.
        key = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64, seed=seed + 10)
        x = x + per_image(uniform(9, 0.0, r["noise"])) * tf.random.stateless_normal(
            tf.shape(x), seed=key
        )
        return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def augmenter(
    seed: int, strength: float = 1.0, ranges: dict[str, float] | None = None
) -> keras.layers.Layer:
    """The training augmentation; `strength` scales every range (0 = identity).

    `ranges` overrides single entries of AUGMENT; a range of 0 skips that operation.
    """
    return AcquisitionAugment(strength, seed, ranges, name="augment")


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
) -> None:
    """Compile for binary classification with accuracy and ROC AUC."""
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
        jit_compile=jit_compile,
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

    def best_epoch(self) -> int | None:
        """The 1-based epoch of the best weights, if any."""
        if not self.state.exists():
            return None
        return int(json.loads(self.state.read_text())["epoch"])

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
    reduce_on_plateau: bool = True,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    fingerprint: str = "",
) -> dict[str, Any]:
    """Train with best-epoch selection on validation AUC, LR reduction, early stopping, resume.

    `work_dir` holds the resume state (BackupAndRestore) and the dvclive log while
    training; it is removed once the run completes and the log is copied to `live_dir`.
    A leftover state from a run with another `fingerprint` (other params) is discarded.
    """
    from dvclive import Live

    stamp = work_dir / "fingerprint.txt"
    if work_dir.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        log.info("discarding resume state of another configuration in %s", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
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
            keras.callbacks.EarlyStopping(MONITOR, mode="max", patience=patience),
            LiveLogger(live),
            *extra_callbacks,
        ]
        if reduce_on_plateau:
            callbacks.insert(
                2,
                keras.callbacks.ReduceLROnPlateau(
                    MONITOR, mode="max", factor=LR_FACTOR, patience=LR_PATIENCE, min_lr=MIN_LR
                ),
            )
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
        best_epoch = best.best_epoch()
        live.summary["best_val_auc"] = float(best.best)
        live.summary["best_epoch"] = best_epoch
    if live_dir.exists():
        shutil.rmtree(live_dir)
    shutil.copytree(work_dir / "live", live_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "epochs_run": len(history.epoch),
        "first_epoch": history.epoch[0] + 1 if history.epoch else None,
        "best_val_auc": float(best.best),
        "best_epoch": best_epoch,
    }


PROB_EPS = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, PROB_EPS), 1.0 - PROB_EPS)
    return float(np.log(p / (1.0 - p)))


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Maximize Youden's J on validation data, at the middle (in logit space) of its best plateau.

    On a nearly separable validation set many thresholds share the best J; the first of
    them hugs one class's scores. The middle of the widest run of best thresholds keeps
    the largest margin to both classes, which matters under acquisition shift.
    """
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thr descending, thr[0] = inf
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    run = max(runs, key=len)
    hi = float(thr[run[0]])  # J is best for t in (thr[run[-1] + 1], thr[run[0]]]
    lo = float(thr[run[-1] + 1]) if run[-1] + 1 < len(thr) else 0.0
    mid = 0.5 * (_logit(lo) + _logit(min(hi, 1.0)))
    return float(1.0 / (1.0 + np.exp(-mid)))


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities of the positive class for uint8 images (N, H, W, 1)."""
    return model.predict(x.astype("float32"), batch_size=batch_size, verbose=0).reshape(-1)
