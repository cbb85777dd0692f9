"""Acquisition-shift validation proxy: realistic differences between X-ray sites, pure numpy/Pillow.

The official test set comes from other acquisitions (scanners, exposure, post-processing) than the
training archive. These transforms simulate such differences on validation images, so model choices
can be made on an estimate of shifted performance. None of them is used by the training
augmentation (xray.perturbations.augment: pose, small-radius blur/sharpen, linear contrast,
brightness, gamma,
gaussian noise) or by the fine-tuning corruptions (xray.perturbations.corruptions.FAMILIES): the
tone curves are
non-power, non-linear LUTs; the resolution loss upsamples bicubically (pixelate uses nearest); the
sharpening is large-radius unsharp masking; the rest are spatial patterns (exposure ramp, borders,
burned-in markers, grid stripes) that no other transform produces.

Every shift is ``fn(image, rng) -> image`` on a 2-D ``uint8`` image, returns a new ``uint8`` array
of the same shape, at one moderate, realistic strength whose parameters are drawn from ``rng``.
``shift_image`` seeds ``rng`` from sha256 of (key, name, seed) only, as
``xray.perturbations.corruptions.rng_for`` does. Arithmetic follows xray.perturbations.corruptions:
element-wise float64
numpy, transcendental functions as scalar ``math`` calls (tone curves as 256-entry lookup tables),
Pillow resampling; so results are byte-identical across runs and processes for the same numpy and
Pillow versions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from xray.perturbations.numeric import (
    _MAX_LEVEL,
    _check_image,
    _convolve_separable,
    _from_levels,
    _gaussian_kernel,
)

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _lut(curve: Callable[[float], float]) -> NDArray[np.uint8]:
    """A 256-entry uint8 table of curve on [0, 1] (scalar math: bit-identical everywhere)."""
    return np.array(
        [min(255, max(0, round(_MAX_LEVEL * curve(v / _MAX_LEVEL)))) for v in range(256)],
        dtype=np.uint8,
    )


def _resize(image: NDArray[np.uint8], size: tuple[int, int], method: Image.Resampling) -> NDArray:
    """Pillow resize of a uint8 image to size (width, height)."""
    return np.asarray(Image.fromarray(image).resize(size, method), dtype=np.uint8)


# --------------------------------------------------------------------------- tone curves

EQUALIZE_BLEND = (0.5, 0.8)  # weight of the equalization LUT against the identity


def equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial global histogram equalization: a vendor's histogram-based display LUT."""
    _check_image(image)
    alpha = rng.uniform(*EQUALIZE_BLEND)
    cdf = np.cumsum(np.bincount(image.ravel(), minlength=256).astype(np.int64))
    lowest = int(cdf[np.flatnonzero(cdf)[0]])
    span = max(int(cdf[-1]) - lowest, 1)
    levels = np.arange(256, dtype=np.float64)
    equalized = (cdf - lowest).clip(0).astype(np.float64) * (_MAX_LEVEL / span)
    return _from_levels(levels * (1.0 - alpha) + equalized * alpha)[image]


WINDOW_CENTRE = (0.38, 0.58)  # sigmoid centre, fraction of the gray range
WINDOW_WIDTH = (0.15, 0.22)  # sigmoid scale: mid-tone slope about 1.8 (0.15) to 1.4 (0.22)


