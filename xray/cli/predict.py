"""`xray predict`: classify JPEG/PNG files or folders with a trained model (safe-mode loading)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from xray.cli.adapt import AdaptError, adapted_scores, check_prior
from xray.cli.inputs import expand, prepare, read_images
from xray.core.errors import EXIT_FAILED, EXIT_OK
from xray.models.model_file import EXIT_NO_MODEL, PREDICT_KEYS, read_meta

if TYPE_CHECKING:
    from xray.core.params import AdaptParams

EXIT_SOME_FAILED = EXIT_FAILED
"""And EXIT_NO_MODEL (xray.models.model_file): the model file is missing or unusable."""


def _row(path: Path, p: float, meta: dict[str, Any], adapted: bool | None = None) -> dict[str, Any]:
    """The result of one image (`adapted` only under `--adapt`)."""
    negative, positive = meta["classes"][0], meta.get("positive_class", meta["classes"][-1])
    threshold = float(meta["threshold"])
    row = {
        "path": str(path),
        "label": positive if p >= threshold else negative,
        "probability": round(p, 6),
        "positive_class": positive,
        "threshold": round(threshold, 6),
    }
    if adapted is not None:
        row["adapted"] = adapted
    return row


def _emit(row: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """Print one result line."""
    if as_json:
        print(json.dumps(row), file=out)
    else:
        print(
            f"{row['path']}\t{row['label']}\tP({row['positive_class']})={row['probability']:.4f}"
            f"\tthreshold={row['threshold']:.4f}"
            + (f"\tadapted={str(row['adapted']).lower()}" if "adapted" in row else ""),
            file=out,
        )


def predict_paths(
    paths: Sequence[Path],
    model_path: Path,
    *,
    as_json: bool = False,
    batch_size: int = 32,
    out: TextIO | None = None,
    err: TextIO | None = None,
    adapt: AdaptParams | None = None,
    prior_flag: bool | None = None,
) -> int:
    """Predict every image; one line per image on `out`, one-line errors on `err`; exit code.

    With `adapt` settings the model is first adapted (in memory) to all the images, which
    are then predicted at the adapted threshold (see `_predict_adapted`).
    """
    out, err = out or sys.stdout, err or sys.stderr
    try:
        read_meta(Path(model_path), PREDICT_KEYS)  # refused before TensorFlow starts
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=err)
        return EXIT_NO_MODEL
    listed = list(expand(paths))  # a typo is said before TensorFlow starts (seconds) too
    if all(problem is not None for _, problem in listed):
        for path, problem in listed:
            print(f"error: {path}: {problem}", file=err)
        return EXIT_SOME_FAILED
    try:
        from xray.models.architectures import load_model

        model, meta = load_model(Path(model_path))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=err)
        return EXIT_NO_MODEL
    if adapt is not None:
        return _predict_adapted(
            paths, Path(model_path), model, meta, adapt, prior_flag, as_json, out, err
        )
    size = int(meta["image_size"])
    failed = 0
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        x = np.stack([a for _, a in batch])[..., None].astype("float32")
        probs = model.predict(x, batch_size=max(1, batch_size), verbose=0).reshape(-1)
        for (path, _), p in zip(batch, probs, strict=True):
            _emit(_row(path, float(p), meta), as_json, out)
        batch.clear()

    for path, problem in listed:
        if problem is None:
            try:
                batch.append((path, prepare(path, size)))
            except ValueError as e:
                problem = str(e)
        if problem is not None:
            flush()  # keep output in input order
            failed += 1
            print(f"error: {path}: {problem}", file=err)
        elif len(batch) >= max(1, batch_size):
            flush()
    flush()
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _predict_adapted(
    paths: Sequence[Path],
    model_path: Path,
    model: Any,
    meta: dict[str, Any],
    settings: AdaptParams,
    prior_flag: bool | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """`xray predict --adapt`: read all images, adapt in memory, predict at the new threshold.

    Fewer usable images than `settings.min_images`: said on `err`, predicted unadapted.
    """
    try:
        check_prior(meta, model_path, prior_flag, settings.prevalence)
    except AdaptError as e:
        print(f"error: {e}", file=err)
        return EXIT_SOME_FAILED
    names, images, failed = read_images(paths, int(meta["image_size"]), err, level="error")
    if names:
        p, threshold, report = adapted_scores(model, meta, images, settings, err)
        adapted = report is not None and report.adapted
        if p is None:
            p = model.predict(
                images.astype("float32"), batch_size=settings.batch_size, verbose=0
            ).reshape(-1)
        shown = {**meta, "threshold": threshold}
        for path, prob in zip(names, p, strict=True):
            _emit(_row(path, float(prob), shown, adapted), as_json, out)
    return EXIT_SOME_FAILED if failed else EXIT_OK
