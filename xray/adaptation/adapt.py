"""Adaptation of a trained model to a set of unlabeled target images (a new site, one damage).

Three steps, each optional and none of them reading a label:

1. **AdaBN** (Li et al. 2016; Schneider et al., NeurIPS 2020): every BatchNorm layer's
   moving mean and variance are re-estimated on the target images. One pass in training
   mode, BatchNorm layers only (dropout off), so each layer normalizes with the target
   batch statistics of the layers before it; the per-batch moments are pooled exactly
   (mean of means, variance = mean of variances + variance of the means).
2. **TENT** (Wang et al., ICLR 2021): a bounded number of Adam steps on the BatchNorm
   scale and shift only, minimizing the mean binary entropy of the predictions, then the
   statistics are re-estimated. A guard reverts it when the share of images called
   positive moves more than `tent_max_shift` (the collapse of entropy minimization toward
   one class) or the loss stops being finite.
3. **Label shift** (Saerens et al. 2002): the target's positive-class prior estimated by
   EM from the (adapted) scores, and the decision threshold moved by the change in
   log-odds between that estimate and the same estimate on the validation set (stored in
   the model file as `prior_reference`): a miscalibration common to both cancels out.

Everything is deterministic for the same images, params and model: batches come from a
permutation seeded by `seed`, and TensorFlow's op determinism is on where the stages set it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from xray.adaptation.settings import AdaptSettings

if TYPE_CHECKING:
    from xray.models.inference import Forward, Moments

log = logging.getLogger("xray.adapt")

PROB_EPS = 1e-6
EM_MAX_ITER = 1000
EM_TOL = 1e-8
ONE_CLASS = 0.05  # an estimated class share below this (or above 1 - it): one class only
SOURCE_PRIOR = 0.5  # scores come from class-weighted training: balanced, as if the prior were 0.5


@dataclass
class AdaptReport:
    """What adaptation did to one model on one target set (no label involved)."""

    method: str
    images: int
    adapted: bool = False
    skipped: str | None = None
    tent: dict[str, Any] = field(default_factory=dict)
    prior: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return dataclasses.asdict(self)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of the model, nested models included, in graph order."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def _dropout_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with a `rate` that act only in training mode (Dropout and its kin)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Dropout | keras.layers.SpatialDropout2D)
    ]


@contextmanager
def bn_training_mode(model: keras.Model, momentum: float) -> Iterator[list[Any]]:
    """Within: `model(x, training=True)` runs BatchNorm on batch statistics, dropout off.

    Every BatchNorm layer is made trainable (a frozen one would ignore `training`) with the
    given momentum; on exit the flags, momenta and dropout rates are restored.
    """
    bns = batchnorm_layers(model)
    drops = _dropout_layers(model)
    saved = [(bn.trainable, bn.momentum) for bn in bns]
    rates = [d.rate for d in drops]
    try:
        for bn in bns:
            bn.trainable = True
            bn.momentum = momentum
        for d in drops:
            d.rate = 0.0
        yield bns
    finally:
        for bn, (trainable, mom) in zip(bns, saved, strict=True):
            bn.trainable = trainable
            bn.momentum = mom
        for d, rate in zip(drops, rates, strict=True):
            d.rate = rate


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of a seeded permutation (classes mixed in every batch)."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


_STEPS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()
_KERAS_STEPS: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def _keras_moments_step(model: keras.Model, bns: list[Any]) -> Any:
    """A compiled training-mode pass returning each BatchNorm layer's batch moments.

    The fallback for models xray/models/inference.py cannot walk. Traced once per model, inside
    `bn_training_mode(model, 0.0)`: the mode's flags and momentum 0 are part of the trace,
    so it is only ever called in that mode (3x faster than eager calls).
    """
    if model not in _KERAS_STEPS:
        import tensorflow as tf

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        ref = weakref.ref(model)  # the cache must not keep the model alive
        refs = [weakref.ref(bn) for bn in bns]

        @tf.function(input_signature=[spec])
        def step(x: Any) -> list[Any]:
            ref()(x, training=True)
            layers = [r() for r in refs]
            return [bn.moving_mean.value for bn in layers] + [
                bn.moving_variance.value for bn in layers
            ]

        _KERAS_STEPS[model] = step
    return _KERAS_STEPS[model]


def bn_statistics(
    model: keras.Model, images: np.ndarray, batch_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each BatchNorm layer's mean and variance over the images (AdaBN's estimate), pooled exactly.

    Each batch's moments come from a pass where every BatchNorm normalizes with them
    (xray/models/inference.py: TF's fused kernel, the model left untouched); they are pooled in
    float64. A model that pass cannot walk runs in Keras' training mode at momentum 0,
    which leaves each layer's last batch moments in its moving statistics (restored after).
    """
    return bn_statistics_many([model], images, batch_size, seed)[0]


