"""Every private Keras API the project relies on, in one module: what, why, and the fallback.

Keras is pinned by uv.lock (3.15). A Keras upgrade that removes or changes any of these
fails tests/test_keras_private.py, which checks that each exists, has the shape or
signature used here, and gives the same result as the public path on a tiny model.

Functional graph walk (xray/models/inference.py: BatchNorm folded into convs, BatchNorm
batch moments, layers shared across models computed once):

- `Function._nodes_by_depth`: the model's call nodes by depth; with `Node.operation`,
  `Node.is_input` and `Node.arguments.keras_tensors` (attributes of the private `Node`
  class), read by `graph_calls`: each call's operation and inputs, in Keras' order.
- `Function._run_through_graph(inputs, operation_fn=...)`: runs the graph as Keras'
  own functional call does, with each operation's function swapped (`graph_output`).
- `Operation._inbound_nodes`: how many times a layer is called (`call_count`): a conv or
  a BatchNorm called twice is never folded.
- `KerasTensor._keras_history.operation`: the layer that produced a tensor (`producer`).
- `Layer._call_context_args`: the operations Keras' functional call passes `training`
  to (`takes_training`).

  Public fallback for all five: Keras' own call, `model(x, training=False)` (and Keras'
  training mode at momentum 0 for the moments, xray/adaptation/batchnorm.py). A model
  without the graph attributes (`is_graph` false) takes it: the same numbers up to float
  rounding, without the folding and sharing (slower). `takes_training` falls back to
  `isinstance(op, keras.layers.Layer)` (every Layer registers `training` in Keras 3.15).

Multi-worker training (xray/models/distribute.py; keras-team/keras#20585: Keras 3.15
cannot run `fit` under MultiWorkerMirroredStrategy), in `multi_worker_fit`:

- `Trainer._symbolic_build(data_batch=...)`: the model built from the dataset's element
  spec under the strategy, and the instance's `_maybe_symbolic_build` (which `fit` calls
  and which would reduce a tuple batch across workers) replaced by a no-op while training.
- `keras.src.backend.tensorflow.trainer.reduce_per_replica(values, strategy, reduction)`
  patched, while training, to reduce scalar logs with axis=None; it asks
  `trainer._collective_all_reduce_multi_worker(strategy)` whether the strategy is one.

  Public fallback: none; `train.strategy: default` or `mirrored` need none of them.

Not private any more: `Layer._flatten_layers` (every layer, nested models included) is
replaced by `walk_layers`, which walks the public `Model.layers` in the same order.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras


def walk_layers(model: Any) -> list[Any]:
    """Every layer inside `model` (nested models' layers included), each once.

    Public: `Model.layers` walked recursively, in the order of Keras' private
    `_flatten_layers(include_self=False, recursive=True)` (each model's layers are put
    in front of the queue, reversed). A sublayer of a layer that is not a Model (no
    public `layers`) is not reached: the project's architectures have none.
    """
    out: list[Any] = []
    seen: set[int] = set()
    queue = collections.deque(getattr(model, "layers", ()))
    while queue:
        layer = queue.popleft()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        queue.extendleft(getattr(layer, "layers", ()))
    return out


def is_graph(model: Any) -> bool:
    """Whether the model is a functional graph whose nodes can be walked (private attributes)."""
    return hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth")


def graph_calls(model: Any) -> list[tuple[Any, list[Any]]]:
    """(operation, its symbolic input tensors) of each call in the model's own graph.

    In the order Keras runs them (inputs first); not the calls of other models that
    share the layers; the input layers left out.
    """
    by_depth = model._nodes_by_depth
    return [
        (n.operation, list(n.arguments.keras_tensors))
        for d in sorted(by_depth, reverse=True)
        for n in by_depth[d]
        if not n.is_input
    ]


def call_count(layer: Any) -> int:
    """How many times the layer was called in a graph (its inbound nodes)."""
    return len(layer._inbound_nodes)


def producer(tensor: Any) -> Any:
    """The operation whose call produced a symbolic tensor (None for an input)."""
    return tensor._keras_history.operation


def takes_training(op: Any) -> bool:
    """Whether Keras' functional call passes `training` to the operation."""
    registered = getattr(op, "_call_context_args", None)
    if registered is None:
        return isinstance(op, keras.layers.Layer)
    return "training" in registered


def graph_output(model: Any, x: Any, operation_fn: Callable[[Any], Callable[..., Any]]) -> Any:
    """The model's output for x, each operation run by `operation_fn(op)(*args, **kwargs)`."""
    return model._run_through_graph(x, operation_fn=operation_fn)


def _reduce_scalars_across_workers(original: Any) -> Any:
    """keras' reduce_per_replica, fixed for multi-worker MEAN of scalar logs (keras#20585)."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values
            )
        return original(values, strategy, reduction)

    return reduce_per_replica


@contextlib.contextmanager
def multi_worker_fit(model: keras.Model, strategy: Any, train_ds: Any) -> Iterator[None]:
    """Within: `model.fit` runs under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Keras 3.15's symbolic build reduces a tuple batch across workers and its step reduces
    scalar logs with axis=0: the model is built from the dataset's element spec instead,
    and scalar logs are reduced with axis=None. Undone on exit.
    """
    from keras.src.backend.tensorflow import trainer

    with strategy.scope():
        model._symbolic_build(data_batch=train_ds.element_spec)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    patched = trainer.reduce_per_replica
    trainer.reduce_per_replica = _reduce_scalars_across_workers(patched)
    try:
        yield
    finally:
        trainer.reduce_per_replica = patched
        del model._maybe_symbolic_build
