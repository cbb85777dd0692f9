"""The evaluate stage's predictors: every plain model, and every model adapted to a target set.

Models of one input size run together: one compiled pass per size for the plain models
(xray/models/inference.py), one statistics pass and one prediction pass for the adapted ones
(xray.adaptation.adapt.predict_adapted_many).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xray.adaptation.adapt import AdaptReport, predict_adapted_many
from xray.adaptation.batchnorm import batchnorm_layers
from xray.core.params import AdaptParams
from xray.models.inference import forward, moments_pass

ADAPTED = "_adapted"  # suffix of a model adapted to each target set without its labels

Loaded = dict[str, tuple[Any, int, float]]  # name -> (model, input size, threshold)
PlainPredictor = Callable[[dict[int, np.ndarray]], dict[str, np.ndarray]]
AdaptedPredictor = Callable[
    [dict[int, np.ndarray]], dict[str, tuple[np.ndarray, float, AdaptReport]]
]


def report_row(report: AdaptReport) -> dict[str, Any]:
    """What adaptation did on one target set, for reports/adaptation.json (no label in it)."""
    row = report.as_dict()
    return {
        k: row[k]
        for k in (
            "images",
            "adapted",
            "skipped",
            "threshold",
            "prior",
            "tent",
            "guard",
            "fallback",
            "warnings",
        )
    }


def _by_size(loaded: Loaded, names: Sequence[str]) -> dict[int, list[str]]:
    """The named models grouped by input size (sizes ascending, names in the given order)."""
    sizes = sorted({loaded[n][1] for n in names})
    return {size: [n for n in names if loaded[n][1] == size] for size in sizes}


def plain_predictor(loaded: Loaded, batch_size: int) -> PlainPredictor:
    """Scores of every plain model for images at each input size: one compiled pass per size.

    The models of one input size run in one call on each batch (xray/models/inference.py).
    """
    groups = _by_size(loaded, list(loaded))
    passes = {size: forward([loaded[n][0] for n in names]) for size, names in groups.items()}

    def scores(x: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for size, names in groups.items():
            ps = passes[size].scores(x[size], batch_size)
            out.update(zip(names, ps, strict=True))
        return {name: out[name] for name in loaded}

    return scores


def adapted_predictor(
    loaded: Loaded,
    metas: dict[str, dict[str, Any]],
    adapted: Sequence[str],
    settings: AdaptParams,
) -> AdaptedPredictor:
    """Scores, threshold and report of every adapted model, each adapted to the images alone.

    The models of one input size are adapted together (xray.adaptation.adapt.predict_adapted_many):
    one statistics pass and one prediction pass over all of them, the frozen stem once.
    """
    groups = _by_size(loaded, adapted)
    joint = {}
    for size, names in groups.items():
        models = [loaded[n][0] for n in names]
        moments = moments_pass(models, [batchnorm_layers(m) for m in models])
        joint[size] = None if moments is None else (moments, forward(models))

    def scores(x: dict[int, np.ndarray]) -> dict[str, tuple[np.ndarray, float, AdaptReport]]:
        out = {}
        for size, names in groups.items():
            entries = [(loaded[n][0], metas[n]) for n in names]
            results = predict_adapted_many(entries, x[size], settings, joint[size])
            out.update(zip(names, results, strict=True))
        return {name: out[name] for name in adapted}

    return scores
