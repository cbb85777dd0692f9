"""BatchNorm statistics of a model on target images (AdaBN), and setting and restoring them.

AdaBN (Li et al. 2016; Schneider et al., NeurIPS 2020): every BatchNorm layer's moving mean
and variance are re-estimated on the target images. One pass in training mode, BatchNorm
layers only (dropout off), so each layer normalizes with the target batch statistics of the
layers before it; the per-batch moments are pooled exactly (mean of means, variance = mean
of variances + variance of the means). Batches come from a permutation seeded by `seed`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from xray.models.keras_private import walk_layers

if TYPE_CHECKING:
    from xray.models.inference import Moments


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of the model, nested models included, in graph order."""
    out = []
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def _dropout_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with a `rate` that act only in training mode (Dropout and its kin)."""
    return [
        layer
        for layer in walk_layers(model)
        if isinstance(layer, keras.layers.Dropout | keras.layers.SpatialDropout2D)
    ]


@contextmanager
def bn_training_mode(model: keras.Model, momentum: float) -> Iterator[list[Any]]:
    """Within: `model(x, training=True)` runs BatchNorm on batch statistics, dropout off.

    Every BatchNorm layer is made trainable (a frozen one would ignore `training`) with the
    given momentum; on exit the flags, momenta and dropout rates are restored.
    """
    bns = batchnorm_layers(model)
    drops = _dropout_layers(model)
    saved = [(bn.trainable, bn.momentum) for bn in bns]
    rates = [d.rate for d in drops]
    try:
        for bn in bns:
            bn.trainable = True
            bn.momentum = momentum
        for d in drops:
            d.rate = 0.0
        yield bns
    finally:
        for bn, (trainable, mom) in zip(bns, saved, strict=True):
            bn.trainable = trainable
            bn.momentum = mom
        for d, rate in zip(drops, rates, strict=True):
            d.rate = rate


def index_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of a seeded permutation (classes mixed in every batch)."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


_STEPS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()
_KERAS_STEPS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def _keras_moments_step(model: keras.Model, bns: list[Any]) -> Any:
    """A compiled training-mode pass returning each BatchNorm layer's batch moments.

    The fallback for models xray/models/inference.py cannot walk. Traced once per model, inside
    `bn_training_mode(model, 0.0)`: the mode's flags and momentum 0 are part of the trace,
    so it is only ever called in that mode (3x faster than eager calls).
    """
    if model not in _KERAS_STEPS:
        import tensorflow as tf

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        ref = weakref.ref(model)  # the cache must not keep the model alive
        refs = [weakref.ref(bn) for bn in bns]

        @tf.function(input_signature=[spec])
        def step(x: Any) -> list[Any]:
            ref()(x, training=True)
            layers = [r() for r in refs]
            return [bn.moving_mean.value for bn in layers] + [
                bn.moving_variance.value for bn in layers
            ]

        _KERAS_STEPS[model] = step
    return _KERAS_STEPS[model]


def bn_statistics(
    model: keras.Model, images: np.ndarray, batch_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each BatchNorm layer's mean and variance over the images (AdaBN's estimate), pooled exactly.

    Each batch's moments come from a pass where every BatchNorm normalizes with them
    (xray/models/inference.py: TF's fused kernel, the model left untouched); they are pooled in
    float64. A model that pass cannot walk runs in Keras' training mode at momentum 0,
    which leaves each layer's last batch moments in its moving statistics (restored after).
    """
    return bn_statistics_many([model], images, batch_size, seed)[0]


