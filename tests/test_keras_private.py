"""The private Keras APIs behind xray/models/keras_private.py: each still there, in the shape
the code relies on, giving what the public path gives. A Keras upgrade that breaks one fails
here (uv.lock pins the version the project was checked with)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

import keras
import numpy as np
import pytest
from keras import layers

from xray.models import keras_private as kp
from xray.models.architectures import seed_cnn, xray_net


def _tiny() -> keras.Model:
    """conv -> BatchNorm -> relu, a nested functional block, dropout, a shared Dense."""
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((4, 4, 3))
    y = layers.BatchNormalization(name="inner_bn")(layers.Conv2D(3, 1, name="inner_conv")(inner_in))
    inner = keras.Model(inner_in, y, name="inner")
    x_in = keras.Input((4, 4, 1))
    x = layers.Conv2D(3, 3, padding="same", name="conv")(x_in)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = inner(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.5, name="drop")(x)
    shared = layers.Dense(3, name="shared")
    x = shared(shared(x))
    out = layers.Dense(1, activation="sigmoid", name="prob")(x)
    return keras.Model(x_in, out, name="tiny")


def _batch(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (n, 4, 4, 1)).astype("float32")


def _keras_call(op: object) -> object:
    """The operation in inference mode, as xray/models/inference.py runs it."""

    def call(*args: object, **kwargs: object) -> object:
        if kp.takes_training(op):
            kwargs["training"] = False
        return op(*args, **kwargs)

    return call


@pytest.mark.parametrize("build", [_tiny, lambda: xray_net(32), lambda: seed_cnn(96)])
def test_walk_layers_is_flatten_layers_in_the_same_order(build: Callable[[], keras.Model]) -> None:
    model = build()
    walked = kp.walk_layers(model)
    assert len({id(layer) for layer in walked}) == len(walked)
    if not hasattr(model, "_flatten_layers"):  # gone: walk_layers never used it
        pytest.skip("Keras no longer has Layer._flatten_layers to compare with")
    assert [id(x) for x in walked] == [
        id(x) for x in model._flatten_layers(include_self=False, recursive=True)
    ]


def test_walk_layers_reaches_nested_models() -> None:
    names = [layer.name for layer in kp.walk_layers(_tiny())]
    assert {"inner_conv", "inner_bn", "bn", "shared", "drop"} <= set(names)
    assert names.count("shared") == 1


def test_graph_calls_are_the_models_operations_in_order() -> None:
    model = _tiny()
    assert kp.is_graph(model) and kp.is_graph(model.get_layer("inner"))
    assert not kp.is_graph(model.get_layer("conv"))
    by_depth = model._nodes_by_depth
    assert isinstance(by_depth, dict) and all(isinstance(d, int) for d in by_depth)
    calls = kp.graph_calls(model)
    ops = [op for op, _ in calls]
    public = [op for op in model.operations if not isinstance(op, layers.InputLayer)]
    names = ["conv", "bn", "relu", "inner", "pool", "drop", "shared", "shared", "prob"]
    assert [op.name for op in ops] == names
    assert [id(op) for op in dict.fromkeys(ops)] == [id(op) for op in public]
    for _, inputs in calls:
        assert len(inputs) == 1 and isinstance(inputs[0], keras.KerasTensor)


def test_producer_and_call_count_agree_with_the_public_layer_tensors() -> None:
    model = _tiny()
    calls = kp.graph_calls(model)
    assert isinstance(kp.producer(calls[0][1][0]), layers.InputLayer)
    for (op, _), (_, next_inputs) in itertools.pairwise(calls):
        assert kp.producer(next_inputs[0]) is op
        if kp.call_count(op) == 1 and not kp.is_graph(op):
            assert op.output is next_inputs[0]  # public: the output of a layer called once
    assert kp.producer(model.outputs[0]) is model.get_layer("prob")
    counts = {op.name: kp.call_count(op) for op, _ in calls}
    assert counts["shared"] == 2 and counts["conv"] == counts["bn"] == counts["prob"] == 1


def test_takes_training_is_every_layer() -> None:
    model = _tiny()
    for op, _ in kp.graph_calls(model):
        assert "training" in op._call_context_args
        assert kp.takes_training(op) == isinstance(op, keras.layers.Layer)


def test_graph_output_is_keras_own_call() -> None:
    model = _tiny()
    params = inspect.signature(model._run_through_graph).parameters
    assert list(params)[:2] == ["inputs", "operation_fn"]
    x = _batch()
    ours = np.asarray(kp.graph_output(model, x, _keras_call))
    theirs = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(ours, theirs)


def test_multi_worker_fit_internals_keep_their_signatures() -> None:
    from keras.src.backend.tensorflow import trainer

    assert list(inspect.signature(trainer.reduce_per_replica).parameters) == [
        "values",
        "strategy",
        "reduction",
    ]
    assert list(inspect.signature(trainer._collective_all_reduce_multi_worker).parameters) == [
        "strategy"
    ]
    for name in ("_symbolic_build", "_maybe_symbolic_build"):
        params = inspect.signature(getattr(keras.Model, name)).parameters
        assert list(params) == ["self", "iterator", "data_batch"], name
    # fit builds through the instance's method, and the step looks the reduction up in the
    # module at call time: what multi_worker_fit replaces.
    assert "self._maybe_symbolic_build(" in inspect.getsource(trainer.TensorFlowTrainer.fit)
    assert "= reduce_per_replica(" in inspect.getsource(trainer.TensorFlowTrainer)


def _trained(patched: bool) -> list[np.ndarray]:
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(2)
    ds = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32"))
    ).batch(4)
    strategy = tf.distribute.get_strategy()
    if not patched:
        model.fit(ds, epochs=2, verbose=0)
        return model.get_weights()
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    with kp.multi_worker_fit(model, strategy, ds):
        assert trainer.reduce_per_replica is not original
        assert "_maybe_symbolic_build" in vars(model)
        model.fit(ds, epochs=2, verbose=0)
    assert trainer.reduce_per_replica is original and "_maybe_symbolic_build" not in vars(model)
    return model.get_weights()


def test_multi_worker_fit_on_one_device_trains_as_plain_fit() -> None:
    for a, b in zip(_trained(patched=True), _trained(patched=False), strict=True):
        np.testing.assert_array_equal(a, b)
