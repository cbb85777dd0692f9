"""The checks around adaptation: known prevalence, BBSE and the trust check of the estimate,
the guard that falls back to the unadapted model, and their settings (xray/adaptation/)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from xray.adaptation.adapt import adapt, predict_adapted
from xray.adaptation.batchnorm import bn_state
from xray.adaptation.label_shift import (
    bbse_prior,
    checked_correction,
    logit,
    rate_above,
    shifted_threshold,
)
from xray.adaptation.references import class_quantiles, confusion_rates
from xray.core.params import AdaptParams, ParamsError, parse_params
from xray.models.training import predict

S = 16  # the toy model's input size


def toy() -> keras.Model:
    """Mean brightness -> BatchNorm (source statistics: mean 100, sd 23) -> steep sigmoid.

    It calls PNEUMONIA what is brighter than the source's mean: AdaBN moves that mean to the
    target's, so on a one-class target it calls half the images the other class.
    """
    keras.utils.set_random_seed(0)
    inp = keras.Input((S, S, 1))
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(inp)
    x = keras.layers.Flatten()(keras.layers.BatchNormalization(name="bn")(x))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="prob")(x))
    model.get_layer("bn").set_weights(
        [np.ones(1), np.zeros(1), np.full(1, 100.0), np.full(1, 529.0)]
    )
    model.get_layer("prob").set_weights([np.full((1, 1), 4.0), np.zeros(1)])
    return model


def site(prior: float, n: int = 120, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """Images of a site: PNEUMONIA brighter (120) than NORMAL (80), all moved by `shift`."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prior
    b = np.where(y, 120.0, 80.0) + rng.normal(0, 12, n) + shift
    x = b[:, None, None, None] + rng.normal(0, 5, (n, S, S, 1))
    return np.clip(x, 0, 255).astype("uint8")


def scores(y: np.ndarray, seed: int, mu: float = 1.3, shift: float = 0.0) -> np.ndarray:
    """Posteriors of x ~ N(+-mu, 1) (NORMAL's moved by `shift`), calibrated at prior 0.5."""
    x = np.random.default_rng(seed).normal(np.where(y, mu, -mu + shift), 1.0)
    return 1.0 / (1.0 + np.exp(-2.0 * mu * x))


