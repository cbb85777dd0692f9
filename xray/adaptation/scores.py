"""The probabilities adaptation reads: a model's P(positive), and the clip keeping logs finite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

PROB_EPS = 1e-6


def probabilities(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """P(positive) in inference mode."""
    from xray.models.training import predict

    return predict(model, images, batch_size)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    q = np.clip(p.astype(np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return -(q * np.log(q) + (1.0 - q) * np.log(1.0 - q))


def call_stats(p: np.ndarray, threshold: float) -> tuple[float, float]:
    """The share of scores called positive at `threshold`, and their mean entropy (nats)."""
    return float(np.mean(p >= threshold)), float(np.mean(binary_entropy(p)))