def bn_statistics_many(
    models: Sequence[keras.Model],
    images: np.ndarray,
    batch_size: int,
    seed: int,
    joint: Moments | None = None,
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """`bn_statistics` of several models on the same images and batches, in one pass.

    Layers equal in all of them (the stem that fine-tuning froze) run once per batch, so
    their statistics are bitwise the same in every model. `joint`: the models' moments
    pass, built once by the caller (xray.models.inference.moments_pass) for repeated use.
    """
    from xray.models.inference import moments_pass

    bns = [batchnorm_layers(m) for m in models]
    if not any(bns):
        return [[] for _ in models]
    if joint is None and len(models) == 1:
        if models[0] not in _STEPS:
            _STEPS[models[0]] = moments_pass(models, bns)
        joint = _STEPS[models[0]]
    elif joint is None:
        joint = moments_pass(models, bns)
    if joint is None:  # Keras' training mode, one model at a time
        return [
            _keras_statistics(m, b, images, batch_size, seed)
            for m, b in zip(models, bns, strict=True)
        ]
    step = joint.batch()
    s1 = [[np.zeros(bn.moving_mean.shape, np.float64) for bn in b] for b in bns]
    s2 = [[np.zeros(bn.moving_mean.shape, np.float64) for bn in b] for b in bns]
    n = 0
    for idx in index_batches(len(images), batch_size, np.random.default_rng(seed)):
        out = step(images[np.sort(idx)].astype("float32"))
        k = len(idx)
        for j, layer_list in enumerate(bns):
            _accumulate(out[j], len(layer_list), k, s1[j], s2[j])
        n += k
    return [_pooled(a, b, n) for a, b in zip(s1, s2, strict=True)]


def _accumulate(
    moments: list[Any], layers: int, k: int, s1: list[np.ndarray], s2: list[np.ndarray]
) -> None:
    """Add one batch of k images' moments (means, then variances) to the running sums."""
    for i in range(layers):
        m = np.asarray(moments[i]).astype(np.float64)
        v = np.asarray(moments[layers + i]).astype(np.float64)
        s1[i] += k * m
        s2[i] += k * (v + m * m)


def _pooled(
    s1: list[np.ndarray], s2: list[np.ndarray], n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mean and variance over all n images from the sums of k * mean and k * E[x^2]."""
    stats = []
    for a, b in zip(s1, s2, strict=True):
        mean = a / n
        stats.append((mean, np.maximum(b / n - mean * mean, 0.0)))
    return stats


def _keras_statistics(
    model: keras.Model, bns: list[Any], images: np.ndarray, batch_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """bn_statistics through Keras' training mode (models xray/models/inference.py cannot walk)."""
    before = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    s1 = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    s2 = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    n = 0
    with bn_training_mode(model, momentum=0.0):
        step = _keras_moments_step(model, bns)
        for idx in index_batches(len(images), batch_size, np.random.default_rng(seed)):
            out = step(images[np.sort(idx)].astype("float32"))
            _accumulate([t.numpy() for t in out], len(bns), len(idx), s1, s2)
            n += len(idx)
    for bn, (m, v) in zip(bns, before, strict=True):
        bn.moving_mean.assign(m)
        bn.moving_variance.assign(v)
    return _pooled(s1, s2, n)


def adabn(model: keras.Model, images: np.ndarray, batch_size: int, seed: int) -> int:
    """Set every BatchNorm layer's moving statistics to those of the images; return the count."""
    stats = bn_statistics(model, images, batch_size, seed)
    set_statistics(model, stats)
    return len(stats)


def set_statistics(model: keras.Model, stats: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Every BatchNorm layer's moving mean and variance set to the given ones, in order."""
    for bn, (mean, var) in zip(batchnorm_layers(model), stats, strict=True):
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
        bn.moving_variance.assign(var.astype(bn.moving_variance.dtype))


@contextmanager
def restored(model: keras.Model) -> Iterator[keras.Model]:
    """Within: adapt the model freely; on exit every BatchNorm weight and statistic is as before.

    Adaptation changes nothing else (AdaBN the statistics, TENT the scale and shift too).
    """
    saved = bn_state(model)
    try:
        yield model
    finally:
        set_bn_state(model, saved)


def bn_state(model: keras.Model) -> list[np.ndarray]:
    """Every BatchNorm weight and statistic of the model (what adaptation may change)."""
    return [v.numpy() for bn in batchnorm_layers(model) for v in bn.variables]


def set_bn_state(model: keras.Model, saved: list[np.ndarray]) -> None:
    """Put back what `bn_state` saved."""
    variables = [v for bn in batchnorm_layers(model) for v in bn.variables]
    for v, value in zip(variables, saved, strict=True):
        v.assign(value)
