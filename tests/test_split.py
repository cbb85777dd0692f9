"""Tests for the `split` stage: grouped by patient and content, stratified, seeded."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xray.core.io import MANIFEST_FIELDS, read_csv, write_csv
from xray.core.params import SplitParams
from xray.data.splitting import SPLITS, SplitError, check_disjoint, split

POSITIVE = "PNEUMONIA"
RATIO_TOLERANCE = 0.05
"""Max gap between a split's positive share and the pool's."""
SIZE_TOLERANCE = 0.03
"""Max gap between a carved split's image share and its fraction."""


def _row(split: str, label: str, patient: str, k: int, content: str | None = None) -> dict:
    """One manifest row; `content` defaults to a value unique to the file."""
    name = f"{patient}_{k}.png"
    sha = hashlib.sha256((content or f"{split}/{label}/{name}").encode()).hexdigest()
    return {
        "path": f"images/{split}/{label}/{name}",
        "label": label,
        "source_split": split,
        "patient_id": patient,
        "sha256": sha,
        "width": 64,
        "height": 64,
    }


def _manifest(
    path: Path,
    *,
    normal: int = 120,
    pneumonia: int = 280,
    test_patients: int = 0,
    official_val: bool = True,
    shared_hashes: int = 6,
    seed: int = 0,
) -> list[dict]:
    """A Kermany-like manifest: 1-5 images per patient, imbalanced classes, some
    byte-identical images shared by two patients, the tiny official val folder."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for label, n in (("NORMAL", normal), (POSITIVE, pneumonia)):
        for p in range(n):
            rows += [
                _row("train", label, f"{label[0]}{p}", k) for k in range(int(rng.integers(1, 6)))
            ]
        for p in range(test_patients):
            rows += [_row("test", label, f"T{label[0]}{p}", k) for k in range(2)]
        if official_val:
            rows += [_row("val", label, f"V{label[0]}{p}", k) for p in range(2) for k in range(4)]
    # the same bytes filed under two patients of a class: must land in one split
    for i in range(shared_hashes):
        label = ("NORMAL", POSITIVE)[i % 2]
        content = f"dup-{i}"
        rows.append(_row("train", label, f"{label[0]}{2 * i}", 90, content))
        rows.append(_row("train", label, f"{label[0]}{2 * i + 1}", 91, content))
    write_csv(path, rows, MANIFEST_FIELDS)
    return rows


def _run(tmp_path: Path, params: SplitParams, **kw: object) -> tuple[dict, dict, list[dict]]:
    """Write a manifest, run the stage; return counts, parts read back, input rows."""
    manifest = tmp_path / "manifest.csv"
    rows = _manifest(manifest, **kw)  # type: ignore[arg-type]
    counts = split(
        params,
        manifest=manifest,
        out_dir=tmp_path / "splits",
        counts_json=tmp_path / "split.json",
        counts_csv=tmp_path / "split.csv",
    )
    parts = {name: read_csv(tmp_path / "splits" / f"{name}.csv") for name in SPLITS}
    return counts, parts, rows


def _owners(parts: dict[str, list[dict]], key: str) -> dict[str, set[str]]:
    """Value of `key` -> the splits it appears in."""
    owners: dict[str, set[str]] = {}
    for name, rows in parts.items():
        for r in rows:
            owners.setdefault(r[key], set()).add(name)
    return owners


def _positive_share(rows: list[dict]) -> float:
    return sum(r["label"] == POSITIVE for r in rows) / len(rows)


def test_no_patient_and_no_content_hash_in_two_splits(tmp_path: Path) -> None:
    """Every patient and every content hash lives in exactly one split; nothing is lost."""
    _, parts, rows = _run(tmp_path, SplitParams())
    for key in ("patient_id", "sha256"):
        leaks = {v: s for v, s in _owners(parts, key).items() if len(s) > 1}
        assert leaks == {}, key
    out_paths = sorted(r["path"] for p in parts.values() for r in p)
    assert out_paths == sorted(r["path"] for r in rows)
    # the two patients sharing a byte-identical image were kept together
    dup_sha = hashlib.sha256(b"dup-0").hexdigest()
    where = _owners(parts, "patient_id")
    assert where["N0"] == where["N1"] == _owners(parts, "sha256")[dup_sha]


def test_classes_stratified_and_sizes_follow_fractions(tmp_path: Path) -> None:
    """Each split's class ratio is the pool's within tolerance; sizes follow the fractions."""
    params = SplitParams(val_fraction=0.2, test_fraction=0.15)
    _, parts, rows = _run(tmp_path, params)
    overall = _positive_share(rows)
    for name in SPLITS:
        assert abs(_positive_share(parts[name]) - overall) <= RATIO_TOLERANCE, name
    total = len(rows)
    assert abs(len(parts["val"]) / total - params.val_fraction) <= SIZE_TOLERANCE
    assert abs(len(parts["test"]) / total - params.test_fraction) <= SIZE_TOLERANCE


def test_official_val_merged_back_by_default(tmp_path: Path) -> None:
    """The official val folder's images go into the pool by default, and are dropped when off."""
    _, parts, rows = _run(tmp_path, SplitParams())
    official = {r["path"] for r in rows if r["source_split"] == "val"}
    assert len(official) == 16
    placed = {r["path"] for p in parts.values() for r in p}
    assert official <= placed
    assert not official <= {r["path"] for r in parts["val"]}  # not simply reused as val

    _, parts, _ = _run(tmp_path, SplitParams(merge_official_val=False))
    placed = {r["path"] for p in parts.values() for r in p}
    assert not official & placed


def test_test_split_carved_only_when_source_has_none(tmp_path: Path) -> None:
    """A source test split is kept as is; none is carved from train; leaking rows dropped."""
    manifest = tmp_path / "manifest.csv"
    rows = _manifest(manifest, test_patients=20)
    # a train image of a test patient, and a train copy of a test image: both must go
    rows.append(_row("train", "NORMAL", "TN0", 7))
    test_img = next(r for r in rows if r["source_split"] == "test")
    rows.append({**_row("train", test_img["label"], "N5", 8), "sha256": test_img["sha256"]})
    write_csv(manifest, rows, MANIFEST_FIELDS)
    split(
        SplitParams(),
        manifest=manifest,
        out_dir=tmp_path / "splits",
        counts_json=tmp_path / "split.json",
        counts_csv=tmp_path / "split.csv",
    )
    parts = {name: read_csv(tmp_path / "splits" / f"{name}.csv") for name in SPLITS}
    source_test = sorted(r["path"] for r in rows if r["source_split"] == "test")
    assert sorted(r["path"] for r in parts["test"]) == source_test
    assert all(r["source_split"] != "test" for n in ("train", "val") for r in parts[n])
    kept = {r["path"] for n in ("train", "val") for r in parts[n]}
    assert "images/train/NORMAL/TN0_7.png" not in kept
    assert "images/train/NORMAL/N5_8.png" not in kept
    # patient N5 itself stays (only the leaking image goes) and stays in one split
    assert len(_owners(parts, "patient_id")["N5"]) == 1
    for key in ("patient_id", "sha256"):
        assert all(len(s) == 1 for s in _owners(parts, key).values())


def test_seeded(tmp_path: Path) -> None:
    """The same seed gives the same split; another seed a different one."""
    _, a, _ = _run(tmp_path / "a", SplitParams(seed=1))
    _, b, _ = _run(tmp_path / "b", SplitParams(seed=1))
    _, c, _ = _run(tmp_path / "c", SplitParams(seed=2))
    assert a == b
    assert a["val"] != c["val"]


def test_counts_json_and_table_agree(tmp_path: Path) -> None:
    """reports/split.json (metrics) and reports/split.csv (table) carry the same counts."""
    counts, parts, _ = _run(tmp_path, SplitParams())
    table = read_csv(tmp_path / "split.csv")
    assert [(r["split"], r["label"]) for r in table] == [
        (s, lab) for s in SPLITS for lab in ("NORMAL", POSITIVE, "all")
    ]
    for r in table:
        rows = [x for x in parts[r["split"]] if r["label"] in ("all", x["label"])]
        assert int(r["images"]) == len(rows)
        assert int(r["patients"]) == len({x["patient_id"] for x in rows})
        if r["label"] == "all":
            assert counts[r["split"]]["images"] == len(rows)
            assert counts[r["split"]]["patients"] == int(r["patients"])
        else:
            assert counts[r["split"]][r["label"]] == len(rows)


def test_check_disjoint_names_the_leak() -> None:
    """The stage's assertion names the leaking patient and the two splits."""
    a, b = _row("train", "NORMAL", "P1", 0), _row("train", "NORMAL", "P1", 1)
    with pytest.raises(SplitError, match=r"patient_id P1 is in both train and val"):
        check_disjoint({"train": [a], "val": [b], "test": []})
    c = {**_row("train", "NORMAL", "P2", 0), "sha256": a["sha256"]}
    with pytest.raises(SplitError, match=r"sha256 [0-9a-f]{64} is in both train and test"):
        check_disjoint({"train": [a], "val": [], "test": [c]})


def test_empty_split_fails_and_keeps_previous_output(tmp_path: Path) -> None:
    """Too few patients for a split: one-line SplitError, the earlier splits untouched."""
    _run(tmp_path, SplitParams())
    before = (tmp_path / "splits" / "train.csv").read_bytes()
    manifest = tmp_path / "manifest.csv"
    write_csv(manifest, [_row("train", "NORMAL", "P1", 0)], MANIFEST_FIELDS)
    with pytest.raises(SplitError, match="split is empty") as ei:
        split(
            SplitParams(),
            manifest=manifest,
            out_dir=tmp_path / "splits",
            counts_json=tmp_path / "split.json",
            counts_csv=tmp_path / "split.csv",
        )
    assert "\n" not in str(ei.value)
    assert (tmp_path / "splits" / "train.csv").read_bytes() == before


def test_counts_are_per_class(tmp_path: Path) -> None:
    """The returned counts sum to the split sizes per class."""
    counts, parts, _ = _run(tmp_path, SplitParams())
    for name in SPLITS:
        assert counts[name] == {
            **dict(sorted(Counter(r["label"] for r in parts[name]).items())),
            "images": len(parts[name]),
            "patients": len({r["patient_id"] for r in parts[name]}),
        }
