"""Shared training loop of train_base and finetune: seeds, callbacks, resume, dvclive, threshold."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.progress import EpochProgress

log = logging.getLogger("xray.training")

MONITOR = "val_auc"
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
    """Keep the weights of the best validation epoch on disk; its state travels in checkpoints."""

    def __init__(self, folder: Path, monitor: str = MONITOR) -> None:
        super().__init__()
        self.folder, self.monitor = folder, monitor
        self.weights = folder / "best.weights.h5"
        self.best = -np.inf
        self.epoch: int | None = None  # 1-based

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get(self.monitor)
        if score is not None and score > self.best:
            self.best, self.epoch = float(score), epoch + 1
            # a new file, renamed over the old: a checkpoint's hard link keeps the old bytes
            tmp = self.folder / "best.next.weights.h5"
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, self.weights)

    def best_epoch(self) -> int | None:
        """The 1-based epoch of the best weights, if any."""
        return self.epoch

    def restore(self) -> None:
        """Load the best weights into the model."""
        if self.weights.exists():
            _build_optimizer(self.model)
            self.model.load_weights(self.weights)


def _build_optimizer(model: keras.Model) -> None:
    """Create the optimizer's variables so that weight files holding them can be loaded."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


# Callback attributes that carry state from one epoch to the next (reset by on_train_begin).
CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}
CHECKPOINT_PREFIX = "ckpt-"
SEED_STATE = "seed_generator_state"  # Keras SeedGenerator variables (dropout masks)


def _seed_states(model: keras.Model) -> list[Any]:
    """The model's random seed generator variables: not in weight files, but training state."""
    return [v for v in model.variables if v.name == SEED_STATE]


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a callback attribute (numpy scalars to Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint folder (`ckpt-NNNN`, NNNN finished epochs), if any."""
    found = (
        sorted(folder.glob(f"{CHECKPOINT_PREFIX}[0-9][0-9][0-9][0-9]")) if folder.exists() else []
    )
    return found[-1] if found else None


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The state record of a checkpoint folder."""
    return json.loads((checkpoint / "state.json").read_text())


class Checkpoint(keras.callbacks.Callback):
    """Commit the whole training state at each epoch end, atomically; restore it on resume.

    A checkpoint is a folder `ckpt-NNNN` (NNNN = finished epochs) built under a temporary
    name and renamed into place, holding: model and optimizer weights (so the step count,
    the cosine schedule's position and a plateau-reduced rate), the dropout seed states,
    the state of early stopping, LR-on-plateau and best-weights selection, the best
    weights (hard link) and a copy of the dvclive folder as it stood after that epoch.
    Listed after the callbacks it saves, so it sees their state for the epoch just ended.
    """

    def __init__(
        self,
        folder: Path,
        epochs: int,
        best: BestWeights,
        stateful: Sequence[keras.callbacks.Callback],
        live_dir: Path,
        restore_from: Path | None = None,
    ) -> None:
        super().__init__()
        self.folder, self.epochs, self.best = folder, epochs, best
        self.stateful, self.live_dir, self.restore_from = list(stateful), live_dir, restore_from

    def _callback_state(self) -> list[dict[str, Any]]:
        return [
            {name: _plain(getattr(cb, name)) for name in CALLBACK_STATE[type(cb)]}
            for cb in self.stateful
        ]

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Load the checkpoint given at construction (after the others reset themselves)."""
        if self.restore_from is None:
            return
        state = read_checkpoint(self.restore_from)
        _build_optimizer(self.model)
        self.model.load_weights(self.restore_from / "model.weights.h5")
        seeds = np.load(self.restore_from / "seeds.npy")
        for var, value in zip(_seed_states(self.model), seeds, strict=True):
            var.assign(value.astype(var.dtype))
        for cb, saved in zip(self.stateful, state["callbacks"], strict=True):
            for name, value in saved.items():
                setattr(cb, name, value)
        self.best.best, self.best.epoch = state["best"]["score"], state["best"]["epoch"]
        saved_best = self.restore_from / "best.weights.h5"
        if saved_best.exists():  # back in place of any newer, uncommitted best
            tmp = self.folder / "best.next.weights.h5"
            shutil.copyfile(saved_best, tmp)
            os.replace(tmp, self.best.weights)
        else:
            self.best.weights.unlink(missing_ok=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Write checkpoint `ckpt-(epoch+1)` and drop the older ones."""
        done = epoch + 1
        final = self.folder / f"{CHECKPOINT_PREFIX}{done:04d}"
        tmp = self.folder / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_weights(tmp / "model.weights.h5")
        seeds = [keras.ops.convert_to_numpy(v) for v in _seed_states(self.model)]
        np.save(tmp / "seeds.npy", np.stack(seeds) if seeds else np.zeros((0, 2), np.int64))
        if self.best.weights.exists():
            try:
                os.link(self.best.weights, tmp / "best.weights.h5")
            except OSError:
                shutil.copyfile(self.best.weights, tmp / "best.weights.h5")
        shutil.copytree(self.live_dir, tmp / "live")
        state = {
            "epoch": done,
            "finished": bool(self.model.stop_training) or done >= self.epochs,
            "best": {"score": self.best.best, "epoch": self.best.epoch},
            "callbacks": self._callback_state(),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, final)  # the commit: a checkpoint folder is complete or absent
        for old in self.folder.glob(f"{CHECKPOINT_PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)


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


def advance(dataset: Any, epochs: int) -> Any:
    """`dataset` after `epochs` passes have begun, so a resumed run sees the same data order.

    Keras starts one iterator per epoch over a finite dataset, and each iterator of a
    reshuffling `shuffle` draws the next order from the dataset's seed generator; making
    and dropping `epochs` iterators moves that generator to where an uninterrupted run has it.
    """
    for _ in range(epochs):
        iter(dataset)
    return dataset


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

    stamp = work_dir / "fingerprint.txt"
    if work_dir.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        log.info("discarding resume state of another configuration in %s", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    for stale in work_dir.glob(".*.tmp"):  # a checkpoint cut short by a kill
        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = latest_checkpoint(work_dir)
    first = 0
    live_work = work_dir / "live"
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        if state["finished"]:  # killed after training, before the outputs were saved
            first = epochs
            log.info("training already finished (%s): restoring its best epoch", checkpoint)
        else:
            first = state["epoch"]
            log.info("resuming at epoch %d of %d from %s", first + 1, epochs, checkpoint)
        shutil.rmtree(live_work, ignore_errors=True)  # drop rows of an uncommitted epoch
        shutil.copytree(checkpoint / "live", live_work)
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


def finish(work_dir: Path) -> None:
    """Remove the resume state once the stage's outputs are saved."""
    shutil.rmtree(work_dir, ignore_errors=True)


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


_FORWARD: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def _forward(model: keras.Model) -> Any:
    """The model's inference pass compiled once per model (any batch size).

    Faster than `model.predict`, which builds a tf.data pipeline on every call (and logs a
    TensorFlow error line each time); reads the model's current weights on every call.
    """
    if model not in _FORWARD:
        import tensorflow as tf

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        ref = weakref.ref(model)  # the cache must not keep the model alive
        _FORWARD[model] = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
    return _FORWARD[model]


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities of the positive class for uint8 images (N, H, W, 1)."""
    if len(x) == 0:
        return np.zeros(0, np.float32)
    fn = _forward(model)
    return np.concatenate(
        [
            np.asarray(fn(x[i : i + batch_size].astype("float32"))).reshape(-1)
            for i in range(0, len(x), batch_size)
        ]
    )
