"""Tests for xray.data.intake.patients (patient ids) and xray.core.hashing.file_sha256."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from xray.core.hashing import file_sha256
from xray.data.intake.entries import IngestError
from xray.data.intake.patients import patient_id

REAL_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/chest_xray_224_train.zip"


# --------------------------------------------------------------------------- ids, hashes


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("person12_bacteria_46.jpeg", "person12"),
        ("person1_virus_7.jpeg", "person1"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("person1_bacteria_1_2.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0543-0001-0002.jpeg", "IM-0543"),
        ("NORMAL2-IM-0587-0001.jpeg", "NORMAL2-IM-0587"),
        ("NORMAL2-IM-0587-0001-0001.jpeg", "NORMAL2-IM-0587"),
        ("chest_xray/train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001", "IM-0115"),
        ("scan_0001.png", None),
        ("person12.jpeg", None),
        ("IM-0115.jpeg", None),
        ("", None),
    ],
)
def test_patient_id_kermany(name: str, pid: str | None) -> None:
    """Every Kermany naming variant maps to its patient; others give None."""
    assert patient_id(name) == pid


def test_patient_id_custom_pattern() -> None:
    """A custom regex uses group 'patient', else group 1; bad patterns name the params key."""
    assert patient_id("AB123_left.png", r"^(?P<site>[A-Z]+)(?P<patient>\d+)_") == "123"
    assert patient_id("d/sub-42_img.png", r"^sub-(\d+)") == "42"
    assert patient_id("other.png", r"^sub-(\d+)") is None
    assert patient_id("person1_virus_7.jpeg", r"^sub-(\d+)") is None  # pattern replaces default
    with pytest.raises(IngestError, match=r"^patient_pattern: invalid regex"):
        patient_id("x.png", r"(unclosed")
    with pytest.raises(IngestError, match=r"^patient_pattern: .* needs a group"):
        patient_id("x.png", r"x")


def test_sha256_file(tmp_path: Path) -> None:
    """Known digest of 'abc'."""
    p = tmp_path / "abc"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"{REAL_ZIP} not present")
def test_patient_id_parses_real_archive() -> None:
    """Every file name in the real training archive yields a patient id (no fallback)."""
    with zipfile.ZipFile(REAL_ZIP) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    assert len(names) == 5216
    failed = [n for n in names if patient_id(n) is None]
    assert failed == []
    by_class: dict[str, set[str]] = {}
    for n in names:
        by_class.setdefault(n.split("/")[-2], set()).add(patient_id(n) or "")
    assert set(by_class) == {"NORMAL", "PNEUMONIA"}
    assert not by_class["NORMAL"] & by_class["PNEUMONIA"]
    assert (len(by_class["NORMAL"]), len(by_class["PNEUMONIA"])) == (1211, 1635)


# --------------------------------------------------------------------------- synthetic source


def _synthetic_patients(params) -> dict[str, set[str]]:
    """The patient ids of each split of the synthetic source, from its file names (nothing
    rendered)."""
    from xray.data.intake.synthetic import _names, _patients

    counter = [0]
    out: dict[str, set[str]] = {}
    for split, label, pid, kind, n, _, _ in _patients(params, ("NORMAL", "PNEUMONIA")):
        for name in _names(label, kind, pid, n, counter):
            out.setdefault(split, set()).add(patient_id(name))
    return out


def test_synthetic_splits_share_no_patient_at_any_size() -> None:
    from xray.core.params import SyntheticParams

    default = _synthetic_patients(SyntheticParams())  # the names of the default source, kept
    assert "IM-0100" in default["train"] and "person3000" in default["test"]
    assert "IM-5000" in default["val"]
    large = _synthetic_patients(SyntheticParams(patients_per_class=3200))  # 10x the real archive
    assert len(large["train"]) == 2 * 3200 and len(large["test"]) == 2 * 1067
    assert not large["train"] & large["test"] and not large["test"] & large["val"]
    assert not large["train"] & large["val"]


def test_synthetic_count_is_what_generate_writes(tmp_path: Path) -> None:
    from xray.core.params import SyntheticParams
    from xray.data.intake.synthetic import count, generate

    params = SyntheticParams(patients_per_class=3, image_size=64)
    written = generate(tmp_path, params, ("NORMAL", "PNEUMONIA"))
    assert written == count(params, ("NORMAL", "PNEUMONIA"))
    assert written == sum(1 for p in tmp_path.rglob("*.jpeg"))
