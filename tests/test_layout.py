"""Tests for xray.data.intake.layout: layout discovery (Kaggle, Mendeley, flat, nested copies)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from xray.data.intake.archive import safe_extract
from xray.data.intake.entries import IngestError
from xray.data.intake.layout import Found, find_images

CLASSES = ("NORMAL", "PNEUMONIA")
MB = 1 << 20
REAL_ZIP = Path(__file__).resolve().parents[2] / "shared/datasets/chest_xray_224_train.zip"


# --------------------------------------------------------------------------- helpers


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """Write a zip with the given (name or ZipInfo, data) members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _touch(root: Path, *rels: str) -> None:
    """Create small files at the given relative paths."""
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _triples(found: list[Found]) -> list[tuple[str, str, str]]:
    """(split, label, rel) of each result."""
    return [(f.split, f.label, f.rel) for f in found]


# --------------------------------------------------------------------------- find_images

KAGGLE_FILES = [
    ("test", "PNEUMONIA", "test/PNEUMONIA/person100_bacteria_475.jpeg"),
    ("train", "NORMAL", "train/NORMAL/IM-0115-0001.jpeg"),
    ("train", "PNEUMONIA", "train/PNEUMONIA/person1_virus_6.jpeg"),
    ("val", "NORMAL", "val/NORMAL/NORMAL2-IM-1427-0001.jpeg"),
]


def test_kaggle_nested_copy_and_junk(tmp_path: Path) -> None:
    """Kaggle zip layout: the nested chest_xray/chest_xray copy and macOS junk never double data."""
    for prefix in ("chest_xray", "chest_xray/chest_xray"):
        _touch(tmp_path, *(f"{prefix}/{rel}" for _, _, rel in KAGGLE_FILES))
    _touch(
        tmp_path,
        "__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg",
        "chest_xray/__MACOSX/train/NORMAL/._IM-0115-0001.jpeg",
        "chest_xray/train/NORMAL/._IM-0115-0001.jpeg",
        "chest_xray/train/NORMAL/.DS_Store",
        "chest_xray/.DS_Store",
    )
    found = find_images(tmp_path, CLASSES)
    assert _triples(found) == [(s, c, f"chest_xray/{rel}") for s, c, rel in KAGGLE_FILES]
    assert found[0].path == (tmp_path / "chest_xray" / KAGGLE_FILES[0][2]).resolve()
    assert found[0].path.is_absolute()


def test_nested_copy_with_more_files_wins(tmp_path: Path) -> None:
    """When the copies differ, the one holding more images is used (only one copy)."""
    _touch(tmp_path, "chest_xray/train/NORMAL/a.jpeg")
    _touch(tmp_path, *(f"chest_xray/chest_xray/{rel}" for _, _, rel in KAGGLE_FILES))
    found = find_images(tmp_path, CLASSES)
    assert _triples(found) == [(s, c, f"chest_xray/chest_xray/{rel}") for s, c, rel in KAGGLE_FILES]


def test_extracted_kaggle_zip_end_to_end(tmp_path: Path) -> None:
    """safe_extract + find_images on a Kaggle-like zip yields each image once."""
    members = [
        (f"{p}/{rel}", b"x")
        for p in ("chest_xray", "chest_xray/chest_xray")
        for _, _, rel in KAGGLE_FILES
    ]
    members.append(("__MACOSX/chest_xray/train/NORMAL/._IM-0115-0001.jpeg", b"junk"))
    arc = _zip(tmp_path / "chest-xray-pneumonia.zip", members)
    dest = tmp_path / "raw"
    safe_extract(arc, dest, max_total_bytes=MB, max_members=100)
    assert len(find_images(dest, CLASSES)) == len(KAGGLE_FILES)


def test_mendeley_layout(tmp_path: Path) -> None:
    """Mendeley ChestXRay2017/chest_xray/{train,test} layout."""
    _touch(
        tmp_path,
        "ChestXRay2017/chest_xray/train/NORMAL/IM-0001-0001.jpeg",
        "ChestXRay2017/chest_xray/train/PNEUMONIA/person3_virus_15.jpeg",
        "ChestXRay2017/chest_xray/test/NORMAL/IM-0005-0001.jpeg",
        "__MACOSX/ChestXRay2017/chest_xray/test/NORMAL/._IM-0005-0001.jpeg",
    )
    assert _triples(find_images(tmp_path, CLASSES)) == [
        ("test", "NORMAL", "ChestXRay2017/chest_xray/test/NORMAL/IM-0005-0001.jpeg"),
        ("train", "NORMAL", "ChestXRay2017/chest_xray/train/NORMAL/IM-0001-0001.jpeg"),
        ("train", "PNEUMONIA", "ChestXRay2017/chest_xray/train/PNEUMONIA/person3_virus_15.jpeg"),
    ]


