"""The decoded-image cache: in memory or in .npy files, by size, with the same batches and
the same trained model either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_models import write_tiny_split

from xray.models.dataset import cache_array, cache_in_files, image_cache, load_split, make_dataset
from xray.perturbations.augment import augmenter


def test_auto_goes_to_files_only_above_the_memory_budget() -> None:
    assert not cache_in_files("auto", 10 * 2**20, memory_mb=16)
    assert cache_in_files("auto", 20 * 2**20, memory_mb=16)
    assert cache_in_files("file", 1, memory_mb=16)
    assert not cache_in_files("memory", 2**40, memory_mb=16)
    assert not cache_in_files("auto", 2**20)  # a quarter of this machine's RAM is more


def test_image_cache_folder_is_removed_afterwards_even_on_error(tmp_path: Path) -> None:
    model = tmp_path / "models" / "base.keras"
    with image_cache("memory", 1, 0, model) as folder:
        assert folder is None
    with pytest.raises(RuntimeError), image_cache("file", 1, 0, model) as folder:
        assert folder is not None and folder.parent == model.parent
        assert folder.name.startswith(".base.keras.cache-")
        (folder / "x.npy").write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(model.parent.iterdir()) == []


def _batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(a), np.asarray(b)) for a, b in ds]


@pytest.mark.parametrize("augment", [False, True])
def test_file_cache_gives_the_same_batches_in_the_same_order(tmp_path: Path, augment: bool) -> None:
    raw, splits = write_tiny_split(tmp_path / "data", n=20, size=40)
    (tmp_path / "cache").mkdir()
    x_mem, y, _ = load_split(splits / "train.csv", 32, "PNEUMONIA", raw)
    x_file, y_file, _ = load_split(splits / "train.csv", 32, "PNEUMONIA", raw, tmp_path / "cache")
    assert isinstance(x_file, np.memmap) and not isinstance(x_mem, np.memmap)
    np.testing.assert_array_equal(x_mem, x_file)
    np.testing.assert_array_equal(y, y_file)
    epochs = []
    for x in (x_mem, x_file):
        aug = augmenter(3) if augment else None
        ds = make_dataset(x, y, 6, shuffle_seed=1, augment=aug)
        epochs.append([_batches(ds) for _ in range(2)])  # reshuffled (and re-drawn) per pass
    for mem_epoch, file_epoch in zip(*epochs, strict=True):
        assert len(mem_epoch) == len(file_epoch) == 4
        for (a, b), (c, d) in zip(mem_epoch, file_epoch, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    assert not np.array_equal(epochs[0][0][0][1], epochs[0][1][0][1])  # epoch 2 reshuffled
    if augment:
        assert (tmp_path / "cache" / "train.prepared.npy").exists()


def test_cache_array_is_a_uint8_npy_file(tmp_path: Path) -> None:
    a = cache_array(tmp_path, "x", (2, 4, 4, 1))
    a[:] = 7
    a.flush()
    assert np.load(tmp_path / "x.npy").sum() == 7 * 32


TRAIN = """
import sys
from pathlib import Path
from xray.core.params import parse_params
from xray.adaptation.references import source_references
from xray.models.base_training import train_base
raw, splits, out, cache = (Path(a) for a in sys.argv[1:5])
params = parse_params({
    "train": {"arch": "xray_net", "image_size": 32, "batch_size": 8, "epochs": 2,
              "patience": 2, "warmup_epochs": 0, "augment_strength": 0.5},
    "compute": {"cache": cache.name},
})
train_base(params, train_csv=splits / "train.csv", val_csv=splits / "val.csv",
           model_path=out / "base.keras", live_dir=out / "live", work_dir=out / "work",
           raw_dir=raw, references=source_references)
"""


@pytest.mark.slow
def test_train_base_writes_the_same_model_from_a_file_cache(tmp_path: Path) -> None:
    """Each run in its own process, as under dvc repro (Keras names layers per process)."""
    raw, splits = write_tiny_split(tmp_path / "data", n=16, size=40)
    root = Path(__file__).resolve().parents[1]
    procs = {  # both at once: each process is deterministic on its own
        cache: subprocess.Popen(
            [sys.executable, "-c", TRAIN, str(raw), str(splits), str(tmp_path / cache), cache],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for cache in ("memory", "file")
    }
    models = []
    for cache, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        folder = tmp_path / cache
        assert sorted(p.name for p in folder.iterdir()) == ["base.keras", "live"]  # cache gone
        models.append((folder / "base.keras").read_bytes())
    assert models[0] == models[1]