def bn_statistics_many(
    models: Sequence[keras.Model],
    images: np.ndarray,
    batch_size: int,
    seed: int,
    joint: Moments | None = None,
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """`bn_statistics` of several models on the same images and batches, in one pass.

    Layers equal in all of them (the stem that fine-tuning froze) run once per batch, so
    their statistics are bitwise the same in every model. `joint`: the models' moments
    pass, built once by the caller (xray.models.inference.moments_pass) for repeated use.
    """
    from xray.models.inference import moments_pass

    bns = [batchnorm_layers(m) for m in models]
    if not any(bns):
        return [[] for _ in models]
    if joint is None and len(models) == 1:
        if models[0] not in _STEPS:
            _STEPS[models[0]] = moments_pass(models, bns)
        joint = _STEPS[models[0]]
    elif joint is None:
        joint = moments_pass(models, bns)
    if joint is None:  # Keras' training mode, one model at a time
        return [
            _keras_statistics(m, b, images, batch_size, seed)
            for m, b in zip(models, bns, strict=True)
        ]
    step = joint.batch()
    s1 = [[np.zeros(bn.moving_mean.shape, np.float64) for bn in b] for b in bns]
    s2 = [[np.zeros(bn.moving_mean.shape, np.float64) for bn in b] for b in bns]
    n = 0
    for idx in _batches(len(images), batch_size, np.random.default_rng(seed)):
        out = step(images[np.sort(idx)].astype("float32"))
        k = len(idx)
        for j, layer_list in enumerate(bns):
            _accumulate(out[j], len(layer_list), k, s1[j], s2[j])
        n += k
    return [_pooled(a, b, n) for a, b in zip(s1, s2, strict=True)]


def _accumulate(
    moments: list[Any], layers: int, k: int, s1: list[np.ndarray], s2: list[np.ndarray]
) -> None:
    """Add one batch of k images' moments (means, then variances) to the running sums."""
    for i in range(layers):
        m = np.asarray(moments[i]).astype(np.float64)
        v = np.asarray(moments[layers + i]).astype(np.float64)
        s1[i] += k * m
        s2[i] += k * (v + m * m)


def _pooled(
    s1: list[np.ndarray], s2: list[np.ndarray], n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mean and variance over all n images from the sums of k * mean and k * E[x^2]."""
    stats = []
    for a, b in zip(s1, s2, strict=True):
        mean = a / n
        stats.append((mean, np.maximum(b / n - mean * mean, 0.0)))
    return stats


def _keras_statistics(
    model: keras.Model, bns: list[Any], images: np.ndarray, batch_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """bn_statistics through Keras' training mode (models xray/models/inference.py cannot walk)."""
    before = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    s1 = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    s2 = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    n = 0
    with bn_training_mode(model, momentum=0.0):
        step = _keras_moments_step(model, bns)
        for idx in _batches(len(images), batch_size, np.random.default_rng(seed)):
            out = step(images[np.sort(idx)].astype("float32"))
            _accumulate([t.numpy() for t in out], len(bns), len(idx), s1, s2)
            n += len(idx)
    for bn, (m, v) in zip(bns, before, strict=True):
        bn.moving_mean.assign(m)
        bn.moving_variance.assign(v)
    return _pooled(s1, s2, n)


def adabn(model: keras.Model, images: np.ndarray, batch_size: int, seed: int) -> int:
    """Set every BatchNorm layer's moving statistics to those of the images; return the count."""
    stats = bn_statistics(model, images, batch_size, seed)
    set_statistics(model, stats)
    return len(stats)


def set_statistics(model: keras.Model, stats: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Every BatchNorm layer's moving mean and variance set to the given ones, in order."""
    for bn, (mean, var) in zip(batchnorm_layers(model), stats, strict=True):
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
        bn.moving_variance.assign(var.astype(bn.moving_variance.dtype))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    q = np.clip(p.astype(np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return -(q * np.log(q) + (1.0 - q) * np.log(1.0 - q))


def _scores(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """P(positive) in inference mode."""
    from xray.models.training import predict

    return predict(model, images, batch_size)


def affine_weights(model: keras.Model) -> list[Any]:
    """The BatchNorm scale and shift variables (what TENT may change)."""
    out = []
    for bn in batchnorm_layers(model):
        out += [v for v in (bn.gamma, bn.beta) if v is not None]
    return out


def tent(
    model: keras.Model,
    images: np.ndarray,
    threshold: float,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    max_shift: float,
) -> dict[str, Any]:
    """Entropy minimization of BatchNorm scale/shift, bounded and guarded (see module doc)."""
    import tensorflow as tf

    variables = affine_weights(model)
    if not variables or steps <= 0:
        return {"steps": 0, "status": "off"}
    saved = [v.numpy() for v in variables]
    saved_stats = [
        (bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in batchnorm_layers(model)
    ]
    p0 = _scores(model, images, batch_size)
    call0, ent0 = float(np.mean(p0 >= threshold)), float(np.mean(binary_entropy(p0)))
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    rng = np.random.default_rng(seed + 1)
    batches: list[np.ndarray] = []
    tf_vars = [v.value for v in variables]
    finite = True
    with bn_training_mode(model, momentum=0.99):
        for _ in range(steps):
            if not batches:
                batches = _batches(len(images), batch_size, rng)
            idx = np.sort(batches.pop(0))
            x = tf.constant(images[idx].astype("float32"))
            with tf.GradientTape() as tape:
                tape.watch(tf_vars)
                p = tf.clip_by_value(
                    tf.reshape(model(x, training=True), [-1]), PROB_EPS, 1.0 - PROB_EPS
                )
                loss = -tf.reduce_mean(p * tf.math.log(p) + (1.0 - p) * tf.math.log(1.0 - p))
            if not math.isfinite(float(loss)):
                finite = False
                break
            grads = tape.gradient(loss, tf_vars)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
    for bn, (m, v) in zip(batchnorm_layers(model), saved_stats, strict=True):
        bn.moving_mean.assign(m)
        bn.moving_variance.assign(v)
    adabn(model, images, batch_size, seed)  # statistics that match the new scale and shift
    p1 = _scores(model, images, batch_size)
    call1, ent1 = float(np.mean(p1 >= threshold)), float(np.mean(binary_entropy(p1)))
    report = {
        "steps": steps,
        "lr": lr,
        "call_rate_before": round(call0, 6),
        "call_rate_after": round(call1, 6),
        "entropy_before": round(ent0, 6),
        "entropy_after": round(ent1, 6),
    }
    collapsed = abs(call1 - call0) > max_shift
    if not finite or collapsed or not np.isfinite(p1).all():
        for var, value in zip(variables, saved, strict=True):
            var.assign(value)
        for bn, (m, v) in zip(batchnorm_layers(model), saved_stats, strict=True):
            bn.moving_mean.assign(m)
            bn.moving_variance.assign(v)
        reason = "loss not finite" if not finite else f"call rate moved {call1 - call0:+.3f}"
        report["status"] = f"reverted ({reason} > {max_shift})" if collapsed else "reverted"
        report["reason"] = reason
    else:
        report["status"] = "applied"
    return report


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
            return _scores(model, x, batch_size)

    ps = [adapted_scores(x) for x, _ in threshold_sets]
    return {
        "prior_reference": round(em_prior(_scores(model, clean_val, batch_size)), 6),
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


def images_hash(images: np.ndarray) -> str:
    """sha256 of the target images as the model sees them (shape and pixels)."""
    h = hashlib.sha256(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def adapt(
    model: keras.Model, meta: dict[str, Any], images: np.ndarray, s: AdaptSettings
) -> tuple[dict[str, Any], AdaptReport]:
    """Adapt `model` in place to the images; return its new metadata and what was done.

    The images are (N, H, W, 1) at the model's input size. Nothing is changed when there
    are fewer than `s.min_images` of them (the report says why).
    """
    report, _ = _adapt(model, meta, images, s)
    return _adapted_meta(meta, images, s, report), report


def predict_adapted(
    model: keras.Model, meta: dict[str, Any], images: np.ndarray, s: AdaptSettings
) -> tuple[np.ndarray, float, AdaptReport]:
    """P(positive) of the images by the model adapted to them, its threshold and the report.

    The model is left as it was (every weight and statistic restored).
    """
    with restored(model):
        report, p = _adapt(model, meta, images, s)
        if p is None:
            p = _scores(model, images, s.batch_size)
    return p, float(report.threshold), report


def predict_adapted_many(
    entries: Sequence[tuple[keras.Model, dict[str, Any]]],
    images: np.ndarray,
    s: AdaptSettings,
    joint: tuple[Moments, Forward] | None = None,
) -> list[tuple[np.ndarray, float, AdaptReport]]:
    """`predict_adapted` for several models on the same images, sharing what they share.

    With `joint` (the models' moments pass and inference pass, xray/models/inference.py, in the
    order of `entries`), AdaBN's statistics and the adapted scores come from one pass over
    all the models, where the layers they share (the stem that fine-tuning froze) run
    once: the same numbers as one model at a time, in less time. TENT, or no AdaBN, runs
    one model at a time. Every model is left as it was.
    """
    models = [m for m, _ in entries]
    one_by_one = (
        joint is None
        or len(entries) < 2
        or not s.bn
        or s.tent_steps > 0
        or len(images) < s.min_images
    )
    if one_by_one:
        return [predict_adapted(m, meta, images, s) for m, meta in entries]
    assert joint is not None
    moments_joint, forward_joint = joint
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(restored(m))
        stats = bn_statistics_many(models, images, s.batch_size, s.seed, moments_joint)
        for m, st in zip(models, stats, strict=True):
            set_statistics(m, st)
        scores = forward_joint.scores(images, s.batch_size)
        out = []
        for (m, meta), p in zip(entries, scores, strict=True):
            report, _ = _adapt(m, meta, images, s, statistics_set=True, scores=p)
            out.append((p, float(report.threshold), report))
    return out


def _adapt(
    model: keras.Model,
    meta: dict[str, Any],
    images: np.ndarray,
    s: AdaptSettings,
    statistics_set: bool = False,
    scores: np.ndarray | None = None,
) -> tuple[AdaptReport, np.ndarray | None]:
    """Adapt `model` in place; what was done, and its scores when computed on the way.

    The final threshold is `report.threshold`. `statistics_set`: AdaBN's statistics are
    already in the model (a joint pass set them); `scores`: the AdaBN model's scores from a
    joint pass (used only without TENT).
    """
    source_threshold = float(meta["threshold"])
    report = AdaptReport(method=s.method, images=len(images), threshold=source_threshold)
    if s.method == "none":
        report.skipped = "no adaptation configured"
        return report, None
    if len(images) < s.min_images:
        report.skipped = f"{len(images)} images, fewer than adapt.min_images={s.min_images}"
        report.warnings.append(report.skipped)
        return report, None
    threshold = source_threshold
    if s.bn:
        if not statistics_set:
            adabn(model, images, s.batch_size, s.seed)
        threshold = float(meta.get("threshold_adabn", source_threshold))  # chosen on val, adapted
    if s.tent_steps > 0:
        report.tent = tent(
            model,
            images,
            threshold,
            s.tent_steps,
            s.tent_lr,
            s.batch_size,
            s.seed,
            s.tent_max_shift,
        )
        if report.tent.get("status", "").startswith("reverted"):
            report.warnings.append(f"TENT {report.tent['status']}")
    p = None
    if s.prior:
        reference = meta.get("prior_reference_adabn" if s.bn else "prior_reference")
        reference = meta.get("prior_reference") if reference is None else reference
        if reference is None:
            report.warnings.append("no prior_reference in the model file: threshold not moved")
        else:
            p = scores if scores is not None and s.tent_steps == 0 else None
            p = _scores(model, images, s.batch_size) if p is None else p
            report.prior = prior_correction(p, threshold, float(reference), meta.get("train_prior"))
            threshold = report.prior["threshold_after"]
            if report.prior["warning"]:
                report.warnings.append(report.prior["warning"])
            if not ONE_CLASS < report.prior["estimate"] < 1.0 - ONE_CLASS:
                report.warnings.append(
                    f"estimated PNEUMONIA share {report.prior['estimate']:.3f}: the images look "
                    "like one class, and adapting to one class removes the difference the model "
                    "looks for; adapt on a representative mix instead"
                )
    report.adapted = True
    report.threshold = threshold
    return report, p


def _adapted_meta(
    meta: dict[str, Any], images: np.ndarray, s: AdaptSettings, report: AdaptReport
) -> dict[str, Any]:
    """The adapted model file's metadata: threshold, and what was done on which images.

    The images' hash is computed here only, for model files; unchanged when not adapted.
    """
    if not report.adapted:
        return dict(meta)
    return {
        **meta,
        "threshold": report.threshold,
        "adaptation": {
            "method": s.method,
            "images": len(images),
            "images_sha256": images_hash(images),
            "settings": {
                "tent_steps": s.tent_steps,
                "tent_lr": s.tent_lr,
                "tent_max_shift": s.tent_max_shift,
                "batch_size": s.batch_size,
                "seed": s.seed,
            },
            "tent": report.tent,
            "prior": report.prior,
            "source_threshold": float(meta["threshold"]),
        },
    }


@contextmanager
def restored(model: keras.Model) -> Iterator[keras.Model]:
    """Within: adapt the model freely; on exit every BatchNorm weight and statistic is as before.

    Adaptation changes nothing else (AdaBN the statistics, TENT the scale and shift too).
    """
    variables = [v for bn in batchnorm_layers(model) for v in bn.variables]
    saved = [v.numpy() for v in variables]
    try:
        yield model
    finally:
        for v, value in zip(variables, saved, strict=True):
            v.assign(value)
