"""The label-shift trust check on generated scores where covariate and label shift come together.

Usage: python -m benchmarks.prior_check [--tolerance 0.05] [--seeds 5]

A model whose logit is N(+-1.33, 1) per class (AUC about 0.97), posteriors calibrated at a
balanced prior; val: 900 images at 72% PNEUMONIA, the threshold chosen there (Youden J), EM's
reference and each class's score quantiles stored as the training stages store them. Each
target (600 images) has a PNEUMONIA share of 0.3-0.85 and one of seven shifts (none, NORMAL
looking like PNEUMONIA, PNEUMONIA looking like NORMAL, wider, both toward the middle).
Accuracy with the threshold kept, moved by EM (`adapt.prior_check: false`), moved only where
the check accepts (`true`), and where EM and BBSE agree alone. Writes
reports/benchmarks/prior_check.json.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import numpy as np

from benchmarks._common import machine, write_report

MU = 1.33
PRIORS = (0.3, 0.5, 0.625, 0.72, 0.85)
SHIFTS: dict[str, dict[str, float]] = {
    "label only": {},
    "NORMAL look PNEUMONIA +0.5": {"neg": 0.5},
    "NORMAL look PNEUMONIA +1": {"neg": 1.0},
    "PNEUMONIA look NORMAL -0.5": {"pos": -0.5},
    "PNEUMONIA look NORMAL -1": {"pos": -1.0},
    "wider x1.5": {"scale": 1.5},
    "both toward the middle 0.7": {"neg": 0.7, "pos": -0.7},
}
RULES = ("keep", "em", "checked", "agreement_only")


def _scores(y: np.ndarray, rng: np.random.Generator, shift: dict[str, float]) -> np.ndarray:
    mean = np.where(y, MU + shift.get("pos", 0.0), -MU + shift.get("neg", 0.0))
    z = rng.normal(mean, shift.get("scale", 1.0))
    return 1.0 / (1.0 + np.exp(-2.0 * MU * z))


def run(tolerance: float, seeds: int) -> list[dict[str, Any]]:
    """One row per (seed, prior, shift): each rule's accuracy and both estimates."""
    from xray.adaptation.label_shift import (
        checked_correction,
        em_prior,
        rate_above,
        shifted_threshold,
    )
    from xray.adaptation.references import class_quantiles
    from xray.models.threshold import choose_threshold

    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        y_val = rng.random(900) < 0.72
        p_val = _scores(y_val, rng, {})
        threshold = choose_threshold(y_val.astype(int), p_val)
        reference, q = em_prior(p_val), class_quantiles(p_val, y_val)
        assert q is not None
        rates = (rate_above(q["positive"], threshold), rate_above(q["negative"], threshold))
        for prior, (name, shift) in itertools.product(PRIORS, SHIFTS.items()):
            y = rng.random(600) < prior
            p = _scores(y, rng, shift)
            out = checked_correction(p, threshold, reference, None, rates, float(y_val.mean()), 1.0)
            agree = abs(out["em"] - out["bbse"]) <= tolerance
            checked = agree and out["warning"] is None
            moved = shifted_threshold(threshold, reference, out["estimate"])  # EM's own move
            thresholds = {
                "keep": threshold,
                "em": moved,
                "checked": moved if checked else threshold,
                "agreement_only": moved if agree else threshold,
            }
            acc = {k: float(np.mean((p >= t) == y)) for k, t in thresholds.items()}
            rows.append(
                {
                    "seed": seed,
                    "prior": prior,
                    "shift": name,
                    **acc,
                    "em_share": out["em"],
                    "bbse_share": out["bbse"],
                    "own_bias_warning": out["warning"] is not None,
                }
            )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy of each rule, its mean and worst change against keeping the threshold."""
    out: dict[str, Any] = {}
    parts = {
        "all": rows,
        "label only": [r for r in rows if r["shift"] == "label only"],
        "covariate + label": [r for r in rows if r["shift"] != "label only"],
    }
    for part, sel in parts.items():
        acc = np.array([[r[k] for k in RULES] for r in sel])
        change = acc[:, 1:] - acc[:, [0]]
        out[part] = {
            "targets": len(sel),
            "mean_accuracy": dict(zip(RULES, acc.mean(0).round(4).tolist(), strict=True)),
            "mean_change": dict(zip(RULES[1:], change.mean(0).round(4).tolist(), strict=True)),
            "worst_change": dict(zip(RULES[1:], change.min(0).round(4).tolist(), strict=True)),
        }
    return out


def main() -> None:
    """Run the comparison and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    start = machine()
    rows = run(args.tolerance, args.seeds)
    write_report(
        "prior_check",
        {"tolerance": args.tolerance, "summary": summary(rows), "rows": rows, "machine": start},
    )


if __name__ == "__main__":
    main()