def labels(n: int, prior: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < prior


# --- known prevalence -------------------------------------------------------------------


def test_known_prevalence_moves_the_threshold_by_the_prior_ratio() -> None:
    meta = {"threshold": 0.5, "val_prior": 0.6, "prior_reference": 0.7}
    s = AdaptParams(bn=False, prevalence=0.8, guard=False, min_images=8)
    model = toy()
    new_meta, report = adapt(model, meta, site(0.5), s)
    expected = logit(0.5) - (logit(0.8) - logit(0.6))  # from val's share, not EM's reference
    assert logit(report.threshold) == pytest.approx(expected, abs=1e-5)
    assert report.method == "prevalence" and report.prior["status"] == "known prevalence"
    assert "estimate" not in report.prior  # nothing estimated
    adaptation = new_meta["adaptation"]
    assert adaptation["method"] == "prevalence" and adaptation["settings"]["prevalence"] == 0.8
    assert new_meta["threshold"] == report.threshold
    assert AdaptParams(prevalence=0.3).method == "adabn+prevalence"


def _model_with_val_prior(model_file: Path, tmp_path: Path) -> Path:
    from xray.models.architectures import load_model, save_model

    model, meta = load_model(model_file)
    path = tmp_path / "with_val_prior.keras"
    save_model(model, path, {**meta, "val_prior": 0.5})
    return path


def test_prevalence_option_reaches_the_threshold(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from conftest import MODEL_THRESHOLD

    from xray.cli.main import main as xray

    monkeypatch.chdir(tmp_path)  # no params.yaml: AdaptParams' defaults
    rng = np.random.default_rng(0)
    images = tmp_path / "site"
    images.mkdir()
    from PIL import Image

    for i in range(34):
        Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(images / f"{i}.png")
    model = _model_with_val_prior(model_file, tmp_path)
    expected = shifted_threshold(MODEL_THRESHOLD, 0.5, 0.6)  # no threshold_adabn in the file
    out = tmp_path / "o.keras"
    args = ["adapt", str(model), str(images), "-o", str(out), "--json", "--no-guard"]
    assert xray([*args, "--prevalence", "0.6"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["method"] == "adabn+prevalence"
    assert row["threshold"] == pytest.approx(expected, abs=1e-6)
    assert xray(["predict", "--model", str(model), "--json", "--adapt", "--no-guard",
                 "--prevalence", "0.6", str(images)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 34 and all(
        r["threshold"] == pytest.approx(expected, abs=1e-6) for r in rows
    )
    # a bad value, and a file with nothing to move the threshold from: one line each
    assert xray([*args, "--prevalence", "1.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapt.prevalence" in err[0]
    assert xray(["adapt", str(model_file), str(images), "-o", str(out), "--prevalence", "0.6"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no val_prior" in err[0]


# --- BBSE and the trust check -----------------------------------------------------------


def test_bbse_inverts_a_known_confusion_exactly() -> None:
    tpr, fpr, prior = 0.9, 0.2, 0.35
    assert bbse_prior(tpr * prior + fpr * (1 - prior), tpr, fpr) == pytest.approx(prior)
    assert bbse_prior(0.99, tpr, fpr) == 1.0  # clipped
    assert bbse_prior(0.5, 0.55, 0.5) is None  # no skill to invert


@pytest.mark.parametrize("prior", [0.3, 0.625, 0.85])
def test_bbse_recovers_a_known_prior_from_val_quantiles(prior: float) -> None:
    y_val = labels(4000, 0.7, seed=1)
    q = class_quantiles(scores(y_val, seed=2), y_val)
    assert q is not None and len(q["positive"]) == 101
    threshold = 0.5
    rates = confusion_rates({"score_quantiles": q}, threshold, bn=False)
    phi = 0.5 * (1.0 + math.erf(1.3 / math.sqrt(2.0)))  # the known confusion: tpr = 1 - fpr
    assert rates == pytest.approx((phi, 1.0 - phi), abs=0.02)
    y = labels(20_000, prior, seed=3)
    call_rate = float(np.mean(scores(y, seed=4) >= threshold))
    assert bbse_prior(call_rate, *rates) == pytest.approx(prior, abs=0.02)


def test_rate_above_interpolates_and_refuses_bad_quantiles() -> None:
    assert rate_above([0.0, 0.5, 1.0], 0.25) == pytest.approx(0.75)
    assert rate_above([0.2, 0.4], 0.1) == 1.0 and rate_above([0.2, 0.4], 0.9) == 0.0
    with pytest.raises(ValueError):
        rate_above([0.5, 0.1], 0.3)
    assert confusion_rates({"score_quantiles": {"positive": [1, 0]}}, 0.5, bn=True) is None


def _val(seed: int = 1, prior: float = 0.5) -> tuple[tuple[float, float], float, float]:
    """(tpr, fpr) at 0.5, the val share and EM's reference on val (a model calibrated there)."""
    from xray.adaptation.label_shift import em_prior

    y = labels(4000, prior, seed)
    p = scores(y, seed + 1)
    q = class_quantiles(p, y)
    assert q is not None
    return (
        (rate_above(q["positive"], 0.5), rate_above(q["negative"], 0.5)),
        float(y.mean()),
        em_prior(p),
    )


def test_trust_check_applies_an_estimate_both_estimators_agree_on() -> None:
    rates, val_prior, reference = _val()
    p = scores(labels(4000, 0.35, seed=5), seed=6)  # pure label shift, calls follow it down
    out = checked_correction(p, 0.5, reference, 0.7, rates, val_prior, tolerance=0.05)
    assert out["em"] == pytest.approx(0.35, abs=0.03) and out["bbse"] == pytest.approx(
        0.35, abs=0.03
    )
    # the own-bias check fires on a pure label shift too: the call rate moves with it
    assert out["warning"] and out["status"].startswith("refused: the estimate follows")
    assert out["threshold_after"] == out["threshold_before"] == 0.5
    # where the call rate stays on the reference's side (threshold 0.9), the move is applied
    rates_hi = (rate_above([0.0, 0.9, 1.0], 0.9), 0.01)
    p = scores(labels(4000, 0.7, seed=7), seed=8)
    out = checked_correction(p, 0.9, reference, 0.7, rates_hi, val_prior, tolerance=0.5)
    assert out["warning"] is None and out["status"] == "applied"
    assert out["threshold_after"] < 0.9


def test_trust_check_refuses_when_em_and_bbse_disagree() -> None:
    rates, val_prior, reference = _val()
    # NORMAL images that look more like PNEUMONIA (a covariate shift under the threshold):
    # EM reads the higher scores as more PNEUMONIA, BBSE sees few more calls
    y = labels(4000, 0.5, seed=9)
    p = scores(y, seed=10, shift=0.8)
    out = checked_correction(p, 0.5, reference, 0.7, rates, val_prior, tolerance=0.01)
    assert (
        out["status"].startswith("refused: EM ") and "adapt.prior_tolerance=0.01" in out["status"]
    )
    assert out["em"] is not None and out["bbse"] is not None
    assert abs(out["em"] - out["bbse"]) > 0.01
    assert out["threshold_after"] == 0.5 and out["call_rate_after"] == out["call_rate_before"]
    # without the val quantiles it cannot check, and says so
    out = checked_correction(p, 0.5, reference, 0.7, None, val_prior, tolerance=0.5)
    assert out["status"].startswith("refused: no val_prior or score quantiles")


def test_adapt_records_both_estimates_and_the_refusal() -> None:
    meta = {"threshold": 0.5, "prior_reference": 0.5, "val_prior": 0.5}
    s = AdaptParams(bn=False, guard=False, min_images=8)  # prior and prior_check: defaults
    new_meta, report = adapt(toy(), meta, site(0.5), s)
    assert report.method == "prior" and report.prior["status"].startswith("refused: no val_prior")
    assert {"em", "bbse", "estimate"} <= set(new_meta["adaptation"]["prior"])
    assert any("threshold not moved, refused" in w for w in report.warnings)
    assert report.threshold == 0.5


# --- the guard --------------------------------------------------------------------------


def test_guard_falls_back_on_a_one_class_target_and_restores_the_model() -> None:
    s = AdaptParams(prior=False, min_images=8, batch_size=32, guard_min_agreement=0.7)
    meta = {"threshold": 0.5}
    model = toy()
    x = site(0.0)  # every image NORMAL: AdaBN calls about half of them PNEUMONIA
    before = bn_state(model)
    p0 = predict(model, x, 32)
    new_meta, report = adapt(model, meta, x, s)
    assert report.fallback and "adapt.guard_min_agreement=0.7" in report.fallback
    assert report.guard["status"].startswith("fallback") and report.guard["agreement"] < 0.7
    assert not report.adapted and report.threshold == 0.5
    assert all(np.array_equal(a, b) for a, b in zip(before, bn_state(model), strict=True))
    assert new_meta["threshold"] == 0.5 and new_meta["adaptation"]["fallback"] == report.fallback
    p, threshold, report = predict_adapted(model, meta, x, s)
    np.testing.assert_allclose(p, p0, atol=1e-6)
    assert threshold == 0.5 and report.fallback


def test_guard_passes_a_benign_target_and_by_default_a_heavily_shifted_one() -> None:
    meta = {"threshold": 0.5}
    strict = AdaptParams(prior=False, min_images=8, batch_size=32, guard_min_agreement=0.7)
    _, report = adapt(toy(), meta, site(0.5, shift=5.0), strict)
    assert report.adapted and report.fallback is None and report.guard["status"] == "passed"
    assert report.guard["agreement"] > 0.9
    # a brighter site: the unadapted model calls almost everything PNEUMONIA, AdaBN fixes it
    # (half its calls change); the default bounds let that through
    default = AdaptParams(prior=False, min_images=8, batch_size=32)
    x = site(0.5, shift=40.0)
    _, report = adapt(toy(), meta, x, default)
    assert report.adapted and report.fallback is None
    assert report.guard["call_rate_after"] < report.guard["call_rate_before"] - 0.3
    # a bound past its change makes it fall back, saying which
    tight = AdaptParams(prior=False, min_images=8, batch_size=32, guard_max_call_shift=0.2)
    _, report = adapt(toy(), meta, x, tight)
    assert report.fallback and "adapt.guard_max_call_shift=0.2" in report.fallback
    # off: no comparison at all
    _, report = adapt(toy(), meta, x, AdaptParams(prior=False, min_images=8, guard=False))
    assert report.guard == {} and report.adapted


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("prevalence", 0.0),
        ("prevalence", 1.0),
        ("prevalence", "most"),
        ("prior_check", "maybe"),
        ("prior_tolerance", 0.0),
        ("prior_tolerance", 1.0),
        ("guard", "sometimes"),
        ("guard_min_agreement", -0.1),
        ("guard_min_agreement", 1.5),
        ("guard_max_call_shift", 0.0),
        ("guard_max_call_shift", 2.0),
    ],
)
def test_bad_values_of_the_new_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ParamsError) as e:
        parse_params({"adapt": {key: value}})
    message = str(e.value)
    assert message.startswith(f"params.yaml: adapt.{key}: ") and "\n" not in message


def test_new_settings_are_recorded_and_defaults_keep_prevalence_unknown() -> None:
    s = AdaptParams()
    assert s.prevalence is None and s.method == "adabn+prior"
    assert {"prevalence", "prior_check", "prior_tolerance", "guard"} <= set(s.settings())
    assert math.isclose(parse_params({"adapt": {"prevalence": 0.6}}).adapt.prevalence, 0.6)


def test_guard_fallback_from_the_command_line_writes_the_unadapted_model(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The random-init model calls every image one class; AdaBN overturns most calls."""
    from PIL import Image

    from xray.cli.main import main as xray
    from xray.models.architectures import load_model, read_meta

    monkeypatch.chdir(tmp_path)
    images = tmp_path / "site"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(34):
        pixels = np.clip(rng.integers(40, 200) + rng.normal(0, 30, (36, 36)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "o.keras"
    assert xray(["adapt", str(model_file), str(images), "-o", str(out), "--no-prior"]) == 0
    captured = capsys.readouterr()
    assert "guard: unadapted model used (" in captured.out
    assert any(line.startswith(f"warning: {model_file}: unadapted model written, ")
               for line in captured.err.splitlines())  # fmt: skip
    meta = read_meta(out)
    assert (
        meta["adaptation"]["fallback"] and meta["threshold"] == read_meta(model_file)["threshold"]
    )
    a, b = load_model(out)[0], load_model(model_file)[0]
    assert all(
        np.array_equal(v.numpy(), w.numpy()) for v, w in zip(a.weights, b.weights, strict=True)
    )
    assert xray(["predict", "--model", str(model_file), "--json", "--adapt", str(images)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 34 and not any(r["adapted"] for r in rows)
