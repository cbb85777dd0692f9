"""tf.distribute for the training stages: the strategy from params, replica-safe fit, chief writes.

`default` trains on one device; `mirrored` on every local GPU (without one: on
`train.cpu_replicas` logical CPU devices, for tests); `multi_worker` on the machines that
the TF_CONFIG environment variable lists (docs/scale-out.md). `train.batch_size` is the
global batch: tf.distribute splits each batch across the N replicas (batch_size / N each),
so the optimization matches one device and the learning rate needs no change.

Under a multi-replica strategy BatchNorm layers are switched to synchronized statistics
while training (the global batch's moments, as on one device; Keras 3 otherwise lets each
replica's moving averages drift apart) and back afterwards, and the trained model is
rebuilt outside the strategy with the trained state, so thresholding, saving and the saved
file are those of the default path. In `multi_worker` every worker runs the same code to the end of
training; only the chief (task `chief`, else `worker` 0) writes the model and the dvclive
log, the others write their resume state to private folders they delete when done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras

from xray.core.errors import InputError
from xray.models.keras_private import multi_worker_fit, walk_layers

log = logging.getLogger("xray.distribute")

TF_CONFIG = "TF_CONFIG"
DOCS = "docs/scale-out.md"
DEFAULT, MIRRORED, MULTI_WORKER = "default", "mirrored", "multi_worker"
NON_CHIEF_LIVE = "discarded-live"  # a non-chief's dvclive copy, inside its private work dir


def tf_config(key: str = "train.strategy") -> dict[str, Any]:
    """The parsed TF_CONFIG of a multi-worker run; a one-line ValueError when absent or bad."""
    raw = os.environ.get(TF_CONFIG, "").strip()
    if not raw:
        raise ValueError(
            f"{key}: multi_worker needs the {TF_CONFIG} environment variable "
            f"(the cluster's workers and this machine's task as JSON; see {DOCS})"
        )
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TF_CONFIG}: not valid JSON ({e.msg} at char {e.pos})") from None
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise ValueError(f'{TF_CONFIG}: needs "cluster": {{"worker": ["host:port", ...]}}')
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(
            f'{TF_CONFIG}: needs "task": {{"type": one of {sorted(cluster)}, "index": N}}'
        )
    index, hosts = task.get("index"), cluster[task["type"]]
    if not isinstance(index, int) or not 0 <= index < len(hosts):
        raise ValueError(
            f"{TF_CONFIG}: task index {index!r} is not in 0..{len(hosts) - 1} "
            f"for the {len(hosts)} {task['type']} address(es)"
        )
    return cfg


def split_cpu(replicas: int) -> None:
    """Present the CPU as `replicas` logical devices; must run before TF initializes devices."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError:  # devices already initialized in this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have != replicas:
            raise InputError(
                f"train.cpu_replicas: TensorFlow already started in this process with {have} "
                f"CPU device(s), cannot make {replicas}; run the stage in a fresh process"
            ) from None


def make_strategy(name: str, cpu_replicas: int = 0, key: str = "train.strategy") -> Any:
    """The tf.distribute strategy called `name`; call before anything else initializes TF."""
    import tensorflow as tf

    if name == DEFAULT:
        return tf.distribute.get_strategy()
    if name == MIRRORED:
        if tf.config.list_physical_devices("GPU"):
            if cpu_replicas:
                log.info("train.cpu_replicas ignored: GPUs found")
            strategy = tf.distribute.MirroredStrategy()
        else:
            if cpu_replicas:
                split_cpu(cpu_replicas)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices)
        if strategy.num_replicas_in_sync == 1:
            log.warning("%s: mirrored over a single device (no GPU, cpu_replicas 0)", key)
        return strategy
    if name == MULTI_WORKER:
        cfg = tf_config(key)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:  # collective ops must be configured at program start
            raise InputError(
                f"{key}: multi_worker must start before TensorFlow runs anything in "
                f"this process ({str(e).splitlines()[0]})"
            ) from None
        log.info(
            "multi_worker: task %s %d of cluster %s, %d replicas in sync",
            cfg["task"]["type"],
            cfg["task"]["index"],
            json.dumps(cfg["cluster"]),
            strategy.num_replicas_in_sync,
        )
        return strategy
    known = ", ".join((DEFAULT, MIRRORED, MULTI_WORKER))
    raise ValueError(f"{key}: unknown strategy {name!r} (known: {known})")


