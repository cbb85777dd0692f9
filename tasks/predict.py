"""`xray predict`: classify JPEG/PNG files or folders with a trained model (safe-mode loading)."""

from __future__ import annotations

import functools
import json
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from tasks.data import resize
from tasks.images import IMAGE_SUFFIXES, BadImage, load_image
from tasks.model_file import PREDICT_KEYS, read_meta
from tasks.params import DataParams

if TYPE_CHECKING:
    from tasks.adapt_settings import AdaptSettings

DEFAULTS = DataParams()  # decode exactly as ingest does: same pixel limit, same longest side
EXIT_OK, EXIT_SOME_FAILED, EXIT_NO_MODEL = 0, 1, 2
"""EXIT_NO_MODEL: the model file is missing or unusable (one line naming it and why)."""


def _zip_images(archive: Path) -> list[str] | str:
    """The image members of a zip (sorted), or why none can be listed."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile) as e:
        return f"not a readable zip ({e})"
    return sorted(n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)


def zip_member(path: Path) -> tuple[Path, str] | None:
    """(archive, member) when path names a file inside a .zip (`images.zip/NORMAL/a.png`)."""
    for parent in path.parents:
        if parent.suffix.lower() == ".zip" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


@functools.lru_cache(maxsize=4)
def _open_zip(archive: Path) -> zipfile.ZipFile:
    """An open zip, kept for the next member (predicting a zip reads every member in turn)."""
    return zipfile.ZipFile(archive)


def expand(paths: Sequence[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files as given, image files under folders and in .zip files (sorted); errors for missing.

    A zip's images come as `ARCHIVE.zip/MEMBER` paths (the corrupt stage's
    data/corrupted/<family>/<severity>.zip, say), which `prepare` reads from the archive.
    """
    for path in paths:
        path = Path(path)
        if path.suffix.lower() == ".zip" and path.is_file():
            members = _zip_images(path)
            if isinstance(members, str):
                yield path, members
            elif not members:
                yield path, "no JPEG/PNG images in this zip"
            else:
                for name in members:
                    yield path / name, None
        elif path.is_dir():
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
    """Decode any image as ingest does (grayscale, EXIF-oriented, shrunk), then resize.

    A path inside a .zip (as `expand` yields them) is read from the archive.
    """
    source: Path | bytes = path
    inside = zip_member(path) if not path.exists() else None
    if inside is not None:
        try:
            source = _open_zip(inside[0]).read(inside[1])
        except (KeyError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"not readable from {inside[0]} ({e})") from None
    try:
        gray = load_image(source, max_pixels=DEFAULTS.max_pixels, max_side=DEFAULTS.max_side)
    except BadImage as e:
        raise ValueError(f"not a usable image ({e.reason})") from None
    return resize(gray, size)


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
    adapt: AdaptSettings | None = None,
    prior_flag: bool | None = None,
) -> int:
    """Predict every image; one line per image on `out`, one-line errors on `err`; exit code.

    With `adapt` settings the model is first adapted (in memory) to all the images, which
    are then predicted at the adapted threshold (see `_predict_adapted`).
    """
    out, err = out or sys.stdout, err or sys.stderr
    try:
        read_meta(Path(model_path), PREDICT_KEYS)  # refused before TensorFlow starts
        from tasks.models import load_model

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


def _predict_adapted(
    paths: Sequence[Path],
    model_path: Path,
    model: Any,
    meta: dict[str, Any],
    settings: AdaptSettings,
    prior_flag: bool | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """`xray predict --adapt`: read all images, adapt in memory, predict at the new threshold.

    Fewer usable images than `settings.min_images`: said on `err`, predicted unadapted.
    """
    from tasks.adapt_cli import AdaptError, adapted_scores, check_prior, read_images

    try:
        check_prior(meta, model_path, prior_flag)
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
