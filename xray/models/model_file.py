"""Checks of a model file without TensorFlow: our .keras zip, its xray.json metadata.

`read_meta` answers any file that is not a model saved by this pipeline with one line
naming the file and the problem (ModelFileError), so the command line can refuse a bad
file before it pays TensorFlow's start-up.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

from xray.core.errors import EXIT_USAGE, InputError

META_MEMBER = "xray.json"
KERAS_MEMBERS = ("config.json", "metadata.json")
"""Members every Keras 3 .keras file holds."""
IMAGE_SIZE_RANGE = (32, 1024)
"""Input sizes a model of this pipeline can have (train.image_size's bounds)."""
MAX_META_BYTES = 1 << 20
"""xray.json is a few hundred bytes; a larger one is not ours."""
REQUIRED = ("image_size", "threshold")
"""Keys every use of a model file needs; `xray predict` also needs `classes` (PREDICT_KEYS)."""
PREDICT_KEYS = (*REQUIRED, "classes")
EXIT_NO_MODEL = EXIT_USAGE
"""Exit status of `xray predict` / `xray adapt` when the model file is missing or unusable."""
OPTIONAL_PROBABILITIES = ("threshold_adabn", "prior_reference", "prior_reference_adabn")


class ModelFileError(InputError):
    """A model file that cannot be used: one line naming the file and the problem (exit 2)."""


class ModelNotFound(ModelFileError, FileNotFoundError):
    """No file at the model path (also a FileNotFoundError)."""


def _probability(meta: dict[str, Any], key: str) -> str | None:
    """Why meta[key] is not a number in [0, 1], or None when it is."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key} is not a number (got {value!r})"
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        return f"{key} is not within [0, 1] (got {value!r})"
    return None


def meta_problem(meta: Any, require: tuple[str, ...] = REQUIRED) -> str | None:
    """Why parsed xray.json metadata is unusable, or None when it is fine.

    Keys in `require` must be present; every known key present must be valid.
    """
    if not isinstance(meta, dict):
        return f"{META_MEMBER} is not a JSON object"
    for key in require:
        if key not in meta:
            return f"{META_MEMBER} has no {key}"
    size = meta["image_size"]
    lo, hi = IMAGE_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        return f"{META_MEMBER}: image_size is not an integer in [{lo}, {hi}] (got {size!r})"
    if why := _probability(meta, "threshold"):
        return f"{META_MEMBER}: {why}"
    classes = meta.get("classes")
    if classes is not None:
        if (
            not isinstance(classes, list)
            or len(classes) != 2
            or not all(isinstance(c, str) and c for c in classes)
        ):
            return f"{META_MEMBER}: classes is not a list of two names (got {classes!r})"
        positive = meta.get("positive_class", classes[-1])
        if positive not in classes:
            return f"{META_MEMBER}: positive_class {positive!r} is not one of {classes}"
        if positive != classes[-1]:  # the output is P(classes[1]): labels would contradict it
            return (
                f"{META_MEMBER}: positive_class {positive!r} is not the second of classes "
                f"{classes} (classes are [negative, positive])"
            )
    for key in OPTIONAL_PROBABILITIES:
        if meta.get(key) is not None and (why := _probability(meta, key)):
            return f"{META_MEMBER}: {why}"
    return None


def read_meta(path: Path, require: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """The checked xray.json metadata of a model file (threshold, classes, image_size, ...)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"{path}: model not found")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a model file (not a regular file)")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if not all(m in names for m in KERAS_MEMBERS):
                raise ModelFileError(
                    f"{path}: not a model saved by this pipeline (not a .keras file)"
                )
            if META_MEMBER not in names:
                raise ModelFileError(
                    f"{path}: not a model saved by this pipeline (no {META_MEMBER} inside)"
                )
            if z.getinfo(META_MEMBER).file_size > MAX_META_BYTES:
                raise ModelFileError(f"{path}: {META_MEMBER} is too large to be ours")
            raw = z.read(META_MEMBER)
    except zipfile.BadZipFile:
        raise ModelFileError(
            f"{path}: not a model saved by this pipeline (not a zip archive)"
        ) from None
    except (OSError, RuntimeError, NotImplementedError, EOFError) as e:
        raise ModelFileError(f"{path}: unreadable model file ({e})") from None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: {META_MEMBER} is not valid JSON ({e})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: {META_MEMBER} is nested too deeply to be ours") from None
    if why := meta_problem(meta, require):
        raise ModelFileError(f"{path}: {why}")
    return meta
