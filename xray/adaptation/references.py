"""What adaptation needs to know of the source model, from its labeled validation data.

Computed by the training stages and stored in the model file's metadata: the threshold of
the model after AdaBN (`threshold_adabn`), the EM prior estimates on clean val, as is
and after AdaBN (`prior_reference`, `prior_reference_adabn`), and each class's clean val
scores as quantiles, as is and after AdaBN (`score_quantiles`, `score_quantiles_adabn`):
the hard calls' confusion at any threshold, which BBSE inverts (xray/adaptation/label_shift.py).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from xray.adaptation.batchnorm import adabn, restored
from xray.adaptation.label_shift import em_prior, rate_above
from xray.adaptation.scores import probabilities

SCORE_QUANTILES = 101  # per class: the confusion at any threshold, to a hundredth
QUANTILE_KEYS = {False: "score_quantiles", True: "score_quantiles_adabn"}  # by AdaBN on


def source_references(
    model: keras.Model,
    clean_val: np.ndarray,
    threshold_sets: list[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """What adaptation needs to know of the source, from its labeled validation data.

    AdaBN changes a model's calibration, so the threshold of an adapted model is chosen
    again on the (images, labels) sets the stage chose its own threshold on, the way it
    will be used: each set adapted to on its own, the Youden-J threshold of the pooled
    scores (`threshold_adabn`). The EM prior estimates on the clean val images, as is and
    after AdaBN on them, are the references a target's estimate is compared with: a label
    shift is read relative to them, so the estimator's own bias (class-weighted training,
    miscalibration) cancels out. The clean val labels are those of every threshold set
    (the stages' sets are copies of val in its order); with them, each class's scores.
    """
    from xray.models.threshold import choose_threshold

    def adapted_scores(x: np.ndarray) -> np.ndarray:
        with restored(model):
            adabn(model, x, batch_size, seed)
            return probabilities(model, x, batch_size)

    ps = [adapted_scores(x) for x, _ in threshold_sets]
    y_clean = threshold_sets[0][1]
    if len(y_clean) != len(clean_val):
        raise ValueError("source_references: the threshold sets' labels are not clean val's")
    plain, adapted = probabilities(model, clean_val, batch_size), adapted_scores(clean_val)
    return {
        "prior_reference": round(em_prior(plain), 6),
        "prior_reference_adabn": round(em_prior(adapted), 6),
        QUANTILE_KEYS[False]: class_quantiles(plain, y_clean),
        QUANTILE_KEYS[True]: class_quantiles(adapted, y_clean),
        "threshold_adabn": round(
            choose_threshold(np.concatenate([y for _, y in threshold_sets]), np.concatenate(ps)),
            6,
        ),
    }


def class_quantiles(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]] | None:
    """Each class's scores at SCORE_QUANTILES even levels; None without both classes."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return None
    levels = np.linspace(0.0, 1.0, SCORE_QUANTILES)
    return {
        name: [round(float(q), 6) for q in np.quantile(p[mask], levels)]
        for name, mask in (("negative", ~y), ("positive", y))
    }


def confusion_rates(meta: dict[str, Any], threshold: float, bn: bool) -> tuple[float, float] | None:
    """(tpr, fpr) of the hard calls at `threshold` on clean val, from the model file's
    score quantiles (after AdaBN when `bn`); None when the file has none usable."""
    quantiles = meta.get(QUANTILE_KEYS[bn]) or meta.get(QUANTILE_KEYS[False])
    try:
        return (
            rate_above(quantiles["positive"], threshold),
            rate_above(quantiles["negative"], threshold),
        )
    except (KeyError, TypeError, ValueError):
        return None


def with_source_references(
    model: keras.Model,
    meta: dict[str, Any],
    clean_val: np.ndarray,
    y_val: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """`meta` with the source references, computed on clean val for files made before them."""
    if "threshold_adabn" in meta:  # a file with references: no label read (no quantiles: the
        return meta  # trust check refuses, saying so)
    refs = source_references(model, clean_val, [(clean_val, y_val)], batch_size)
    return {**refs, **meta}
