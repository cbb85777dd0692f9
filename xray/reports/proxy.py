"""The acquisition-shift proxy: validation images as another site would have taken them.

A split carved from the training archive shares its acquisitions and runs near perfect;
the official test does not. The proxy is the validation split under each shift of
`xray.perturbations.shift` (none of them seen in training or fine-tuning), applied at the stored
resolution before resizing to the model's input, as a scanner would. Three kinds of target
(`KINDS`), each set named `<draw>/<shift>`:

- clean shift, `val/<shift>`: the whole val split under the shift;
- shift + class balance, `val@<P>/<shift>`: the shifted set drawn again at a P share of the
  positive class (`evaluate.proxy_priors`), one class kept whole and the other subsampled,
  so that label-shift corrections can be judged (a proxy without label shift could only show
  their harm);
- shift + damage, `val+seed<S>/<shift>`: the shifted images damaged by the `seed` corruption
  family (the blog's perturbations) at severity S (`evaluate.proxy_damage_severity`), after
  the shift, at the stored resolution: what a new site sends.

`val/clean` (and `val@<P>/clean`) are the unshifted draws; they belong to no kind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xray.models.dataset import labels_of, load_images, resize
from xray.perturbations.keras_seed import keras_seed
from xray.perturbations.shift import SHIFTS, shift_image, shift_rng

CLEAN = "clean"
DAMAGE_FAMILY = "seed"  # xray/perturbations/keras_seed.py
KINDS = {"shift": "clean shift", "balance": "shift + class balance", "damage": "shift + damage"}
log = logging.getLogger("xray.proxy")


@dataclass(frozen=True)
class ProxySet:
    """One target set of the proxy: images at the model's size, their labels and a name.

    A class-balance draw shares its full set's images (`source`) and names its rows
    (`index`), so the draws cost no memory and a plain model's scores of the full set serve
    them (`parent`).
    """

    name: str  # e.g. `val/equalize`, `val@0.5/equalize`, `val+seed3/equalize`
    shift: str
    source: np.ndarray  # (N, size, size, 1) uint8: the images, or the full set's
    labels: np.ndarray  # never given to adaptation
    kind: str = "shift"  # a key of KINDS
    parent: str | None = None  # the full set this one is drawn from
    index: np.ndarray | None = None  # its rows in the parent's images

    @property
    def images(self) -> np.ndarray:
        """(N, size, size, 1) uint8: the set's images."""
        return self.source if self.index is None else self.source[self.index]


def target_names(sets: Sequence[ProxySet]) -> dict[str, list[str]]:
    """The names of each kind's sets (the shifted ones: an unshifted draw is no target)."""
    return {kind: [s.name for s in sets if s.kind == kind and s.shift != CLEAN] for kind in KINDS}


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


def resized(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """2-D uint8 images resized to size: (N, size, size, 1)."""
    out = np.empty((len(images), size, size, 1), np.uint8)
    for i, image in enumerate(images):
        out[i, ..., 0] = resize(image, size)
    return out


def damaged(
    images: Sequence[np.ndarray], keys: Sequence[str], severity: int, seed: int
) -> list[np.ndarray]:
    """The images under the damage family at severity, each drawn from (key, severity, seed).

    Only this family's code is imported (not the whole corruption suite), so that editing
    another family reruns no evaluate stage.
    """
    name = f"{DAMAGE_FAMILY}/{severity}"
    return [
        keras_seed(im, severity, shift_rng(key, name, seed))
        for im, key in zip(images, keys, strict=True)
    ]


def proxy_sets(
    rows: Sequence[dict[str, str]],
    raw_dir: Path,
    positive: str,
    sizes: Sequence[int],
    shifts: Sequence[str],
    priors: Sequence[float],
    seed: int,
    damage: int | None = None,
) -> dict[int, list[ProxySet]]:
    """Per model input size: the val images clean and under every shift, at every balance in
    `priors`, and (`damage`: a severity) damaged after each shift."""
    check_shifts(shifts)
    y = labels_of(rows, positive)
    raw = load_images([raw_dir / r["path"] for r in rows], None)
    keys = [r["sha256"] for r in rows]
    subsets: dict[float, np.ndarray] = {}
    if priors and len(set(y.tolist())) == 2:
        subsets = {p: prior_subset(y, p, seed) for p in priors}
    elif priors:
        log.warning("proxy: the val split has one class only; no set at another class balance")
    out: dict[int, list[ProxySet]] = {size: [] for size in sizes}
    for shift in (CLEAN, *shifts):
        images = (
            raw
            if shift == CLEAN
            else [shift_image(shift, im, k, seed) for im, k in zip(raw, keys, strict=True)]
        )
        hurt = damaged(images, keys, damage, seed) if damage and shift != CLEAN else None
        for size in sizes:
            x, full = resized(images, size), f"val/{shift}"
            sets = out[size]
            sets.append(ProxySet(full, shift, x, y))
            for p, idx in subsets.items():
                name = f"val@{p:g}/{shift}"
                sets.append(ProxySet(name, shift, x, y[idx], "balance", full, idx))
            if hurt is not None:
                name = f"val+{DAMAGE_FAMILY}{damage}/{shift}"
                sets.append(ProxySet(name, shift, resized(hurt, size), y, "damage"))
    return out
