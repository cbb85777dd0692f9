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

import hashlib
from collections.abc import Callable

import numpy as np

from xray.perturbations.held_out import elastic, motion_blur, zoom_blur
from xray.perturbations.keras_seed import keras_seed
from xray.perturbations.medmnist import (
    brightness_down,
    brightness_up,
    contrast_down,
    contrast_up,
    gamma_down,
    gamma_up,
    gaussian_blur,
    gaussian_noise,
    impulse_noise,
    jpeg,
    pixelate,
    shot_noise,
    speckle_noise,
)
from xray.perturbations.names import FAMILY_NAMES, HELD_OUT, SEVERITIES
from xray.perturbations.numeric import _check

__all__ = ["FAMILIES", "FAMILY_NAMES", "HELD_OUT", "SEVERITIES", "corrupt_image", "rng_for"]

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

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
