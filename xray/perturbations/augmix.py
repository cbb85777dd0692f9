"""AugMix for fine-tuning (Hendrycks et al., ICLR 2020): mixed views and a consistency loss.

Each fine-tuning draw is scored beside `views` AugMix copies of itself. A copy is the draw
blended with a convex mix of `CHAINS` independently augmented versions of it (train_base's
acquisition augmentation without zoom: averaging zoomed copies is the held-out `zoom_blur`
family itself). The loss is cross-entropy on the draw plus `weight` times the Jensen-Shannon
divergence between the predictions for the draw and its copies, so the trainable tail learns
to answer the same under damage it is not labelled for. On the real archive this kept the
held-out families where plain fine-tuning lost them (README, Results).

`Views` wraps the model so one step sees (batch, 1 + views, H, W, 1); validation batches
(batch, H, W, 1) go through unchanged. finetune saves the inner model, never the wrapper.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from xray.perturbations.augment import AcquisitionAugment, augmenter

CHAINS = 3  # augmented versions mixed into each copy (the paper's width)
ALPHA = 1.0  # Dirichlet (chain weights) and Beta (blend with the draw) concentration
RANGES = {"zoom": 0.0}  # overrides of xray.perturbations.augment.AUGMENT for the chains
EPS = 1e-7  # probabilities are clipped here, as keras.losses.BinaryCrossentropy does


def chain_augmenter(seed: int) -> AcquisitionAugment:
    """The augmentation each chain applies (train_base's, without zoom), at full strength."""
    return augmenter(seed, 1.0, RANGES)


def mixed_views(
    batch: np.ndarray, augment: AcquisitionAugment, views: int, key: tuple[int, ...]
) -> np.ndarray:
    """(N, 1 + views, H, W, 1): each image of `batch` (N, H, W, 1), then its AugMix copies.

    Every draw (chain keys, chain weights, blend) comes from `key`: the same batch and key
    give the same copies on a rerun or a resumed run.
    """
    rng = np.random.default_rng(key)
    x = batch.astype(np.float32)
    n = len(x)
    out = [x]
    for _ in range(views):
        chains = [
            np.asarray(
                augment(x, training=True, key=rng.integers(0, 2**62, size=2, dtype=np.int64)),
                np.float32,
            )
            for _ in range(CHAINS)
        ]
        w = rng.dirichlet([ALPHA] * CHAINS, size=n).astype(np.float32)
        m = rng.beta(ALPHA, ALPHA, size=n).astype(np.float32)[:, None, None, None]
        mix = sum(w[:, k, None, None, None] * c for k, c in enumerate(chains))
        out.append(m * x + (1.0 - m) * mix)
    return np.stack(out, axis=1)


class ConsistencyLoss(keras.losses.Loss):
    """Cross-entropy on view 0 plus `weight` x the Jensen-Shannon divergence across views.

    `y_pred` is (N, V) probabilities of the positive class; with V = 1 (validation) this
    is binary cross-entropy.
    """

    def __init__(self, weight: float, name: str = "consistency", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.weight = float(weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        p = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0 - EPS)
        y = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        first = p[:, 0]
        ce = -(y * ops.log(first) + (1.0 - y) * ops.log(1.0 - first))
        if p.shape[-1] == 1:
            return ce
        m = ops.mean(p, axis=1, keepdims=True)
        kl = p * ops.log(p / m) + (1.0 - p) * ops.log((1.0 - p) / (1.0 - m))
        return ce + self.weight * ops.mean(kl, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight}


class Views(keras.Model):
    """Train `inner` on (N, V, H, W, 1) view stacks; a plain (N, H, W, 1) batch passes through.

    Training metrics are those of view 0 (the draw), so they read as plain fine-tuning's.
    """

    def __init__(self, inner: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner = inner
        self.built = inner.built  # its variables are the inner model's: loadable before a call

    def call(self, x: Any, training: bool = False) -> Any:
        if len(x.shape) == 5:
            views = x.shape[1]
            p = self.inner(ops.reshape(x, (-1, *x.shape[2:])), training=training)
            return ops.reshape(p, (-1, views))
        return self.inner(x, training=training)

    def compute_metrics(
        self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        return super().compute_metrics(x, y, y_pred[:, :1], sample_weight, **kwargs)
