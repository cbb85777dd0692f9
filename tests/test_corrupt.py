"""Tests for the corrupt stage: determinism across runs and worker counts, atomicity, params."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import stage_argv

from xray.core.io import ZIP_DATE, decode_gray, png_bytes, png_bytes_fast, read_csv, write_csv
from xray.core.params import CorruptParams, ParamsError, parse_params
from xray.perturbations.corruptions import FAMILIES, HELD_OUT, corrupt_image, rng_for
from xray.perturbations.materialize import FIELDS, MANIFEST, corrupt

N_IMAGES = 12
SIZE = 64
CLASSES = ("NORMAL", "PNEUMONIA")
SPLIT_FIELDS = ("path", "label", "source_split", "patient_id", "sha256", "width", "height")


def make_split(root: Path, n: int = N_IMAGES, seed: int = 0) -> tuple[Path, Path]:
    """A tiny raw folder and test.csv of n generated grayscale images (both classes)."""
    raw = root / "raw"
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = CLASSES[i % 2]
        _, xx = np.mgrid[0:SIZE, 0:SIZE]
        img = (96 + 60 * np.sin(xx / (3 + i)) + rng.integers(0, 40, (SIZE, SIZE))).clip(0, 255)
        data = png_bytes(img.astype(np.uint8))
        rel = Path("images") / "test" / label / f"IM-{i:04d}-0001.png"
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
        rows.append(
            {
                "path": rel.as_posix(),
                "label": label,
                "source_split": "test",
                "patient_id": f"IM-{i:04d}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": SIZE,
                "height": SIZE,
            }
        )
    csv = root / "splits" / "test.csv"
    write_csv(csv, rows, SPLIT_FIELDS)
    return raw, csv


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by relative path, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def member(out: Path, row: dict[str, str]) -> bytes:
    """The bytes of one manifest row's image, from its zip."""
    with zipfile.ZipFile(out / row["archive"]) as z:
        return z.read(row["member"])


