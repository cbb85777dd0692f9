"""Input pipeline: decode each image once into a cache (memory, or .npy files read batch by
batch when the images are too many for memory), then tf.data batches from the cache."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from xray.core.hashing import check_sha256
from xray.core.io import decode_gray, read_csv, read_gray, read_zip_images

if TYPE_CHECKING:
    from xray.perturbations.augment import AcquisitionAugment

log = logging.getLogger("xray.data")

LOAD_THREADS = 4
LOAD_CHUNK = 512  # images decoded per step into a file cache: bounds the memory used
MEMORY_SHARE = 4  # cache "auto" without cache_memory_mb: files above 1/4 of physical_memory()


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size (antialiased bilinear), the model's input."""
    if image.shape == (size, size):
        return image
    return np.asarray(
        Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    )


def load_images(
    paths: Sequence[Path], size: int | None, out: np.ndarray | None = None
) -> list[np.ndarray] | np.ndarray:
    """Decode images once (threads): an (N, size, size, 1) array, or a raw list if size is None.

    With `out` (an (N, size, size, 1) uint8 array, such as a np.memmap of a cache file),
    the images are decoded into it LOAD_CHUNK at a time and `out` is returned.
    """

    def one(p: Path) -> np.ndarray:
        image = read_gray(p)
        return image if size is None else resize(image, size)

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        if out is not None:
            for i in range(0, len(paths), LOAD_CHUNK):
                chunk = list(pool.map(one, paths[i : i + LOAD_CHUNK]))
                out[i : i + len(chunk)] = np.stack(chunk)[..., None]
            return out
        images = list(pool.map(one, paths))
    if size is None:
        return images
    return np.stack(images)[..., None] if images else np.zeros((0, size, size, 1), np.uint8)


def load_members(
    folder: Path, rows: Sequence[dict[str, str]], size: int | None
) -> list[np.ndarray] | np.ndarray:
    """Decode the images of manifest rows (`archive`, `member`: a zip under folder) once.

    Each zip is opened once and its members read in one pass; decoding runs on threads
    (Pillow releases the GIL). A row's `sha256` (the member's bytes, as `corrupt` wrote
    them) is checked before it is decoded: a changed member is a one-line error naming the
    archive and member, never a silently different score. An (N, size, size, 1) array in
    row order, or a raw list if size is None.
    """
    by_archive: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_archive.setdefault(r["archive"], []).append(i)
    data: list[bytes] = [b""] * len(rows)
    for archive, idx in by_archive.items():
        members = read_zip_images(folder / archive, [rows[i]["member"] for i in idx])
        for i, (_, blob) in zip(idx, members, strict=True):
            data[i] = blob

    def one(i: int) -> np.ndarray:
        check_sha256(
            data[i], rows[i].get("sha256"), f"{folder / rows[i]['archive']}: {rows[i]['member']}"
        )
        try:
            image = decode_gray(data[i])
        except (OSError, ValueError) as e:
            where = f"{folder / rows[i]['archive']}: {rows[i]['member']}"
            raise ValueError(f"{where}: cannot read image ({e})") from None
        return image if size is None else resize(image, size)

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        images = list(pool.map(one, range(len(rows))))
    if size is None:
        return images
    return np.stack(images)[..., None] if images else np.zeros((0, size, size, 1), np.uint8)


