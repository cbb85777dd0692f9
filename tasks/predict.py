"""`xray predict`: classify JPEG/PNG files or folders with a trained model (safe-mode loading)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tasks.data import resize
from tasks.ingest import IMAGE_SUFFIXES, BadImage, load_image
from tasks.params import DataParams

DEFAULTS = DataParams()  # decode exactly as ingest does: same pixel limit, same longest side
EXIT_OK, EXIT_SOME_FAILED, EXIT_NO_MODEL = 0, 1, 2


def expand(paths: Sequence[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files as given and image files under folders (sorted); an error for missing paths."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                yield path, "no JPEG/PNG images in this folder"
            for p in found:
                yield p, None
        elif path.exists():
            yield path, None
        else:
            yield path, "no such file or folder"


def prepare(path: Path, size: int) -> np.ndarray:
    """Decode any image as ingest does (grayscale, EXIF-oriented, shrunk), then resize."""
    try:
        gray = load_image(path, max_pixels=DEFAULTS.max_pixels, max_side=DEFAULTS.max_side)
    except BadImage as e:
        raise ValueError(f"not a usable image ({e.reason})") from None
    return resize(gray, size)


def _row(path: Path, p: float, meta: dict[str, Any]) -> dict[str, Any]:
    """The result of one image."""
    negative, positive = meta["classes"][0], meta.get("positive_class", meta["classes"][-1])
    threshold = float(meta["threshold"])
    return {
        "path": str(path),
        "label": positive if p >= threshold else negative,
        "probability": round(p, 6),
        "positive_class": positive,
        "threshold": round(threshold, 6),
    }


def _emit(row: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """Print one result line."""
    if as_json:
        print(json.dumps(row), file=out)
    else:
        print(
            f"{row['path']}\t{row['label']}\tP({row['positive_class']})={row['probability']:.4f}"
            f"\tthreshold={row['threshold']:.4f}",
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
) -> int:
    """Predict every image; one line per image on `out`, one-line errors on `err`; exit code."""
    from tasks.models import load_model

    out, err = out or sys.stdout, err or sys.stderr
    try:
        model, meta = load_model(Path(model_path))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=err)
        return EXIT_NO_MODEL
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

    for path, problem in expand(paths):
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
