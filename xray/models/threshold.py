"""The decision threshold: Youden's J on validation data, at the middle of its best plateau."""

from __future__ import annotations

import numpy as np

PROB_EPS = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, PROB_EPS), 1.0 - PROB_EPS)
    return float(np.log(p / (1.0 - p)))


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Maximize Youden's J on validation data, at the middle (in logit space) of its best plateau.

    On a nearly separable validation set many thresholds share the best J; the first of
    them hugs one class's scores. The middle of the widest run of best thresholds keeps
    the largest margin to both classes, which matters under acquisition shift.
    """
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thr descending, thr[0] = inf
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    run = max(runs, key=len)
    hi = float(thr[run[0]])  # J is best for t in (thr[run[-1] + 1], thr[run[0]]]
    lo = float(thr[run[-1] + 1]) if run[-1] + 1 < len(thr) else 0.0
    mid = 0.5 * (_logit(lo) + _logit(min(hi, 1.0)))
    return float(1.0 / (1.0 + np.exp(-mid)))
