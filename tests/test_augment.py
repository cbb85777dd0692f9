"""The compiled acquisition augmentation: geometry against TF's own warp, the prepared cache,
fresh draws every epoch, the same draws on every rerun."""

from __future__ import annotations

import numpy as np
import pytest

from xray.perturbations.augment import AUGMENT, DRAWS, augmenter

GEOMETRY_ONLY = {k: 0.0 for k in AUGMENT if k not in ("rotation", "zoom", "translation")}


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish uint8 images (n, size, size, 1): gradients plus a disc, so warps show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7, 3) * (1, 1, 0.5)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) * 120
        out.append(np.clip(60 * xx + 40 * yy + disc + rng.normal(0, 8, xx.shape), 0, 255))
    return np.stack(out).astype(np.uint8)[..., None]


def _tf_warp(x: np.ndarray, key: np.ndarray, interpolation: str) -> np.ndarray:
    """The same rotation/zoom/translation draws through tf.raw_ops.ImageProjectiveTransformV3."""
    import tensorflow as tf

    r = AUGMENT
    n, h, w = x.shape[:3]
    d = tf.random.stateless_uniform([DRAWS, n], seed=tf.constant(key, tf.int64)).numpy()
    theta = (-1 + 2 * d[1]) * 2 * np.pi * r["rotation"]
    scale = 1 - r["zoom"] + 2 * r["zoom"] * d[2]
    tx, ty = (-1 + 2 * d[3]) * r["translation"] * w, (-1 + 2 * d[4]) * r["translation"] * h
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    zeros = np.zeros(n)
    rows = [cos, -sin, cx - cos * cx + sin * cy + tx, sin, cos, cy - sin * cx - cos * cy + ty]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(x, tf.float32),
        transforms=tf.constant(np.stack([*rows, zeros, zeros], axis=1), tf.float32),
        output_shape=[h, w],
        fill_value=0.0,
        interpolation=interpolation.upper(),
        fill_mode="NEAREST",
    ).numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_geometry_matches_tf_projective_transform(interpolation: str) -> None:
    x = _images(6, 40, seed=1)
    key = np.array([3, 9], np.int64)
    layer = augmenter(0, ranges=GEOMETRY_ONLY, interpolation=interpolation)
    ours = np.asarray(layer(x, training=True, key=key))
    theirs = _tf_warp(x, key, interpolation)
    assert not np.allclose(ours, x, atol=1.0)  # it really moved
    if interpolation == "bilinear":
        np.testing.assert_allclose(ours, theirs, atol=0.05)
    else:  # a coordinate on a half pixel may round the other way in float32
        assert np.mean(np.abs(ours - theirs) > 0.5) < 0.002


def test_prepare_holds_each_image_and_its_blurred_copy() -> None:
    x = _images(3, 32, seed=2)
    prepared = augmenter(0).prepare(x)
    assert prepared.shape == (3, 32, 32, 2) and prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared[..., :1], x)
    sharp, soft = x[..., 0].astype(float), prepared[..., 1].astype(float)
    assert np.abs(np.diff(soft, axis=2)).mean() < 0.6 * np.abs(np.diff(sharp, axis=2)).mean()
    np.testing.assert_allclose(soft.mean(axis=(1, 2)), sharp.mean(axis=(1, 2)), atol=1.0)
    assert augmenter(0).prepare(np.zeros((0, 32, 32, 1), np.uint8)).shape == (0, 32, 32, 2)


def test_raw_and_prepared_inputs_give_the_same_batch() -> None:
    x = _images(4, 32, seed=3)
    layer = augmenter(7)
    key = np.array([1, 2], np.int64)
    from_raw = np.asarray(layer(x.astype("float32"), training=True, key=key))
    from_prepared = np.asarray(layer(layer.prepare(x), training=True, key=key))
    np.testing.assert_array_equal(from_raw, from_prepared)
    assert from_raw.shape == x.shape and from_raw.min() >= 0.0 and from_raw.max() <= 255.0


def _epochs(seed: int, passes: int) -> list[np.ndarray]:
    from xray.models.dataset import make_dataset

    x = _images(10, 24, seed=4)
    ds = make_dataset(x, np.arange(10) % 2, 4, shuffle_seed=None, augment=augmenter(seed))
    return [np.concatenate([np.asarray(b[0]) for b in ds]) for _ in range(passes)]


def test_pipeline_draws_new_augmentations_each_epoch_and_the_same_on_rerun() -> None:
    first = _epochs(5, 3)
    assert first[0].shape == (10, 24, 24, 1)
    assert not np.allclose(first[0], first[1], atol=1.0)  # a new draw every epoch
    assert not np.allclose(first[1], first[2], atol=1.0)
    again = _epochs(5, 3)  # a new pipeline with the same seed: the same draws, in order
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(_epochs(6, 1)[0], first[0], atol=1.0)  # another seed, other draws


def test_unknown_interpolation_is_refused() -> None:
    with pytest.raises(ValueError, match="interpolation: 'cubic'"):
        augmenter(0, interpolation="cubic")
    assert augmenter(0, interpolation="bilinear").get_config()["interpolation"] == "bilinear"
