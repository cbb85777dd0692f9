"""The proxy's kinds of target (clean shift, shift + class balance, shift + damage), their
metrics and the variant recommended for a new site (xray/reports/proxy.py, metrics.py,
proxy_targets.py, card_sections.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_corrupt import make_split

from xray.core.io import read_csv
from xray.core.params import ParamsError, parse_params
from xray.reports.card_sections import proxy_targets_section
from xray.reports.metrics import (
    expected_calibration_error,
    proxy_metrics,
    specificity_at_sensitivity,
)
from xray.reports.proxy import KINDS, proxy_sets, target_names
from xray.reports.proxy_targets import TARGET_METRICS, recommend, target_summary

# --------------------------------------------------------------------------- metrics


def test_ece_by_hand() -> None:
    # one score per bin: |p - y| each, a quarter of the images each
    y, p = np.array([0, 1, 1, 0]), np.array([0.05, 0.15, 0.85, 0.95])
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 0.85 + 0.15 + 0.95) / 4)
    # two in bin [0.6, 0.7): mean p 0.65, mean y 0.5, weight 2/3; 0.3 alone: |0.3 - 1|, 1/3
    y, p = np.array([1, 0, 1]), np.array([0.62, 0.68, 0.3])
    assert expected_calibration_error(y, p) == pytest.approx(0.15 * 2 / 3 + 0.7 / 3)
    # bins [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]: 0.1 and 0.19 share one, 1.0 is in the last
    y, p = np.array([1, 1, 1]), np.array([0.1, 0.19, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx((2 / 3) * (1 - 0.145))


def test_specificity_at_sensitivity_by_hand() -> None:
    # 20 positives: sensitivity >= 0.95 needs 19 called, so the threshold is the 19th
    # highest positive score, 0.5; negatives below it (not equal to it) are specific.
    pos = [0.9] * 18 + [0.5, 0.1]
    neg = [0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.05, 0.49]
    y = np.array([1] * len(pos) + [0] * len(neg))
    p = np.array(pos + neg)
    assert specificity_at_sensitivity(y, p) == pytest.approx(0.6)
    assert specificity_at_sensitivity(y, p, 0.9) == 1.0  # 18 called: t = 0.9, above every negative
    assert specificity_at_sensitivity(y, p, 1.0) == pytest.approx(0.1)  # all: t = 0.1
    assert specificity_at_sensitivity(np.ones(4), np.linspace(0, 1, 4)) is None


@pytest.mark.parametrize("seed", range(5))
def test_specificity_at_sensitivity_is_the_best_over_all_thresholds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(57) < 0.6).astype(int)
    p = np.round(rng.random(57) * 0.6 + 0.4 * y, 2)  # ties included
    best = max(
        ((p[y == 0] < t).mean() for t in np.unique(p) if (p[y == 1] >= t).mean() >= 0.95),
        default=None,
    )
    assert specificity_at_sensitivity(y, p) == pytest.approx(best)


def test_proxy_metrics_add_the_estimate_error() -> None:
    y, p = np.array([1, 1, 1, 0]), np.array([0.9, 0.8, 0.3, 0.2])
    row = proxy_metrics(y, p, 0.5, estimate=0.6)
    assert row["share"] == 0.75 and row["estimated_share"] == 0.6
    assert row["share_error"] == pytest.approx(0.15)
    assert row["accuracy"] == 0.75 and row["auc"] == 1.0
    assert row["spec_at_sens95"] == 1.0  # 3 positives: all called at t = 0.3, the negative below
    assert proxy_metrics(y, p, 0.5)["share_error"] is None


# --------------------------------------------------------------------------- the sets


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, str]], Path]:
    raw, csv = make_split(tmp_path_factory.mktemp("val"), n=24)
    return read_csv(csv), raw


def test_balance_targets_hit_their_shares(val: tuple[list[dict[str, str]], Path]) -> None:
    rows, raw = val
    priors = [0.3, 0.6, 0.85]
    sets = proxy_sets(rows, raw, "PNEUMONIA", [24], ["heel"], priors, seed=3)[24]
    by_name = {s.name: s for s in sets}
    for prior in priors:
        for shift in ("clean", "heel"):
            s = by_name[f"val@{prior:g}/{shift}"]
            assert s.kind == "balance" and s.parent == f"val/{shift}"
            assert abs(s.labels.mean() - prior) <= 1 / len(s.labels), (prior, s.labels.mean())
            full = by_name[f"val/{shift}"]
            np.testing.assert_array_equal(s.images, full.images[s.index])
            np.testing.assert_array_equal(s.labels, full.labels[s.index])
    assert target_names(sets)["balance"] == [f"val@{p:g}/heel" for p in priors]


def test_damage_targets_are_the_shifted_set_damaged(val: tuple[list[dict[str, str]], Path]) -> None:
    rows, raw = val
    a = {s.name: s for s in proxy_sets(rows, raw, "PNEUMONIA", [24], ["heel"], [], 3, 3)[24]}
    b = {s.name: s for s in proxy_sets(rows, raw, "PNEUMONIA", [24], ["heel"], [], 3, 3)[24]}
    c = {s.name: s for s in proxy_sets(rows, raw, "PNEUMONIA", [24], ["heel"], [], 3, 1)[24]}
    assert list(a) == ["val/clean", "val/heel", "val+seed3/heel"]  # no damage without a shift
    hurt, shifted = a["val+seed3/heel"], a["val/heel"]
    assert hurt.kind == "damage" and hurt.shift == "heel"
    np.testing.assert_array_equal(hurt.labels, shifted.labels)
    assert hurt.images.shape == shifted.images.shape
    assert np.mean(hurt.images != shifted.images) > 0.5  # damaged, not merely shifted
    np.testing.assert_array_equal(hurt.images, b["val+seed3/heel"].images)  # seeded
    assert not np.array_equal(hurt.images, c["val+seed1/heel"].images)  # the severity counts
    names = target_names(list(a.values()))
    assert names == {"shift": ["val/heel"], "balance": [], "damage": ["val+seed3/heel"]}
    none = proxy_sets(rows, raw, "PNEUMONIA", [24], ["heel"], [], 3, None)[24]
    assert [s.name for s in none] == ["val/clean", "val/heel"]


# --------------------------------------------------------------------------- summary, rule


def _row(spec: float, **extra: Any) -> dict[str, Any]:
    return {"auc": 0.9, "ece": 0.1, "accuracy": 0.8, "spec_at_sens95": spec} | extra


TARGETS = {"shift": ["val/a"], "balance": ["val@0.5/a", "val@0.8/a"], "damage": ["val+seed3/a"]}


def _rows(balance: tuple[float, float], damage: float, adapted: bool = False) -> dict[str, Any]:
    err = {"share_error": 0.1} if adapted else {"share_error": None}
    return {
        "val/clean": _row(0.0),  # no target: never averaged
        "val/a": _row(0.5),
        "val@0.5/a": _row(balance[0], **err),
        "val@0.8/a": _row(balance[1], **{"share_error": 0.3} if adapted else err),
        "val+seed3/a": _row(damage, **err),
    }


def test_target_summary_means_each_kind() -> None:
    rows = {"base": _rows((0.4, 0.6), 0.2), "base_adapted": _rows((0.4, 0.6), 0.2, True)}
    summary = target_summary(rows, TARGETS)
    assert set(summary["base"]) == set(KINDS)
    base = summary["base"]
    assert set(base["balance"]) == {"sets", *TARGET_METRICS}
    assert base["balance"]["spec_at_sens95"] == pytest.approx(0.5) and base["balance"]["sets"] == 2
    assert base["shift"]["spec_at_sens95"] == 0.5 and base["damage"]["spec_at_sens95"] == 0.2
    assert base["balance"]["share_error"] is None
    adapted = summary["base_adapted"]
    assert adapted["balance"]["share_error"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("specs", "chosen"),
    [
        # the mean of the two kinds' means: base (0.5 + 0.2) / 2, finetuned (0.6 + 0.4) / 2
        ({"base": ((0.4, 0.6), 0.2), "finetuned": ((0.5, 0.7), 0.4)}, "finetuned"),
        # within 0.005 of the best: the simpler variant
        ({"base": ((0.5, 0.5), 0.5), "finetuned": ((0.5, 0.5), 0.504)}, "base"),
        ({"finetuned": ((0.5, 0.5), 0.5), "base_adapted": ((0.5, 0.5), 0.509)}, "finetuned"),
        ({"finetuned": ((0.5, 0.5), 0.5), "base_adapted": ((0.5, 0.5), 0.52)}, "base_adapted"),
        (
            {"finetuned_adapted": ((0.9, 0.9), 0.9), "base_adapted": ((0.9, 0.9), 0.9)},
            "base_adapted",
        ),
    ],
)
def test_the_recommended_variant_follows_the_rule(
    specs: dict[str, tuple[tuple[float, float], float]], chosen: str
) -> None:
    rows = {v: _rows(*spec) for v, spec in specs.items()}
    out = recommend(target_summary(rows, TARGETS))
    assert out["variant"] == chosen
    assert out["reason"].startswith("mean specificity at sensitivity >= 95% over the shift")
    scores = out["scores"]
    assert ("and simpler" in out["reason"]) == (scores[chosen] < max(scores.values()))
    assert "simplest" in out["rule"] and set(out["scores"]) == set(specs)


def test_no_recommendation_without_balance_or_damage_targets() -> None:
    rows = {"base": _rows((0.4, 0.6), 0.2)}
    out = recommend(target_summary(rows, {"shift": ["val/a"], "balance": [], "damage": []}))
    assert out["variant"] is None and "no shift + class balance" in out["reason"]


def test_the_card_has_one_table_and_the_recommendation() -> None:
    rows = {"base": _rows((0.4, 0.6), 0.2), "base_adapted": _rows((0.5, 0.7), 0.3, True)}
    summary = target_summary(rows, TARGETS)
    proxy = {
        "kinds": KINDS,
        "priors": [0.5, 0.8],
        "damage": {"family": "seed", "severity": 3},
        "summary": summary,
        "recommended": recommend(summary),
    }
    lines = proxy_targets_section(proxy)
    assert lines[0] == "## Proxy for a new site"
    table = [line for line in lines if line.startswith("| base")]
    assert len(table) == 2 * len(KINDS)
    assert [line.split(" | ")[1] for line in table[:3]] == list(KINDS.values())  # in KINDS order
    assert "| base | shift + class balance | 2 | 0.900 | 0.100 | 0.800 | 0.500 | n/a |" in table
    assert (
        "| base_adapted | shift + class balance | 2 | 0.900 | 0.100 | 0.800 | 0.600 | 0.200 |"
        in (table)
    )
    assert any(line.startswith("**Recommended for a new site: `base_adapted`.**") for line in lines)
    assert proxy_targets_section(None) == [] and proxy_targets_section({"variants": {}}) == []


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("evaluate", "expected"),
    [
        ({"proxy_prior": 0.5}, "params.yaml: evaluate: proxy_prior is now proxy_priors"),
        ({"proxy_priors": [0.5, 0.5]}, "params.yaml: evaluate.proxy_priors: a share is listed"),
        ({"proxy_priors": [0.0]}, "params.yaml: evaluate.proxy_priors.0: "),
        ({"proxy_priors": [0.5, 1.0]}, "params.yaml: evaluate.proxy_priors.1: "),
        ({"proxy_priors": 0.5}, "params.yaml: evaluate.proxy_priors: "),
        ({"proxy_damage_severity": 0}, "params.yaml: evaluate.proxy_damage_severity: "),
        ({"proxy_damage_severity": 6}, "params.yaml: evaluate.proxy_damage_severity: "),
        ({"proxy_damage_severity": "high"}, "params.yaml: evaluate.proxy_damage_severity: "),
    ],
)
def test_bad_proxy_settings_give_one_line_naming_the_key(evaluate: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params({"evaluate": evaluate})
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(expected), str(info.value)


def test_proxy_settings_defaults_and_off() -> None:
    default = parse_params({}).evaluate
    assert default.proxy_priors == (0.5, 0.6, 0.85) and default.proxy_damage_severity == 3
    off = parse_params({"evaluate": {"proxy_priors": [], "proxy_damage_severity": None}})
    assert off.evaluate.proxy_priors == () and off.evaluate.proxy_damage_severity is None
