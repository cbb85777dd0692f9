"""Tests for xray.perturbations.augmix: AugMix views, the consistency loss, the Views wrapper."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from xray.models.architectures import build_model
from xray.perturbations.augmix import ConsistencyLoss, Views, chain_augmenter, mixed_views

SIZE = 32


def _batch(n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.float32)


def test_views_keep_the_draw_first_and_are_keyed() -> None:
    x, aug = _batch(), chain_augmenter(3)
    a = mixed_views(x, aug, 2, (1, 0, 0))
    assert a.shape == (4, 3, SIZE, SIZE, 1) and a.dtype == np.float32
    np.testing.assert_array_equal(a[:, 0], x)
    np.testing.assert_array_equal(a, mixed_views(x, aug, 2, (1, 0, 0)))  # rerun: same
    assert not np.array_equal(a, mixed_views(x, aug, 2, (1, 0, 32)))  # next batch: new draws
    assert not np.array_equal(a[:, 1], a[:, 2])  # two copies, two mixes
    assert not np.array_equal(a[:, 1], x)
    assert a.min() >= 0.0 and a.max() <= 255.0


def test_chains_never_zoom() -> None:
    """Averaging zoomed copies is the held-out zoom_blur family: the chains leave zoom out."""
    assert chain_augmenter(0).ranges["zoom"] == 0.0


def test_one_view_is_binary_cross_entropy() -> None:
    y = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    p = np.array([[0.2], [0.7], [0.99], [0.5]], np.float32)
    w = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
    ours = ConsistencyLoss(12.0)(y, p, sample_weight=w)
    keras_bce = keras.losses.BinaryCrossentropy()(y[:, None], p, sample_weight=w)
    np.testing.assert_allclose(float(ours), float(keras_bce), rtol=1e-5)


def test_consistency_term_is_zero_for_agreeing_views_and_grows_with_disagreement() -> None:
    y = np.array([1.0, 0.0], np.float32)
    first = np.array([[0.8], [0.3]], np.float32)
    bce = float(ConsistencyLoss(12.0)(y, first))
    agree = np.repeat(first, 3, axis=1)
    assert float(ConsistencyLoss(12.0)(y, agree)) == pytest.approx(bce, rel=1e-6)
    near = np.array([[0.8, 0.7, 0.75], [0.3, 0.35, 0.3]], np.float32)
    far = np.array([[0.8, 0.1, 0.2], [0.3, 0.9, 0.95]], np.float32)
    losses = [float(ConsistencyLoss(12.0)(y, v)) for v in (near, far)]
    assert bce < losses[0] < losses[1]
    assert float(ConsistencyLoss(0.0)(y, far)) == pytest.approx(bce, rel=1e-6)


def test_views_wrapper_scores_each_view_with_the_inner_model() -> None:
    keras.utils.set_random_seed(0)
    inner = build_model("xray_net", SIZE)
    wrapped = Views(inner)
    x = _batch(3)
    stack = np.stack([x, x[::-1], 255.0 - x], axis=1)
    out = np.asarray(wrapped(stack))
    assert out.shape == (3, 3)
    for v in range(3):
        np.testing.assert_allclose(out[:, v], np.asarray(inner(stack[:, v]))[:, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(wrapped(x)), np.asarray(inner(x)), atol=1e-6)
    assert [v.path for v in wrapped.trainable_variables] == [
        v.path for v in inner.trainable_variables
    ]