def cache_array(folder: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A new uint8 .npy file in `folder` of this shape, mapped into memory (np.memmap)."""
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)


CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v2 (unified) and v1 (memory controller) limit files, relative to the cgroup root.
CGROUP_LIMIT_FILES = ("memory.max", "memory/memory.limit_in_bytes", "memory.limit_in_bytes")


def host_memory() -> int:
    """Bytes of RAM of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cgroup_memory_limit(root: Path | None = None) -> int | None:
    """This container's memory limit in bytes from cgroup v2 or v1; None when unlimited or absent.

    v2 writes `max` for no limit; v1 writes a huge number (about 2**63) instead.
    """
    root = CGROUP_ROOT if root is None else root
    for name in CGROUP_LIMIT_FILES:
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            log.warning("%s: unreadable memory limit %r; ignored", root / name, text)
            continue
        return value if 0 < value < 2**60 else None
    return None


def physical_memory(cgroup_root: Path | None = None) -> int:
    """Bytes of memory this process may use: the host's RAM, or less under a cgroup limit."""
    host = host_memory()
    limit = cgroup_memory_limit(cgroup_root)
    return min(host, limit) if limit else host


def cache_in_files(mode: str, nbytes: int, memory_mb: int = 0) -> bool:
    """Whether `nbytes` of decoded images go to files: mode file, or auto above the budget."""
    if mode != "auto":
        return mode == "file"
    budget = memory_mb * 2**20 if memory_mb else physical_memory() // MEMORY_SHARE
    return nbytes > budget


@contextlib.contextmanager
def image_cache(mode: str, nbytes: int, memory_mb: int, near: Path) -> Iterator[Path | None]:
    """A fresh folder beside `near` for file-cached images (removed afterwards), or None.

    None means: keep the decoded images in memory (see cache_in_files).
    """
    if not cache_in_files(mode, nbytes, memory_mb):
        yield None
        return
    near.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{near.name}.cache-", dir=near.parent))
    log.info("caching %.0f MB of decoded images in files under %s", nbytes / 2**20, folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def labels_of(rows: Sequence[dict[str, str]], positive: str) -> np.ndarray:
    """0/1 labels, 1 for the positive class."""
    return np.array([int(r["label"] == positive) for r in rows], dtype=np.int32)


def load_split(
    csv: Path, size: int, positive: str, root: Path, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Images (N, size, size, 1) uint8, labels and manifest rows of one split file.

    With `cache` (a folder), the images go to a .npy file there, mapped as np.memmap.
    """
    rows = read_csv(csv)
    paths = [root / r["path"] for r in rows]
    out = None if cache is None else cache_array(cache, csv.stem, (len(rows), size, size, 1))
    return load_images(paths, size, out), labels_of(rows, positive), rows


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
    """A tf.data pipeline over cached images: shuffle, batch, augment on the fly, prefetch.

    With `augment`, the cache holds `augment.prepare(x)` (each image beside its blurred
    copy, computed once) and every batch gets its own random key from a stream seeded by
    the layer's seed that draws anew on every pass: new augmentations each epoch, the
    same ones on a rerun (and on a resumed run, see xray.models.resume.advance).
    A np.memmap `x` (a file cache) is read batch by batch and never held in memory whole;
    its batches are the same, in the same order, as those of the same array in memory.
    `drop_remainder` leaves out the last partial batch (with reshuffling, other images
    each epoch): multi-worker training needs every step to give each worker data.
    """
    import tensorflow as tf

    labels = y.astype("float32")
    source = x
    if augment is not None:
        out = None
        if isinstance(x, np.memmap):
            out = cache_array(
                Path(x.filename).parent, Path(x.filename).stem + ".prepared", (*x.shape[:3], 2)
            )
        source = augment.prepare(x, out)
    if isinstance(source, np.memmap):
        ds = tf.data.Dataset.range(len(source))  # indices: shuffled exactly as the rows below
    else:
        ds = tf.data.Dataset.from_tensor_slices((source, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(source), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if isinstance(source, np.memmap):
        ds = ds.map(_file_reader(source, labels))
    if augment is None:
        return ds.map(lambda a, b: (tf.cast(a, "float32"), b)).prefetch(tf.data.AUTOTUNE)
    keys = tf.data.Dataset.random(seed=augment.seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, keys).map(
        lambda batch, key: (augment(batch[0], training=True, key=key), batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def _file_reader(source: np.ndarray, labels: np.ndarray):
    """A tf.data map from a batch of row indices to (images, labels) read from `source`."""
    import tensorflow as tf

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(source[rows]), labels[rows]

    def batch(rows):
        images, y = tf.numpy_function(read, [rows], [tf.uint8, tf.float32], stateful=False)
        images.set_shape([None, *source.shape[1:]])
        y.set_shape([None])
        return images, y

    return batch
