"""Fine-tuning (xray/models/finetune_training.py, finetuning.py): frozen weights kept, tail
trained, BatchNorm frozen, layer table."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_generated_split

from xray.adaptation.references import source_references
from xray.core.io import read_csv
from xray.core.params import parse_params
from xray.models.architectures import build_model, load_model, save_model
from xray.models.finetune_training import finetune
from xray.models.finetuning import freeze

SIZE = 32
IMAGE = 48


def _write_split(raw: Path, splits: Path, name: str, n: int, rng: np.random.Generator) -> None:
    """n generated PNGs (bright disc = PNEUMONIA) and their split CSV."""
    yy, xx = np.mgrid[:IMAGE, :IMAGE]

    def draw(label: str) -> np.ndarray:
        img = rng.integers(30, 120, (IMAGE, IMAGE)).astype(np.uint8)
        if label == "PNEUMONIA":
            img[(yy - IMAGE // 2) ** 2 + (xx - IMAGE // 2) ** 2 < (IMAGE // 4) ** 2] = 230
        return img

    write_generated_split(raw, splits, name, n, draw)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-init xray_net base model, fine-tuned 2 epochs on a tiny generated set."""
    root = tmp_path_factory.mktemp("ft")
    raw, splits = root / "raw", root / "splits"
    rng = np.random.default_rng(0)
    _write_split(raw, splits, "train", 16, rng)
    _write_split(raw, splits, "val", 8, rng)
    keras.utils.set_random_seed(0)
    base = root / "base.keras"
    meta = {
        "arch": "xray_net",
        "image_size": SIZE,
        "channels": 1,
        "classes": ["NORMAL", "PNEUMONIA"],
        "positive_class": "PNEUMONIA",
        "threshold": 0.5,
        "stage": "train_base",
    }
    save_model(build_model("xray_net", SIZE), base, meta)
    params = parse_params(
        {
            "finetune": {"trainable_layers": 3, "epochs": 2, "batch_size": 8, "patience": 2},
            "train": {"threads": 1},
        }
    )
    paths = {
        "train_csv": splits / "train.csv",
        "val_csv": splits / "val.csv",
        "base_path": base,
        "model_path": root / "finetuned.keras",
        "live_dir": root / "live",
        "work_dir": root / "work",
        "layers_csv": root / "reports" / "finetune_layers.csv",
        "raw_dir": raw,
        "references": source_references,
    }
    finetune(params, **paths)
    return paths


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    model, _ = load_model(path)
    return {lyr.name: [np.array(w) for w in lyr.get_weights()] for lyr in model.layers}


def test_frozen_weights_are_bit_identical_and_the_tail_moved(tuned: dict[str, Path]) -> None:
    before, after = _weights(tuned["base_path"]), _weights(tuned["model_path"])
    table = {r["name"]: r for r in read_csv(tuned["layers_csv"])}
    trainable = {n for n, r in table.items() if r["trainable"] == "True" and int(r["params"])}
    assert len(trainable) == 3
    assert "prob" in trainable
    for name, ws in before.items():
        if not ws:
            continue
        same = all(np.array_equal(a, b) for a, b in zip(ws, after[name], strict=True))
        if name in trainable:
            assert not same, f"trainable layer {name} did not change"
        else:
            assert same, f"frozen layer {name} changed"


