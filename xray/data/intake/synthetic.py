"""A deterministic generator of chest-radiograph-like images in the Kermany folder layout.

Each synthetic patient has a fixed anatomy (torso, lung fields, heart, spine, ribs,
clavicles); each of their images varies pose, exposure and noise. PNEUMONIA patients
carry lobar (``bacteria``) or diffuse interstitial (``virus``) opacities of random,
sometimes subtle, strength; NORMAL lungs carry benign vessel markings, so the task is
learnable but not trivial. File names follow the real dataset's conventions, so the
patient-id parsing and every later stage run exactly as on real data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xray.core.params import SyntheticParams

SPLIT_SHARE = {"train": 1.0, "test": 1 / 3}  # patients per split, relative to the param
OFFICIAL_VAL_PATIENTS = 2  # like Kaggle's tiny val folder: 2 patients x 2 images per class
JPEG_QUALITY = 92
BACKGROUND, SOFT_TISSUE, LUNG, BONE = 18.0, 150.0, 55.0, 205.0


@dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry, as fractions of the image side."""

    torso: tuple[float, float, float, float]  # cx, cy, rx, ry
    lung_dx: float
    lung_cy: float
    lung_rx: float
    lung_ry: float
    heart_r: float
    rib_gap: float
    rib_curve: float


def _anatomy(rng: np.random.Generator) -> Anatomy:
    return Anatomy(
        torso=(
            rng.normal(0.5, 0.01),
            rng.normal(0.56, 0.015),
            rng.uniform(0.40, 0.46),
            rng.uniform(0.48, 0.55),
        ),
        lung_dx=rng.uniform(0.17, 0.21),
        lung_cy=rng.normal(0.47, 0.015),
        lung_rx=rng.uniform(0.12, 0.155),
        lung_ry=rng.uniform(0.25, 0.31),
        heart_r=rng.uniform(0.10, 0.14),
        rib_gap=rng.uniform(0.065, 0.08),
        rib_curve=rng.uniform(1.5, 2.6),
    )


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float field with reflected borders."""
    radius = max(1, int(3.0 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = field.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(w * np.take(padded, range(i, i + n), axis=axis) for i, w in enumerate(taps))
    return out


def render(anat: Anatomy, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one radiograph (2-D uint8) of a patient; kind is normal, bacteria or virus."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / s
    # pose: small shift and rotation per image
    ang = np.deg2rad(rng.normal(0.0, 3.0))
    sx, sy = rng.normal(0.0, 0.02, size=2)
    xr = np.cos(ang) * (xx - 0.5) - np.sin(ang) * (yy - 0.5) + 0.5 - sx
    yr = np.sin(ang) * (xx - 0.5) + np.cos(ang) * (yy - 0.5) + 0.5 - sy
    x, y = xr, yr

    img = np.full((size, size), BACKGROUND) + 10.0 * y
    cx, cy, rx, ry = anat.torso
    torso = _ellipse(x, y, cx, cy, rx, ry)
    img[torso] = SOFT_TISSUE
    left = _ellipse(x, y, 0.5 - anat.lung_dx, anat.lung_cy, anat.lung_rx, anat.lung_ry)
    right = _ellipse(x, y, 0.5 + anat.lung_dx, anat.lung_cy, anat.lung_rx, anat.lung_ry)
    lungs = (left | right) & torso
    img[lungs] = LUNG + 25.0 * (y[lungs] - anat.lung_cy)  # denser towards the bases

    # ribs: bright curved bands across both lung fields
    ribs = np.zeros_like(img)
    for k in range(9):
        y0 = anat.lung_cy - anat.lung_ry + 0.02 + k * anat.rib_gap
        arc = y0 + anat.rib_curve * 0.25 * (x - 0.5) ** 2 - 0.04 * np.abs(x - 0.5)
        ribs += np.exp(-(((y - arc) / 0.009) ** 2))
    img += 55.0 * np.clip(ribs, 0, 1) * (torso & (np.abs(x - 0.5) > 0.04))
    # clavicles
    for side in (-1.0, 1.0):
        clav = 0.2 + 0.12 * side * (x - 0.5)
        band = (
            np.exp(-(((y - clav) / 0.012) ** 2))
            * (np.abs(x - 0.5) < 0.3)
            * (side * (x - 0.5) > 0.02)
        )
        img += 60.0 * band
    # spine and mediastinum, heart
    img += (BONE - SOFT_TISSUE) * np.exp(-(((x - 0.5) / 0.035) ** 2)) * torso
    heart = _ellipse(x, y, 0.54, anat.lung_cy + 0.12, anat.heart_r * 1.15, anat.heart_r)
    img[heart & torso] = np.maximum(img[heart & torso], SOFT_TISSUE + 20.0)

    # vessel markings in every lung, brighter near the hila
    vessels = _blur(rng.normal(0.0, 1.0, (size, size)), 1.2 * size / 224)
    hilum = np.exp(-((np.abs(x - 0.5) - 0.08) ** 2) / 0.02)
    img += lungs * hilum * np.clip(vessels, 0, None) * rng.uniform(25.0, 40.0)

    if kind == "bacteria":  # lobar consolidation in one lung, variable size and density
        side = rng.choice([-1.0, 1.0])
        ox = 0.5 + side * anat.lung_dx + rng.normal(0, 0.03)
        oy = anat.lung_cy + rng.uniform(-0.1, 0.2)
        blob = _ellipse(x, y, ox, oy, rng.uniform(0.05, 0.11), rng.uniform(0.06, 0.14))
        blob_f = _blur(blob.astype(np.float64), 6.0 * size / 224)
        img += lungs * blob_f * rng.uniform(35.0, 95.0)
    elif kind == "virus":  # diffuse, patchy interstitial opacity in both lungs
        patchy = _blur(rng.normal(0.0, 1.0, (size, size)), 4.0 * size / 224)
        patchy = np.clip(patchy / (patchy.std() + 1e-9), 0.0, None)
        img += lungs * patchy * rng.uniform(10.0, 28.0) + lungs * rng.uniform(8.0, 22.0)

    # acquisition: blur, exposure, gamma, noise
    img = _blur(img, 1.0 * size / 224)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0.0, 8.0)
    img = 255.0 * (np.clip(img, 0.0, 255.0) / 255.0) ** rng.uniform(0.85, 1.15)
    img += rng.normal(0.0, rng.uniform(2.0, 6.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _names(label: str, kind: str, pid: int, n: int, counter: list[int]) -> list[str]:
    """Kermany-style file names for one patient's n images."""
    if label == "NORMAL":
        prefix = "NORMAL2-IM" if pid % 2 else "IM"
        names = [f"{prefix}-{pid:04d}-{k + 1:04d}.jpeg" for k in range(n)]
        if n > 1 and pid % 3 == 0:  # the -0001-0002 variant of repeat views
            names[-1] = f"{prefix}-{pid:04d}-0001-{n:04d}.jpeg"
        return names
    names = []
    for _ in range(n):
        counter[0] += 1
        names.append(f"person{pid}_{kind}_{counter[0]}.jpeg")
    return names


