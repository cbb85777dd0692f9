"""The proxy by kind of target, per variant, and the variant recommended for a new site.

Reads the per-set rows of every variant (xray/reports/scoring.py, `Scorer.proxy`) and the
names of each kind's sets (xray/reports/proxy.py, `target_names`); pure arithmetic, no image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xray.reports.predictors import ADAPTED
from xray.reports.proxy import KINDS

TARGET_METRICS = ("auc", "ece", "accuracy", "spec_at_sens95", "share_error")
RECOMMEND_BY = "spec_at_sens95"
RECOMMEND_KINDS = ("balance", "damage")
TIE = 0.005
RULE = (
    "the best mean specificity at sensitivity >= 95% over the shift + class balance and the "
    "shift + damage targets (the mean of the two kinds' means), on the proxy only; variants "
    f"within {TIE} of the best count as tied, and the simplest of them is recommended (a plain "
    "model before an adapted one, base before finetuned)"
)


def _mean(values: Sequence[Any]) -> float | None:
    """The mean of the defined values (None and NaN left out), rounded; None if none is."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return round(float(np.mean(kept)), 6) if kept else None


def target_summary(
    rows: dict[str, dict[str, dict[str, Any]]], targets: dict[str, list[str]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> kind -> each TARGET_METRICS' mean over the kind's sets (None: undefined
    everywhere, e.g. the estimate's error of a variant that estimates nothing), and `sets`."""
    return {
        variant: {
            kind: {
                "sets": len(names),
                **{m: _mean([sets[n].get(m) for n in names if n in sets]) for m in TARGET_METRICS},
            }
            for kind, names in targets.items()
        }
        for variant, sets in rows.items()
    }


def simplicity(variant: str, order: Sequence[str]) -> tuple[bool, int]:
    """Sort key: plain before adapted, then the models' order (base before finetuned)."""
    model = variant.removesuffix(ADAPTED)
    return variant.endswith(ADAPTED), order.index(model) if model in order else len(order)


def recommend(
    summary: dict[str, dict[str, dict[str, Any]]], models: Sequence[str] = ("base", "finetuned")
) -> dict[str, Any]:
    """The variant for a new site by RULE: `variant`, `rule`, `reason` and every `score`."""
    scores = {
        v: _mean([kinds[k][RECOMMEND_BY] for k in RECOMMEND_KINDS if k in kinds])
        for v, kinds in summary.items()
    }
    defined = {v: s for v, s in scores.items() if s is not None}
    out: dict[str, Any] = {"rule": RULE, "scores": scores, "variant": None}
    if not defined:
        out["reason"] = "no shift + class balance or shift + damage target has both classes"
        return out
    top = min(defined, key=lambda v: (-defined[v], simplicity(v, models)))
    best = defined[top]
    chosen = min(
        (v for v, s in defined.items() if s >= best - TIE), key=lambda v: simplicity(v, models)
    )
    label = " and ".join(KINDS[k] for k in RECOMMEND_KINDS)
    reason = f"mean specificity at sensitivity >= 95% over the {label} targets {defined[chosen]:.3f}"
    if chosen != top:
        reason += f", within {TIE} of {top}'s {best:.3f} and simpler"
    others = [f"{v} {s:.3f}" for v, s in defined.items() if v != chosen]
    if others:
        reason += f" (others: {', '.join(others)})"
    out |= {"variant": chosen, "reason": reason}
    return out
