"""Tests for xray.models.architectures and train_base resume: builds, byte-stable files,
safe loading."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import write_generated_split

from xray.core.params import parse_params
from xray.models.architectures import ARCH_NAMES, build_model, load_model, read_meta, save_model

SIZE = 32
BACKBONE_SIZE = 32
META = {
    "arch": "xray_net",
    "image_size": SIZE,
    "threshold": 0.42,
    "classes": ["NORMAL", "PNEUMONIA"],
}


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 grayscale images (n, size, size, 1)."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_each_arch_takes_uint8_gray_and_outputs_one_probability(arch: str) -> None:
    size = BACKBONE_SIZE if arch not in ("xray_net", "seed_cnn") else 64
    model = build_model(arch, size)
    assert model.input_shape == (None, size, size, 1)
    out = model.predict(_pixels(3, size), verbose=0)
    assert out.shape == (3, 1)
    assert np.all((out >= 0.0) & (out <= 1.0))


def test_unknown_arch_and_bad_weights_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"train\.arch: unknown architecture 'vgg'"):
        build_model("vgg", SIZE)
    with pytest.raises(ValueError, match=r"train\.weights"):
        build_model("xray_net", SIZE, "imagenet")


def test_xray_net_is_far_smaller_than_seed_cnn() -> None:
    small, seed = build_model("xray_net", 150), build_model("seed_cnn", 150)
    assert small.count_params() * 10 < seed.count_params()


def test_save_model_is_byte_stable_and_load_round_trips(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    model = build_model("xray_net", SIZE)
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    save_model(model, a, META)
    save_model(model, b, META)
    assert a.read_bytes() == b.read_bytes()
    loaded, meta = load_model(a)
    assert meta == META == read_meta(b)
    x = _pixels(4, SIZE, seed=3).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-6
    )


def test_load_model_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.keras"):
        load_model(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.keras: not a model saved by this pipeline"):
        load_model(bad)


def write_tiny_split(root: Path, n: int = 16, size: int = 40) -> tuple[Path, Path]:
    """A generated raw folder and train/val split CSVs: bright discs are PNEUMONIA."""
    raw, splits = root / "raw", root / "splits"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]

    def draw(label: str) -> np.ndarray:
        img = rng.integers(0, 80, (size, size)).astype(np.uint8)
        if label == "PNEUMONIA":
            img[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 4) ** 2] = 220
        return img

    for split in ("train", "val"):
        write_generated_split(raw, splits, split, n, draw)
    return raw, splits


class Crash(keras.callbacks.Callback):
    """Simulate a killed run: raise at the end of the first epoch (after its checkpoint)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("killed")


def test_train_base_resumes_after_a_kill(tmp_path: Path) -> None:
    from xray.adaptation.references import source_references
    from xray.models.base_training import train_base

    raw, splits = write_tiny_split(tmp_path)
    params = parse_params(
        {
            "train": {
                "arch": "xray_net",
                "image_size": 32,
                "batch_size": 8,
                "epochs": 2,
                "patience": 2,
                "warmup_epochs": 0,
                "augment": False,
            }
        }
    )
    paths = {
        "train_csv": splits / "train.csv",
        "val_csv": splits / "val.csv",
        "model_path": tmp_path / "base.keras",
        "live_dir": tmp_path / "live",
        "work_dir": tmp_path / "work",
        "raw_dir": raw,
        "references": source_references,
    }
    with pytest.raises(KeyboardInterrupt):
        train_base(params, **paths, callbacks=[Crash()])
    assert not paths["model_path"].exists()
    assert (paths["work_dir"] / "ckpt-0001" / "state.json").exists()
    summary = train_base(params, **paths)
    assert summary["first_epoch"] == 2
    assert summary["epochs_run"] == 1
    assert paths["model_path"].exists()
    assert not paths["work_dir"].exists()
    meta = read_meta(paths["model_path"])
    assert 0.0 < meta["threshold"] < 1.0 and meta["image_size"] == 32
    rows = (paths["live_dir"] / "plots" / "metrics" / "eval" / "auc.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "0", "1"]  # each epoch once, in order


def test_augmentation_keeps_shape_and_range_and_is_identity_when_off() -> None:
    from xray.perturbations.augment import augmenter

    x = _pixels(4, 48, seed=2).astype("float32")
    out = np.asarray(augmenter(0)(x, training=True))
    assert out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.allclose(out, x, atol=1.0)
    np.testing.assert_array_equal(np.asarray(augmenter(0)(x, training=False)), x)
    np.testing.assert_allclose(np.asarray(augmenter(0, 0.0)(x, training=True)), x, atol=0.01)


def test_threshold_sits_mid_plateau_of_best_youden() -> None:
    from xray.models.threshold import choose_threshold

    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.01, 0.02, 0.05, 0.95, 0.98, 0.99])  # separable: any t in (0.05, 0.95]
    t = choose_threshold(y, p)
    assert 0.05 < t <= 0.95
    assert abs(t - 0.5) < 1e-6  # logit midpoint of 0.05 and 0.95
    # one NORMAL outlier: the best J run is (0.6, 0.9], not the outlier's neighbourhood
    y2 = np.array([0, 0, 0, 0, 1, 1, 1])
    p2 = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 0.95, 0.97])
    t2 = choose_threshold(y2, p2)
    assert 0.6 < t2 <= 0.9
    preds = (p2 >= t2).astype(int)
    assert preds.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert choose_threshold(np.array([1, 1]), np.array([0.3, 0.4])) == 0.5


