"""Resume machinery of the fit loop: best-epoch weights, atomic per-epoch checkpoints, data order.

A run killed mid-training restarts at its last finished epoch with the same model, optimizer,
callback, dropout-seed and dvclive state, so it ends with the bytes an uninterrupted run has.
`xray/models/training.py` (the fit loop) drives these; nothing here starts training itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

log = logging.getLogger("xray.resume")

MONITOR = "val_auc"
FINGERPRINT = "fingerprint.txt"
LIVE = "live"


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
        shutil.copytree(self.live_dir, tmp / LIVE)
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


def advance(dataset: Any, epochs: int) -> Any:
    """`dataset` after `epochs` passes have begun, so a resumed run sees the same data order.

    Keras starts one iterator per epoch over a finite dataset, and each iterator of a
    reshuffling `shuffle` draws the next order from the dataset's seed generator; making
    and dropping `epochs` iterators moves that generator to where an uninterrupted run has it.
    """
    for _ in range(epochs):
        iter(dataset)
    return dataset


def resume_point(work_dir: Path, fingerprint: str, epochs: int) -> tuple[Path | None, int]:
    """The checkpoint to resume from in `work_dir` and the 0-based epoch to start at.

    A leftover state from a run with another `fingerprint` (other params or inputs) and any
    checkpoint cut short by a kill are discarded; the dvclive log of the checkpoint is put
    back in `work_dir/live`, dropping rows of an uncommitted epoch.
    """
    stamp = work_dir / FINGERPRINT
    if work_dir.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        log.info("discarding resume state of another configuration in %s", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    for stale in work_dir.glob(".*.tmp"):  # a checkpoint cut short by a kill
        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = latest_checkpoint(work_dir)
    if checkpoint is None:
        return None, 0
    state = read_checkpoint(checkpoint)
    if state["finished"]:  # killed after training, before the outputs were saved
        first = epochs
        log.info("training already finished (%s): restoring its best epoch", checkpoint)
    else:
        first = state["epoch"]
        log.info("resuming at epoch %d of %d from %s", first + 1, epochs, checkpoint)
    live_work = work_dir / LIVE
    shutil.rmtree(live_work, ignore_errors=True)  # drop rows of an uncommitted epoch
    shutil.copytree(checkpoint / LIVE, live_work)
    return checkpoint, first


def finish(work_dir: Path) -> None:
    """Remove the resume state once the stage's outputs are saved."""
    shutil.rmtree(work_dir, ignore_errors=True)


def work_dir_for(output: Path, stage: str) -> Path:
    """The resume state of `stage` beside its output (models/base.keras: models/.train_base.work).

    A hidden folder beside the output (git ignores `models/.*.work/`), named for the stage.
    """
    return output.parent / f".{stage}.work"
