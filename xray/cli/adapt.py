"""`xray adapt` and `xray predict --adapt`: adapt a model file to a folder of unlabeled images.

The logic behind the command line (xray/cli/main.py is a thin wrapper): read the images as
`xray predict` does, pick the settings (params.yaml's `adapt` section when there is one in
the current folder, else `AdaptParams`' defaults, then the command-line overrides), adapt
with xray.adaptation.adapt and write the adapted model with `save_model` (byte-stable,
metadata naming the adaptation and the images' sha256). No label is read anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from xray.cli.inputs import read_images
from xray.core.errors import EXIT_FAILED, EXIT_OK, InputError
from xray.core.params import PARAMS_FILE, AdaptParams, ParamsError, load_params, parse_params
from xray.models.model_file import EXIT_NO_MODEL, ModelFileError, read_meta

if TYPE_CHECKING:  # xray.adaptation.adapt imports Keras: only where adaptation really runs
    from xray.adaptation.adapt import AdaptReport

EXIT_REFUSED = EXIT_FAILED
"""And EXIT_OK; EXIT_NO_MODEL (xray.models.model_file): the model file is missing or unusable."""
PRIOR_KEYS = ("prior_reference", "prior_reference_adabn")


class AdaptError(InputError):
    """A refusal of `xray adapt` (one line, exit 1): a ValueError, through InputError."""

    exit_code = EXIT_REFUSED


def settings_from(params_file: Path | None = Path(PARAMS_FILE), **overrides: Any) -> AdaptParams:
    """params.yaml's `adapt` section (when the file exists, else defaults), then overrides.

    Overrides that are None are ignored (an option not given on the command line); the
    others are checked as params.yaml's values are (a bad one is an AdaptError).
    """
    base = AdaptParams()
    try:
        if params_file is not None and Path(params_file).exists():
            base = load_params(params_file).adapt
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - set(AdaptParams.model_fields)
        if unknown:
            raise TypeError(f"unknown adapt settings: {', '.join(sorted(unknown))}")
        if not given:
            return base
        return parse_params({"adapt": {**base.model_dump(), **given}}, "options").adapt
    except ParamsError as e:
        raise AdaptError(str(e)) from None


def has_prior_reference(meta: dict[str, Any]) -> bool:
    """Whether the model file stores the validation-set prior estimate (newer files)."""
    return any(meta.get(k) is not None for k in PRIOR_KEYS)


def check_prior(
    meta: dict[str, Any],
    model_path: Path,
    prior_flag: bool | None,
    prevalence: float | None = None,
) -> None:
    """Refuse an explicit --prior on a model file without `prior_reference`, and a known
    prevalence on one without `val_prior` or a prior reference (nothing to move it from)."""
    if prevalence is not None:
        if meta.get("val_prior") is None and not has_prior_reference(meta):
            raise AdaptError(
                f"{model_path}: no val_prior in this model file, a known prevalence needs "
                "one: retrain it or leave adapt.prevalence / --prevalence unset"
            )
    elif prior_flag and not has_prior_reference(meta):
        raise AdaptError(
            f"{model_path}: no prior_reference in this model file (saved before prior "
            "references), --prior needs one: retrain it or use --no-prior"
        )


def summary(report: AdaptReport, source_threshold: float) -> str:
    """One line: method, images, threshold before -> after, prior estimate, TENT, warning."""
    after = source_threshold if report.threshold is None else report.threshold
    parts = [
        f"{report.method} on {report.images} images",
        f"threshold {source_threshold:.4f} -> {after:.4f}",
    ]
    prior = report.prior
    if "prevalence" in prior:
        parts.append(f"prevalence {prior['prevalence']:.3f} (reference {prior['reference']:.3f})")
    elif prior:
        parts.append(f"prior {prior['estimate']:.3f} (reference {prior['reference']:.3f})")
        if "bbse" in prior:
            bbse = "n/a" if prior["bbse"] is None else f"{prior['bbse']:.3f}"
            em = "n/a" if prior["em"] is None else f"{prior['em']:.3f}"
            parts.append(f"EM {em}, BBSE {bbse}: {prior['status']}")
    elif any("prior_reference" in w for w in report.warnings):
        parts.append("prior not estimated (no prior_reference in the model file)")
    parts.append(f"TENT {report.tent.get('status', 'off')}")
    if report.fallback:
        parts.append(f"guard: unadapted model used ({report.fallback})")
    if prior.get("warning"):
        parts.append(f"warning: {prior['warning']}")
    return "; ".join(parts)


def _check_output(model_path: Path, out_path: Path) -> None:
    """Refuse an output that is not a .keras file path or that is the model itself."""
    if out_path.suffix != ".keras":
        raise AdaptError(f"{out_path}: the output must be a .keras path")
    if out_path.exists() and not out_path.is_file():
        raise AdaptError(f"{out_path}: exists and is not a file")
    if out_path.resolve() == model_path.resolve() or (
        out_path.exists() and model_path.exists() and out_path.samefile(model_path)
    ):
        raise AdaptError(f"{out_path}: is the input model; write the adapted one elsewhere")


def _deterministic(seed: int) -> None:
    """Seeded generators and deterministic TF ops (the same call, the same bytes)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def one_class_warning(
    model: Any, meta: dict[str, Any], images: np.ndarray, batch_size: int
) -> str | None:
    """A warning when the unadapted model calls (almost) every image one class, else None.

    AdaBN on a one-class set normalizes away the very difference the model looks for; the
    adapted estimate cannot see it (it was 0.88 on 40 NORMAL images), the source model can.
    A mixed batch from a very different site can look one-class too: a warning, not a refusal.
    """
    from xray.adaptation.label_shift import ONE_CLASS
    from xray.models.training import predict

    rate = float(np.mean(predict(model, images, batch_size) >= float(meta["threshold"])))
    if ONE_CLASS < rate < 1.0 - ONE_CLASS:
        return None
    positive = meta.get("positive_class") or meta["classes"][-1]
    return (
        f"warning: unadapted, the model calls {rate:.0%} of the {len(images)} images {positive}: "
        "if they are all one class, adapting removes the difference the model looks for; "
        "adapt on a representative mix (README: when adaptation helps)"
    )


