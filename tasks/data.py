"""Input pipeline: decode each image once into memory, then tf.data batches from the cache."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tasks.io import read_csv, read_gray

if TYPE_CHECKING:
    from tasks.augment import AcquisitionAugment

RAW_DIR = Path("data/raw")
LOAD_THREADS = 4


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size (antialiased bilinear), the model's input."""
    if image.shape == (size, size):
        return image
    return np.asarray(
        Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    )


def load_images(paths: Sequence[Path], size: int | None) -> list[np.ndarray] | np.ndarray:
    """Decode images once (threads): an (N, size, size, 1) array, or a raw list if size is None."""

    def one(p: Path) -> np.ndarray:
        image = read_gray(p)
        return image if size is None else resize(image, size)

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        images = list(pool.map(one, paths))
    if size is None:
        return images
    return np.stack(images)[..., None] if images else np.zeros((0, size, size, 1), np.uint8)


def labels_of(rows: Sequence[dict[str, str]], positive: str) -> np.ndarray:
    """0/1 labels, 1 for the positive class."""
    return np.array([int(r["label"] == positive) for r in rows], dtype=np.int32)


def load_split(
    csv: Path, size: int, positive: str, root: Path = RAW_DIR
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Images (N, size, size, 1) uint8, labels and manifest rows of one split file."""
    rows = read_csv(csv)
    x = load_images([root / r["path"] for r in rows], size)
    return x, labels_of(rows, positive), rows


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Inverse-frequency class weights that average to 1 over the samples."""
    counts = np.bincount(y, minlength=2).astype(float)
    return {c: float(len(y) / (2.0 * counts[c])) if counts[c] else 1.0 for c in range(2)}


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    augment: AcquisitionAugment | None = None,
    drop_remainder: bool = False,
):
    """A tf.data pipeline over in-memory arrays: shuffle, batch, augment on the fly, prefetch.

    With `augment`, the cache holds `augment.prepare(x)` (each image beside its blurred
    copy, computed once) and every batch gets its own random key from a stream seeded by
    the layer's seed that draws anew on every pass: new augmentations each epoch, the
    same ones on a rerun (and on a resumed run, see tasks.training.advance).
    `drop_remainder` leaves out the last partial batch (with reshuffling, other images
    each epoch): multi-worker training needs every step to give each worker data.
    """
    import tensorflow as tf

    labels = y.astype("float32")
    if augment is None:
        ds = tf.data.Dataset.from_tensor_slices((x, labels))
    else:
        ds = tf.data.Dataset.from_tensor_slices((augment.prepare(x), labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augment is None:
        return ds.map(lambda a, b: (tf.cast(a, "float32"), b)).prefetch(tf.data.AUTOTUNE)
    keys = tf.data.Dataset.random(seed=augment.seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, keys).map(
        lambda batch, key: (augment(batch[0], training=True, key=key), batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE)