def test_split_folders_at_root(tmp_path: Path) -> None:
    """A folder directly holding {train,val,test}/{CLASS}."""
    _touch(tmp_path, "train/NORMAL/a.png", "val/PNEUMONIA/b.png", "test/NORMAL/c.png")
    assert _triples(find_images(tmp_path, CLASSES)) == [
        ("test", "NORMAL", "test/NORMAL/c.png"),
        ("train", "NORMAL", "train/NORMAL/a.png"),
        ("val", "PNEUMONIA", "val/PNEUMONIA/b.png"),
    ]


def test_flat_class_folders_and_case(tmp_path: Path) -> None:
    """Flat class folders (any case) become split 'train' with canonical labels."""
    _touch(tmp_path, "normal/a.png", "Pneumonia/b.png")
    assert _triples(find_images(tmp_path, CLASSES)) == [
        ("train", "NORMAL", "normal/a.png"),
        ("train", "PNEUMONIA", "Pneumonia/b.png"),
    ]


def test_unknown_class_folder(tmp_path: Path) -> None:
    """An unexpected class folder is an error naming it."""
    _touch(tmp_path, "train/NORMAL/a.png", "train/COVID19/b.png")
    with pytest.raises(IngestError, match=r"unknown class folder 'train/COVID19'"):
        find_images(tmp_path, CLASSES)


def test_class_map_and_ignore(tmp_path: Path) -> None:
    """class_map merges folders into a class (case-insensitively); ignore skips folders."""
    _touch(
        tmp_path,
        "train/NORMAL/a.png",
        "train/pneumonia_bacterial/b.png",
        "train/Pneumonia_Viral/c.png",
        "train/COVID/d.png",
    )
    found = find_images(
        tmp_path,
        CLASSES,
        ignore=["covid"],
        class_map={"pneumonia_bacterial": "PNEUMONIA", "pneumonia_viral": "PNEUMONIA"},
    )
    assert _triples(found) == [
        ("train", "NORMAL", "train/NORMAL/a.png"),
        ("train", "PNEUMONIA", "train/Pneumonia_Viral/c.png"),
        ("train", "PNEUMONIA", "train/pneumonia_bacterial/b.png"),
    ]
    with pytest.raises(IngestError, match=r"^class_map: 'x' maps to 'COVID'"):
        find_images(tmp_path, CLASSES, class_map={"x": "COVID"})


def test_candidate_files(tmp_path: Path) -> None:
    """Image-like and odd/no-extension files are candidates; hidden and known non-image aren't."""
    _touch(
        tmp_path,
        *(
            f"NORMAL/{n}"
            for n in [
                "a.JPG",
                "b.png",
                "c.TIFF",
                "d.bmp",
                "e.jpeg",
                "noext",
                "odd.dat",
                "notes.txt",
                "Thumbs.db",
                "meta.json",
                ".DS_Store",
                "._a.JPG",
            ]
        ),
    )
    rels = [f.rel for f in find_images(tmp_path, CLASSES)]
    assert rels == [
        "NORMAL/a.JPG",
        "NORMAL/b.png",
        "NORMAL/c.TIFF",
        "NORMAL/d.bmp",
        "NORMAL/e.jpeg",
        "NORMAL/noext",
        "NORMAL/odd.dat",
    ]


def test_two_unrelated_datasets_is_ambiguous(tmp_path: Path) -> None:
    """Two separate dataset folders are not silently merged or picked."""
    _touch(tmp_path, "a/train/NORMAL/x.png", "b/train/NORMAL/y.png")
    with pytest.raises(IngestError, match=r"several datasets found .*'a', 'b'"):
        find_images(tmp_path, CLASSES)
    assert len(find_images(tmp_path, CLASSES, ignore=["b"])) == 1


def test_no_class_folders(tmp_path: Path) -> None:
    """A tree without any class folder is an error."""
    _touch(tmp_path, "stuff/a.png")
    with pytest.raises(IngestError, match="no class folders"):
        find_images(tmp_path, CLASSES)


@pytest.mark.skipif(not REAL_ZIP.exists(), reason=f"{REAL_ZIP} not present")
def test_real_archive_extract_and_find(tmp_path: Path) -> None:
    """The real archive extracts safely and every image is found once with its label."""
    dest = tmp_path / "raw"
    safe_extract(REAL_ZIP, dest, max_total_bytes=1 << 30, max_members=20_000)
    found = find_images(dest, CLASSES)
    counts = {c: sum(f.label == c for f in found) for c in CLASSES}
    assert counts == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert {f.split for f in found} == {"train"}
    assert len({f.path for f in found}) == 5216
