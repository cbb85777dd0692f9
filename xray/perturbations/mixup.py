"""Mixup (Zhang et al., ICLR 2018) on a tf.data pipeline of training batches.

Each image is blended with its neighbour in the (shuffled) batch, its label likewise:
x = w x + (1 - w) x', y = w y + (1 - w) y', with w ~ Beta(alpha, alpha) per image, folded
to w >= 0.5 so each draw stays mostly its own image (Keras rounds a soft label when it looks
up the class weight: the own class's weight). The draws come from a key stream seeded like
the augmentation's: new blends every epoch, the same ones on a rerun or a resumed run.
With mixup, the training metrics (accuracy, AUC) compare predictions to blended labels;
validation is on clean images.
"""

from __future__ import annotations

from typing import Any


def mixup(dataset: Any, alpha: float, seed: int) -> Any:
    """`dataset` of (images, labels) batches with each image blended with its neighbour's."""
    import tensorflow as tf

    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def blend(batch: tuple[Any, Any], key: Any) -> tuple[Any, Any]:
        x, y = batch
        n = tf.shape(x)[0]
        first, second = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
        a = tf.random.stateless_gamma([n], seed=first, alpha=alpha)
        b = tf.random.stateless_gamma([n], seed=second, alpha=alpha)
        w = a / tf.maximum(a + b, 1e-12)
        w = tf.maximum(w, 1.0 - w)
        wx = tf.reshape(w, [-1, 1, 1, 1])
        y = tf.cast(y, "float32")
        mixed_x = wx * x + (1.0 - wx) * tf.roll(x, 1, axis=0)
        mixed_y = tf.reshape(w, tf.shape(y)) * y + (1.0 - tf.reshape(w, tf.shape(y))) * tf.roll(
            y, 1, axis=0
        )
        return mixed_x, mixed_y

    return (
        tf.data.Dataset.zip(dataset, keys)
        .map(blend, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
