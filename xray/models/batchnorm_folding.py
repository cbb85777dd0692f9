"""BatchNorm folded into the convolution before it, for inference (xray/models/inference.py).

A BatchNorm in inference mode is an affine map per channel; when it directly follows a
linear convolution (its only consumer, float32, channels last, one call each), the conv
can run with kernel * gamma / sqrt(var + eps) and a bias instead: one fused kernel in
place of three passes over the activations. The folded weights are read from the
layers' variables on every call, so they follow any change of the BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from xray.models.keras_private import call_count, graph_calls, is_graph, producer

CONVS = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)


def plain_bn(bn: keras.layers.BatchNormalization) -> bool:
    """A BatchNorm called once, over the last axis, without renormalization or syncing."""
    return (
        call_count(bn) == 1
        and bn.axis in (-1, len(bn.input.shape) - 1)
        and not getattr(bn, "renorm", False)
        and not getattr(bn, "synchronized", False)
    )


def _foldable(conv: Any, bn: keras.layers.BatchNormalization) -> bool:
    """A conv whose output BatchNorm can absorb: linear, channels-last, float32, one call."""
    return (
        isinstance(conv, CONVS)
        and call_count(conv) == 1
        and getattr(conv, "groups", 1) == 1
        and plain_bn(bn)
        and conv.activation is keras.activations.linear
        and conv.data_format == "channels_last"
        and conv.compute_dtype == "float32"
        and bn.compute_dtype == "float32"
    )


def fold_pairs(model: keras.Model) -> dict[int, keras.layers.BatchNormalization]:
    """id(conv) -> the BatchNorm folded into it, for each conv whose only consumer is one."""
    if not is_graph(model):
        return {}
    calls = graph_calls(model)
    uses: dict[int, int] = {id(t): 1 for t in model.outputs}  # an output is a use too
    for _, inputs in calls:
        for t in inputs:
            uses[id(t)] = uses.get(id(t), 0) + 1
    pairs = {}
    for bn, inputs in calls:
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        if len(inputs) != 1 or uses.get(id(inputs[0])) != 1:
            continue
        conv = producer(inputs[0])
        if conv is not None and _foldable(conv, bn):
            pairs[id(conv)] = bn
    return pairs


def folded_conv(conv: Any, bn: keras.layers.BatchNormalization) -> Callable[..., Any]:
    """The conv followed by its BatchNorm in inference mode, as one conv with a bias."""
    import tensorflow as tf

    def call(x: Any, **_: Any) -> Any:
        inv = tf.math.rsqrt(bn.moving_variance + bn.epsilon)
        if bn.scale:
            inv = inv * bn.gamma
        bias = -bn.moving_mean * inv
        if bn.center:
            bias = bias + bn.beta
        if conv.use_bias:
            bias = bias + conv.bias * inv
        strides = (1, *conv.strides, 1)
        padding = conv.padding.upper()
        if isinstance(conv, keras.layers.SeparableConv2D):
            y = tf.nn.separable_conv2d(
                x,
                conv.depthwise_kernel,
                conv.pointwise_kernel * inv,
                strides,
                padding,
                dilations=conv.dilation_rate,
            )
        elif isinstance(conv, keras.layers.DepthwiseConv2D):
            k = conv.kernel
            y = tf.nn.depthwise_conv2d(
                x,
                k * tf.reshape(inv, (1, 1, k.shape[2], k.shape[3])),
                strides,
                padding,
                dilations=conv.dilation_rate,
            )
        else:
            y = tf.nn.conv2d(x, conv.kernel * inv, strides, padding, dilations=conv.dilation_rate)
        return tf.nn.bias_add(y, bias)

    return call
