"""TENT (Wang et al., ICLR 2021): entropy minimization of the BatchNorm scale and shift.

A bounded number of Adam steps on the BatchNorm scale and shift only, minimizing the mean
binary entropy of the predictions, then the statistics are re-estimated (AdaBN). A guard
reverts it when the share of images called positive moves more than `max_shift` (the
collapse of entropy minimization toward one class) or the loss stops being finite.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from xray.adaptation.batchnorm import adabn, batchnorm_layers, bn_training_mode, index_batches
from xray.adaptation.scores import PROB_EPS, call_stats, probabilities


def affine_weights(model: keras.Model) -> list[Any]:
    """The BatchNorm scale and shift variables (what TENT may change)."""
    out = []
    for bn in batchnorm_layers(model):
        out += [v for v in (bn.gamma, bn.beta) if v is not None]
    return out


def tent(
    model: keras.Model,
    images: np.ndarray,
    threshold: float,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_shift: float,
) -> dict[str, Any]:
    """Entropy minimization of BatchNorm scale/shift, bounded and guarded (see module doc)."""
    import tensorflow as tf

    variables = affine_weights(model)
    if not variables or steps <= 0:
        return {"steps": 0, "status": "off"}
    saved = [v.numpy() for v in variables]
    saved_stats = [
        (bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in batchnorm_layers(model)
    ]
    p0 = probabilities(model, images, batch_size)
    call0, ent0 = call_stats(p0, threshold)
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    rng = np.random.default_rng(seed + 1)
    batches: list[np.ndarray] = []
    tf_vars = [v.value for v in variables]
    finite = True
    with bn_training_mode(model, momentum=0.99):
        for _ in range(steps):
            if not batches:
                batches = index_batches(len(images), batch_size, rng)
            idx = np.sort(batches.pop(0))
            x = tf.constant(images[idx].astype("float32"))
            with tf.GradientTape() as tape:
                tape.watch(tf_vars)
                p = tf.clip_by_value(
                    tf.reshape(model(x, training=True), [-1]), PROB_EPS, 1.0 - PROB_EPS
                )
                loss = -tf.reduce_mean(p * tf.math.log(p) + (1.0 - p) * tf.math.log(1.0 - p))
            if not math.isfinite(float(loss)):
                finite = False
                break
            grads = tape.gradient(loss, tf_vars)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
    for bn, (m, v) in zip(batchnorm_layers(model), saved_stats, strict=True):
        bn.moving_mean.assign(m)
        bn.moving_variance.assign(v)
    adabn(model, images, batch_size, seed)  # statistics that match the new scale and shift
    p1 = probabilities(model, images, batch_size)
    call1, ent1 = call_stats(p1, threshold)
    report = {
        "steps": steps,
        "lr": lr,
        "call_rate_before": round(call0, 6),
        "call_rate_after": round(call1, 6),
        "entropy_before": round(ent0, 6),
        "entropy_after": round(ent1, 6),
    }
    collapsed = abs(call1 - call0) > max_shift
    if not finite or collapsed or not np.isfinite(p1).all():
        for var, value in zip(variables, saved, strict=True):
            var.assign(value)
        for bn, (m, v) in zip(batchnorm_layers(model), saved_stats, strict=True):
            bn.moving_mean.assign(m)
            bn.moving_variance.assign(v)
        reason = "loss not finite" if not finite else f"call rate moved {call1 - call0:+.3f}"
        report["status"] = f"reverted ({reason} > {max_shift})" if collapsed else "reverted"
        report["reason"] = reason
    else:
        report["status"] = "applied"
    return report
