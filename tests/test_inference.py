"""Compiled inference and BatchNorm-moment passes (xray/models/inference.py) against Keras'
own call."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from xray.adaptation.adapt import predict_adapted, predict_adapted_many
from xray.adaptation.batchnorm import (
    _keras_moments_step,
    batchnorm_layers,
    bn_statistics,
    bn_statistics_many,
    bn_training_mode,
)
from xray.core.params import AdaptParams
from xray.models.architectures import seed_cnn, xray_net
from xray.models.batchnorm_folding import fold_pairs
from xray.models.inference import forward, moments_pass, shared_layers
from xray.models.training import predict

SIZE = 32
TOL = 2e-6  # float rounding of a probability


def _images(n: int = 40, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 1)).astype("uint8")


def _trained_like(model: keras.Model, seed: int) -> keras.Model:
    """Random BatchNorm statistics and affine weights, as training would leave them."""
    rng = np.random.default_rng(seed)
    for bn in batchnorm_layers(model):
        c = bn.moving_mean.shape
        bn.moving_mean.assign(rng.normal(0, 0.2, c).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
        bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
        bn.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
    return model


def _keras(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x.astype("float32"), training=False)).reshape(-1)


def _mixed_convs() -> keras.Model:
    """Every foldable conv kind with and without bias, plus a conv whose output has two uses."""
    inp = keras.Input((SIZE, SIZE, 1))
    x = layers.Rescaling(1 / 255)(inp)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=True)(x)
    x = layers.BatchNormalization()(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.SeparableConv2D(12, 3, padding="same", use_bias=True)(x)
    x = layers.BatchNormalization()(x)
    y = layers.Conv2D(12, 1, use_bias=False)(x)  # used twice: never folded
    z = layers.BatchNormalization()(y)
    x = layers.Add()([z, y])
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


@pytest.mark.parametrize(
    ("build", "folds"),
    [
        (lambda: xray_net(SIZE), 11),  # every conv of the default architecture
        (lambda: seed_cnn(64), 0),  # ReLU between conv and BatchNorm: nothing to fold
        (_mixed_convs, 3),
    ],
)
def test_folded_inference_equals_keras(build, folds: int) -> None:
    keras.utils.set_random_seed(0)
    model = _trained_like(build(), 3)
    assert len(fold_pairs(model)) == folds
    size = model.input_shape[1]
    x = np.random.default_rng(2).integers(0, 256, (20, size, size, 1)).astype("uint8")
    assert np.abs(predict(model, x, 8) - _keras(model, x)).max() < TOL


def test_inference_reads_the_current_statistics() -> None:
    keras.utils.set_random_seed(0)
    model = _trained_like(xray_net(SIZE), 3)
    x = _images()
    before = predict(model, x, 16)
    bn = batchnorm_layers(model)[0]
    bn.moving_mean.assign(bn.moving_mean.numpy() + 0.5)  # what AdaBN does in place
    after = predict(model, x, 16)
    assert np.abs(after - before).max() > 1e-3
    assert np.abs(after - _keras(model, x)).max() < TOL


def _finetuned_copy(model: keras.Model) -> keras.Model:
    """A copy whose stem is untouched and whose later convs moved (as finetune leaves it)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    rng = np.random.default_rng(5)
    for layer in copy.layers:
        if layer.name.startswith(("block", "prob")) and not isinstance(
            layer, layers.BatchNormalization
        ):
            for v in layer.weights:
                v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype("float32"))
    return copy


