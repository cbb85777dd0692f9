"""The ``seed`` corruption family: the Keras-blog ``ImageDataGenerator`` augmentation.

Severity 3 = the blog's parameters; other severities scale the ranges by ``s/3``. Draw order
and apply order are Keras's (``get_random_transform``, ``apply_transform``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from xray.perturbations.numeric import (
    _MAX_LEVEL,
    _check,
    _check_severity,
    _from_levels,
    _grid,
    _sample_bilinear,
)


class SeedRanges(NamedTuple):
    """Keras ImageDataGenerator ranges used by the ``seed`` family."""

    rotation_range: float  # degrees; theta ~ U(-r, r)
    shear_range: float  # DEGREES (Keras semantics); shear ~ U(-r, r)
    zoom_range: float  # zx, zy ~ U(1 - r, 1 + r) independently (Keras float zoom_range)
    horizontal_flip_p: float  # probability of a left-right flip
    brightness_range: tuple[float, float]  # factor ~ U(lo, hi), PIL ImageEnhance.Brightness
    channel_shift_range: float  # gray levels; shift ~ U(-r, r), clipped to the image's min/max


# The Keras-blog ImageDataGenerator parameters = severity 3. Keras semantics, faithfully:
# - shear_range is a shear ANGLE IN DEGREES (counter-clockwise), so 0.2 means 0.2 degrees; Keras
#   converts with np.deg2rad and uses the matrix [[1, -sin(a), 0], [0, cos(a), 0], [0, 0, 1]].
# - a float zoom_range z means [1 - z, 1 + z]; zx and zy are drawn independently.
# - channel_shift_range: 20.0 gray levels (the blog-typical value; stated, not from the blog text).
# - fill_mode="nearest", interpolation order 1 (Keras default): bilinear with edge replication.
SEED_BLOG = SeedRanges(
    rotation_range=30.0,
    shear_range=0.2,
    zoom_range=0.2,
    horizontal_flip_p=0.5,
    brightness_range=(0.5, 1.5),
    channel_shift_range=20.0,
)
SEED_BLOG_SEVERITY = 3  # severity whose ranges equal SEED_BLOG exactly


def seed_ranges(severity: int) -> SeedRanges:
    """Return the ``seed`` ranges for severity: SEED_BLOG scaled by severity/3 (flip p fixed)."""
    _check_severity(severity)
    if int(severity) == SEED_BLOG_SEVERITY:
        return SEED_BLOG
    scale = int(severity) / SEED_BLOG_SEVERITY
    lo, hi = SEED_BLOG.brightness_range
    return SeedRanges(
        rotation_range=SEED_BLOG.rotation_range * scale,
        shear_range=SEED_BLOG.shear_range * scale,
        zoom_range=SEED_BLOG.zoom_range * scale,
        horizontal_flip_p=SEED_BLOG.horizontal_flip_p,
        brightness_range=(1.0 - (1.0 - lo) * scale, 1.0 + (hi - 1.0) * scale),
        channel_shift_range=SEED_BLOG.channel_shift_range * scale,
    )


def _keras_affine_matrix(
    theta_deg: float, shear_deg: float, zx: float, zy: float, h: int, w: int
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Return Keras 3 apply_affine_transform's (row, col) output->input matrix rows [a, b, off]."""
    t = math.radians(theta_deg)
    s = math.radians(shear_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0, 0, 1]])
    shear = np.array([[1.0, -math.sin(s), 0.0], [0.0, math.cos(s), 0.0], [0, 0, 1]])
    zoom = np.array([[zx, 0.0, 0.0], [0.0, zy, 0.0], [0, 0, 1]])
    m = rot @ shear @ zoom
    # transform_matrix_offset_center(m, h, w): Keras offsets the first axis by h, second by w.
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    offset = np.array([[1.0, 0.0, o_x], [0.0, 1.0, o_y], [0, 0, 1]])
    reset = np.array([[1.0, 0.0, -o_x], [0.0, 1.0, -o_y], [0, 0, 1]])
    m = offset @ m @ reset
    # Keras builds the matrix in (x, y) order and swaps to numpy (row, col) order: M' = P M P.
    m = m[[1, 0, 2]][:, [1, 0, 2]]
    return (
        (float(m[0, 0]), float(m[0, 1]), float(m[0, 2])),
        (float(m[1, 0]), float(m[1, 1]), float(m[1, 2])),
    )


def keras_seed(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Keras ImageDataGenerator augmentation (blog parameters at severity 3), Keras draw order."""
    _check(image, severity)
    p = seed_ranges(severity)
    h, w = image.shape
    # Draw order as Keras get_random_transform: theta, shear, (zx, zy), flip, shift, brightness.
    theta = rng.uniform(-p.rotation_range, p.rotation_range)
    shear = rng.uniform(-p.shear_range, p.shear_range)
    zx, zy = rng.uniform(1.0 - p.zoom_range, 1.0 + p.zoom_range, 2)
    flip = rng.random() < p.horizontal_flip_p
    shift = rng.uniform(-p.channel_shift_range, p.channel_shift_range)
    brightness = rng.uniform(*p.brightness_range)
    # Apply order as Keras apply_transform: affine, channel shift, flip, brightness.
    (a, b, c), (d, e, f) = _keras_affine_matrix(theta, shear, zx, zy, h, w)
    rr, cc = _grid(h, w)
    x = _sample_bilinear(image.astype(np.float64), a * rr + b * cc + c, d * rr + e * cc + f)
    x = np.clip(x + shift, x.min(), x.max())  # apply_channel_shift clips to the image's range
    if flip:
        x = x[:, ::-1]
    # apply_brightness_shift: array_to_img truncates to uint8, then PIL Brightness (= multiply).
    x = np.floor(np.clip(x, 0.0, _MAX_LEVEL))
    return _from_levels(x * brightness)