def window_level(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sigmoid display LUT, random window centre/width: soft-clipped highlights and shadows."""
    _check_image(image)
    centre = rng.uniform(*WINDOW_CENTRE)
    width = rng.uniform(*WINDOW_WIDTH)

    def sigmoid(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-(v - centre) / width))

    lo, hi = sigmoid(0.0), sigmoid(1.0)
    return _lut(lambda v: (sigmoid(v) - lo) / (hi - lo))[image]


# --------------------------------------------------------------------------- resolution, sharpness

UNSHARP_SIGMA = (0.012, 0.03)  # Gaussian sigma as a fraction of min(H, W): 2.7-6.7 px at 224
UNSHARP_AMOUNT = (0.5, 1.0)


def unsharp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unsharp masking / edge enhancement of CR/DR post-processing, random radius and amount."""
    _check_image(image)
    sigma = max(1.0, rng.uniform(*UNSHARP_SIGMA) * min(image.shape))
    amount = rng.uniform(*UNSHARP_AMOUNT)
    radius = min(math.ceil(3.0 * sigma), min(image.shape) - 1)
    x = image.astype(np.float64)
    if radius < 1:
        return image.copy()
    blurred = _convolve_separable(x, _gaussian_kernel(sigma, radius))
    return _from_levels(x + amount * (x - blurred))


LOW_RES_FACTOR = (0.4, 0.6)


def low_res(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lower acquisition resolution: area-downsample by 0.4-0.6, bicubic back up.

    The coarse pixel grid (pitch 1/factor source pixels) starts at a random sub-pixel phase per
    axis, as a detector grid is not aligned with the anatomy; Pillow's resampling boxes keep the
    result registered with the input at the exact, unrounded factor.
    """
    _check_image(image)
    factor = rng.uniform(*LOW_RES_FACTOR)
    pitch = 1.0 / factor
    phase_r, phase_c = (float(v) for v in rng.uniform(0.0, pitch, size=2))
    h, w = image.shape
    pad = math.ceil(pitch) + 1
    padded = Image.fromarray(np.pad(image, pad, mode="edge"))
    rows, cols = math.ceil((h + phase_r) / pitch), math.ceil((w + phase_c) / pitch)
    top, left = pad - phase_r, pad - phase_c  # coarse grid origin in padded coordinates
    small = padded.resize(
        (cols, rows), Image.Resampling.BOX, box=(left, top, left + cols * pitch, top + rows * pitch)
    )
    # output pixel centre u + 0.5 sits at (u + 0.5 + phase) / pitch in coarse coordinates
    box = (phase_c / pitch, phase_r / pitch, (phase_c + w) / pitch, (phase_r + h) / pitch)
    out = small.resize((w, h), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8).copy()


# --------------------------------------------------------------------------- exposure

HEEL_STRENGTH = (0.15, 0.25)  # gain 1 -+ strength at the two far edges


def heel(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Anode heel effect / uneven exposure: multiplicative linear ramp at a random angle."""
    _check_image(image)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    strength = rng.uniform(*HEEL_STRENGTH)
    h, w = image.shape
    cos, sin = math.cos(angle), math.sin(angle)
    reach = max(abs(cos) * (w - 1) / 2.0 + abs(sin) * (h - 1) / 2.0, 1.0)
    cols = (np.arange(w, dtype=np.float64) - (w - 1) / 2.0) * (cos * strength / reach)
    rows = (np.arange(h, dtype=np.float64) - (h - 1) / 2.0) * (sin * strength / reach)
    gain = 1.0 + rows[:, None] + cols[None, :]
    return _from_levels(image.astype(np.float64) * gain)


# --------------------------------------------------------------------------- geometry, hardware

COLLIMATION_ZOOM = (0.84, 0.95)  # content scale of the zoom-out (a larger field of view)
COLLIMATION_BLADE = (0.0, 0.06)  # extra shutter band per side, fraction of that side
COLLIMATION_WHITE_P = 0.5  # raw unexposed borders are white; many sites shutter them black
COLLIMATION_BLACK = (0, 12)
COLLIMATION_WHITE = (225, 250)


def collimation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Collimation / field-of-view differences: slight zoom-out, black or white shutter borders."""
    _check_image(image)
    h, w = image.shape
    zoom = rng.uniform(*COLLIMATION_ZOOM)
    sh, sw = max(1, round(h * zoom)), max(1, round(w * zoom))
    top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    blades = rng.uniform(*COLLIMATION_BLADE, size=4)  # top, bottom, left, right
    white = rng.random() < COLLIMATION_WHITE_P
    level = int(rng.integers(*(COLLIMATION_WHITE if white else COLLIMATION_BLACK), endpoint=True))
    out = np.full((h, w), level, dtype=np.uint8)
    content = _resize(image, (sw, sh), Image.Resampling.BILINEAR)
    t, b = round(blades[0] * sh), sh - round(blades[1] * sh)
    lft, r = round(blades[2] * sw), sw - round(blades[3] * sw)
    out[top + t : top + b, left + lft : left + r] = content[t:b, lft:r]
    return out


# 5x7 bitmap glyphs for lead markers and burned-in annotations.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
}
MARKER_LETTERS = ("L", "R")
ANNOTATIONS = ("AP", "PA", "SUPINE", "PORTABLE", "ERECT")
MARKER_HEIGHT = (0.05, 0.08)  # lead letter height, fraction of min(H, W)
MARKER_LEVEL = (225, 255)  # lead is opaque: near white
ANNOTATION_LEVEL = (200, 255)
MARKER_MARGIN = (0.03, 0.10)  # distance from the corner's edges, fraction of the side
ANNOTATION_COUNT = (1, 2)


def _text_mask(text: str, scale: int) -> NDArray[np.bool_]:
    """Boolean mask of text in the 5x7 font, one blank column between glyphs, scaled up."""
    cols: list[NDArray[np.bool_]] = []
    for i, ch in enumerate(text):
        if i:
            cols.append(np.zeros((7, 1), dtype=bool))
        cols.append(np.array([[c == "#" for c in row] for row in _GLYPHS[ch]], dtype=bool))
    mask = np.concatenate(cols, axis=1)
    return np.kron(mask, np.ones((scale, scale), dtype=bool)).astype(bool)


def _burn(
    out: NDArray[np.uint8], mask: NDArray[np.bool_], corner: int, margin: float, level: int
) -> None:
    """Write level where mask is set, placed margin*side from the edges of a corner (0..3)."""
    h, w = out.shape
    mh, mw = min(mask.shape[0], h), min(mask.shape[1], w)
    mask = mask[:mh, :mw]
    dr, dc = round(margin * h), round(margin * w)
    r = min(dr, h - mh) if corner < 2 else max(h - mh - dr, 0)
    c = min(dc, w - mw) if corner % 2 == 0 else max(w - mw - dc, 0)
    region = out[r : r + mh, c : c + mw]
    region[mask] = level


def markers(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burned-in lead side marker (L/R) and text annotations near the corners, opaque white."""
    _check_image(image)
    h, w = image.shape
    side = min(h, w)
    out = image.copy()
    corners = rng.permutation(4)
    letter = MARKER_LETTERS[int(rng.integers(len(MARKER_LETTERS)))]
    scale = max(1, round(rng.uniform(*MARKER_HEIGHT) * side / 7))
    level = int(rng.integers(*MARKER_LEVEL, endpoint=True))
    _burn(out, _text_mask(letter, scale), int(corners[0]), rng.uniform(*MARKER_MARGIN), level)
    text_scale = max(1, round(side / 200))
    for k in range(int(rng.integers(*ANNOTATION_COUNT, endpoint=True))):
        text = ANNOTATIONS[int(rng.integers(len(ANNOTATIONS)))]
        level = int(rng.integers(*ANNOTATION_LEVEL, endpoint=True))
        margin = rng.uniform(*MARKER_MARGIN)
        _burn(out, _text_mask(text, text_scale), int(corners[1 + k]), margin, level)
    return out


GRID_PERIOD = (2.2, 4.0)  # stripe period in pixels (grid lines aliased at the detector pitch)
GRID_AMPLITUDE = (0.03, 0.06)  # relative attenuation modulation


def grid_lines(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faint anti-scatter grid lines: fine periodic stripes, multiplicative, low amplitude."""
    _check_image(image)
    period = rng.uniform(*GRID_PERIOD)
    amplitude = rng.uniform(*GRID_AMPLITUDE)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    vertical = rng.random() < 0.5
    h, w = image.shape
    n = w if vertical else h
    wave = np.array(
        [1.0 + amplitude * math.cos(2.0 * math.pi * i / period + phase) for i in range(n)]
    )
    gain = wave[None, :] if vertical else wave[:, None]
    return _from_levels(image.astype(np.float64) * gain)


# --------------------------------------------------------------------------- registry and API

SHIFTS: dict[str, Shift] = {
    "equalize": equalize,
    "window_level": window_level,
    "unsharp": unsharp,
    "low_res": low_res,
    "heel": heel,
    "collimation": collimation,
    "markers": markers,
    "grid_lines": grid_lines,
}


def shift_rng(key: str, name: str, seed: int) -> np.random.Generator:
    """Return a Generator seeded from sha256 of f"{key}|{name}|{seed}"."""
    digest = hashlib.sha256(f"{key}|{name}|{seed}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "big")))


def shift_image(name: str, image: np.ndarray, key: str, seed: int) -> np.ndarray:
    """Apply the named acquisition shift, its randomness drawn from (key, name, seed) only."""
    if name not in SHIFTS:
        raise ValueError(f"unknown acquisition shift {name!r} (known: {', '.join(SHIFTS)})")
    _check_image(image)
    return SHIFTS[name](image, shift_rng(key, name, seed))
