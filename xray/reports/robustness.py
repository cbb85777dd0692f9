"""Robustness arithmetic of the evaluate stage: summaries over corruption families (pure).

From per-model metrics on the clean test set and on every (family, severity) group:
means over severities and families, drops from clean, MedMNIST-C-style balanced-error
scores normalized by a baseline model (BE, rBE, mBE), held-out families averaged apart,
the flat `<model>.suite` and `<model>.proxy` blocks of reports/metrics.json. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

BASELINE = "base"  # the model whose errors normalize the balanced-error scores


SCORES = ("accuracy", "balanced_accuracy", "auc")  # averaged over families and severities


FORMULAS = {
    "balanced_error": "E(model, family, s) = 1 - balanced_accuracy(model, family, s) at the "
    "model's validation threshold; E_clean(model) likewise on the clean test set",
    "drop": "drop_<metric>(family, s) = <metric>(clean) - <metric>(family, s); positive = worse",
    "family_mean": "<metric>(family) = mean over severities s of <metric>(family, s)",
    "mean": "mean_<metric> = mean over families of <metric>(family) (families weighted equally)",
    "be": "BE(model, family) = mean_s E(model, family, s) / mean_s E(base, family, s) "
    "(MedMNIST-C's normalized balanced error, ImageNet-C's CE; here the baseline is the base "
    "model instead of AlexNet, so BE(base) = 1)",
    "rbe": "rBE(model, family) = (mean_s E(model, family, s) - E_clean(model)) / "
    "(mean_s E(base, family, s) - E_clean(base)) (MedMNIST-C's relative balanced error)",
    "mbe": "mBE = mean over families of BE; rmBE = mean over families of rBE; "
    "mean_balanced_error = mean over families of mean_s E (unnormalized)",
    "be_pooled": "be_pooled = mean_balanced_error(model) / mean_balanced_error(base) over the "
    "same families: a ratio of means, robust to families where the base model's error is "
    "near zero (which inflate BE and hence mBE)",
    "groups": "suite = listed families fine-tuned on; held_out = families never fine-tuned on "
    "(corrupt.held_out); all = both; a null is an undefined value (zero denominator, one class)",
}


def _num(x: float | None) -> float | None:
    """A finite float rounded for JSON, or None for NaN/None."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), 6)


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values, None when none is defined."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return _num(sum(vals) / len(vals)) if vals else None


def _ratio(num: float | None, den: float | None) -> float | None:
    """num / den, None when either is undefined or den is zero."""
    if num is None or den is None or den == 0.0:
        return None
    return _num(num / den)


def _scores(m: dict[str, Any]) -> dict[str, float | None]:
    """The summary scores of one metrics dict, plus its balanced error."""
    out = {k: _num(m[k]) for k in SCORES}
    ba = out["balanced_accuracy"]
    out["balanced_error"] = None if ba is None else _num(1.0 - ba)
    return out