def test_saved_model_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """Keras writes Python object ids into config.json; two processes must still agree."""
    import subprocess
    import sys

    script = (
        "import sys, keras; from pathlib import Path; "
        "from xray.models.architectures import build_model, save_model; "
        "keras.utils.set_random_seed(0); "
        "save_model(build_model('xray_net', 32), Path(sys.argv[1]), {'threshold': 0.5})"
    )
    root = Path(__file__).resolve().parents[1]
    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    for path in paths:
        subprocess.run(
            [sys.executable, "-c", script, str(path)],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=300,
        )
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_threshold_scores_add_seeded_augmented_copies_of_val() -> None:
    from xray.core.params import TrainParams
    from xray.models.base_training import THRESHOLD_AUG_COPIES, threshold_sets

    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    on = TrainParams(image_size=32, batch_size=4)
    sets = threshold_sets(x, y, on)
    assert len(sets) == 1 + THRESHOLD_AUG_COPIES
    assert sets[0][0] is x and all(np.array_equal(ys, y) for _, ys in sets)
    assert all(xs.shape == x.shape for xs, _ in sets)
    assert not np.array_equal(sets[1][0], x)  # copies really shifted
    again = threshold_sets(x, y, on)
    for (a, _), (b, _) in zip(sets, again, strict=True):
        np.testing.assert_array_equal(a, b)  # seeded: the same threshold on rerun
    assert len(threshold_sets(x, y, TrainParams(image_size=32, augment=False))) == 1


def test_augmentation_is_seeded_and_ranges_override_single_operations() -> None:
    import tensorflow as tf

    from xray.perturbations.augment import augmenter

    x = _pixels(4, 48, seed=3).astype("float32")
    draws = []
    for _ in range(2):  # same global seed, same draws (the stream restarts with the seed)
        tf.random.set_seed(11)
        draws.append(np.asarray(augmenter(5)(x, training=True)))
    np.testing.assert_array_equal(*draws)
    off = {k: 0.0 for k in ("rotation", "zoom", "translation", "contrast", "blur", "noise")}
    only_gamma = np.asarray(augmenter(5, ranges={**off, "brightness": 0.0})(x, training=True))
    # A gamma curve alone keeps the order of pixel values within each image.
    for img, src in zip(only_gamma, x, strict=True):
        order = np.argsort(src.ravel(), kind="stable")
        assert np.all(np.diff(img.ravel()[order]) >= -1e-3)
    layer = augmenter(5, ranges={"noise": 0.0})
    assert layer.get_config()["ranges"]["noise"] == 0.0
    assert "ranges" not in augmenter(5).get_config()
    with pytest.raises(ValueError, match="unknown \\['hue'\\]"):
        augmenter(5, ranges={"hue": 0.1})
