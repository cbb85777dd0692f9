"""Bad `data` and `split` params: one line naming the dotted key, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray.core.params import DataParams, ParamsError, load_params, parse_params
from xray.data.intake.ingest import download
from xray.data.intake.source import DownloadError, probe


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"data": {"classes": ["NORMAL"]}},
            "params.yaml: data.classes: need exactly two classes",
        ),
        (
            {"data": {"classes": ["NORMAL", "a/b"]}},
            "params.yaml: data.classes: 'a/b' is not a valid class (folder) name",
        ),
        (
            {"data": {"classes": ["NORMAL", "normal"]}},
            "params.yaml: data.classes: duplicate class names",
        ),
        (
            {"data": {"class_map": {"bacteria": "COVID"}}},
            "params.yaml: data.class_map: 'bacteria' -> 'COVID': 'COVID' is not one of",
        ),
        (
            {"data": {"class_map": {"normal": "PNEUMONIA"}}},
            "params.yaml: data.class_map: 'normal' is itself the class 'NORMAL'",
        ),
        (
            {"data": {"ignore": ["Pneumonia"]}},
            "params.yaml: data.ignore: 'Pneumonia' is a configured class",
        ),
        (
            {"data": {"class_map": {"bacteria": "PNEUMONIA"}, "ignore": ["BACTERIA"]}},
            "params.yaml: data.ignore: 'BACTERIA' is mapped in class_map",
        ),
        (
            {"data": {"source": "ftp://example.org/x.zip"}},
            "params.yaml: data.source: URL scheme 'ftp' is not http or https",
        ),
        (
            {"data": {"source": "file:///data/x.zip"}},
            "params.yaml: data.source: URL scheme 'file' is not http or https",
        ),
        ({"data": {"source": "https:///x.zip"}}, "params.yaml: data.source: URL has no host"),
        ({"data": {"source": "  "}}, "params.yaml: data.source: must not be empty"),
        (
            {"data": {"sha256": "abc"}},
            "params.yaml: data.sha256: String should match pattern",
        ),
        (
            {"data": {"patient_pattern": "IM-\\d+"}},
            "params.yaml: data.patient_pattern: the regex needs a group",
        ),
        (
            {"data": {"max_bad_fraction": 1.5}},
            "params.yaml: data.max_bad_fraction: Input should be less than or equal to 1",
        ),
        (
            {"split": {"val_fraction": 0.5, "test_fraction": 0.5}},
            "params.yaml: split.test_fraction: val_fraction (0.5) + test_fraction must be below 1",
        ),
        (
            {"split": {"val_fraction": 0.7, "test_fraction": 0.4}},
            "params.yaml: split.test_fraction: val_fraction (0.7) + test_fraction must be below 1",
        ),
        (
            {"split": {"val_fraction": 0.0}},
            "params.yaml: split.val_fraction: Input should be greater than 0",
        ),
        ({"split": {"val_fration": 0.2}}, "params.yaml: unknown key 'split.val_fration'"),
    ],
)
def test_bad_params_one_line_naming_key(raw: dict, expected: str) -> None:
    """Each bad value fails with one line that starts by naming its dotted key."""
    with pytest.raises(ParamsError) as ei:
        parse_params(raw)
    msg = str(ei.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_good_params_normalized() -> None:
    """Class-map targets match case-insensitively and are stored in the configured case."""
    p = parse_params(
        {
            "data": {
                "source": "HTTPS://example.org/chest_xray.zip",
                "class_map": {"bacteria": "pneumonia", "virus": "Pneumonia"},
                "ignore": ["covid"],
            },
            "split": {"val_fraction": 0.2, "test_fraction": 0.3},
        }
    )
    assert p.data.class_map == {"bacteria": "PNEUMONIA", "virus": "PNEUMONIA"}
    assert p.split.val_fraction + p.split.test_fraction == pytest.approx(0.5)
    # a Windows drive letter is a path, not a URL scheme
    assert parse_params({"data": {"source": "C:/data/x.zip"}}).data.source == "C:/data/x.zip"


def test_bad_yaml_file_is_refused_before_any_stage(tmp_path: Path) -> None:
    """load_params names the file and key; nothing is created next to it."""
    f = tmp_path / "params.yaml"
    f.write_text("data:\n  classes: [NORMAL, COVID, PNEUMONIA]\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: data\.classes: need exactly two"):
        load_params(f)
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


def test_missing_local_source_before_anything_written(tmp_path: Path) -> None:
    """A local source that does not exist: one line naming data.source; no file created."""
    params = DataParams(source=str(tmp_path / "exports" / "chest"))
    with pytest.raises(DownloadError, match=r"^data\.source: .*exports/chest does not exist$"):
        probe(params, tmp_path / "data" / "source.json")
    with pytest.raises(DownloadError, match=r"^data\.source: .*exports/chest does not exist$"):
        download(
            params,
            out_dir=tmp_path / "data" / "raw",
            quarantine_csv=tmp_path / "reports" / "q.csv",
            duplicates_csv=tmp_path / "reports" / "d.csv",
            record=None,
        )
    assert list(tmp_path.iterdir()) == []


def test_source_neither_folder_nor_archive(tmp_path: Path) -> None:
    """A plain file as source names data.source and the accepted kinds."""
    f = tmp_path / "images.rar"
    f.write_bytes(b"Rar!")
    with pytest.raises(DownloadError, match=r"^data\.source: .*images\.rar is neither a folder"):
        probe(DataParams(source=str(f)), tmp_path / "source.json")
    assert not (tmp_path / "source.json").exists()
