"""The MedMNIST-C corruption families (PneumoniaMNIST), with their published severity tables.

Severity tables: MedMNIST-C registry, 'pneumoniamnist' entry (severities 1..5). Values are
rounded to the nearest gray level (MedMNIST-C truncates; rounding avoids its -0.5 level
bias). Only JPEG depends on Pillow's bundled libjpeg.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from xray.perturbations.numeric import (
    _MAX_LEVEL,
    _check,
    _convolve_separable,
    _from_levels,
    _from_unit,
    _gaussian_kernel,
    _param,
    _unit,
)

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
