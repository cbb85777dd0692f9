"""Label shift (Saerens et al. 2002): the target's class prior by EM, and the threshold moved.

The target's positive-class prior is estimated by EM from the (adapted) scores, and the
decision threshold moved by the change in log-odds between that estimate and the same
estimate on the validation set (stored in the model file as `prior_reference`): a
miscalibration common to both cancels out.
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
