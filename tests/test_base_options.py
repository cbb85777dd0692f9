"""The base-model options of issue 23 (train.crop, train.mixup, train.normalize: equalize):
what each promises, on generated images; their effect on quality is measured by
benchmarks/base_options.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xray.core.params import ParamsError, parse_params
from xray.models.architectures import build_model, crop_side, load_model, save_model
from xray.perturbations.mixup import mixup

SIZE = 64


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1)).astype("float32")


@pytest.mark.parametrize("arch", ["xray_net", "seed_cnn"])
def test_a_cropped_model_never_sees_the_borders_and_its_file_round_trips(
    arch: str, tmp_path: Path
) -> None:
    crop = 0.125
    model = build_model(arch, SIZE, crop=crop)
    assert model.input_shape == (None, SIZE, SIZE, 1)  # the same input as without the crop
    side = crop_side(SIZE, crop)
    assert side == 48 and model.get_layer("crop").output.shape[1:3] == (side, side)
    x = _pixels(4)
    edge = (SIZE - side) // 2
    scribbled = x.copy()  # text and markers on every border, the centre untouched
    scribbled[:, :edge] = 255.0
    scribbled[:, -edge:] = 0.0
    scribbled[:, :, :edge] = 17.0
    scribbled[:, :, -edge:] = 200.0
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(scribbled, verbose=0))
    centre = x.copy()
    centre[:, SIZE // 2, SIZE // 2] = 255.0 - centre[:, SIZE // 2, SIZE // 2]
    assert not np.array_equal(model.predict(x, verbose=0), model.predict(centre, verbose=0))
    meta = {"arch": arch, "image_size": SIZE, "threshold": 0.5, "classes": ["NORMAL", "PNEUMONIA"]}
    save_model(model, tmp_path / "m.keras", {**meta, "crop": crop})
    loaded, meta = load_model(tmp_path / "m.keras")  # built-in layers only: no custom objects
    assert meta["crop"] == crop
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("arch", ["xray_net", "seed_cnn"])
def test_an_equalizing_model_is_blind_to_a_monotone_gray_level_change(
    arch: str, tmp_path: Path
) -> None:
    model = build_model(arch, SIZE, normalize="equalize", crop=0.125)
    x = np.floor(_pixels(4) / 2)  # gray levels 0..127
    x[:, :, : SIZE // 2] = np.floor(x[:, :, : SIZE // 2] / 2)  # histograms with structure
    v = np.arange(128)
    lut = v + np.round(v**2 / 127.0)  # a site's curve: no two levels merged
    brighter = lut[x.astype(int)].astype("float32")
    assert not np.array_equal(brighter, x)
    clean = model.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(brighter, verbose=0), clean, atol=1e-5)
    unequalized = build_model(arch, SIZE, crop=0.125)  # the same check fails without it
    assert not np.allclose(
        unequalized.predict(brighter, verbose=0), unequalized.predict(x, verbose=0), atol=1e-5
    )
    meta = {"arch": arch, "image_size": SIZE, "threshold": 0.5, "classes": ["NORMAL", "PNEUMONIA"]}
    save_model(model, tmp_path / "m.keras", meta)
    loaded, _ = load_model(tmp_path / "m.keras")  # safe mode: xray's registered layer
    assert type(loaded.get_layer("equalize")).__name__ == "Equalize"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clean, atol=1e-6)
    model.compile("adam", "binary_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, np.array([0.0, 1.0, 0.0, 1.0]), epochs=1, verbose=0)  # trains through it
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_equalize_maps_each_image_through_its_own_histogram() -> None:
    from xray.models.equalize import Equalize

    rng = np.random.default_rng(3)
    dark = rng.integers(0, 64, (1, 8, 8, 1)).astype("float32")
    flat = np.full((1, 8, 8, 1), 90.0, "float32")  # one gray level: a defined output, no NaN
    out = np.asarray(Equalize()(np.concatenate([dark, flat])))
    alone = np.asarray(Equalize()(dark))
    np.testing.assert_allclose(out[:1], alone)  # a batch neighbour changes nothing
    assert out[0].min() == 0.0 and out[0].max() == 255.0  # spread over the whole range
    ranks = np.argsort(np.argsort(dark.ravel(), kind="stable"), kind="stable")
    assert np.all(np.diff(out[0].ravel()[np.argsort(ranks)]) >= 0)  # order kept
    np.testing.assert_array_equal(out[1], 0.0)


def test_normalize_is_validated_with_the_key_named() -> None:
    assert parse_params({"train": {"normalize": "equalize"}}).train.normalize == "equalize"
    with pytest.raises(ParamsError, match=r"train\.normalize"):
        parse_params({"train": {"normalize": "clahe"}})
    with pytest.raises(ValueError, match=r"train\.normalize"):
        build_model("xray_net", 32, normalize="clahe")


def test_crop_and_mixup_are_validated_with_the_key_named() -> None:
    with pytest.raises(ParamsError, match=r"train\.crop"):
        parse_params({"train": {"crop": 0.4}})
    with pytest.raises(ParamsError, match=r"train: crop: resnet50 takes the whole image"):
        parse_params({"train": {"arch": "resnet50", "crop": 0.1}})
    with pytest.raises(ParamsError, match=r"train\.mixup"):
        parse_params({"train": {"mixup": -0.2}})
    assert parse_params({"train": {"crop": 0.1, "mixup": 0.2}}).train.mixup == 0.2
    with pytest.raises(ValueError, match=r"train\.crop"):
        build_model("efficientnet_b0", 32, crop=0.1)


def _batches(n: int = 12, batch: int = 4):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    x = np.stack([np.full((2, 2, 1), float(i)) for i in range(n)]).astype("float32")
    y = (np.arange(n) % 3 == 0).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_mixup_blends_each_image_with_its_neighbour_label_alike_and_is_seeded() -> None:
    ds = mixup(_batches(), alpha=0.4, seed=5)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    second = [(x.numpy(), y.numpy()) for x, y in ds]  # a new epoch: new blends
    again = [(x.numpy(), y.numpy()) for x, y in mixup(_batches(), alpha=0.4, seed=5)]
    for (x, y), (x0, y0) in zip(first, again, strict=True):  # a rerun: the same blends
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    for (x, y), (raw_x, raw_y) in zip(first, _batches(), strict=True):
        own, other = raw_x.numpy()[:, 0, 0, 0], np.roll(raw_x.numpy()[:, 0, 0, 0], 1)
        w = np.where(
            own != other, (x[:, 0, 0, 0] - other) / np.where(own != other, own - other, 1), 1
        )
        assert np.all(w >= 0.5 - 1e-6) and np.all(w <= 1 + 1e-6)  # mostly its own image
        np.testing.assert_allclose(
            y, w * raw_y.numpy() + (1 - w) * np.roll(raw_y.numpy(), 1), atol=1e-5
        )  # the label blended with the same weight as the image