def adapt_file(
    model_path: Path,
    paths: Sequence[Path],
    out_path: Path,
    settings: AdaptParams,
    *,
    prior_flag: bool | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Adapt the model file to the images and write OUT; a summary on `out`; exit code.

    Refusals (one line on `err`, nothing written): a missing or unusable model file (exit 2),
    an output that is not a .keras path or is the model, no adaptation configured, an
    explicit --prior on a file without prior_reference, fewer usable images than
    `settings.min_images`.
    """
    out, err = out or sys.stdout, err or sys.stderr
    model_path, out_path = Path(model_path), Path(out_path)
    try:  # the model file and the output are checked before TensorFlow starts
        meta = read_meta(model_path)
    except ModelFileError as e:
        print(f"error: {e}", file=err)
        return EXIT_NO_MODEL
    try:
        _check_output(model_path, out_path)
        if settings.method == "none":
            raise AdaptError(f"{model_path}: nothing to adapt (--no-bn without TENT or --prior)")
        check_prior(meta, model_path, prior_flag, settings.prevalence)
        size = int(meta["image_size"])
        names, images, _ = read_images(paths, size, err)
        if len(images) == 0:
            where = ", ".join(str(p) for p in paths)
            raise AdaptError(f"{where}: no usable images")
        if len(images) < settings.min_images:
            raise AdaptError(
                f"{', '.join(str(p) for p in paths)}: {len(images)} usable images, adaptation "
                f"needs at least {settings.min_images} (adapt.min_images / --min-images)"
            )
    except (AdaptError, OSError, ValueError) as e:
        print(f"error: {e}", file=err)
        return EXIT_REFUSED
    from xray.adaptation.adapt import adapt
    from xray.models.architectures import load_model, save_model

    _deterministic(settings.seed)
    try:
        model, meta = load_model(model_path)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=err)
        return EXIT_NO_MODEL
    warning = one_class_warning(model, meta, images, settings.batch_size)
    new_meta, report = adapt(model, meta, images, settings)
    if not report.adapted and report.fallback is None:  # refused (in step with the checks above)
        print(f"error: {model_path}: not adapted ({report.skipped})", file=err)
        return EXIT_REFUSED
    if warning:
        print(warning, file=err)
    if report.fallback:
        print(f"warning: {model_path}: unadapted model written, {report.fallback}", file=err)
    save_model(model, out_path, new_meta)
    source = float(meta["threshold"])
    if as_json:
        row = {
            "model": str(model_path),
            "output": str(out_path),
            **report.as_dict(),
            "threshold_before": source,
            "images_sha256": new_meta["adaptation"]["images_sha256"],  # a fallback too
            "files": len(names),
        }
        print(json.dumps(row), file=out)
    else:
        print(f"{out_path}: {summary(report, source)}", file=out)
    return EXIT_OK


def adapted_scores(
    model: Any, meta: dict[str, Any], images: np.ndarray, settings: AdaptParams, err: TextIO
) -> tuple[np.ndarray | None, float, AdaptReport | None]:
    """For `xray predict --adapt`: scores and threshold of the model adapted in memory.

    With too few images (or nothing configured) it says so on `err` and returns
    (None, the model's threshold, None): the caller predicts unadapted. The model itself is
    left as it was.
    """
    from xray.adaptation.adapt import predict_adapted

    threshold = float(meta["threshold"])
    if settings.method == "none":
        print("warning: --adapt: nothing to adapt (--no-bn without TENT or --prior)", file=err)
        return None, threshold, None
    if len(images) < settings.min_images:
        print(
            f"warning: --adapt: {len(images)} usable images, adaptation needs at least "
            f"{settings.min_images} (adapt.min_images / --min-images): predicting unadapted",
            file=err,
        )
        return None, threshold, None
    _deterministic(settings.seed)
    warning = one_class_warning(model, meta, images, settings.batch_size)
    p, threshold, report = predict_adapted(model, meta, images, settings)
    print(f"adapted: {summary(report, float(meta['threshold']))}", file=err)
    if warning:
        print(warning, file=err)
    return p, threshold, report
