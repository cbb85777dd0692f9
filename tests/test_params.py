"""params.yaml is parsed once into pydantic models; a bad value is one line naming the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import stage_argv

from xray.core.params import STAGES, Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_parse() -> None:
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "synthetic"
    assert params.data.positive_class == "PNEUMONIA"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epochs": 0}}, "params.yaml: train.epochs: Input should be greater than 0"),
        ({"train": {"epocs": 3}}, "params.yaml: unknown key 'train.epocs'"),
        ({"bogus": {}}, "params.yaml: unknown key 'bogus'"),
        (
            {"split": {"val_fraction": 0.6, "test_fraction": 0.5}},
            "params.yaml: split.test_fraction: ",
        ),
        ({"data": {"source": "ftp://example.org/x.zip"}}, "params.yaml: data.source: "),
        ({"data": {"classes": ["NORMAL"]}}, "params.yaml: data.classes: "),
        ({"data": {"sha256": "abc"}}, "params.yaml: data.sha256: "),
        ({"corrupt": {"families": ["fog"]}}, "params.yaml: corrupt.families: "),
        ({"corrupt": {"severities": [6]}}, "params.yaml: corrupt.severities.0: "),
        ({"train": {"arch": "vgg99"}}, "params.yaml: train.arch: "),
        ({"data": {"class_map": {"covid": "COVID"}}}, "params.yaml: data.class_map: "),
        ({"train": {"epochs": 10**22}}, "params.yaml: train.epochs: "),
        ({"finetune": {"patience": 10**5}}, "params.yaml: finetune.patience: "),
        ({"split": {"seed": -1}}, "params.yaml: split.seed: "),
        ({"train": {"seed": 2**64}}, "params.yaml: train.seed: "),
        ({"evaluate": {"batch_size": 2**40}}, "params.yaml: evaluate.batch_size: "),
        ({"data": {"max_archive_bytes": 10**30}}, "params.yaml: data.max_archive_bytes: "),
    ],
)
def test_bad_values_give_one_line_naming_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_unknown_family_message_lists_known_ones() -> None:
    with pytest.raises(ParamsError, match=r"unknown corruption family 'fog' \(known: seed, "):
        parse_params({"corrupt": {"families": ["seed", "fog"]}})


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: line \d+ is not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_are_frozen() -> None:
    params = parse_params({})
    with pytest.raises(ValueError):
        params.train.epochs = 3  # type: ignore[misc]


def test_stage_fails_before_writing_anything(tmp_path: Path) -> None:
    """A stage run with a bad params.yaml exits 1 with one line on stderr and writes nothing."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["split"]["val_fraction"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        stage_argv("download"),
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: params.yaml: split.val_fraction: "), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("data:\n  classes: [NORMAL\n", r"line 3 is not valid YAML: expected ',' or '\]'"),
        ("data:\n\tsource: x\n", r"line 2 is not valid YAML: found character '\\t'"),
    ],
)
def test_yaml_error_names_line_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    """A YAML syntax error: the line number and the parser's reason, on one line."""
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    with pytest.raises(ParamsError, match=reason) as ei:
        load_params(bad)
    assert "\n" not in str(ei.value)


def test_what_dvc_refuses_is_refused_first(tmp_path: Path) -> None:
    """A duplicate key, an empty file, a section a stage reads missing: one line, as DVC would."""
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    path = tmp_path / "params.yaml"
    committed = (ROOT / "params.yaml").read_text()
    path.write_text(committed + "train:\n  epochs: 3\n")
    with pytest.raises(
        ParamsError, match=r"params.yaml: line \d+ is not valid YAML: duplicate key"
    ):
        load_params(path)
    path.write_text(committed.replace("  epochs: 15\n", "  epochs: 15\n  epochs: 16\n", 1))
    with pytest.raises(ParamsError, match="duplicate key 'epochs'"):
        load_params(path)
    path.write_text("")
    with pytest.raises(ParamsError, match=r"params.yaml: empty \(dvc.yaml's stages read"):
        load_params(path)
    raw = yaml.safe_load(committed)
    del raw["adapt"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"no key 'adapt' \(dvc.yaml's stage evaluate reads it\)"):
        load_params(path, STAGES)
    assert load_params(path, ["split", "train_base"]).split  # as `dvc repro split` reads it
    assert load_params(path).adapt.bn is True  # a stage's entry point: DVC has checked its keys
    (tmp_path / "dvc.yaml").unlink()  # no dvc.yaml beside it: a partial file is fine
    assert load_params(path).adapt.bn is True