def test_models_sharing_a_frozen_stem_run_it_once_and_score_as_apart() -> None:
    keras.utils.set_random_seed(0)
    base = _trained_like(xray_net(SIZE), 3)
    tuned = _finetuned_copy(base)
    links = shared_layers([base, tuned])
    names = {base.get_layer(n).name for n in ("stem1_conv", "stem2_conv")}
    assert names <= {layer.name for layer in links.values()}
    assert not any(layer.name == "block1_sep1" for layer in links.values())
    joint = forward([base, tuned])
    assert joint.shared >= 4  # rescale, both stem convs (BatchNorm folded), their ReLUs
    x = _images()
    p_base, p_tuned = joint.scores(x, 16)
    assert np.abs(p_base - _keras(base, x)).max() < TOL
    assert np.abs(p_tuned - _keras(tuned, x)).max() < TOL
    assert np.abs(p_base - p_tuned).max() > 1e-4  # two different models
    # A shared layer changes in one model only: the models run apart, still right.
    stem = tuned.get_layer("stem1_bn")
    stem.moving_mean.assign(stem.moving_mean.numpy() + 0.3)
    p_base, p_tuned = joint.scores(x, 16)
    assert np.abs(p_tuned - _keras(tuned, x)).max() < TOL
    assert np.abs(p_base - _keras(base, x)).max() < TOL


def test_forward_refuses_models_of_different_input_sizes() -> None:
    with pytest.raises(ValueError, match="input shapes differ"):
        forward([xray_net(SIZE), xray_net(SIZE * 2)])


def test_fused_moments_match_keras_training_mode_and_leave_the_model_alone() -> None:
    keras.utils.set_random_seed(0)
    model = _trained_like(xray_net(SIZE), 3)
    bns = batchnorm_layers(model)
    x = _images(32).astype("float32")
    before = [v.numpy().copy() for v in model.variables]
    joint = moments_pass([model], [bns])
    assert joint is not None
    fused = joint.batch()(x)[0]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables, strict=True))
    with bn_training_mode(model, momentum=0.0):
        reference = [t.numpy() for t in _keras_moments_step(model, bns)(x)]
    for a, b in zip(fused, reference, strict=True):
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_statistics_pass_is_deterministic_without_folds() -> None:
    keras.utils.set_random_seed(0)
    model = _trained_like(seed_cnn(64), 3)  # conv, ReLU, then BatchNorm: a fused pass all the same
    x = np.random.default_rng(4).integers(0, 256, (24, 64, 64, 1)).astype("uint8")
    first = bn_statistics(model, x, 8, seed=0)
    second = bn_statistics(model, x, 8, seed=0)
    for (m1, v1), (m2, v2) in zip(first, second, strict=True):
        assert np.array_equal(m1, m2) and np.array_equal(v1, v2)
    assert len(first) == len(batchnorm_layers(model))


def test_models_adapted_together_match_one_at_a_time() -> None:
    """The joint statistics and prediction passes give the very numbers of separate ones."""
    keras.utils.set_random_seed(0)
    base = _trained_like(xray_net(SIZE), 3)
    tuned = _finetuned_copy(base)
    x = _images(48, seed=7)
    together = bn_statistics_many([base, tuned], x, 16, seed=0)
    for model, stats in zip((base, tuned), together, strict=True):
        alone = bn_statistics(model, x, 16, seed=0)
        for (m1, v1), (m2, v2) in zip(stats, alone, strict=True):
            np.testing.assert_array_equal(m1, m2)
            np.testing.assert_array_equal(v1, v2)
    settings = AdaptParams(prior=True, min_images=8, batch_size=16)
    metas = [{"threshold": 0.5, "threshold_adabn": 0.45, "prior_reference_adabn": 0.6}] * 2
    entries = list(zip((base, tuned), metas, strict=True))
    models = [base, tuned]
    joint_passes = (moments_pass(models, [batchnorm_layers(m) for m in models]), forward(models))
    before = [[v.numpy().copy() for v in m.variables] for m in models]
    many = predict_adapted_many(entries, x, settings, joint_passes)
    for (model, meta), (p, thr, report) in zip(entries, many, strict=True):
        p1, thr1, report1 = predict_adapted(model, meta, x, settings)
        np.testing.assert_array_equal(p, p1)
        assert thr == thr1 and report.as_dict() == report1.as_dict()
    for model, saved in zip(models, before, strict=True):  # every model left as it was
        assert all(
            np.array_equal(a, v.numpy()) for a, v in zip(saved, model.variables, strict=True)
        )
