"""Per-image histogram equalization as a model layer (`train.normalize: equalize`).

Keras' own `layers.Equalization` cannot serve: it pools one histogram over the whole batch
(an image's output would depend on its batch neighbours), passes images through untouched
outside training, and its symbolic output is its input (a cycle in a functional model).
`Equalize` maps each image's gray levels through its own histogram's CDF, in Keras ops, so
every path that feeds the model (training, fine-tuning, evaluate, adapt, predict) sees the
same equalized input. It is registered under the package name `xray`: a model file that
holds it loads where this module is imported (`xray.models.architectures` imports it), in
Keras' safe mode.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

LEVELS = 256  # 8-bit gray levels in, the same scale out


@keras.saving.register_keras_serializable(package="xray")
class Equalize(keras.layers.Layer):
    """Each image's 0..255 gray levels to 0..255 through its own cumulative histogram."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["trainable"] = False  # nothing to learn (also when loaded from its config)
        super().__init__(**kwargs)

    def call(self, images: Any) -> Any:
        shape = ops.shape(images)
        flat = ops.reshape(images, (shape[0], -1))
        levels = ops.cast(ops.clip(ops.floor(flat), 0, LEVELS - 1), "int32")
        cdf = ops.cast(ops.cumsum(ops.bincount(levels, minlength=LEVELS), axis=1), "float32")
        # the count at the darkest level present maps to 0, the whole image to 255
        low = ops.min(ops.where(cdf > 0, cdf, cdf[:, -1:]), axis=1, keepdims=True)
        span = ops.maximum(cdf[:, -1:] - low, 1.0)
        lut = ops.clip((cdf - low) / span, 0.0, 1.0) * (LEVELS - 1.0)
        out = ops.take_along_axis(lut, levels, axis=1)
        return ops.cast(ops.reshape(out, shape), images.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape
