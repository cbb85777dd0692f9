"""The split stage's work: a patient-grouped, class-stratified, seeded train/val/test split.

Images that share a patient id or identical content form one group, and a group
never straddles two splits. The source's test split stays the test split; when the
source has none, one is carved the same way. The tiny official val folder goes back
into the training pool (or is dropped) and is never the validation set.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from xray.core.errors import WorkError
from xray.core.io import MANIFEST_FIELDS, read_csv, staged_dir, write_csv, write_json
from xray.core.params import DataParams, SplitParams

log = logging.getLogger("xray.split")

COUNTS_FIELDS = ("split", "label", "images", "patients")
ALL_LABELS = "all"
SPLITS = ("train", "val", "test")
CHECKED_SPLITS = ("train", "test")
"""Splits each class must fill to data.min_images_per_class."""


class SplitError(WorkError):
    """The split cannot be made as asked: one line naming the cause."""


def _groups(rows: list[dict[str, str]]) -> list[list[int]]:
    """Union-find over rows linked by patient id or content hash; groups in first-seen order."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        for key in (("p", row["patient_id"]), ("h", row["sha256"])):
            j = first.setdefault(key, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        groups[find(i)].append(i)
    return list(groups.values())


def assign(
    rows: list[dict[str, str]], fractions: dict[str, float], seed: int
) -> dict[str, list[dict[str, str]]]:
    """Split rows into the named parts by image fraction, grouped and stratified by label.

    `fractions` names each carved part and its share; the rest goes to "train".
    """
    out: dict[str, list[dict[str, str]]] = {name: [] for name in (*fractions, "train")}
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for group in _groups(rows):
        label = Counter(rows[i]["label"] for i in group).most_common(1)[0][0]
        by_label[label].append(group)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        groups = sorted(by_label[label], key=lambda g: min(rows[i]["path"] for i in g))
        order = rng.permutation(len(groups))
        total = sum(len(g) for g in groups)
        targets = {name: frac * total for name, frac in fractions.items()}
        filled = dict.fromkeys(fractions, 0)
        for k in order:
            group = groups[k]
            name = next(
                (
                    n
                    for n in fractions
                    if filled[n] < targets[n] and filled[n] + len(group) / 2 <= targets[n]
                ),
                "train",
            )
            if name != "train":
                filled[name] += len(group)
            out[name].extend(rows[i] for i in group)
    for name in out:
        out[name].sort(key=lambda r: r["path"])
    return out


def check_disjoint(parts: dict[str, list[dict[str, str]]]) -> None:
    """Raise SplitError when a patient or a content hash appears in two splits."""
    for key in ("patient_id", "sha256"):
        seen: dict[str, str] = {}
        for name, rows in parts.items():
            for row in rows:
                other = seen.setdefault(row[key], name)
                if other != name:
                    raise SplitError(
                        f"{key} {row[key]} is in both {other} and {name} ({row['path']})"
                    )


def check_class_counts(
    parts: dict[str, list[dict[str, str]]], classes: tuple[str, ...], minimum: int
) -> None:
    """Raise SplitError naming the first class with fewer than `minimum` train/test images."""
    for name in CHECKED_SPLITS:
        labels = Counter(r["label"] for r in parts[name])
        for c in classes:
            if labels.get(c, 0) < minimum:
                raise SplitError(
                    f"data.min_images_per_class: class {c} has {labels.get(c, 0)} images in the "
                    f"{name} split, at least {minimum} needed"
                )


def carve(rows: list[dict[str, str]], params: SplitParams) -> dict[str, list[dict[str, str]]]:
    """The train, val and test parts of the manifest rows (see the module docstring)."""
    by_source: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_source[row["source_split"]].append(row)
    pool = list(by_source["train"])
    if params.merge_official_val:
        pool += by_source["val"]
    elif by_source["val"]:
        log.info(
            "dropping %d official val images (split.merge_official_val is false)",
            len(by_source["val"]),
        )

    if by_source["test"]:
        test = sorted(by_source["test"], key=lambda r: r["path"])
        test_patients = {r["patient_id"] for r in test}
        test_hashes = {r["sha256"] for r in test}
        kept = [
            r
            for r in pool
            if r["patient_id"] not in test_patients and r["sha256"] not in test_hashes
        ]
        if len(kept) < len(pool):
            log.warning(
                "dropped %d train images that share a patient or content with test",
                len(pool) - len(kept),
            )
        parts = assign(kept, {"val": params.val_fraction}, params.seed)
        parts["test"] = test
    else:
        log.info("source has no test split: carving %.0f%% by patient", 100 * params.test_fraction)
        parts = assign(
            pool, {"test": params.test_fraction, "val": params.val_fraction}, params.seed
        )
    return parts


def write_parts(
    parts: dict[str, list[dict[str, str]]], out_dir: Path, counts_json: Path, counts_csv: Path
) -> dict[str, dict[str, int]]:
    """Write out_dir/{train,val,test}.csv and the counts (json and csv); return the counts."""
    counts: dict[str, dict[str, int]] = {}
    table: list[dict[str, object]] = []
    with staged_dir(out_dir) as stage:
        for name in SPLITS:
            write_csv(stage / f"{name}.csv", parts[name], MANIFEST_FIELDS)
            labels = Counter(r["label"] for r in parts[name])
            counts[name] = {
                **dict(sorted(labels.items())),
                "images": len(parts[name]),
                "patients": len({r["patient_id"] for r in parts[name]}),
            }
            for label in [*sorted(labels), ALL_LABELS]:
                chosen = [r for r in parts[name] if label in (ALL_LABELS, r["label"])]
                table.append(
                    {
                        "split": name,
                        "label": label,
                        "images": len(chosen),
                        "patients": len({r["patient_id"] for r in chosen}),
                    }
                )
    write_json(counts_json, counts)
    write_csv(counts_csv, table, COUNTS_FIELDS)
    return counts


def split(
    params: SplitParams,
    manifest: Path,
    out_dir: Path,
    counts_json: Path,
    counts_csv: Path,
    data: DataParams | None = None,
) -> dict[str, dict[str, int]]:
    """Write out_dir/{train,val,test}.csv from the raw manifest; return counts per split.

    Counts also go to `counts_json` (DVC metrics) and `counts_csv` (one row per split
    and class, plus an `all` row per split: images and patients). Each class of `data`
    needs data.min_images_per_class images in train and in test (one-line SplitError).
    """
    rows = read_csv(manifest)
    parts = carve(rows, params)
    for name in SPLITS:
        if not parts[name]:
            raise SplitError(f"split: the {name} split is empty ({len(rows)} images in data/raw)")
    check_disjoint(parts)
    if data is not None:
        check_class_counts(parts, data.classes, data.min_images_per_class)
    counts = write_parts(parts, out_dir, counts_json, counts_csv)
    log.info("split counts %s", counts)
    return counts
