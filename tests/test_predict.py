"""Tests for `xray predict` (xray.cli.predict): any JPEG/PNG, text and JSON output, bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_SIZE as SIZE
from conftest import MODEL_THRESHOLD as THRESHOLD
from PIL import Image

from xray.cli.main import main as xray
from xray.cli.predict import EXIT_OK, EXIT_SOME_FAILED, predict_paths
from xray.models.dataset import resize
from xray.models.model_file import EXIT_NO_MODEL


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    """Images of several sizes and modes, a broken file, a nested folder."""
    rng = np.random.default_rng(1)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    files = {
        "rgb_jpeg": d / "a_rgb.jpg",
        "gray_png": d / "b_gray.png",
        "rgba_png": d / "sub" / "c_rgba.png",
        "deep_png": d / "sub" / "d_16bit.png",
    }
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(files["rgb_jpeg"])
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(files["gray_png"])
    Image.fromarray(rng.integers(0, 256, (90, 40, 4), dtype=np.uint8)).save(files["rgba_png"])
    Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)).save(files["deep_png"])
    bad = d / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files["bad"] = bad
    return files


def _run(paths: list[Path], model: Path, as_json: bool) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict_paths(paths, model, as_json=as_json, batch_size=2, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_text_output_one_line_per_image(model_file: Path, images: dict[str, Path]) -> None:
    good = [images[k] for k in ("rgb_jpeg", "gray_png", "rgba_png", "deep_png")]
    code, out, err = _run(good, model_file, as_json=False)
    assert code == EXIT_OK and err == ""
    lines = out.splitlines()
    assert len(lines) == 4
    for line, path in zip(lines, good, strict=True):
        name, label, prob, thr = line.split("\t")
        assert name == str(path)
        assert label in ("NORMAL", "PNEUMONIA")
        p = float(prob.removeprefix("P(PNEUMONIA)="))
        assert 0.0 <= p <= 1.0
        assert (label == "PNEUMONIA") == (p >= THRESHOLD)
        assert thr == f"threshold={THRESHOLD:.4f}"


def test_json_matches_the_model_on_resized_pixels(
    model_file: Path, images: dict[str, Path]
) -> None:
    from xray.models.architectures import load_model

    code, out, _ = _run([images["gray_png"], images["rgb_jpeg"]], model_file, as_json=True)
    assert code == EXIT_OK
    rows = [json.loads(line) for line in out.splitlines()]
    model, _ = load_model(model_file)
    gray = np.asarray(Image.open(images["gray_png"]))
    expected = float(model.predict(resize(gray, SIZE)[None, ..., None].astype("float32"))[0, 0])
    assert rows[0]["probability"] == pytest.approx(expected, abs=1e-5)
    assert rows[0]["threshold"] == THRESHOLD and rows[0]["positive_class"] == "PNEUMONIA"
    assert set(rows[1]) == {"path", "label", "probability", "positive_class", "threshold"}


def test_bad_file_is_one_line_error_and_the_rest_predicted(
    model_file: Path, images: dict[str, Path]
) -> None:
    folder = images["rgb_jpeg"].parent
    code, out, err = _run([folder, folder / "missing.png"], model_file, as_json=True)
    assert code == EXIT_SOME_FAILED
    assert len(out.splitlines()) == 4  # the four good images, nested folder included
    errors = err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {images['bad']}: not a usable image")
    assert errors[1] == f"error: {folder / 'missing.png'}: no such file or folder"


def test_missing_model_is_a_one_line_error(tmp_path: Path, images: dict[str, Path]) -> None:
    code, out, err = _run([images["gray_png"]], tmp_path / "nope.keras", as_json=False)
    assert code == EXIT_NO_MODEL and out == ""
    assert err.strip() == f"error: {tmp_path / 'nope.keras'}: model not found"


def test_cli_predict(
    model_file: Path, images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = xray(["predict", "--model", str(model_file), "--json", str(images["deep_png"])])
    assert code == EXIT_OK
    row = json.loads(capsys.readouterr().out.strip())
    assert row["path"] == str(images["deep_png"])


def test_a_zip_of_images_predicts_each_member(
    tmp_path: Path, model_file: Path, images: dict[str, Path]
) -> None:
    from xray.core.io import write_zip

    good = [images[k] for k in ("gray_png", "rgb_jpeg")]
    archive = tmp_path / "set.zip"
    write_zip(
        archive,
        [("NORMAL/b.png", good[0].read_bytes()), ("PNEUMONIA/a.jpg", good[1].read_bytes()),
         ("PNEUMONIA/broken.png", images["bad"].read_bytes()), ("notes.txt", b"skip me")],
    )  # fmt: skip
    code, out, err = _run([archive], model_file, as_json=True)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == [
        str(archive / "NORMAL/b.png"),
        str(archive / "PNEUMONIA/a.jpg"),
    ]
    _, direct, _ = _run(good, model_file, as_json=True)
    assert [r["probability"] for r in rows] == [
        json.loads(x)["probability"] for x in direct.splitlines()
    ]
    assert code == EXIT_SOME_FAILED
    assert err.startswith(f"error: {archive / 'PNEUMONIA/broken.png'}: not a usable image")
    # A zip without images, and one that is no zip, are one-line errors.
    empty, fake = tmp_path / "empty.zip", tmp_path / "fake.zip"
    write_zip(empty, [("readme.txt", b"x")])
    fake.write_bytes(b"not a zip")
    code, out, err = _run([empty, fake], model_file, as_json=False)
    assert code == EXIT_SOME_FAILED and out == ""
    assert err.splitlines() == [
        f"error: {empty}: no JPEG/PNG images in this zip",
        f"error: {fake}: not a readable zip (File is not a zip file)",
    ]


def test_a_typo_is_said_before_tensorflow_starts(tmp_path: Path, model_file: Path) -> None:
    """Issue 24 item 14: no path exists -> one line per path, exit 1, TensorFlow never imported."""
    import subprocess
    import sys

    from xray.core.io import write_bytes_atomic

    model = tmp_path / "m.keras"  # a readable model file: its metadata passes, TF not needed
    write_bytes_atomic(model, model_file.read_bytes())
    code = (
        "import sys; from xray.cli.main import main; "
        f"rc = main(['predict', '--model', {str(model)!r}, 'nope.png', 'gone/']); "
        "print('tensorflow' in sys.modules, rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["False", str(EXIT_SOME_FAILED)], done.stderr
    assert done.stderr.splitlines() == [
        "error: nope.png: no such file or folder",
        "error: gone: no such file or folder",
    ]


def test_unsafe_members_and_special_files_are_named_not_shown_as_paths(
    tmp_path: Path, model_file: Path, images: dict[str, Path]
) -> None:
    """A zip member named `../x.png` is refused by name (never shown as a path beside the zip),
    and a FIFO in a folder is one error line, not skipped without a word."""
    import os
    import zipfile

    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../etc/evil.png", images["gray_png"].read_bytes())
        z.writestr("NORMAL/ok.png", images["gray_png"].read_bytes())
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "a.png").write_bytes(images["gray_png"].read_bytes())
    os.mkfifo(folder / "b.png")
    code, out, err = _run([archive, folder], model_file, as_json=True)
    assert [json.loads(line)["path"] for line in out.splitlines()] == [
        str(archive / "NORMAL/ok.png"),
        str(folder / "a.png"),
    ]
    assert code == EXIT_SOME_FAILED
    assert err.splitlines() == [
        f"error: {archive}: member '../../etc/evil.png': absolute or '..' name, not read",
        f"error: {folder / 'b.png'}: not a regular file (a FIFO), not read",
    ]
