"""Fast compiled passes of trained Keras models: inference with BatchNorm folded, BN moments.

Traced functions that run each model's own graph node by node, as Keras does, with a few
operations swapped:

- `forward(models)`: inference mode. Each BatchNorm that directly follows a convolution
  (its only consumer, float32, no activation in between) is folded into it
  (xray/models/batchnorm_folding.py). Several models run in one call on the same batch,
  and layers equal in all of them (the trunk that fine-tuning froze) run once.
- `moments_pass(models, bns)`: every BatchNorm normalizes with its batch's statistics
  through TF's fused kernel and returns them (AdaBN's statistics pass,
  xray/adaptation/batchnorm.py); every other layer runs in inference mode (dropout off).
  Several models at once too.

Both read the models' variables on every call (nothing is copied), so they stay right
after adaptation changes a model's statistics. They differ from Keras' own call only by
float rounding (about 1e-7 in a probability). A model that is not a functional graph runs
through Keras unchanged. The walk uses Keras' functional internals, each behind a function
of xray/models/keras_private.py (which says why, and the fallback); tests/test_inference.py
compares every pass with Keras' own call."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from xray.models.batchnorm_folding import fold_pairs, folded_conv, plain_bn
from xray.models.keras_private import graph_calls, graph_output, is_graph, takes_training


def _keras_call(op: Any) -> Callable[..., Any]:
    """The operation as Keras' functional call runs it, in inference mode."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if takes_training(op):
            kwargs["training"] = False
        return op(*args, **kwargs)

    return call


def _identity(x: Any, **_: Any) -> Any:
    return x


def _run_folded(model: Any, x: Any, memo: Callable[[Any, Any], Any] | None = None) -> Any:
    """The model's output for a batch, inference mode, BatchNorm folded where it can be.

    `memo(op, fn)`, when given, wraps each operation's function (shared computations).
    """
    if not is_graph(model):
        return model(x, training=False)
    pairs = fold_pairs(model)
    folded_bns = {id(bn) for bn in pairs.values()}

    def op_fn(op: Any) -> Callable[..., Any]:
        if id(op) in pairs:
            fn = folded_conv(op, pairs[id(op)])
        elif id(op) in folded_bns:
            return _identity
        elif is_graph(op):  # a nested functional model: walk it too
            return lambda *a, **_: _run_folded(op, a[0])
        else:
            fn = _keras_call(op)
        return memo(op, fn) if memo is not None else fn

    return graph_output(model, x, op_fn)


def _values(op: Any) -> list[np.ndarray]:
    """An operation's weights and statistics as arrays (none for a weightless one)."""
    return [np.asarray(v) for v in getattr(op, "weights", [])]


def _same(a: Any, b: Any) -> bool:
    """Two layers that compute the same function: class, config (but name, trainable), weights."""
    if type(a) is not type(b) or not hasattr(a, "get_config"):
        return False
    ca, cb = dict(a.get_config()), dict(b.get_config())
    for key in ("name", "trainable"):
        ca.pop(key, None)
        cb.pop(key, None)
    va, vb = _values(a), _values(b)
    return (
        ca == cb
        and len(va) == len(vb)
        and all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(va, vb, strict=True))
    )


def shared_layers(models: Sequence[keras.Model]) -> dict[int, Any]:
    """id(layer of a later model) -> the equal layer of an earlier one it can reuse.

    Equal means the same class, config and weights (a layer that fine-tuning froze); a
    conv with a BatchNorm folded into it also needs that BatchNorm equal. Whether a
    computation is reused is decided while tracing: only on the very same input tensors.
    """
    out: dict[int, Any] = {}
    seen: list[tuple[Any, Any]] = []  # (layer, its folded BatchNorm or None)
    for model in models:
        if not is_graph(model):
            continue
        pairs = fold_pairs(model)
        for op, _ in graph_calls(model):
            if is_graph(op) or id(op) in out:
                continue
            bn = pairs.get(id(op))
            for earlier, earlier_bn in seen:
                if _same(op, earlier) and (
                    (bn is None and earlier_bn is None)
                    or (bn is not None and earlier_bn is not None and _same(bn, earlier_bn))
                ):
                    out[id(op)] = earlier
                    break
            else:
                seen.append((op, bn))
    return out


