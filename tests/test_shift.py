"""Tests for xray.perturbations.shift: contract, determinism, visible but recognizable
change, speed."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from xray.perturbations.corruptions import FAMILIES
from xray.perturbations.shift import SHIFTS, shift_image

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = (
    "equalize",
    "window_level",
    "unsharp",
    "low_res",
    "heel",
    "collimation",
    "markers",
    "grid_lines",
)
# Shifts that keep the geometry: the output must still correlate with the input.
IN_PLACE = tuple(name for name in EXPECTED if name != "collimation")
SIZES = (64, 224)
KEYS = ("a", "b", "c", "d")


def make_xray(size: int) -> np.ndarray:
    """A chest-X-ray-like uint8 image: gradient, dark lung ellipses, rib stripes, spine, grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    img = 90.0 + 90.0 * yy
    for cx in (0.3, 0.7):
        inside = ((xx - cx) / 0.17) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1.0
        img = np.where(inside, img - 55.0, img)
    img += 18.0 * np.sin(2 * math.pi * 9 * (yy + 0.15 * np.abs(xx - 0.5)))
    img = np.where(np.abs(xx - 0.5) < 0.05, img + 50.0, img)
    img += np.random.default_rng(size).normal(0.0, 4.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> dict[int, np.ndarray]:
    """The synthetic X-ray at every test size."""
    return {size: make_xray(size) for size in SIZES}


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def _hf_energy(img: np.ndarray) -> float:
    x = img.astype(np.float64)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float((lap**2).mean())


def test_registry_disjoint_from_corruptions() -> None:
    assert tuple(SHIFTS) == EXPECTED
    assert not set(SHIFTS) & set(FAMILIES)


@pytest.mark.parametrize("name", EXPECTED)
def test_contract(images: dict[int, np.ndarray], name: str) -> None:
    odd = np.random.default_rng(0).integers(0, 256, (40, 64), dtype=np.uint8)
    tiny = np.random.default_rng(1).integers(0, 256, (3, 5), dtype=np.uint8)
    for image in (*images.values(), odd, tiny):
        before = image.copy()
        out = shift_image(name, image, "k", 0)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out is not image
        np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("name", EXPECTED)
def test_deterministic_per_key_and_seed(images: dict[int, np.ndarray], name: str) -> None:
    image = images[64]
    outs = {key: shift_image(name, image, key, 0).tobytes() for key in KEYS}
    assert shift_image(name, image, "a", 0).tobytes() == outs["a"]
    assert len(set(outs.values())) == len(KEYS), f"{name}: keys gave equal outputs"
    assert shift_image(name, image, "a", 1).tobytes() != outs["a"]


def _digests(size: int) -> list[str]:
    image = make_xray(size)
    return [hashlib.sha256(shift_image(n, image, "x", 3).tobytes()).hexdigest() for n in SHIFTS]


def test_identical_across_processes() -> None:
    code = "import json, tests.test_shift as t; print(json.dumps(t._digests(224)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == _digests(224)


@pytest.mark.parametrize("name", EXPECTED)
def test_changes_but_recognizable(images: dict[int, np.ndarray], name: str) -> None:
    for size, image in images.items():
        for key in KEYS:
            out = shift_image(name, image, key, 0)
            changed = float((out != image).mean())
            if name == "markers":  # small burned-in blocks: few pixels, but clearly changed
                assert changed > 0.001 and _mad(out, image) > 0.05, (size, key)
            else:
                assert _mad(out, image) > 1.0, (name, size, key)
            if name in IN_PLACE:
                assert _corr(out, image) > 0.8, (name, size, key)


def test_collimation_borders(images: dict[int, np.ndarray]) -> None:
    for key in KEYS:
        out = shift_image("collimation", images[224], key, 0)
        values, counts = np.unique(out, return_counts=True)
        shutter = values[counts.argmax()]
        assert counts.max() >= 0.09 * out.size  # zoom <= 0.95 leaves >= 9.75% border
        assert shutter <= 12 or shutter >= 225
        assert out[out != shutter].std() > 10.0  # the anatomy is still there


def test_markers_are_bright_and_near_corners(images: dict[int, np.ndarray]) -> None:
    image = images[224]
    for key in KEYS:
        out = shift_image("markers", image, key, 0)
        assert (out[out != image] >= 200).all()  # lead and burned-in text are near white
        centre = slice(56, 168)
        np.testing.assert_array_equal(out[centre, centre], image[centre, centre])


def test_sharpness_direction(images: dict[int, np.ndarray]) -> None:
    image = images[224]
    for key in KEYS:
        assert _hf_energy(shift_image("low_res", image, key, 0)) < 0.7 * _hf_energy(image)
        assert _hf_energy(shift_image("unsharp", image, key, 0)) > 1.2 * _hf_energy(image)


def test_unknown_name_and_bad_image() -> None:
    with pytest.raises(ValueError) as info:
        shift_image("fog", make_xray(64), "k", 0)
    message = str(info.value)
    assert "\n" not in message and "'fog'" in message
    assert all(name in message for name in SHIFTS)
    with pytest.raises(ValueError, match="2-D uint8"):
        shift_image("heel", np.zeros((8, 8, 3), np.uint8), "k", 0)
    with pytest.raises(ValueError, match="2-D uint8"):
        shift_image("heel", np.zeros((8, 8), np.float32), "k", 0)


@pytest.mark.parametrize("name", EXPECTED)
def test_fast_on_224(images: dict[int, np.ndarray], name: str) -> None:
    image, rng = images[224], np.random.default_rng(0)
    SHIFTS[name](image, rng)  # warm-up
    best = min(_timed(SHIFTS[name], image, rng) for _ in range(5))
    assert best < 0.2, f"{name}: {best * 1e3:.1f} ms on 224x224"


def _timed(fn: Callable, image: np.ndarray, rng: np.random.Generator) -> float:
    start = time.perf_counter()
    fn(image, rng)
    return time.perf_counter() - start