def _pid_bases(n_train: int, n_test: int) -> dict[str, int]:
    """First patient number of each split: 100, 3000 and 5000 (the default's names), moved up
    to the next thousand where a split's patients would run into the next split's numbers, so
    that no patient id is shared across splits at any size."""

    def after(start: int, count: int, floor: int) -> int:
        return max(floor, -(-(start + count) // 1000) * 1000)

    test = after(100, n_train, 3000)
    return {"train": 100, "test": test, "val": after(test, n_test, 5000)}


def _patients(
    params: SyntheticParams, classes: tuple[str, str]
) -> Iterator[tuple[str, str, int, str, int, Anatomy, np.random.Generator]]:
    """Each patient in writing order: (split, label, number, kind, images, anatomy, rng); the
    rng then draws that patient's images."""
    negative, positive = classes
    lo, hi = params.images_per_patient
    counts = {
        split: max(2, round(params.patients_per_class * SPLIT_SHARE[split]))
        for split in ("train", "test")
    }
    counts["val"] = OFFICIAL_VAL_PATIENTS
    pid_base = _pid_bases(counts["train"], counts["test"])
    for split_idx, split in enumerate(("train", "test", "val")):
        for class_idx, label in enumerate((negative, positive)):
            for p in range(counts[split]):
                rng = np.random.default_rng([params.seed, split_idx, class_idx, p])
                anat = _anatomy(rng)
                n = 2 if split == "val" else int(rng.integers(lo, hi + 1))
                kind = "normal" if class_idx == 0 else str(rng.choice(["bacteria", "virus"]))
                yield split, label, pid_base[split] + p, kind, n, anat, rng


def count(params: SyntheticParams, classes: tuple[str, str]) -> int:
    """How many images `generate` writes for these params (nothing rendered)."""
    return sum(n for *_, n, _, _ in _patients(params, classes))


def generate(root: Path, params: SyntheticParams, classes: tuple[str, str]) -> int:
    """Write the synthetic dataset under root/chest_xray/{train,test,val}/{CLASS}/; return count."""
    counter = [0]
    written = 0
    for split, label, pid, kind, n, anat, rng in _patients(params, classes):
        folder = root / "chest_xray" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for name in _names(label, kind, pid, n, counter):
            image = render(anat, kind, params.image_size, rng)
            Image.fromarray(image, mode="L").save(
                folder / name, format="JPEG", quality=JPEG_QUALITY
            )
            written += 1
    return written
