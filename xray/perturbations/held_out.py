"""The held-out corruption families, used only at evaluation: motion_blur, zoom_blur, elastic.

``motion_blur`` and ``zoom_blur`` follow ImageNet-C; ``elastic`` deforms the image by a
smoothed random displacement field.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from xray.perturbations.numeric import (
    _check,
    _convolve_separable,
    _from_levels,
    _gaussian_kernel,
    _grid,
    _interp_axis,
    _param,
    _sample_bilinear,
)

# ImageNet-C motion_blur (radius, sigma) in pixels (ImageMagick MotionBlurImage semantics:
# 2*radius+1 one-sided taps along the angle, Gaussian weights exp(-i^2 / (2 sigma^2))).
MOTION_BLUR_PARAMS: tuple[tuple[int, float], ...] = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
MOTION_BLUR_MAX_ANGLE = 45.0  # degrees; angle ~ U(-45, 45) as in ImageNet-C


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One-sided Gaussian-weighted line blur at a random angle (ImageNet-C / ImageMagick)."""
    _check(image, severity)
    radius, sigma = _param(MOTION_BLUR_PARAMS, severity)
    angle = math.radians(rng.uniform(-MOTION_BLUR_MAX_ANGLE, MOTION_BLUR_MAX_ANGLE))
    taps = 2 * radius + 1
    weights = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(taps)]
    total = math.fsum(weights)
    # ImageMagick: offset = ceil(i * direction - 0.5), i.e. round half up, along (cos, sin).
    offsets = [
        (math.ceil(i * math.sin(angle) - 0.5), math.ceil(i * math.cos(angle) - 0.5))
        for i in range(taps)
    ]
    h, w = image.shape
    pad = taps
    padded = np.pad(image.astype(np.float64), pad, mode="edge")
    out = np.zeros((h, w), dtype=np.float64)
    for wt, (dr, dc) in zip(weights, offsets, strict=True):
        out += (wt / total) * padded[pad + dr : pad + dr + h, pad + dc : pad + dc + w]
    return _from_levels(out)


# ImageNet-C zoom_blur zoom lists np.arange(1, stop, step) as (step, count): factors
# 1 + step * i for i < count, max zoom 1.10, 1.15, 1.20, 1.24, 1.30.
ZOOM_BLUR_PARAMS: tuple[tuple[float, int], ...] = (
    (0.01, 11),
    (0.01, 16),
    (0.02, 11),
    (0.02, 13),
    (0.03, 11),
)


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Average the image with centre-zoomed copies of itself (ImageNet-C, deterministic)."""
    _check(image, severity)
    step, count = _param(ZOOM_BLUR_PARAMS, severity)
    h, w = image.shape
    x = image.astype(np.float64)
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    rr, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    out = x.copy()
    for i in range(count):
        zoom = 1.0 + step * i
        # The sampling grid is separable (rows from rows, columns from columns): interpolate
        # the columns, then the rows; the same values as a full-grid bilinear sample.
        across = _interp_axis(x, cc + (cols - cc) / zoom, axis=1)
        out += _interp_axis(across, cr + (rr - cr) / zoom, axis=0)
    return _from_levels(out / (count + 1))


# Elastic deformation: displacement = Gaussian-smoothed white noise scaled to an RMS amplitude;
# (rms amplitude, smoothing sigma), both as fractions of min(H, W), so severities grow with
# larger and more local displacements independent of resolution.
ELASTIC_PARAMS: tuple[tuple[float, float], ...] = (
    (0.008, 0.08),
    (0.012, 0.07),
    (0.016, 0.06),
    (0.020, 0.05),
    (0.025, 0.04),
)
ELASTIC_TRUNCATE = 3.0  # kernel radius in sigmas
ELASTIC_NODES_PER_SIGMA = 2  # the field is drawn on a grid this many nodes per sigma


def _smooth_fields(
    rng: np.random.Generator, count: int, shape: tuple[int, int], sigma: float
) -> NDArray[np.float64]:
    """Return `count` Gaussian-smoothed N(0, 1) noise fields, each of unit per-pixel std.

    The field is smooth at the scale of sigma (>= 9 pixels at 224x224), so it is drawn on a
    grid of one node every `sigma / ELASTIC_NODES_PER_SIGMA` pixels (white noise smoothed by
    the Gaussian in node units), then interpolated linearly to every pixel: the same kind of
    random field for a small fraction of the work of smoothing per-pixel noise.
    """
    h, w = shape
    step = max(1, math.floor(sigma / ELASTIC_NODES_PER_SIGMA))
    coarse = sigma / step
    kernel = _gaussian_kernel(coarse, max(1, math.ceil(ELASTIC_TRUNCATE * coarse)))
    # Std of white noise filtered by k (x) k is sum(k^2): analytic, no sample reduction.
    norm = math.fsum(k * k for k in kernel)
    nodes = (-(-(h - 1) // step) + 1, -(-(w - 1) // step) + 1)
    fields = _convolve_separable(rng.standard_normal((count, *nodes)), kernel) / norm
    rows = np.arange(h, dtype=np.float64) / step
    cols = np.arange(w, dtype=np.float64) / step
    return np.stack([_interp_axis(_interp_axis(f, cols, axis=1), rows, axis=0) for f in fields])


def elastic(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Elastic deformation by a smoothed random displacement field, bilinear, nearest fill."""
    _check(image, severity)
    amp_frac, sigma_frac = _param(ELASTIC_PARAMS, severity)
    h, w = image.shape
    size = min(h, w)
    sigma = max(sigma_frac * size, 1.0)
    dr, dc = _smooth_fields(rng, 2, (h, w), sigma) * (amp_frac * size)
    rr, cc = _grid(h, w)
    return _from_levels(_sample_bilinear(image.astype(np.float64), rr + dr, cc + dc))
