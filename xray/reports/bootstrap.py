"""Bootstrap 95% confidence intervals for the evaluation metrics: seeded, so the same bytes.

Two kinds, for what the evaluation keeps:
- `clustered`: from per-image labels and scores (reports/predictions.csv), resampling patients
  with replacement (images of one patient are not independent), so AUC gets an interval too;
- `from_counts`: from a confusion matrix only (reports/robustness.json, proxy.json), resampling
  images (the four cells from a multinomial): threshold metrics only, and narrower than a
  patient-level interval would be.
Intervals are percentile intervals over `SAMPLES` resamples drawn by numpy's PCG64 from `SEED`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SAMPLES = 1000
SEED = 20190129  # Mitchell et al., "Model Cards for Model Reporting", FAT* 2019
LEVEL = 0.95
DIGITS = 4
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
METRICS = (*THRESHOLD_METRICS, "auc")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _from_cells(tp: np.ndarray, fn: np.ndarray, tn: np.ndarray, fp: np.ndarray) -> dict:
    """Threshold metrics from (weighted) confusion cells, elementwise."""
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fn + tn + fp),
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
    }


def _auc(weights: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count half) for each row of per-image weights (B, N); NaN without 2 classes.

    Each score group's weights are summed over its images (columns sorted by group, one
    reduceat): O(B x N) time and memory, where a one-hot (N, groups) product was quadratic in
    N. The weights are counts (whole numbers), so every sum is exact and the result the same.
    """
    if len(p) == 0:
        return np.full(len(weights), np.nan)
    _, group = np.unique(p, return_inverse=True)  # score rank groups, ascending
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))  # each group's first column
    pos = np.add.reduceat((weights * (y == 1))[:, order], starts, axis=1)  # (B, G)
    neg = np.add.reduceat((weights * (y == 0))[:, order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    return _ratio(num, pos.sum(axis=1) * neg.sum(axis=1))


def _interval(point: float, samples: np.ndarray) -> dict[str, float | None]:
    """{value, lo, hi}: the point estimate and the percentile interval (None when undefined)."""
    finite = samples[np.isfinite(samples)]
    if not np.isfinite(point) or len(finite) == 0:
        return {"value": None, "lo": None, "hi": None}
    tail = (1.0 - LEVEL) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return {
        "value": round(float(point), DIGITS),
        "lo": round(float(lo), DIGITS),
        "hi": round(float(hi), DIGITS),
    }


def clustered(
    y: Sequence[int] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    threshold: float,
    clusters: Sequence[str] | None = None,
    *,
    samples: int = SAMPLES,
    seed: int = SEED,
) -> dict[str, dict[str, float | None]]:
    """Accuracy, balanced accuracy, sensitivity, specificity and AUC with bootstrap intervals.

    `clusters` (e.g. patient ids) are resampled with replacement, each bringing all its images;
    without them every image is its own cluster.
    """
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    if len(y) != len(p):
        raise ValueError(f"bootstrap: {len(y)} labels but {len(p)} scores")
    if len(y) == 0:
        return {m: {"value": None, "lo": None, "hi": None} for m in METRICS}
    names = list(clusters) if clusters is not None else [str(i) for i in range(len(y))]
    _, member = np.unique(names, return_inverse=True)
    n_clusters = member.max() + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clusters, size=(samples, n_clusters))
    counts = np.zeros((samples, n_clusters))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
    weights = np.vstack([np.ones(n_clusters), counts])[:, member]  # row 0: the sample itself
    pred = p >= threshold
    cells = [
        (weights * (pred & (y == 1))).sum(axis=1),
        (weights * (~pred & (y == 1))).sum(axis=1),
        (weights * (~pred & (y == 0))).sum(axis=1),
        (weights * (pred & (y == 0))).sum(axis=1),
    ]
    values = {**_from_cells(*cells), "auc": _auc(weights, y, p)}
    return {m: _interval(values[m][0], values[m][1:]) for m in METRICS}


def from_counts(
    cells: dict[str, Any] | Sequence[dict[str, Any]],
    *,
    samples: int = SAMPLES,
    seed: int = SEED,
) -> dict[str, dict[str, float | None]]:
    """Threshold metrics with image-level bootstrap intervals from confusion counts.

    `cells` is one confusion matrix ({tp, fn, tn, fp}) or several (e.g. one per severity);
    several are resampled each on its own and the metric is their mean, as the robustness
    report's family means are.
    """
    groups = [cells] if isinstance(cells, dict) else list(cells)
    if not groups:
        return {m: {"value": None, "lo": None, "hi": None} for m in THRESHOLD_METRICS}
    rng = np.random.default_rng(seed)
    per_group = []
    for g in groups:
        counts = np.array([int(g[k]) for k in ("tp", "fn", "tn", "fp")], dtype=float)
        n = int(counts.sum())
        drawn = rng.multinomial(n, counts / n, size=samples) if n else np.zeros((samples, 4))
        both = np.vstack([counts, drawn])
        per_group.append(_from_cells(*both.T))
    return {
        m: _interval(
            float(np.mean([g[m][0] for g in per_group])),
            np.mean([g[m][1:] for g in per_group], axis=0),
        )
        for m in THRESHOLD_METRICS
    }
