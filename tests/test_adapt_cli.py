"""Tests for `xray adapt` and `xray predict --adapt` (xray.cli.adapt): files, refusals, rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_THRESHOLD as THRESHOLD
from PIL import Image

from xray.cli.main import main as xray
from xray.models.architectures import load_model, read_meta

N_GOOD = 34  # above the default adapt.min_images (32)


@pytest.fixture(autouse=True)
def no_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a folder without params.yaml: AdaptParams' defaults (the tests pass --no-prior
    and --no-guard where they check AdaBN alone: the random-init model's calls all flip)."""
    monkeypatch.chdir(tmp_path)


def _write_pngs(folder: Path, n: int, seed: int = 1) -> list[Path]:
    """n gray PNGs of a few sizes and brightnesses (a 'site' unlike the random init)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (40, 48) if i % 2 else (36, 36)
        base = rng.integers(40, 200)
        pixels = np.clip(base + rng.normal(0, 30, (h, w)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of N_GOOD readable images (nested in part)."""
    d = tmp_path_factory.mktemp("site")
    _write_pngs(d, N_GOOD - 4)
    _write_pngs(d / "sub", 4, seed=2)
    return d


def _weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight by path (the dropout's seed state has a per-process name: left out)."""
    model, _ = load_model(path)
    return {v.path: v.numpy() for v in model.variables if "seed_generator" not in v.path}


def test_adapt_changes_only_batchnorm_statistics(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapted.keras"
    assert (
        xray(["adapt", str(model_file), str(site), "-o", str(out), "--no-prior", "--no-guard"]) == 0
    )
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{out}: adabn on {N_GOOD} images; threshold 0.3700 -> 0.3700")
    assert "TENT off" in lines[0]
    before, after = _weights(model_file), _weights(out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.endswith(("moving_mean", "moving_variance")) for k in changed)
    meta = read_meta(out)
    assert meta["adaptation"]["method"] == "adabn"
    assert meta["adaptation"]["images"] == N_GOOD
    assert len(meta["adaptation"]["images_sha256"]) == 64
    assert meta["threshold"] == THRESHOLD and meta["classes"] == ["NORMAL", "PNEUMONIA"]


def test_same_call_twice_gives_identical_bytes(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = []
    for name in ("a.keras", "b.keras"):
        args = ["adapt", str(model_file), str(site), "-o", str(tmp_path / name), "--json"]
        assert xray([*args, "--no-prior", "--no-guard"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    assert reports[0]["images_sha256"] == reports[1]["images_sha256"]
    assert reports[0]["method"] == "adabn" and reports[0]["adapted"] is True
    assert reports[0]["images"] == N_GOOD and reports[0]["threshold"] == THRESHOLD


def test_too_few_images_refused_and_nothing_written(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few = tmp_path / "few"
    _write_pngs(few, 5)
    out = tmp_path / "adapted.keras"
    assert xray(["adapt", str(model_file), str(few), "-o", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {few}: 5 usable images, adaptation needs at least 32")
    assert not out.exists()


def test_output_equal_to_model_or_not_keras_refused(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = model_file.read_bytes()
    assert xray(["adapt", str(model_file), str(site), "-o", str(model_file)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {model_file}: is the input model")
    assert model_file.read_bytes() == original
    assert xray(["adapt", str(model_file), str(site), "-o", str(tmp_path / "x.h5")]) == 1
    assert "must be a .keras path" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_missing_model_and_prior_without_reference(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.keras"
    assert xray(["adapt", str(tmp_path / "nope.keras"), str(site), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.keras'}: model not found\n"
    assert xray(["adapt", str(model_file), str(site), "-o", str(out), "--prior"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no prior_reference" in err[0] and str(model_file) in err[0]
    assert not out.exists()


def test_bad_image_skipped_with_a_warning(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "mixed"
    _write_pngs(d, 10)
    bad = d / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "o.keras"
    args = ["adapt", str(model_file), str(d), "-o", str(out), "--min-images", "8", "--no-guard"]
    assert xray(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: {bad}: not a usable image")
    # The random-init model calls these images one class: that warning may follow.
    assert all(line.startswith("warning: unadapted, the model calls") for line in err[1:])
    assert read_meta(out)["adaptation"]["images"] == 10


def test_params_yaml_in_the_current_folder_and_flag_override(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "params.yaml").write_text("adapt:\n  min_images: 100\n")
    out = tmp_path / "o.keras"
    assert xray(["adapt", str(model_file), str(site), "-o", str(out)]) == 1
    assert "needs at least 100" in capsys.readouterr().err
    assert xray(["adapt", str(model_file), str(site), "-o", str(out), "--min-images", "8"]) == 0
    assert out.exists()


def test_predict_adapt_rows_say_adapted(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--model", str(model_file), "--json", "--adapt", "--no-prior", "--no-guard"]
    assert xray([*args, str(site)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == N_GOOD and all(r["adapted"] is True for r in rows)
    assert captured.err.startswith("adapted: adabn on 34 images")
    # the same probabilities as the written adapted model gives
    out = tmp_path / "o.keras"
    assert (
        xray(["adapt", str(model_file), str(site), "-o", str(out), "--no-prior", "--no-guard"]) == 0
    )
    capsys.readouterr()
    assert xray(["predict", "--model", str(out), "--json", str(site)]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in plain] == [r["path"] for r in rows]
    for a, b in zip(rows, plain, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    # adaptation changed the scores; the input model file is untouched
    assert xray(["predict", "--model", str(model_file), "--json", str(site)]) == 0
    source = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(
        abs(a["probability"] - b["probability"]) > 1e-4 for a, b in zip(rows, source, strict=True)
    )
    assert "adapted" not in source[0] and read_meta(model_file).get("adaptation") is None


def test_predict_adapt_with_too_few_images_predicts_unadapted(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few = tmp_path / "few"
    _write_pngs(few, 3)
    assert xray(["predict", "--model", str(model_file), "--adapt", str(few)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and all(line.endswith("\tadapted=false") for line in lines)
    assert "3 usable images, adaptation needs at least 32" in captured.err
    assert "predicting unadapted" in captured.err


def test_a_zip_of_images_adapts_as_its_folder(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xray.core.io import write_zip

    files = sorted(p for p in site.rglob("*.png"))
    archive = tmp_path / "site.zip"
    write_zip(archive, [(p.relative_to(site).as_posix(), p.read_bytes()) for p in files])
    out_dir, out_zip = tmp_path / "from_dir.keras", tmp_path / "from_zip.keras"
    assert xray(["adapt", str(model_file), str(site), "-o", str(out_dir), "--json"]) == 0
    assert xray(["adapt", str(model_file), str(archive), "-o", str(out_zip), "--json"]) == 0
    capsys.readouterr()
    assert read_meta(out_zip)["adaptation"]["images"] == N_GOOD
    # The same images in the same (sorted) order: the same adapted statistics.
    a, b = _weights(out_zip), _weights(out_dir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_one_class_warning_follows_the_unadapted_call_rate(model_file: Path) -> None:
    from conftest import MODEL_SIZE

    from xray.cli.adapt import one_class_warning
    from xray.models.training import predict

    model, meta = load_model(model_file)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, MODEL_SIZE, MODEL_SIZE, 1)).astype(np.uint8)
    median = float(np.median(predict(model, images, 16)))
    assert one_class_warning(model, {**meta, "threshold": median}, images, 16) is None
    for threshold, rate in ((1.01, "0%"), (-0.01, "100%")):  # nothing / everything positive
        warning = one_class_warning(model, {**meta, "threshold": threshold}, images, 16)
        assert warning is not None
        assert warning.startswith(f"warning: unadapted, the model calls {rate} of the 40 images ")
        assert "PNEUMONIA" in warning and "\n" not in warning


def test_defaults_without_params_file_are_params_yaml_values(
    model_file: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One source of truth: AdaptParams' defaults are what params.yaml ships (prior on)."""
    from conftest import ROOT

    from xray.cli.adapt import settings_from
    from xray.core.params import AdaptParams, load_params

    assert load_params(ROOT / "params.yaml").adapt == AdaptParams() == settings_from()
    out = tmp_path / "adapted.keras"
    assert xray(["adapt", str(model_file), str(site), "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert "adabn+prior on 34 images" in line and "prior not estimated" in line
    assert read_meta(out)["adaptation"]["method"] == "adabn+prior"


def test_bad_option_value_is_a_one_line_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    from xray.cli.adapt import AdaptError, settings_from

    with pytest.raises(AdaptError, match=r"^options: adapt.tent_steps: ") as e:
        settings_from(tent_steps=-1)
    assert e.value.exit_code == 1 and isinstance(e.value, ValueError)