def test_batchnorm_stays_in_inference_mode(tuned: dict[str, Path]) -> None:
    model, _ = load_model(tuned["base_path"])
    before, after = _weights(tuned["base_path"]), _weights(tuned["model_path"])
    bns = [lyr.name for lyr in model.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    assert bns
    for name in bns:  # gamma, beta, moving mean, moving variance all untouched
        for a, b in zip(before[name], after[name], strict=True):
            assert np.array_equal(a, b), f"BatchNorm {name} changed"


def test_layer_table_is_written(tuned: dict[str, Path]) -> None:
    rows = read_csv(tuned["layers_csv"])
    assert list(rows[0]) == ["index", "name", "type", "trainable", "params"]
    assert rows[-1]["name"] == "prob" and rows[-1]["trainable"] == "True"
    assert any(r["type"] == "BatchNormalization" and r["trainable"] == "False" for r in rows)
    _, meta = load_model(tuned["model_path"])
    assert meta["stage"] == "finetune" and 0.0 < meta["threshold"] < 1.0
    assert (meta["finetune_augmix_views"], meta["finetune_consistency"]) == (2, 12.0)


def test_plain_finetuning_without_augmix(tuned: dict[str, Path], tmp_path: Path) -> None:
    """augmix_views 0: plain cross-entropy on each draw; frozen layers still untouched."""
    params = parse_params(
        {
            "finetune": {"trainable_layers": 3, "epochs": 1, "batch_size": 8, "augmix_views": 0},
            "train": {"threads": 1},
        }
    )
    out = tmp_path / "plain.keras"
    paths = {**tuned, "model_path": out, "live_dir": tmp_path / "live"}
    finetune(params, **{**paths, "work_dir": tmp_path / "work", "layers_csv": tmp_path / "l.csv"})
    _, meta = load_model(out)
    assert (meta["finetune_augmix_views"], meta["finetune_consistency"]) == (0, 0.0)
    before, after = _weights(tuned["base_path"]), _weights(out)
    assert np.array_equal(before["stem1_conv"][0], after["stem1_conv"][0])
    assert not np.array_equal(before["prob"][0], after["prob"][0])


def test_unfreeze_from_a_named_layer() -> None:
    model = build_model("xray_net", SIZE)
    table = freeze(model, 5, "block3_sep2")
    on = [r["name"] for r in table if r["trainable"]]
    assert on[0] == "block3_sep2" and "prob" in on
    assert not any(r["trainable"] for r in table if r["type"] == "BatchNormalization")
    start = next(r["index"] for r in table if r["name"] == "block3_sep2")
    assert not any(r["trainable"] for r in table[:start])
    assert all(r["trainable"] for r in table[start:] if r["type"] != "BatchNormalization")


def test_unknown_unfreeze_from_is_a_one_line_error() -> None:
    model = build_model("xray_net", SIZE)
    with pytest.raises(ValueError) as err:
        freeze(model, 5, "no_such_layer")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("finetune.unfreeze_from: no layer named 'no_such_layer'")


def test_clean_fraction_leaves_some_draws_clean() -> None:
    from xray.models.dataset import resize
    from xray.models.finetuning import corrupt_one

    image = np.random.default_rng(3).integers(0, 256, (IMAGE, IMAGE)).astype(np.uint8)
    clean = resize(image, SIZE)
    draws = [corrupt_one(image, f"k{i}", ["seed"], [3], 0, SIZE, 0.5) for i in range(40)]
    n_clean = sum(np.array_equal(d, clean) for d in draws)
    assert 8 <= n_clean <= 32
    assert not any(
        np.array_equal(corrupt_one(image, f"k{i}", ["seed"], [3], 0, SIZE), clean)
        for i in range(10)
    )


def test_corrupted_batches_start_at_the_given_epoch() -> None:
    from xray.models.finetuning import corrupted_batches

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (IMAGE, IMAGE)).astype(np.uint8) for _ in range(6)]
    args = dict(families=["seed"], severities=[3], seed=1, size=SIZE, batch_size=4)
    shas, y = [f"s{i}" for i in range(6)], np.arange(6) % 2
    whole = corrupted_batches(images, shas, y, **args)
    epoch2 = [next(whole) for _ in range(6)][4:]  # 2 batches per epoch
    later = corrupted_batches(images, shas, y, **args, first_epoch=2)
    for (xa, ya), (xb, yb) in zip(epoch2, [next(later) for _ in range(2)], strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_augmented_batches_are_keyed_by_epoch_and_batch() -> None:
    """With augmentation: draws differ from the plain batches, repeat on a rerun and a resume."""
    from xray.models.finetuning import corrupted_batches
    from xray.perturbations.augment import augmenter

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (IMAGE, IMAGE)).astype(np.uint8) for _ in range(6)]
    args = dict(families=["seed"], severities=[3], seed=1, size=SIZE, batch_size=4)
    shas, y = [f"s{i}" for i in range(6)], np.arange(6) % 2
    plain = [next(corrupted_batches(images, shas, y, **args))[0]]
    runs = []
    for first in (0, 0, 1):
        batches = corrupted_batches(
            images, shas, y, **args, first_epoch=first, augment=augmenter(1)
        )
        runs.append([next(batches)[0] for _ in range(4 - 2 * first)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])  # a rerun draws the same
    np.testing.assert_array_equal(runs[0][2], runs[2][0])  # a resume at epoch 1 too
    assert not np.array_equal(runs[0][0], plain[0])
    assert not np.array_equal(runs[0][0], runs[0][2])  # new draws each epoch
    assert runs[0][0].dtype == np.float32 and runs[0][0].shape == plain[0].shape


def test_augmix_batches_stack_each_draw_and_its_copies() -> None:
    from xray.models.finetuning import corrupted_batches

    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (IMAGE, IMAGE)).astype(np.uint8) for _ in range(6)]
    args = dict(families=["seed"], severities=[3], seed=1, size=SIZE, batch_size=4)
    shas, y = [f"s{i}" for i in range(6)], np.arange(6) % 2
    plain, y_plain = next(corrupted_batches(images, shas, y, **args))
    stack, y_stack = next(corrupted_batches(images, shas, y, **args, views=2))
    assert stack.shape == (4, 3, SIZE, SIZE, 1) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[:, 0], plain)
    np.testing.assert_array_equal(y_stack, y_plain)


class Crash(keras.callbacks.Callback):
    """Simulate a killed run: raise at the end of the first epoch (after its checkpoint)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("killed")


def test_finetune_resumes_after_a_kill(tuned: dict[str, Path], tmp_path: Path) -> None:
    params = parse_params(
        {
            "finetune": {"trainable_layers": 3, "epochs": 2, "batch_size": 8, "patience": 2},
            "train": {"threads": 1},
        }
    )
    paths = {
        **tuned,
        "model_path": tmp_path / "finetuned.keras",
        "live_dir": tmp_path / "live",
        "work_dir": tmp_path / "work",
        "layers_csv": tmp_path / "layers.csv",
    }
    with pytest.raises(KeyboardInterrupt):
        finetune(params, **paths, callbacks=[Crash()])
    assert not paths["model_path"].exists()
    summary = finetune(params, **paths)
    assert (summary["first_epoch"], summary["epochs_run"]) == (2, 1)
    assert paths["model_path"].exists() and not paths["work_dir"].exists()
    rows = (paths["live_dir"] / "plots/metrics/eval/auc.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "0", "1"]
