"""X-ray corruption suite in the manner of ImageNet-C / MedMNIST-C, as pure numpy/Pillow functions.

Every corruption is ``fn(image, severity, rng) -> image`` on canonical grayscale images (2-D
``uint8`` arrays), returns a new ``uint8`` array of the same shape, takes ``severity`` in 1..5
and draws all randomness from ``rng`` (deterministic corruptions ignore it). Families: ``seed``
(the Keras-blog ``ImageDataGenerator`` augmentation, severity 3 = the blog's parameters, other
severities scale the ranges by ``s/3``); the MedMNIST-C PneumoniaMNIST families with their
published severity tables; and three held-out families (``motion_blur``, ``zoom_blur``,
``elastic``) used only at evaluation. Arithmetic is numpy float64 element-wise operations in a
fixed order plus scalar ``math`` functions (no SIMD transcendental ufuncs, no float reductions
that feed the output), so results are bit-identical for the same inputs, numpy and Pillow versions;
values are rounded to the nearest gray level (MedMNIST-C truncates; rounding avoids its −0.5 level
bias). Only JPEG depends on Pillow's bundled libjpeg.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from xray.perturbations.names import FAMILY_NAMES, HELD_OUT, SEVERITIES

__all__ = ["FAMILIES", "FAMILY_NAMES", "HELD_OUT", "SEVERITIES", "corrupt_image", "rng_for"]

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


_T = TypeVar("_T")

_MAX_LEVEL = 255.0  # gray levels of a uint8 image; images are mapped to [0, 1] by this


# --------------------------------------------------------------------------- helpers


def _check(image: np.ndarray, severity: int) -> None:
    """Raise ValueError unless image is a 2-D uint8 array and severity is an int in 1..5."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        desc = (
            f"shape {image.shape}, dtype {image.dtype}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"image must be a 2-D uint8 array (got {desc})")
    _check_severity(severity)


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


# --------------------------------------------------------------------------- seed (Keras blog)


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


# --------------------------------------------------------------------------- MedMNIST-C families
# Severity tables: MedMNIST-C registry, 'pneumoniamnist' entry (severities 1..5).

PIXELATE_FACTORS: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5, 0.4)
# Upsampling filter. MedMNIST-C/ImageNet-C upsample with BOX; for upsampling Pillow's BOX is a
# one-source-pixel box, which gave identical output to NEAREST at all five factors on 224x224.
PIXELATE_UPSAMPLE = Image.Resampling.NEAREST


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Downscale by the severity factor with BOX, upscale back with NEAREST (deterministic)."""
    _check(image, severity)
    factor = _param(PIXELATE_FACTORS, severity)
    h, w = image.shape
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    img = Image.fromarray(image).resize(small, Image.Resampling.BOX)
    return np.asarray(img.resize((w, h), PIXELATE_UPSAMPLE), dtype=np.uint8).copy()


JPEG_QUALITIES: tuple[int, ...] = (50, 30, 15, 10, 7)


def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Round-trip through Pillow JPEG at the severity quality (deterministic)."""
    _check(image, severity)
    buf = io.BytesIO()
    quality = _param(JPEG_QUALITIES, severity)
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()


GAUSSIAN_NOISE_SIGMAS: tuple[float, ...] = (0.04, 0.05, 0.06, 0.07, 0.08)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma) noise on the [0, 1] image."""
    _check(image, severity)
    x = _unit(image)
    return _from_unit(x + rng.normal(0.0, _param(GAUSSIAN_NOISE_SIGMAS, severity), x.shape))


SPECKLE_NOISE_SCALES: tuple[float, ...] = (0.05, 0.07, 0.10, 0.15, 0.20)


def speckle_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise x + x * N(0, c) on the [0, 1] image."""
    _check(image, severity)
    x = _unit(image)
    return _from_unit(x + x * rng.normal(0.0, _param(SPECKLE_NOISE_SCALES, severity), x.shape))


IMPULSE_NOISE_AMOUNTS: tuple[float, ...] = (0.005, 0.01, 0.013, 0.017, 0.02)
IMPULSE_SALT_VS_PEPPER = 0.5  # skimage random_noise(mode="s&p") default


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper: replace a fraction `amount` of pixels by 0 or 255 (skimage s&p)."""
    _check(image, severity)
    flipped = rng.random(image.shape) < _param(IMPULSE_NOISE_AMOUNTS, severity)
    salted = rng.random(image.shape) < IMPULSE_SALT_VS_PEPPER
    out = image.copy()
    out[flipped & salted] = np.uint8(_MAX_LEVEL)
    out[flipped & ~salted] = 0
    return out


SHOT_NOISE_PHOTONS: tuple[float, ...] = (300, 200, 150, 100, 80)


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise Poisson(x * c) / c on the [0, 1] image."""
    _check(image, severity)
    photons = float(_param(SHOT_NOISE_PHOTONS, severity))
    return _from_unit(rng.poisson(_unit(image) * photons) / photons)