def summarize(
    clean: dict[str, dict[str, Any]],
    groups: dict[str, dict[tuple[str, int], dict[str, Any]]],
    held_out: Sequence[str],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Robustness report from clean and per-(family, severity) metrics of every model (pure)."""
    keys = list(next(iter(groups.values())))
    families = list(dict.fromkeys(f for f, _ in keys))
    severities = sorted({s for _, s in keys})
    sets = {
        "suite": [f for f in families if f not in held_out],
        "held_out": [f for f in families if f in held_out],
        "all": families,
    }
    base = groups.get(baseline)
    base_clean_err = _scores(clean[baseline])["balanced_error"] if baseline in clean else None

    def fam_error(g: dict[tuple[str, int], dict[str, Any]], family: str) -> float | None:
        return _mean([_scores(g[(family, s)])["balanced_error"] for s in severities])

    base_means: dict[tuple[str, str], float | None] = {}
    if base is not None:
        for set_name, members in sets.items():
            base_means[(set_name, "error")] = _mean([fam_error(base, f) for f in members])
    report: dict[str, Any] = {}
    for name, g in groups.items():
        c = _scores(clean[name])
        fams: dict[str, Any] = {}
        for family in families:
            per_sev = {}
            for s in severities:
                sc = _scores(g[(family, s)])
                drops = {
                    f"drop_{k}": _num(c[k] - sc[k]) if None not in (c[k], sc[k]) else None
                    for k in SCORES
                }
                per_sev[str(s)] = {**g[(family, s)], **sc, **drops}
            mean = {
                k: _mean([per_sev[str(s)][k] for s in severities])
                for k in (*SCORES, "balanced_error")
            }
            err = mean["balanced_error"]
            base_err = fam_error(base, family) if base is not None else None
            fams[family] = {
                "held_out": family in held_out,
                "severities": per_sev,
                "mean": mean,
                "drop": {
                    f"drop_{k}": _num(c[k] - mean[k]) if None not in (c[k], mean[k]) else None
                    for k in SCORES
                },
                "be": _ratio(err, base_err),
                "rbe": _ratio(
                    None
                    if err is None or c["balanced_error"] is None
                    else err - c["balanced_error"],
                    None
                    if base_err is None or base_clean_err is None
                    else base_err - base_clean_err,
                ),
            }
        per_severity: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        for set_name, members in sets.items():
            per_severity[set_name] = {
                str(s): {
                    k: _mean([fams[f]["severities"][str(s)][k] for f in members])
                    for k in (*SCORES, "balanced_error")
                }
                for s in severities
            }
            means = {
                f"mean_{k}": _mean([fams[f]["mean"][k] for f in members])
                for k in (*SCORES, "balanced_error")
            }
            summary[set_name] = {
                "families": members,
                **means,
                **{
                    f"drop_{k}": _num(c[k] - means[f"mean_{k}"])
                    if None not in (c[k], means[f"mean_{k}"])
                    else None
                    for k in SCORES
                },
                "mbe": _mean([fams[f]["be"] for f in members]),
                "be_pooled": _ratio(
                    means["mean_balanced_error"], base_means.get((set_name, "error"))
                ),
                "rmbe": _mean([fams[f]["rbe"] for f in members]),
            }
        report[name] = {
            "clean": {**clean[name], **c},
            "families": fams,
            "per_severity": per_severity,
            "summary": summary,
        }
    return {
        "formula": FORMULAS,
        "baseline_model": baseline,
        "families": families,
        "held_out": sets["held_out"],
        "severities": severities,
        "models": report,
    }


def suite_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """The flat `<model>.suite` block of metrics.json from one model's robustness summary."""
    out: dict[str, float | None] = {}
    for set_name, prefix in (("suite", ""), ("held_out", "heldout_"), ("all", "all_")):
        block = summary[set_name]
        for key in (
            *(f"mean_{k}" for k in (*SCORES, "balanced_error")),
            "mbe",
            "rmbe",
            "be_pooled",
        ):
            out[f"{prefix}{key}"] = block[key]
    return out


PROXY_KEYS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")


def proxy_summary(rows: dict[str, dict[str, Any]], prior: float | None) -> dict[str, Any]:
    """The flat `<model>.proxy` block of metrics.json: clean val and means over the shifts."""
    out: dict[str, Any] = {}
    balances = [("val", "")] + ([(f"val@{prior:g}", "balanced_")] if prior is not None else [])
    for balance, prefix in balances:
        if f"{balance}/clean" not in rows:  # no set at that balance (one class in val)
            continue
        shifted = [
            m for k, m in rows.items() if k.startswith(balance + "/") and k != f"{balance}/clean"
        ]
        for key in PROXY_KEYS:
            out[f"{prefix}clean_{key}"] = _num(rows[f"{balance}/clean"][key])
            out[f"{prefix}shift_{key}"] = _mean([m[key] for m in shifted])
        out[f"{prefix}shift_min_accuracy"] = (
            _num(min(m["accuracy"] for m in shifted)) if shifted else None
        )
    return out
