"""The acquisition-shift proxy: validation images as another site would have taken them.

A split carved from the training archive shares its acquisitions and runs near perfect;
the official test does not. The proxy is the validation split under each shift of
`xray.perturbations.shift` (none of them seen in training or fine-tuning), applied at the stored
resolution before resizing to the model's input, as a scanner would. Each shifted set is
also drawn again at another class balance (`prior`), all NORMAL images kept and PNEUMONIA
images subsampled (or the reverse), so that label-shift corrections can be judged: a
proxy without label shift could only show their harm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xray.models.dataset import labels_of, load_images, resize
from xray.perturbations.shift import SHIFTS, shift_image

CLEAN = "clean"
log = logging.getLogger("xray.proxy")


@dataclass(frozen=True)
class ProxySet:
    """One target set of the proxy: images at the model's size, their labels and a name."""

    name: str  # e.g. `val/equalize` or `val@0.5/equalize`
    shift: str
    images: np.ndarray  # (N, size, size, 1) uint8
    labels: np.ndarray  # never given to adaptation


def check_shifts(shifts: Sequence[str]) -> None:
    """Fail with one line naming the key when a proxy shift name is unknown."""
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        raise ValueError(
            f"evaluate.proxy_shifts: unknown shift {unknown[0]!r} (known: {', '.join(SHIFTS)})"
        )


def prior_subset(y: np.ndarray, prior: float, seed: int) -> np.ndarray:
    """Sorted indices of a subset whose positive share is `prior`, keeping one class whole."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("the proxy's class-balance subset needs both classes in the val split")
    rng = np.random.default_rng(seed)
    want_pos = round(prior * len(neg) / (1.0 - prior))
    if want_pos <= len(pos):
        keep_pos, keep_neg = rng.choice(pos, want_pos, replace=False), neg
    else:
        keep_pos = pos
        keep_neg = rng.choice(neg, round(len(pos) * (1.0 - prior) / prior), replace=False)
    return np.sort(np.concatenate([keep_pos, keep_neg]))


def shifted_images(
    raw: Sequence[np.ndarray], keys: Sequence[str], shift: str, size: int, seed: int
) -> np.ndarray:
    """The raw images under one shift (or `clean`), resized to size: (N, size, size, 1)."""
    out = np.empty((len(raw), size, size, 1), np.uint8)
    for i, (image, key) in enumerate(zip(raw, keys, strict=True)):
        shifted = image if shift == CLEAN else shift_image(shift, image, key, seed)
        out[i, ..., 0] = resize(shifted, size)
    return out


def proxy_sets(
    rows: Sequence[dict[str, str]],
    raw_dir: Path,
    positive: str,
    sizes: Sequence[int],
    shifts: Sequence[str],
    prior: float | None,
    seed: int,
) -> dict[int, list[ProxySet]]:
    """Per model input size: the val images clean and under every shift, at both balances."""
    check_shifts(shifts)
    y = labels_of(rows, positive)
    raw = load_images([raw_dir / r["path"] for r in rows], None)
    keys = [r["sha256"] for r in rows]
    subset = None
    if prior is not None and len(set(y.tolist())) == 2:
        subset = prior_subset(y, prior, seed)
    elif prior is not None:
        log.warning("proxy: the val split has one class only; no set at another class balance")
    out: dict[int, list[ProxySet]] = {}
    for size in sizes:
        sets = []
        for shift in (CLEAN, *shifts):
            x = shifted_images(raw, keys, shift, size, seed)
            sets.append(ProxySet(f"val/{shift}", shift, x, y))
            if subset is not None:
                sets.append(ProxySet(f"val@{prior:g}/{shift}", shift, x[subset], y[subset]))
        out[size] = sets
    return out
