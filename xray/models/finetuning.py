"""Fine-tuning's parts: the frozen base, the corrupted training batches and val copies.

Follows the Keras transfer-learning guide: freeze by ``trainable``, BatchNorm always kept in
inference mode (frozen). Training images are the train split corrupted on the fly with fresh
randomness each epoch by the (non-held-out) families the corrupt stage materializes for
test; each draw is keyed by the image's sha256, so reruns and resumed runs see the same
images. xray/models/finetune_training.py puts these together for the `finetune` stage.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from xray.core.errors import InputError
from xray.models.dataset import resize
from xray.perturbations.augment import AcquisitionAugment
from xray.perturbations.augmix import chain_augmenter, mixed_views
from xray.perturbations.corruptions import corrupt_image, rng_for

CORRUPT_THREADS = 2
AUG_KEY_STRIDE = 1 << 32  # augmentation key of a batch: (seed, epoch * stride + first row)


def freeze(
    model: keras.Model, trainable_layers: int, unfreeze_from: str | None
) -> list[dict[str, Any]]:
    """Freeze all but the tail of the model; BatchNorm stays frozen. Return the layer table.

    The tail starts at the layer named `unfreeze_from`, or else at the N-th last layer
    that owns weights (BatchNorm not counted), N = `trainable_layers`.
    """
    layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
    names = [lyr.name for lyr in layers]
    if unfreeze_from is not None:
        if unfreeze_from not in names:
            raise InputError(
                f"finetune.unfreeze_from: no layer named {unfreeze_from!r} in {model.name}"
            )
        start = names.index(unfreeze_from)
    else:
        weighted = [
            i
            for i, lyr in enumerate(layers)
            if lyr.weights and not isinstance(lyr, keras.layers.BatchNormalization)
        ]
        start = weighted[-min(trainable_layers, len(weighted))]
    table = []
    for i, lyr in enumerate(layers):
        lyr.trainable = i >= start and not isinstance(lyr, keras.layers.BatchNormalization)
        table.append(
            {
                "index": i,
                "name": lyr.name,
                "type": type(lyr).__name__,
                "trainable": lyr.trainable,
                "params": int(sum(np.prod(w.shape) for w in lyr.weights)),
            }
        )
    return table


def pick(
    key: str, families: Sequence[str], severities: Sequence[int], seed: int
) -> tuple[str, int]:
    """Choose a (family, severity) for one draw, deterministically from its key."""
    rng = rng_for(key, "pick", 0, seed)
    return families[int(rng.integers(len(families)))], int(
        severities[int(rng.integers(len(severities)))]
    )


def corrupt_one(
    image: np.ndarray,
    key: str,
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    size: int,
    clean_fraction: float = 0.0,
) -> np.ndarray:
    """One corrupted (or, with probability `clean_fraction`, clean) resized copy of an image.

    Randomness comes from `key` only.
    """
    if clean_fraction > 0 and rng_for(key, "clean", 0, seed).random() < clean_fraction:
        return resize(image, size)
    family, severity = pick(key, families, severities, seed)
    out = corrupt_image(image, family, severity, rng_for(key, family, severity, seed))
    return resize(out, size)


def corrupted_val(
    images: Sequence[np.ndarray],
    rows: Sequence[dict[str, str]],
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    size: int,
) -> np.ndarray:
    """(N, size, size, 1): one fixed corrupted copy of each val image, as selection sees it."""
    return np.stack(
        [
            corrupt_one(img, f"{r['sha256']}|val", families, severities, seed, size)
            for img, r in zip(images, rows, strict=True)
        ]
    )[..., None]


def corrupted_batches(
    images: list[np.ndarray],
    shas: list[str],
    y: np.ndarray,
    *,
    families: Sequence[str],
    severities: Sequence[int],
    seed: int,
    size: int,
    batch_size: int,
    clean_fraction: float = 0.0,
    first_epoch: int = 0,
    rows: int | None = None,
    augment: AcquisitionAugment | None = None,
    views: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches of freshly corrupted training images, from `first_epoch` on.

    `rows` (default: all) images of each epoch's order are used
    (xray.models.distribute.usable_rows).
    With `augment`, each batch then goes through it, keyed by (seed, epoch, batch): the
    same draws on a rerun or a resumed run. With `views`, each batch becomes
    (N, 1 + views, H, W, 1): the draws and their AugMix copies
    (xray.perturbations.augmix.mixed_views, keyed the same way).
    """
    n = len(images)
    chains = chain_augmenter(seed) if views else None
    with ThreadPoolExecutor(CORRUPT_THREADS) as pool:
        for epoch in range(first_epoch, 1 << 30):
            order = np.random.default_rng([seed, epoch]).permutation(n)[:rows]
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                keys = [f"{shas[i]}|train|{epoch}" for i in idx]
                xs = list(
                    pool.map(
                        lambda i, k: corrupt_one(
                            images[i], k, families, severities, seed, size, clean_fraction
                        ),
                        idx,
                        keys,
                    )
                )
                batch = np.stack(xs)[..., None]
                if augment is not None:
                    key = np.array([seed, epoch * AUG_KEY_STRIDE + start], np.int64)
                    batch = np.asarray(augment(batch, training=True, key=key))
                if chains is not None:
                    batch = mixed_views(batch, chains, views, (seed, epoch, start))
                yield batch.astype("float32"), y[idx].astype("float32")