def leftovers(parent: Path) -> list[str]:
    """Hidden staging folders left beside the output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def split(tmp_path: Path) -> tuple[Path, Path]:
    return make_split(tmp_path)


def test_byte_identical_across_runs_and_worker_counts(
    tmp_path: Path, split: tuple[Path, Path]
) -> None:
    raw, csv = split
    params = CorruptParams(families=tuple(FAMILIES), severities=(1, 5), seed=11)
    n1 = corrupt(params, csv, raw, tmp_path / "a" / "corrupted", workers=1)
    n2 = corrupt(params, csv, raw, tmp_path / "b" / "corrupted", workers=2)
    n3 = corrupt(params, csv, raw, tmp_path / "c" / "corrupted", workers=2)
    expected = N_IMAGES * len(FAMILIES) * 2
    assert n1 == n2 == n3 == expected
    a = tree(tmp_path / "a" / "corrupted")
    b = tree(tmp_path / "b" / "corrupted")
    c = tree(tmp_path / "c" / "corrupted")
    # One zip per family and severity, + the manifest.
    assert sorted(a) == sorted([f"{f}/{s}.zip" for f in FAMILIES for s in (1, 5)] + [MANIFEST])
    assert a.keys() == b.keys() == c.keys()
    differing = [k for k in a if not a[k] == b[k] == c[k]]
    assert differing == []
    # A different seed changes the random families (and only those stay equal that ignore rng).
    other = CorruptParams(families=("gaussian_noise",), severities=(1,), seed=12)
    corrupt(other, csv, raw, tmp_path / "d" / "corrupted", workers=1)
    rows_a = read_csv(tmp_path / "a" / "corrupted" / MANIFEST)
    rows_d = read_csv(tmp_path / "d" / "corrupted" / MANIFEST)
    before = {r["member"]: r["sha256"] for r in rows_a if r["archive"] == "gaussian_noise/1.zip"}
    assert len(rows_d) == N_IMAGES and all(before[r["member"]] != r["sha256"] for r in rows_d)


def test_zips_are_stored_in_test_order_with_fixed_headers(
    tmp_path: Path, split: tuple[Path, Path]
) -> None:
    raw, csv = split
    out = tmp_path / "corrupted"
    corrupt(CorruptParams(families=("jpeg",), severities=(2,)), csv, raw, out, workers=2)
    expected = [f"{r['label']}/{Path(r['path']).stem}.png" for r in read_csv(csv)]
    with zipfile.ZipFile(out / "jpeg" / "2.zip") as z:
        infos = z.infolist()
    assert [i.filename for i in infos] == expected
    assert {
        (i.compress_type, i.date_time, i.create_system, i.external_attr >> 16) for i in infos
    } == {(zipfile.ZIP_STORED, ZIP_DATE, 3, 0o100644)}


def test_manifest_and_labels(tmp_path: Path, split: tuple[Path, Path]) -> None:
    raw, csv = split
    params = CorruptParams(families=("seed", "jpeg", "elastic"), severities=(3, 1), seed=5)
    out = tmp_path / "corrupted"
    corrupt(params, csv, raw, out, workers=2)
    source = {r["path"]: r for r in read_csv(csv)}
    rows = read_csv(out / MANIFEST)
    assert list(rows[0]) == list(FIELDS)
    assert len(rows) == N_IMAGES * 3 * 2
    # Ordered by family, then severity (sorted by the schema), then test order.
    assert [(r["family"], r["severity"]) for r in rows[:: N_IMAGES]] == [
        ("seed", "1"), ("seed", "3"), ("jpeg", "1"), ("jpeg", "3"), ("elastic", "1"),
        ("elastic", "3"),
    ]  # fmt: skip
    for r in rows:
        src = source[r["source_path"]]
        assert r["label"] == src["label"] == r["member"].split("/")[0]
        assert r["archive"] == f"{r['family']}/{r['severity']}.zip"
        assert r["source_sha256"] == src["sha256"] and r["patient_id"] == src["patient_id"]
        data = member(out, r)
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        img = decode_gray(data)
        assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8


def test_output_is_a_function_of_content_not_of_path(
    tmp_path: Path, split: tuple[Path, Path]
) -> None:
    raw, csv = split
    params = CorruptParams(families=("elastic", "impulse_noise"), severities=(2,), seed=3)
    out = tmp_path / "corrupted"
    corrupt(params, csv, raw, out, workers=1)
    for r in read_csv(out / MANIFEST)[:4]:
        fam, sev = r["family"], int(r["severity"])
        image = decode_gray((raw / r["source_path"]).read_bytes())
        rng = rng_for(r["source_sha256"], fam, sev, params.seed)
        expected = corrupt_image(image, fam, sev, rng)
        assert member(out, r) == png_bytes_fast(expected)


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_mid_run_keeps_previous_output(
    tmp_path: Path, split: tuple[Path, Path], workers: int
) -> None:
    raw, csv = split
    out = tmp_path / "data" / "corrupted"
    params = CorruptParams(families=("seed", "gaussian_blur"), severities=(1, 2), seed=1)
    corrupt(params, csv, raw, out, workers=1)
    before = tree(out)
    # A second run with another seed over a split whose 9th image is broken: it fails after
    # earlier images were already written into the staging folder.
    rows = read_csv(csv)
    (raw / rows[8]["path"]).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        corrupt(params.model_copy(update={"seed": 2}), csv, raw, out, workers=workers)
    assert tree(out) == before
    assert leftovers(out.parent) == []


def test_stale_staging_folder_is_removed(tmp_path: Path, split: tuple[Path, Path]) -> None:
    raw, csv = split
    out = tmp_path / "data" / "corrupted"
    stale = out.parent / ".corrupted.abc123.tmp"
    (stale / "seed" / "1").mkdir(parents=True)
    (stale / "seed" / "1" / "half.png").write_bytes(b"\x89PNG")
    corrupt(CorruptParams(families=("jpeg",), severities=(1,)), csv, raw, out, workers=1)
    assert leftovers(out.parent) == []
    assert (out / MANIFEST).exists()


def test_colliding_output_names_are_an_error(tmp_path: Path, split: tuple[Path, Path]) -> None:
    raw, csv = split
    rows = read_csv(csv)
    twin = dict(rows[0], path=rows[0]["path"].replace("/test/", "/train/"))
    (raw / twin["path"]).parent.mkdir(parents=True, exist_ok=True)
    (raw / twin["path"]).write_bytes((raw / rows[0]["path"]).read_bytes())
    write_csv(csv, [*rows, twin], SPLIT_FIELDS)
    out = tmp_path / "corrupted"
    with pytest.raises(ValueError, match="would both be written"):
        corrupt(CorruptParams(families=("jpeg",), severities=(1,)), csv, raw, out, workers=1)
    assert not out.exists() and leftovers(tmp_path) == []


def test_params_defaults_and_held_out() -> None:
    p = parse_params({}).corrupt
    assert p.families == tuple(FAMILIES)
    assert p.severities == (1, 2, 3, 4, 5)
    assert p.held_out == HELD_OUT
    assert p.finetune_families == tuple(f for f in FAMILIES if f not in HELD_OUT)
    custom = parse_params({"corrupt": {"held_out": ["jpeg"]}}).corrupt
    assert "jpeg" not in custom.finetune_families and "elastic" in custom.finetune_families


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"held_out": ["warp"]}, "corrupt.held_out: unknown corruption family 'warp'"),
        ({"families": ["seed", "fog"]}, "corrupt.families: unknown corruption family 'fog'"),
        ({"families": ["jpeg", "jpeg"]}, "corrupt.families: family 'jpeg' is listed twice"),
        ({"families": ["elastic"], "held_out": ["elastic"]}, "every family"),
        ({"severities": [0]}, "corrupt.severities.0"),
        ({"workers": 2}, "unknown key 'corrupt.workers' (moved to compute.workers)"),
    ],
)
def test_params_errors(section: dict[str, object], needle: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"corrupt": section})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def sigterm_corrupt_midway(tmp_path: Path, compute: dict, timeout_s: float) -> None:
    """Run `python -m tasks.corrupt`, SIGTERM it once images are staged: the old output stays."""
    import os
    import signal
    import subprocess
    import time

    import yaml

    raw, _ = make_split(tmp_path / "data", n=40)
    assert raw == tmp_path / "data" / "raw"
    out = tmp_path / "data" / "corrupted"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    params = {
        "corrupt": {"families": list(FAMILIES), "severities": [1, 2, 3, 4, 5]},
        "compute": compute,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(stage_argv("corrupt"), cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        stages = list((tmp_path / "data").glob(".corrupted.*.tmp"))
        if stages and any(p.stat().st_size > 0 for p in stages[0].rglob("*.zip")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err.decode()
    assert leftovers(tmp_path / "data") == []
    assert tree(out) == {"previous.txt": b"kept"}


def test_sigterm_mid_run_leaves_previous_output(tmp_path: Path) -> None:
    sigterm_corrupt_midway(tmp_path, {"workers": 2}, timeout_s=60)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 64), (224, 200)])
def test_fast_png_round_trips_exactly(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape).astype(np.uint8)
    image[: shape[0] // 2] = 255  # flat and noisy parts, wrap-around differences
    data = png_bytes_fast(image)
    assert data == png_bytes_fast(image.copy())  # a function of the pixels
    np.testing.assert_array_equal(decode_gray(data), image)
    with pytest.raises(ValueError, match="2-D uint8"):
        png_bytes_fast(image.astype(np.int16))


def test_zip_readers_fail_with_one_line_naming_the_archive(tmp_path: Path) -> None:
    from xray.core.io import read_zip_images, write_zip
    from xray.models.dataset import load_members

    good = tmp_path / "set.zip"
    write_zip(good, [("NORMAL/a.png", png_bytes_fast(np.zeros((4, 4), np.uint8)))])
    assert [n for n, _ in read_zip_images(good)] == ["NORMAL/a.png"]
    with pytest.raises(ValueError, match=r"set\.zip: no member 'NORMAL/b\.png'"):
        read_zip_images(good, ["NORMAL/b.png"])
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.zip: not a readable zip"):
        read_zip_images(tmp_path / "bad.zip")
    with pytest.raises(FileNotFoundError, match=r"gone\.zip: not found"):
        read_zip_images(tmp_path / "gone.zip")
    write_zip(tmp_path / "broken.zip", [("NORMAL/a.png", b"\x89PNG broken")])
    rows = [{"archive": "broken.zip", "member": "NORMAL/a.png"}]
    with pytest.raises(ValueError, match=r"broken\.zip: NORMAL/a\.png: cannot read image"):
        load_members(tmp_path, rows, 8)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_member_changed_after_corrupt_wrote_it_is_named_not_scored(tmp_path: Path) -> None:
    """Issue 24 item 1: a member replaced by another valid PNG fails before it is decoded."""
    from xray.core.errors import WorkError
    from xray.core.hashing import bytes_sha256
    from xray.core.io import write_zip
    from xray.models.dataset import load_members

    written = png_bytes_fast(np.zeros((4, 4), np.uint8))
    other = png_bytes_fast(np.full((4, 4), 255, np.uint8))  # valid, and not what was written
    rows = [{"archive": "seed_3.zip", "member": "NORMAL/a.png", "sha256": bytes_sha256(written)}]
    write_zip(tmp_path / "seed_3.zip", [("NORMAL/a.png", written)])
    assert load_members(tmp_path, rows, None)[0].max() == 0
    write_zip(tmp_path / "seed_3.zip", [("NORMAL/a.png", other)])
    with pytest.raises(WorkError, match=r"seed_3\.zip: NORMAL/a\.png: sha256 \w+\.\.\. is not"):
        load_members(tmp_path, rows, None)
    assert load_members(tmp_path, [{**rows[0], "sha256": ""}], None)[0].max() == 255  # no hash


def test_keep_freed_memory_is_idempotent() -> None:
    from xray.core.compute import keep_freed_memory

    first = keep_freed_memory()
    assert isinstance(first, bool) and keep_freed_memory() is first
