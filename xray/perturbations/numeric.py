"""The numeric helpers the corruption families share: checks, gray-level mapping, separable
convolution, bilinear sampling and linear interpolation.

Arithmetic is numpy float64 element-wise operations in a fixed order plus scalar ``math``
functions (no SIMD transcendental ufuncs, no float reductions that feed the output), so
results are bit-identical for the same inputs, numpy and Pillow versions (see
xray/perturbations/corruptions.py). Used by the families' modules and by shift.py.
"""

from __future__ import annotations

import functools
import math
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from xray.perturbations.names import SEVERITIES

_T = TypeVar("_T")
_MAX_LEVEL = 255.0  # gray levels of a uint8 image; images are mapped to [0, 1] by this


def _check(image: np.ndarray, severity: int) -> None:
    """Raise ValueError unless image is a 2-D uint8 array and severity is an int in 1..5."""
    _check_image(image)
    _check_severity(severity)


def _check_image(image: np.ndarray) -> None:
    """Raise ValueError unless image is a 2-D uint8 array."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        desc = (
            f"shape {image.shape}, dtype {image.dtype}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"image must be a 2-D uint8 array (got {desc})")


def _check_severity(severity: int) -> None:
    """Raise ValueError unless severity is an int (not bool) in 1..5."""
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise ValueError(f"severity must be an int in {SEVERITIES} (got {severity!r})")
    if int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be in {SEVERITIES} (got {severity!r})")


def _param(table: tuple[_T, ...], severity: int) -> _T:
    """Return the table entry for severity (1-based)."""
    return table[int(severity) - 1]


def _unit(image: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Map a uint8 image to float64 in [0, 1]."""
    return image.astype(np.float64) / _MAX_LEVEL


def _from_unit(x: NDArray[np.float64]) -> NDArray[np.uint8]:
    """Map a float image in [0, 1] back to uint8 (clip, scale, round half to even)."""
    return np.rint(np.clip(x, 0.0, 1.0) * _MAX_LEVEL).astype(np.uint8)


def _from_levels(x: NDArray[np.float64]) -> NDArray[np.uint8]:
    """Map a float image in gray levels back to uint8 (round half to even, clip)."""
    return np.clip(np.rint(x), 0.0, _MAX_LEVEL).astype(np.uint8)


def _gaussian_kernel(sigma: float, radius: int) -> tuple[float, ...]:
    """Return a normalised 1-D Gaussian kernel of 2*radius+1 taps, computed with scalar math."""
    weights = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = math.fsum(weights)
    return tuple(w / total for w in weights)


def _convolve_separable(x: NDArray[np.float64], kernel: tuple[float, ...]) -> NDArray[np.float64]:
    """Convolve rows then columns with a symmetric odd kernel, reflect padding (no edge repeat).

    Works on the last two axes (a stack of images at once). Each output is the taps' products
    added left to right from zero, in place into preallocated buffers: the same float64
    operations in the same order as a plain per-tap loop, without its temporary arrays.
    """
    radius = len(kernel) // 2
    *lead, h, w = x.shape
    no_pad = [(0, 0)] * len(lead)
    padded = np.pad(x, [*no_pad, (0, 0), (radius, radius)], mode="reflect")
    rows = np.zeros_like(x)
    tmp = np.empty_like(x)
    for i, k in enumerate(kernel):
        np.multiply(padded[..., :, i : i + w], k, out=tmp)
        rows += tmp
    padded = np.pad(rows, [*no_pad, (radius, radius), (0, 0)], mode="reflect")
    out = np.zeros_like(x)
    for i, k in enumerate(kernel):
        np.multiply(padded[..., i : i + h, :], k, out=tmp)
        out += tmp
    return out


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> NDArray[np.float64]:
    """The (row, col) coordinates of every pixel, (2, h, w) float64 (read-only, shared)."""
    grid = np.mgrid[0:h, 0:w].astype(np.float64)
    grid.flags.writeable = False
    return grid


def _sample_bilinear(
    x: NDArray[np.float64], rows: NDArray[np.float64], cols: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Bilinearly sample x at fractional (rows, cols); outside points take the nearest edge.

    Gathers by flat index (np.take), several times faster than 2-D fancy indexing and the
    same values.
    """
    h, w = x.shape
    r = np.clip(rows, 0.0, h - 1.0)
    c = np.clip(cols, 0.0, w - 1.0)
    r0 = r.astype(np.intp)  # floor: r, c >= 0 after the clip
    c0 = c.astype(np.intp)
    fr = r - r0
    fc = c - c0
    i00 = r0 * w + c0
    i01 = i00 + (c0 < w - 1)  # c1 = min(c0 + 1, w - 1)
    i10 = i00 + w * (r0 < h - 1)  # r1 = min(r0 + 1, h - 1)
    i11 = i10 + (c0 < w - 1)
    flat = x.ravel()
    gc = 1.0 - fc
    top = flat.take(i00) * gc + flat.take(i01) * fc
    bottom = flat.take(i10) * gc + flat.take(i11) * fc
    return top * (1.0 - fr) + bottom * fr


def _interp_weights(
    coords: NDArray[np.float64], n: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Linear interpolation at fractional coords in 0..n-1 (clipped): (i0, i1, 1 - f, f)."""
    c = np.clip(coords, 0.0, n - 1.0)
    c0 = c.astype(np.intp)  # floor: c >= 0
    f = c - c0
    return c0, np.minimum(c0 + 1, n - 1), 1.0 - f, f


def _interp_axis(
    x: NDArray[np.float64], coords: NDArray[np.float64], axis: int
) -> NDArray[np.float64]:
    """Linearly interpolate a 2-D x along one axis at fractional coords (clipped to the edges).

    For coordinates that vary along one axis only, bilinear sampling is this along the
    columns then along the rows, with the very same float operations as _sample_bilinear.
    """
    i0, i1, g, f = _interp_weights(coords, x.shape[axis])
    if axis == 0:
        g, f = g[:, None], f[:, None]
    a = np.take(x, i0, axis=axis)
    a *= g
    b = np.take(x, i1, axis=axis)
    b *= f
    a += b
    return a
