"""Adaptation of a trained model to a set of unlabeled target images (a new site, one damage).

Three steps, each optional (params.yaml's `adapt` section: `AdaptParams`), none reading a label:

1. **AdaBN** (xray/adaptation/batchnorm.py): every BatchNorm layer's moving statistics
   re-estimated on the target images.
2. **TENT** (xray/adaptation/tent.py): entropy minimization of the BatchNorm scale and
   shift, bounded and guarded against collapse to one class.
3. **Label shift** (xray/adaptation/label_shift.py): the decision threshold moved by the
   EM-estimated change of class prior from the reference the training stage stored in the
   model file (xray/adaptation/references.py).

This module runs them in that order: `adapt` (in place, with the adapted model file's
metadata), `predict_adapted` (scores; the model restored after), `predict_adapted_many`
(several models on the same images, sharing their passes).

Everything is deterministic for the same images, params and model: batches come from a
permutation seeded by `seed`, and TensorFlow's op determinism is on where the stages set it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from xray.adaptation.batchnorm import (
    adabn,
    bn_state,
    bn_statistics_many,
    restored,
    set_bn_state,
    set_statistics,
)
from xray.adaptation.guard import guard_check
from xray.adaptation.label_shift import (
    ONE_CLASS,
    checked_correction,
    known_prevalence,
    prior_correction,
)
from xray.adaptation.references import confusion_rates
from xray.adaptation.scores import probabilities
from xray.adaptation.tent import tent
from xray.core.params import AdaptParams

if TYPE_CHECKING:
    from xray.models.inference import Forward, Moments


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
    guard: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None  # why the unadapted model's scores and threshold were used

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return dataclasses.asdict(self)


def images_hash(images: np.ndarray) -> str:
    """sha256 of the target images as the model sees them (shape and pixels)."""
    h = hashlib.sha256(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def adapt(
    model: keras.Model, meta: dict[str, Any], images: np.ndarray, s: AdaptParams
) -> tuple[dict[str, Any], AdaptReport]:
    """Adapt `model` in place to the images; return its new metadata and what was done.

    The images are (N, H, W, 1) at the model's input size. Nothing is changed when there
    are fewer than `s.min_images` of them (the report says why).
    """
    saved = bn_state(model)
    report, _ = _adapt(model, meta, images, s)
    if report.fallback is not None:
        set_bn_state(model, saved)
    return _adapted_meta(meta, images, s, report), report


def predict_adapted(
    model: keras.Model, meta: dict[str, Any], images: np.ndarray, s: AdaptParams
) -> tuple[np.ndarray, float, AdaptReport]:
    """P(positive) of the images by the model adapted to them, its threshold and the report.

    The model is left as it was (every weight and statistic restored).
    """
    with restored(model):
        report, p = _adapt(model, meta, images, s)
        if p is None:
            p = probabilities(model, images, s.batch_size)
    return p, float(report.threshold), report


def predict_adapted_many(
    entries: Sequence[tuple[keras.Model, dict[str, Any]]],
    images: np.ndarray,
    s: AdaptParams,
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
        before = forward_joint.scores(images, s.batch_size) if s.guard else [None] * len(models)
        stats = bn_statistics_many(models, images, s.batch_size, s.seed, moments_joint)
        for m, st in zip(models, stats, strict=True):
            set_statistics(m, st)
        scores = forward_joint.scores(images, s.batch_size)
        out = []
        for (m, meta), p, p0 in zip(entries, scores, before, strict=True):
            report, used = _adapt(m, meta, images, s, statistics_set=True, scores=p, unadapted=p0)
            out.append((p if used is None else used, float(report.threshold), report))
    return out


def _adapt(
    model: keras.Model,
    meta: dict[str, Any],
    images: np.ndarray,
    s: AdaptParams,
    statistics_set: bool = False,
    scores: np.ndarray | None = None,
    unadapted: np.ndarray | None = None,
) -> tuple[AdaptReport, np.ndarray | None]:
    """Adapt `model` in place; what was done, and its scores when computed on the way.

    The final threshold is `report.threshold`. `statistics_set`: AdaBN's statistics are
    already in the model (a joint pass set them); `scores`: the AdaBN model's scores from a
    joint pass (used only without TENT); `unadapted`: the model's scores before any change
    (the guard's baseline; computed here when not given). When the guard falls back, the
    scores returned are the unadapted ones and `report.adapted` is False; the model is left
    adapted (the caller restores it).
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
    if s.guard and unadapted is None:
        unadapted = probabilities(model, images, s.batch_size)
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
    computed = [scores] if scores is not None and s.tent_steps == 0 else []

    def adapted_scores() -> np.ndarray:
        if not computed:
            computed.append(probabilities(model, images, s.batch_size))
        return computed[0]

    threshold = _move_threshold(report, meta, adapted_scores, threshold, s)
    report.adapted = True
    report.threshold = threshold
    if s.guard:
        assert unadapted is not None
        report.guard = guard_check(
            (unadapted, source_threshold),
            (adapted_scores(), threshold),
            s.guard_min_agreement,
            s.guard_max_call_shift,
        )
        if report.guard["reason"]:
            report.fallback = report.guard["reason"]
            report.adapted = False
            report.threshold = source_threshold
            report.warnings.append(f"unadapted model used: {report.fallback}")
            return report, unadapted
    return report, computed[0] if computed else None


def _move_threshold(
    report: AdaptReport,
    meta: dict[str, Any],
    scores: Callable[[], np.ndarray],
    threshold: float,
    s: AdaptParams,
) -> float:
    """The threshold after the label-shift step (known prevalence, or the estimate, checked
    or not); what was done in `report.prior` and its warnings. Unchanged when that step is off
    or the model file lacks the reference it needs."""
    reference = meta.get("prior_reference_adabn" if s.bn else "prior_reference")
    reference = meta.get("prior_reference") if reference is None else reference
    if s.prevalence is not None:
        # a known share is compared with val's known share (the EM reference, for older files)
        known = meta.get("val_prior", reference)
        if known is None:
            report.warnings.append("no val_prior in the model file: threshold not moved")
            return threshold
        report.prior = known_prevalence(scores(), threshold, float(known), s.prevalence)
        return float(report.prior["threshold_after"])
    if not s.prior:
        return threshold
    if reference is None:
        report.warnings.append("no prior_reference in the model file: threshold not moved")
        return threshold
    args = (scores(), threshold, float(reference), meta.get("train_prior"))
    if s.prior_check:
        rates = confusion_rates(meta, threshold, s.bn)
        report.prior = checked_correction(*args, rates, meta.get("val_prior"), s.prior_tolerance)
        if report.prior["status"] != "applied":
            report.warnings.append(f"threshold not moved, {report.prior['status']}")
    else:
        report.prior = prior_correction(*args)
    if report.prior["warning"]:
        report.warnings.append(report.prior["warning"])
    if not ONE_CLASS < report.prior["estimate"] < 1.0 - ONE_CLASS:
        report.warnings.append(
            f"estimated PNEUMONIA share {report.prior['estimate']:.3f}: the images look "
            "like one class, and adapting to one class removes the difference the model "
            "looks for; adapt on a representative mix instead"
        )
    return float(report.prior["threshold_after"])


def _adapted_meta(
    meta: dict[str, Any], images: np.ndarray, s: AdaptParams, report: AdaptReport
) -> dict[str, Any]:
    """The adapted model file's metadata: threshold, and what was done on which images.

    The images' hash is computed here only, for model files; unchanged when not adapted
    (a guard's fallback is recorded: the file is the unadapted model at its own threshold).
    """
    if not report.adapted and report.fallback is None:
        return dict(meta)
    return {
        **meta,
        "threshold": report.threshold,
        "adaptation": {
            "method": s.method,
            "images": len(images),
            "images_sha256": images_hash(images),
            "settings": s.settings(),
            "tent": report.tent,
            "prior": report.prior,
            "guard": report.guard,
            "fallback": report.fallback,
            "source_threshold": float(meta["threshold"]),
        },
    }
