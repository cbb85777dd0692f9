"""Binary classification metrics at a fixed decision threshold."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 10


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of P(positive) over equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC, sensitivity, specificity, F1, ECE and counts."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {
        "accuracy": round((tp + tn) / len(y), 6),
        "balanced_accuracy": round((sens + spec) / 2, 6),
        "auc": round(auc, 6),
        "sensitivity": round(sens, 6),
        "specificity": round(spec, 6),
        "f1": round(f1, 6),
        "ece": round(expected_calibration_error(y, p), 6),
        "threshold": round(float(threshold), 6),
        "n": len(y),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


MIN_SENSITIVITY = 0.95


def specificity_at_sensitivity(
    y: np.ndarray, p: np.ndarray, min_sensitivity: float = MIN_SENSITIVITY
) -> float | None:
    """The best specificity among thresholds whose sensitivity reaches `min_sensitivity`.

    Calling positive at p >= t, the highest such t is the k-th largest positive score,
    k = ceil(min_sensitivity * positives); the negatives scored below it are the specificity.
    None when a class is missing.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pos, neg = np.sort(p[y == 1])[::-1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    k = max(1, math.ceil(round(min_sensitivity * len(pos), 9)))
    return round(float((neg < pos[k - 1]).mean()), 6)


def proxy_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, estimate: float | None = None
) -> dict[str, Any]:
    """binary_metrics, plus the specificity at sensitivity >= 95% (`spec_at_sens95`), the
    positive share (`share`), and, given a class-balance estimate, it and its error."""
    out: dict[str, Any] = binary_metrics(y, p, threshold)
    share = float(np.mean(y)) if len(y) else None
    out["spec_at_sens95"] = specificity_at_sensitivity(y, p)
    out["share"] = None if share is None else round(share, 6)
    out["estimated_share"] = estimate
    out["share_error"] = (
        None if estimate is None or share is None else round(abs(float(estimate) - share), 6)
    )
    return out