GAUSSIAN_BLUR_KERNELS: tuple[int, ...] = (3, 5, 7, 9, 11)


def _opencv_sigma(ksize: int) -> float:
    """Return OpenCV/torchvision's default sigma for an odd kernel size."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def gaussian_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Separable Gaussian blur, kernel size by severity, OpenCV sigma, reflect padding."""
    _check(image, severity)
    ksize = _param(GAUSSIAN_BLUR_KERNELS, severity)
    kernel = _gaussian_kernel(_opencv_sigma(ksize), ksize // 2)
    return _from_levels(_convolve_separable(image.astype(np.float64), kernel))


BRIGHTNESS_UP_FACTORS: tuple[float, ...] = (1.1, 1.2, 1.3, 1.4, 1.5)
BRIGHTNESS_DOWN_FACTORS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)


def _brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiply intensities by factor (PIL ImageEnhance.Brightness semantics, rounded)."""
    return _from_levels(image.astype(np.float64) * factor)


def brightness_up(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Brighten: x * c with c > 1 (deterministic)."""
    _check(image, severity)
    return _brightness(image, _param(BRIGHTNESS_UP_FACTORS, severity))


def brightness_down(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Darken: x * c with c < 1 (deterministic)."""
    _check(image, severity)
    return _brightness(image, _param(BRIGHTNESS_DOWN_FACTORS, severity))


CONTRAST_UP_FACTORS: tuple[float, ...] = (1.1, 1.2, 1.3, 1.4, 1.6)
CONTRAST_DOWN_FACTORS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.4)


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale deviations from the image mean: (x - mean) * c + mean (exact integer-sum mean)."""
    mean = int(image.sum(dtype=np.int64)) / image.size
    return _from_levels((image.astype(np.float64) - mean) * factor + mean)


def contrast_up(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Increase contrast about the mean (deterministic)."""
    _check(image, severity)
    return _contrast(image, _param(CONTRAST_UP_FACTORS, severity))


def contrast_down(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Decrease contrast about the mean (deterministic)."""
    _check(image, severity)
    return _contrast(image, _param(CONTRAST_DOWN_FACTORS, severity))


GAMMA_UP_EXPONENTS: tuple[float, ...] = (1.1, 1.2, 1.3, 1.4, 1.6)
GAMMA_DOWN_EXPONENTS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.4)


def _gamma(image: np.ndarray, exponent: float) -> np.ndarray:
    """Apply x ** c on [0, 1] through a 256-entry lookup table built with scalar math.pow."""
    lut = np.array(
        [round(_MAX_LEVEL * math.pow(v / _MAX_LEVEL, exponent)) for v in range(256)],
        dtype=np.uint8,
    )
    return lut[image]


def gamma_up(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gamma correction x ** c with c > 1 (darkens mid-tones; deterministic)."""
    _check(image, severity)
    return _gamma(image, _param(GAMMA_UP_EXPONENTS, severity))


def gamma_down(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gamma correction x ** c with c < 1 (brightens mid-tones; deterministic)."""
    _check(image, severity)
    return _gamma(image, _param(GAMMA_DOWN_EXPONENTS, severity))


# --------------------------------------------------------------------------- held-out families

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


# --------------------------------------------------------------------------- registry and API

FAMILIES: dict[str, Corruption] = {
    "seed": keras_seed,
    "pixelate": pixelate,
    "jpeg": jpeg,
    "gaussian_noise": gaussian_noise,
    "speckle_noise": speckle_noise,
    "impulse_noise": impulse_noise,
    "shot_noise": shot_noise,
    "gaussian_blur": gaussian_blur,
    "brightness_up": brightness_up,
    "brightness_down": brightness_down,
    "contrast_up": contrast_up,
    "contrast_down": contrast_down,
    "gamma_up": gamma_up,
    "gamma_down": gamma_down,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "elastic": elastic,
}


def corrupt_image(
    image: np.ndarray, family: str, severity: int, rng: np.random.Generator
) -> np.ndarray:
    """Apply the named corruption family at severity, validating family, image and severity."""
    if family not in FAMILIES:
        raise ValueError(f"unknown corruption family {family!r} (known: {', '.join(FAMILIES)})")
    _check(image, severity)
    return FAMILIES[family](image, severity, rng)


def rng_for(key: str, family: str, severity: int, seed: int) -> np.random.Generator:
    """Return a Generator seeded from sha256 of f"{key}|{family}|{severity}|{seed}"."""
    digest = hashlib.sha256(f"{key}|{family}|{severity}|{seed}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "big")))
