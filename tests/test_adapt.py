"""Adaptation to unlabeled target images: AdaBN, TENT, label-shift threshold
(xray/adaptation/)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from xray.adaptation.adapt import adapt
from xray.adaptation.batchnorm import adabn, batchnorm_layers, restored
from xray.adaptation.label_shift import em_prior, prior_correction, shifted_threshold
from xray.adaptation.tent import tent
from xray.core.params import AdaptParams
from xray.models.architectures import xray_net

SIZE = 32


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return xray_net(SIZE)


def _images(n: int = 48, seed: int = 1, shift: float = 0.0) -> np.ndarray:
    """Gradient-and-noise images, brighter with `shift` (a covariate shift)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 120, SIZE)[None, :, None, None]
    x = ramp + rng.normal(60 + shift, 25, (n, SIZE, SIZE, 1))
    return np.clip(x, 0, 255).astype("uint8")


def _snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable by position and name (paths number seed generators per process)."""
    return {f"{i}:{v.name}": v.numpy().copy() for i, v in enumerate(model.variables)}


def _changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> set[str]:
    return {k for k in a if not np.array_equal(a[k], b[k])}


def test_adabn_changes_only_batchnorm_statistics() -> None:
    model = _model()
    before = _snapshot(model)
    x = _images(shift=40)
    assert adabn(model, x, batch_size=16, seed=0) == len(batchnorm_layers(model))
    changed = _changed(before, _snapshot(model))
    assert changed, "AdaBN changed nothing"
    assert all(k.endswith(("moving_mean", "moving_variance")) for k in changed), changed
    assert len(changed) == 2 * len(batchnorm_layers(model))  # every layer's mean and variance


def test_adabn_first_layer_statistics_are_exact_over_all_images() -> None:
    model = _model()
    x = _images(n=40, shift=30)
    conv = keras.Model(model.input, model.get_layer("stem1_conv").output)
    feats = conv.predict(x.astype("float32"), verbose=0).astype(np.float64)
    adabn(model, x, batch_size=16, seed=3)  # 16, 16, 8: unequal batches pooled exactly
    bn = model.get_layer("stem1_bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), feats.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), feats.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-7
    )


def test_adabn_of_a_frozen_model_still_adapts_and_keeps_the_flags() -> None:
    model = _model()
    for layer in model.layers:
        layer.trainable = False
    before = _snapshot(model)
    adabn(model, _images(shift=40), batch_size=16, seed=0)
    assert _changed(before, _snapshot(model))
    assert not any(layer.trainable for layer in model.layers)


def test_tent_changes_only_batchnorm_scale_shift_and_statistics() -> None:
    model = _model()
    x = _images(shift=40)
    adabn(model, x, 16, 0)
    before = _snapshot(model)
    report = tent(model, x, 0.5, steps=3, lr=1e-3, batch_size=16, seed=0, max_shift=1.0)
    assert report["status"] == "applied"
    changed = _changed(before, _snapshot(model))
    assert any(k.endswith(("gamma", "beta")) for k in changed), changed
    assert all(k.endswith(("gamma", "beta", "moving_mean", "moving_variance")) for k in changed)
    assert report["entropy_after"] <= report["entropy_before"] + 1e-6


def test_tent_guard_reverts_to_the_adabn_model() -> None:
    model = _model()
    x = _images(shift=40)
    adabn(model, x, 16, 0)
    before = _snapshot(model)
    report = tent(model, x, 0.5, steps=3, lr=1e-1, batch_size=16, seed=0, max_shift=-1.0)
    assert report["status"].startswith("reverted")
    assert not _changed(before, _snapshot(model))


def test_adaptation_is_deterministic_and_restorable() -> None:
    x = _images(shift=40)
    meta = {"threshold": 0.5, "prior_reference": 0.6}
    s = AdaptParams(
        bn=True, tent_steps=2, tent_lr=1e-3, tent_max_shift=1.0, prior=True, batch_size=16
    )
    results = []
    for _ in range(2):
        model = _model()
        new_meta, report = adapt(model, meta, x, s)
        results.append((_snapshot(model), new_meta, report.as_dict()))
    assert not _changed(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert results[0][2] == results[1][2]
    assert results[0][1]["adaptation"]["method"] == "adabn+tent+prior"
    model = _model()
    original = _snapshot(model)
    with restored(model):
        adapt(model, meta, x, s)
        assert _changed(original, _snapshot(model))
    assert not _changed(original, _snapshot(model))


def test_too_few_images_adapts_nothing() -> None:
    model = _model()
    before = _snapshot(model)
    new_meta, report = adapt(model, {"threshold": 0.4}, _images(n=5), AdaptParams(min_images=32))
    assert not report.adapted
    assert "fewer than adapt.min_images=32" in report.skipped
    assert new_meta == {"threshold": 0.4}
    assert not _changed(before, _snapshot(model))


def _calibrated_scores(n: int, prior: float, seed: int, mu: float = 1.2) -> np.ndarray:
    """Posteriors calibrated under a balanced prior: x ~ N(+-mu, 1), p = sigmoid(2 mu x)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prior
    x = rng.normal(np.where(y, mu, -mu), 1.0)
    return 1.0 / (1.0 + np.exp(-2.0 * mu * x))


