"""What adaptation needs to know of the source model, from its labeled validation data.

Computed by the training stages and stored in the model file's metadata: the threshold of
the model after AdaBN (`threshold_adabn`) and the EM prior estimates on clean val, as is
and after AdaBN (`prior_reference`, `prior_reference_adabn`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from xray.adaptation.batchnorm import adabn, restored
from xray.adaptation.label_shift import em_prior
from xray.adaptation.scores import probabilities


def source_references(
    model: keras.Model,
    clean_val: np.ndarray,
    threshold_sets: list[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    seed: int = 0,
) -> dict[str, float]:
    """What adaptation needs to know of the source, from its labeled validation data.

    AdaBN changes a model's calibration, so the threshold of an adapted model is chosen
    again on the (images, labels) sets the stage chose its own threshold on, the way it
    will be used: each set adapted to on its own, the Youden-J threshold of the pooled
    scores (`threshold_adabn`). The EM prior estimates on the clean val images, as is and
    after AdaBN on them, are the references a target's estimate is compared with: a label
    shift is read relative to them, so the estimator's own bias (class-weighted training,
    miscalibration) cancels out.
    """
    from xray.models.threshold import choose_threshold

    def adapted_scores(x: np.ndarray) -> np.ndarray:
        with restored(model):
            adabn(model, x, batch_size, seed)
            return probabilities(model, x, batch_size)

    ps = [adapted_scores(x) for x, _ in threshold_sets]
    return {
        "prior_reference": round(em_prior(probabilities(model, clean_val, batch_size)), 6),
        "prior_reference_adabn": round(em_prior(adapted_scores(clean_val)), 6),
        "threshold_adabn": round(
            choose_threshold(np.concatenate([y for _, y in threshold_sets]), np.concatenate(ps)),
            6,
        ),
    }


def with_source_references(
    model: keras.Model,
    meta: dict[str, Any],
    clean_val: np.ndarray,
    y_val: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """`meta` with the source references, computed on clean val for files made before them."""
    if "threshold_adabn" in meta:
        return meta
    refs = source_references(model, clean_val, [(clean_val, y_val)], batch_size)
    return {**refs, **meta}
