"""Bad model files get one line naming the file and the problem, exit 2 (issue 14, item 7).

The metadata cases need no TensorFlow (xray/models/model_file.py); loading cases use the tiny
`model_file` fixture. `xray predict` with a bad model answers before TensorFlow starts.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from xray.cli.predict import predict_paths
from xray.models.model_file import (
    EXIT_NO_MODEL,
    META_MEMBER,
    PREDICT_KEYS,
    ModelFileError,
    read_meta,
)

ROOT = Path(__file__).resolve().parents[1]
GOOD_META = {"image_size": 32, "threshold": 0.5, "classes": ["NORMAL", "PNEUMONIA"]}


def _rewrite(src: Path, dst: Path, member: str, change: Callable[[bytes], bytes | None]) -> Path:
    """A copy of the zip src with one member changed (None: dropped)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(buf, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == member:
                data = change(data)
                if data is None:
                    continue
            out.writestr(info, data)
    dst.write_bytes(buf.getvalue())
    return dst


def _fake_keras(path: Path, meta: bytes | None) -> Path:
    """A zip shaped like a .keras file with the given xray.json bytes (no weights)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        if meta is not None:
            z.writestr(META_MEMBER, meta)
    return path


BAD_META = {
    "not_a_zip": (None, r"not a model saved by this pipeline \(not a zip archive\)"),
    "no_xray_json": (b"", r"not a model saved by this pipeline \(no xray\.json inside\)"),
    "invalid_json": (b"{not json", r"xray\.json is not valid JSON \(Expecting"),
    "no_classes": (
        json.dumps({"image_size": 32, "threshold": 0.5}).encode(),
        r"xray\.json has no classes$",
    ),
    "no_image_size": (
        json.dumps({"threshold": 0.5, "classes": ["A", "B"]}).encode(),
        r"xray\.json has no image_size$",
    ),
    "text_threshold": (
        json.dumps({**GOOD_META, "threshold": "high"}).encode(),
        r"xray\.json: threshold is not a number \(got 'high'\)$",
    ),
    "size_out_of_range": (
        json.dumps({**GOOD_META, "image_size": 10**9}).encode(),
        r"image_size is not an integer in \[32, 1024\]",
    ),
    "one_class": (
        json.dumps({**GOOD_META, "classes": ["A"]}).encode(),
        r"classes is not a list of two names",
    ),
    "positive_first": (  # the output is P(classes[1]): labels would contradict it
        json.dumps(
            {**GOOD_META, "classes": ["PNEUMONIA", "NORMAL"], "positive_class": "PNEUMONIA"}
        ).encode(),
        r"positive_class 'PNEUMONIA' is not the second of classes",
    ),
    "deeply_nested": (b"[" * 100_000 + b"]" * 100_000, r"xray\.json is nested too deeply"),
}


def _bad_file(tmp_path: Path, case: str) -> Path:
    meta, _ = BAD_META[case]
    path = tmp_path / f"{case}.keras"
    if case == "not_a_zip":
        path.write_bytes(b"GIF89a not a zip at all")
    elif case == "no_xray_json":
        _fake_keras(path, None)
    else:
        _fake_keras(path, meta)
    return path


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_bad_metadata_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    """Each bad file: read_meta raises one line starting with the path; predict exits 2."""
    path = _bad_file(tmp_path, case)
    with pytest.raises(ModelFileError) as ei:
        read_meta(path, PREDICT_KEYS)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert re.search(BAD_META[case][1], msg), msg
    err = io.StringIO()
    img = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(img)
    assert predict_paths([img], path, out=io.StringIO(), err=err) == EXIT_NO_MODEL
    assert err.getvalue() == f"error: {msg}\n"


def test_tampered_keras_files_are_one_line(model_file: Path, tmp_path: Path) -> None:
    """A config naming os.system, a wrong input size: one line, exit 2 (predict and adapt)."""
    from xray.cli.adapt import adapt_file
    from xray.core.params import AdaptParams

    def evil(data: bytes) -> bytes:
        config = json.loads(data)
        config.update(module="os", class_name="system", registered_name=None)
        return json.dumps(config).encode()

    def resize(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), "image_size": 48}).encode()

    cases = {
        _rewrite(model_file, tmp_path / "evil.keras", "config.json", evil): "cannot load the model",
        _rewrite(model_file, tmp_path / "size.keras", META_MEMBER, resize): (
            "input shape (None, 32, 32, 1) does not match image_size 48 in xray.json"
        ),
    }
    img = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(img)
    for path, why in cases.items():
        err = io.StringIO()
        assert predict_paths([img], path, out=io.StringIO(), err=err) == EXIT_NO_MODEL
        line = err.getvalue()
        assert line.startswith(f"error: {path}: ") and why in line and line.count("\n") == 1
        err = io.StringIO()
        settings = AdaptParams(min_images=1)
        code = adapt_file(path, [img], tmp_path / "out.keras", settings, err=err)
        assert code == EXIT_NO_MODEL
        assert err.getvalue().startswith(f"error: {path}: ") and err.getvalue().count("\n") == 1
        assert not (tmp_path / "out.keras").exists()


def test_predict_refuses_a_bad_model_before_tensorflow(tmp_path: Path) -> None:
    """`xray predict`/`xray adapt` with a missing or bad model: one line, exit 2, no TensorFlow."""
    bad = _fake_keras(tmp_path / "bad.keras", b"[]")
    code = (
        "import sys\nfrom xray.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    out = str(tmp_path / "out.keras")
    for model, why in ((tmp_path / "none.keras", "model not found"), (bad, "not a JSON object")):
        for argv in (
            ["predict", "--model", str(model), str(tmp_path)],
            ["adapt", str(model), str(tmp_path), "-o", out],
        ):
            _refused_before_tf(code, argv, model, why)


def _refused_before_tf(code: str, argv: list[str], model: Path, why: str) -> None:
    """Run `xray ARGV` in a fresh interpreter: one line naming the model, exit 2, no TF."""
    run = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == EXIT_NO_MODEL, run.stderr
    assert run.stderr.startswith(f"error: {model}: ") and why in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