@pytest.mark.parametrize("prior", [0.2, 0.5, 0.625, 0.85])
def test_em_recovers_a_known_prior(prior: float) -> None:
    p = _calibrated_scores(20_000, prior, seed=int(prior * 1000))
    assert em_prior(p) == pytest.approx(prior, abs=0.02)
    if prior != 0.5:  # the mean score is biased toward 0.5; EM is not
        assert abs(float(np.mean(p)) - prior) > abs(em_prior(p) - prior)


def test_threshold_moves_against_a_higher_prior_and_back() -> None:
    assert shifted_threshold(0.5, 0.5, 0.5) == pytest.approx(0.5)
    lower = shifted_threshold(0.5, 0.5, 0.8)
    assert lower < 0.5
    assert math.log(lower / (1 - lower)) == pytest.approx(-math.log(4.0))
    assert shifted_threshold(lower, 0.8, 0.5) == pytest.approx(0.5)


def test_prior_correction_on_a_label_shifted_set_improves_accuracy() -> None:
    rng = np.random.default_rng(5)
    n, mu = 4000, 1.0
    y = rng.random(n) < 0.2  # target prior 0.2, the model's reference 0.5
    x = rng.normal(np.where(y, mu, -mu), 1.0)
    p = 1.0 / (1.0 + np.exp(-2.0 * mu * x))
    out = prior_correction(p, 0.5, reference_prior=0.5, train_prior=0.7)
    assert out["estimate"] == pytest.approx(0.2, abs=0.03)
    acc_before = np.mean((p >= 0.5) == y)
    acc_after = np.mean((p >= out["threshold_after"]) == y)
    assert acc_after > acc_before + 0.05
    # Without labels a real shift and a biased model look alike: the warning says "may be".
    assert "may be miscalibration" in out["warning"]


def test_no_warning_when_the_estimate_moves_against_the_call_rate() -> None:
    p = _calibrated_scores(4000, 0.7, seed=8)
    out = prior_correction(p, 0.9, reference_prior=0.5, train_prior=0.7)
    assert out["estimate"] > 0.6
    assert out["call_rate_before"] < 0.5
    assert out["warning"] is None


def test_prior_correction_warns_when_the_estimate_follows_the_models_bias() -> None:
    rng = np.random.default_rng(6)
    p = np.clip(rng.beta(5, 1.5, 1000), 0, 1)  # calls most images positive
    out = prior_correction(p, 0.5, reference_prior=0.6, train_prior=0.7)
    assert out["estimate"] > 0.62
    assert out["warning"] and "direction of the model's own bias" in out["warning"]


def test_a_one_class_target_gets_a_warning() -> None:
    model = _model()
    meta = {"threshold": 0.5, "prior_reference": 0.6, "prior_reference_adabn": 0.6}
    # A constant model output near 0.01: every image looks NORMAL.
    dense = model.get_layer("prob")
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), np.array([-4.6], "float32")])
    _, report = adapt(model, meta, _images(shift=40), AdaptParams(prior=True, batch_size=16))
    assert any("look like one class" in w for w in report.warnings)
