"""Label shift (Saerens et al. 2002): the target's class prior by EM, and the threshold moved.

The target's positive-class prior is estimated by EM from the (adapted) scores, and the
decision threshold moved by the change in log-odds between that estimate and the same
estimate on the validation set (stored in the model file as `prior_reference`): a
miscalibration common to both cancels out.

Covariate shift reads as label shift to an estimator (a site whose NORMAL images look more
like PNEUMONIA seems to have more PNEUMONIA), so `checked_correction` moves the threshold
only when BBSE (Lipton et al. 2018: the hard calls' confusion on val inverted) agrees with
EM and the own-bias check is silent. A site that knows its share skips the estimate
(`known_prevalence`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xray.adaptation.scores import PROB_EPS

EM_MAX_ITER = 1000
EM_TOL = 1e-8
ONE_CLASS = 0.05  # an estimated class share below this (or above 1 - it): one class only
SOURCE_PRIOR = 0.5  # scores come from class-weighted training: balanced, as if the prior were 0.5
MIN_SKILL = 0.1  # BBSE: tpr - fpr below this, the confusion is too close to singular to invert


def em_prior(
    p: np.ndarray, source_prior: float = SOURCE_PRIOR, max_iter: int = EM_MAX_ITER
) -> float:
    """The positive-class prior of the images behind scores p, by EM (Saerens et al. 2002).

    p are posteriors calibrated under `source_prior`; each step reweights them to the
    current prior estimate and takes their mean as the next one.
    """
    q = np.clip(np.asarray(p, np.float64), PROB_EPS, 1.0 - PROB_EPS)
    if len(q) == 0:
        raise ValueError("em_prior: no scores")
    prior = source_prior
    for _ in range(max_iter):
        w1, w0 = prior / source_prior, (1.0 - prior) / (1.0 - source_prior)
        post = w1 * q / (w1 * q + w0 * (1.0 - q))
        new = float(np.clip(post.mean(), PROB_EPS, 1.0 - PROB_EPS))
        if abs(new - prior) < EM_TOL:
            return new
        prior = new
    return prior


def logit(p: float) -> float:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = min(max(float(p), PROB_EPS), 1.0 - PROB_EPS)
    return math.log(p / (1.0 - p))


def shifted_threshold(threshold: float, reference_prior: float, target_prior: float) -> float:
    """The threshold moved by the change in prior log-odds from reference to target.

    Bayes: a posterior calibrated under prior a becomes, under prior b, one whose log-odds
    are higher by logit(b) - logit(a); thresholding it at the old value is thresholding
    the old posterior at logit(t) - (logit(b) - logit(a)).
    """
    z = logit(threshold) - (logit(target_prior) - logit(reference_prior))
    return 1.0 / (1.0 + math.exp(-z))


def prior_correction(
    p: np.ndarray, threshold: float, reference_prior: float, train_prior: float | None
) -> dict[str, Any]:
    """Label-shift correction of the threshold from unlabeled scores, with its report."""
    estimate = em_prior(p)
    new = shifted_threshold(threshold, reference_prior, estimate)
    call_before = float(np.mean(p >= threshold))
    call_after = float(np.mean(p >= new))
    out: dict[str, Any] = {
        "estimate": round(estimate, 6),
        "reference": round(reference_prior, 6),
        "train_prior": None if train_prior is None else round(train_prior, 6),
        "threshold_before": round(threshold, 6),
        "threshold_after": round(new, 6),
        "call_rate_before": round(call_before, 6),
        "call_rate_after": round(call_after, 6),
        "warning": None,
    }
    # The model's own bias on these images: how far it calls positive away from the
    # reference prior. An estimate that moves the same way may be that bias, not label shift.
    bias = call_before - reference_prior
    moved = estimate - reference_prior
    if abs(moved) > 0.02 and bias * moved > 0:
        out["warning"] = (
            f"estimated prior {estimate:.3f} moved from the reference {reference_prior:.3f} in "
            f"the direction of the model's own bias (it calls {call_before:.3f} positive): "
            "the shift may be miscalibration, not a change of class balance"
        )
    return out


def rate_above(quantiles: Any, threshold: float) -> float:
    """The share of scores at or above `threshold`, from their quantiles at even levels.

    `quantiles` are one class's validation scores at levels 0, 1/(K-1), ..., 1 (ascending);
    the share between two of them is interpolated linearly.
    """
    q = np.asarray(quantiles, np.float64)
    if q.ndim != 1 or len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
        raise ValueError("score quantiles are not an ascending list of numbers")
    below = float(np.interp(threshold, q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0))
    return 1.0 - below


def bbse_prior(call_rate: float, tpr: float, fpr: float) -> float | None:
    """BBSE (Lipton et al., ICML 2018) for two classes: the target's positive share.

    The hard calls' confusion on labeled source data (tpr = P(call 1 | y 1), fpr =
    P(call 1 | y 0)) is inverted against the target's call rate q: q = tpr pi + fpr (1 - pi),
    so pi = (q - fpr) / (tpr - fpr), clipped to [0, 1]. None when the calls carry too little
    information to invert (tpr - fpr below MIN_SKILL).
    """
    skill = tpr - fpr
    if skill < MIN_SKILL:
        return None
    return float(min(max((call_rate - fpr) / skill, 0.0), 1.0))


def on_reference_scale(estimate: float, em_reference: float, val_prior: float) -> float:
    """An EM estimate read as a class share: EM's log-odds move from its val reference,
    applied to the val set's true share (EM's own bias cancels, as in the threshold move)."""
    z = logit(val_prior) + logit(estimate) - logit(em_reference)
    return 1.0 / (1.0 + math.exp(-z))


def checked_correction(
    p: np.ndarray,
    threshold: float,
    reference_prior: float,
    train_prior: float | None,
    rates: tuple[float, float] | None,
    val_prior: float | None,
    tolerance: float,
) -> dict[str, Any]:
    """`prior_correction` (EM) made a refusal where the estimate cannot be trusted.

    The threshold moves by EM's estimate only when BBSE (the hard calls' confusion on val,
    `rates` = (tpr, fpr) at this threshold) gives the same class share within `tolerance`
    and the own-bias check of `prior_correction` is silent; otherwise it stays, and
    `status` says `refused: <reason>`. Both estimates are in the report.
    """
    out = prior_correction(p, threshold, reference_prior, train_prior)
    em = bbse = None
    if val_prior is not None:
        em = on_reference_scale(out["estimate"], reference_prior, val_prior)
    if rates is not None:
        bbse = bbse_prior(out["call_rate_before"], *rates)
    out["em"] = None if em is None else round(em, 6)
    out["bbse"] = None if bbse is None else round(bbse, 6)
    out["tpr_fpr"] = None if rates is None else [round(r, 6) for r in rates]
    if em is None or rates is None:
        reason = "no val_prior or score quantiles in the model file: BBSE cannot be computed"
    elif bbse is None:
        reason = f"the calls do not separate the classes on val (tpr - fpr < {MIN_SKILL})"
    elif abs(em - bbse) > tolerance:
        reason = (
            f"EM {em:.3f} and BBSE {bbse:.3f} differ by more than adapt.prior_tolerance={tolerance}"
        )
    elif out["warning"]:
        reason = "the estimate follows the model's own bias"
    else:
        out["status"] = "applied"
        return out
    out["status"] = f"refused: {reason}"
    out["threshold_after"] = out["threshold_before"]
    out["call_rate_after"] = out["call_rate_before"]
    return out


def known_prevalence(
    p: np.ndarray, threshold: float, reference_prior: float, prevalence: float
) -> dict[str, Any]:
    """The threshold moved by the prior ratio from the reference to a known target share."""
    new = shifted_threshold(threshold, reference_prior, prevalence)
    return {
        "status": "known prevalence",
        "prevalence": prevalence,
        "reference": round(reference_prior, 6),
        "threshold_before": round(threshold, 6),
        "threshold_after": round(new, 6),
        "call_rate_before": round(float(np.mean(p >= threshold)), 6),
        "call_rate_after": round(float(np.mean(p >= new)), 6),
    }