def multi_worker(strategy: Any) -> bool:
    """Whether `strategy` spans several worker processes."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and bool(resolver.cluster_spec().as_dict())


def is_chief(strategy: Any) -> bool:
    """Whether this process writes the outputs: always, except a non-chief multi-worker task."""
    if not multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_dirs(strategy: Any, work_dir: Path, live_dir: Path) -> tuple[Path, Path]:
    """The (work_dir, live_dir) this process writes: the given ones on the chief.

    A non-chief worker keeps its resume state in a private sibling of `work_dir` (so a
    restarted worker resumes like the chief, and two workers sharing a disk never collide)
    and its dvclive copy inside it; `fit` removes that folder when training completes.
    """
    if is_chief(strategy):
        return work_dir, live_dir
    resolver = strategy.cluster_resolver
    own = work_dir.with_name(
        f"{work_dir.stem}.{resolver.task_type}{resolver.task_id}{work_dir.suffix}"
    )
    return own, own / NON_CHIEF_LIVE


def discard(work_dir: Path) -> None:
    """Remove a non-chief worker's private folder (whatever `fit` left)."""
    shutil.rmtree(work_dir, ignore_errors=True)


def shard(dataset: Any) -> Any:
    """Shard an in-memory tf.data pipeline across workers by element (AutoShardPolicy.DATA).

    There are no files to shard by; every worker runs the same seeded pipeline (same
    shuffle order and augmentation) and keeps its own slice of each global batch.
    Without several workers the option has no effect.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def usable_rows(n: int, batch_size: int, replicas: int) -> int:
    """How many of n rows to batch so that no replica ever gets an empty batch.

    A last partial batch smaller than the replica count would leave a replica without
    rows, which Keras 3 cannot run (BatchNorm shape errors, mismatched collectives), so
    it is left out: at most replicas - 1 rows (the shuffle picks other ones each epoch).
    """
    tail = n % batch_size
    return n - tail if 0 < tail < replicas else n


def split_rows(
    key: str, batch_size: int, replicas: int, n_train: int, n_val: int
) -> tuple[int, int]:
    """usable_rows of the train and val splits; a batch or split too small is a one-line error.

    `key` is the params key of the batch size (train.batch_size, finetune.batch_size).
    """
    train, val = (usable_rows(n, batch_size, replicas) for n in (n_train, n_val))
    if replicas > 1 and (batch_size < replicas or not train or not val):
        raise ValueError(
            f"{key}: {batch_size} (the global batch, split across {replicas} "
            f"replicas) must be at least {replicas} and the splits at least that many images"
        )
    return train, val


@contextlib.contextmanager
def replicated(model: keras.Model, strategy: Any, train_ds: Any) -> Iterator[None]:
    """Make `model.fit` sound under `strategy`; undo it afterwards.

    Multi-replica: synchronized BatchNorm statistics. Multi-worker, besides: Keras 3.15
    cannot run `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585), which
    xray/models/keras_private.py's `multi_worker_fit` works around while training only.
    """
    norms = [
        layer
        for layer in walk_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
    ]
    if strategy.num_replicas_in_sync > 1:
        for bn in norms:
            bn.synchronized = True
    try:
        with (
            multi_worker_fit(model, strategy, train_ds)
            if multi_worker(strategy)
            else contextlib.nullcontext()
        ):
            yield
    finally:
        for bn in norms:
            bn.synchronized = False


def localize(model: keras.Model, strategy: Any, rebuild: Callable[[], keras.Model]) -> keras.Model:
    """The trained model as a plain one-device model: `rebuild()` with the trained state.

    `rebuild` is the function that made `model` under the strategy (build or load, freeze,
    compile); called outside it, it gives the model default training would have, and the
    trained weights and optimizer state are copied in. Predicting, thresholding, saving
    and the saved file are then those of the default path (Keras' distributed predict
    is wrong multi-worker). A one-device strategy returns `model` itself.
    """
    if strategy.num_replicas_in_sync == 1 and not multi_worker(strategy):
        return model
    local = rebuild()
    local.set_weights(model.get_weights())
    if model.optimizer is not None and model.optimizer.built:
        local.optimizer.name = model.optimizer.name  # not the process's 2nd name (adam_w_1)
        local.optimizer.build(local.trainable_variables)
        for dst, src in zip(local.optimizer.variables, model.optimizer.variables, strict=True):
            dst.assign(keras.ops.convert_to_numpy(src))
    return local