class _Joint:
    """A compiled pass of several models on one batch, computing shared layers once.

    Layers equal across the models (a frozen trunk that fine-tuning left alone) run once
    per batch when their inputs are the same. That holds while the weights stay equal:
    every use checks them, and after a change the models run apart. Subclasses say what
    each model computes (`_outputs`).
    """

    def __init__(self, models: Sequence[keras.Model], share: bool = True) -> None:
        shape = models[0].input_shape[1:]
        if any(m.input_shape[1:] != shape for m in models):
            raise ValueError("forward: the models' input shapes differ")
        self._shape = shape
        self._refs = [weakref.ref(m) for m in models]  # a cache of this must not keep them
        links = shared_layers(models) if share and len(models) > 1 else {}
        self._apart: Any = None
        self._shared: Any = None
        self._pairs: list[tuple[Any, Any]] = []  # (layer, the layer whose output it reuses)
        if links:
            reused: dict[int, Any] = {}
            self._shared = self._trace(links, reused)
            self._shared.get_concrete_function()  # trace now: which layers were reused
            bn_of = {k: bn for m in models for k, bn in fold_pairs(m).items()}
            for op in reused.values():  # a reused folded conv carries its BatchNorm
                self._pairs.append((op, links[id(op)]))
                if id(op) in bn_of:
                    self._pairs.append((bn_of[id(op)], bn_of[id(links[id(op)])]))
        if not self._pairs:
            self._shared = None

    @property
    def shared(self) -> int:
        """How many layers of the later models reuse an earlier model's output."""
        return len(self._pairs)

    def _outputs(
        self, model: Any, x: Any, memo: Callable[[Any, Any], Any] | None, sink: dict[int, Any]
    ) -> list[Any]:
        raise NotImplementedError

    def _trace(self, links: dict[int, Any], reused: dict[int, Any]) -> Any:
        """The compiled pass; `reused` collects the layers whose computation was shared."""
        import tensorflow as tf

        refs = self._refs

        @tf.function(input_signature=[tf.TensorSpec([None, *self._shape], tf.float32)])
        def run(x: Any) -> tuple[Any, ...]:
            done: dict[tuple[int, tuple[int, ...]], Any] = {}  # (layer, input ids) -> output
            sink: dict[int, Any] = {}  # id(BatchNorm) -> its batch moments (moments pass)

            def memo(op: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
                owner = links.get(id(op), op)

                def call(*args: Any, **kwargs: Any) -> Any:
                    key = (id(owner), tuple(id(t) for t in tf.nest.flatten((args, kwargs))))
                    if key in done:
                        reused[id(op)] = op
                        if id(owner) in sink:  # a shared BatchNorm: the same moments
                            sink[id(op)] = sink[id(owner)]
                    else:
                        done[key] = fn(*args, **kwargs)
                    return done[key]

                return call

            return tuple(
                out for r in refs for out in self._outputs(r(), x, memo if links else None, sink)
            )

        return run

    def _still_equal(self) -> bool:
        return all(
            all(np.array_equal(u, v) for u, v in zip(_values(a), _values(b), strict=True))
            for a, b in self._pairs
        )

    def _pass(self) -> Any:
        """The shared pass while the reused layers' weights are equal, else the models apart."""
        if self._shared is not None and self._still_equal():
            return self._shared
        if self._apart is None:
            self._apart = self._trace({}, {})
        return self._apart

    def __call__(self, x: Any) -> tuple[Any, ...]:
        """The outputs of every model for one float32 batch, model after model."""
        return self._pass()(x)


class Forward(_Joint):
    """One compiled inference pass of several models on a batch: a tuple of their outputs."""

    def _outputs(
        self, model: Any, x: Any, memo: Callable[[Any, Any], Any] | None, sink: dict[int, Any]
    ) -> list[Any]:
        return [_run_folded(model, x, memo)]

    def scores(self, x: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Each model's outputs for images (N, H, W, C), batch by batch, flattened to (N,)."""
        if len(x) == 0:
            return [np.zeros(0, np.float32) for _ in self._refs]
        run = self._pass()  # the weights cannot change within one call
        parts: list[list[np.ndarray]] = [[] for _ in self._refs]
        for i in range(0, len(x), batch_size):
            out = run(x[i : i + batch_size].astype("float32"))
            for k, part in enumerate(parts):
                part.append(np.asarray(out[k]).reshape(-1))
        return [np.concatenate(p) for p in parts]


def _run_moments(
    model: Any, x: Any, sink: dict[int, Any], memo: Callable[[Any, Any], Any] | None
) -> Any:
    """The model on a batch with every BatchNorm on batch statistics (moments to sink)."""

    def op_fn(op: Any) -> Callable[..., Any]:
        if isinstance(op, keras.layers.BatchNormalization):
            fn = _fused_moments(op, sink)
        elif is_graph(op):
            return lambda *a, **_: _run_moments(op, a[0], sink, None)
        else:
            fn = _keras_call(op)
        return memo(op, fn) if memo is not None else fn

    return graph_output(model, x, op_fn)


class Moments(_Joint):
    """One compiled pass of several models returning each one's BatchNorm batch moments.

    Every BatchNorm normalizes with its batch's statistics (TF's fused kernel); every
    other layer runs in inference mode. Per model, in `batchnorm_layers` order: the means,
    then the variances. Layers equal across the models run once (the same moments).
    """

    def __init__(
        self,
        models: Sequence[keras.Model],
        bns: Sequence[Sequence[keras.layers.BatchNormalization]],
        share: bool = True,
    ) -> None:
        self._keys = [[id(bn) for bn in layer_list] for layer_list in bns]
        self._index = {id(m): i for i, m in enumerate(models)}
        super().__init__(models, share)

    def _outputs(
        self, model: Any, x: Any, memo: Callable[[Any, Any], Any] | None, sink: dict[int, Any]
    ) -> list[Any]:
        _run_moments(model, x, sink, memo)
        keys = self._keys[self._index[id(model)]]
        return [sink[k][0] for k in keys] + [sink[k][1] for k in keys]

    def batch(self) -> Callable[[np.ndarray], list[list[np.ndarray]]]:
        """A function of one float32 batch: per model, its means then its variances."""
        run = self._pass()  # the weights cannot change within one statistics pass
        sizes = [2 * len(k) for k in self._keys]

        def moments_of(x: np.ndarray) -> list[list[np.ndarray]]:
            flat = [np.asarray(t) for t in run(x)]
            out, start = [], 0
            for n in sizes:
                out.append(flat[start : start + n])
                start += n
            return out

        return moments_of


def moments_pass(
    models: Sequence[keras.Model], bns: Sequence[Sequence[keras.layers.BatchNormalization]]
) -> Moments | None:
    """The joint moments pass of the models, or None where one cannot be walked (Keras then)."""
    if not all(is_graph(m) for m in models) or not all(plain_bn(b) for lst in bns for b in lst):
        return None
    return Moments(models, bns)


def forward(models: Sequence[keras.Model], share: bool = True) -> Forward:
    """One compiled inference pass of every model on a float32 batch (see Forward)."""
    return Forward(models, share)


def _fused_moments(bn: keras.layers.BatchNormalization, sink: dict[int, Any]) -> Any:
    """BatchNorm on its batch's statistics (TF's fused kernel); the moments go to sink."""
    import tensorflow as tf

    def call(x: Any, **_: Any) -> Any:
        dtype = x.dtype
        x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        scale = bn.gamma if bn.scale else tf.ones([channels])
        offset = bn.beta if bn.center else tf.zeros([channels])
        y, mean, var = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, epsilon=bn.epsilon, is_training=True
        )
        # The kernel returns the sample variance (n - 1); the moments are over n values.
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        sink[id(bn)] = (mean, var * (n - 1.0) / tf.maximum(n, 1.0))
        return tf.cast(y, dtype)

    return call
