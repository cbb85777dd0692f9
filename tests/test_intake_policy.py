"""The intake policy (docs/data-intake.md) and its limits, each with the smallest input.

File-system entries of a source, label conflicts, class minimums, byte and pixel caps,
work folders after a kill -9, output modes under the umask, and the archive's name in
layout errors (issue 14).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xray.core.io as tio
from xray.core.io import read_csv, sweep_work, write_csv
from xray.core.params import DataParams, SplitParams
from xray.data.intake.images import BadImage, load_image, read_file
from xray.data.intake.ingest import download
from xray.data.intake.source import DownloadError, probe
from xray.data.splitting import SplitError, split

HANG_GUARD_S = 20


def _jpeg(seed: int, side: int = 24) -> bytes:
    """A small distinct grayscale JPEG."""
    arr = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _source(root: Path, per_class: int = 2) -> Path:
    """A flat folder with NORMAL/ and PNEUMONIA/, `per_class` distinct images each."""
    for c, cls in enumerate(("NORMAL", "PNEUMONIA")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"person{c * 100 + i}_bacteria_{i}.jpeg").write_bytes(_jpeg(c * 100 + i))
    return root


@contextlib.contextmanager
def no_hang(seconds: int = HANG_GUARD_S) -> Iterator[None]:
    """Fail (instead of hanging forever) when the block blocks longer than `seconds`."""

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def private_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work folders and the download cache inside this test's tmp folder."""
    work = tmp_path / "work"
    monkeypatch.setattr(tio, "WORK_ROOT", work)
    import xray.data.intake.source as dl

    monkeypatch.setattr(dl, "DOWNLOAD_CACHE", tmp_path / "downloads")
    return work


def _run(tmp_path: Path, params: DataParams) -> tuple[dict[str, int], dict[str, str], Path]:
    """Probe and run the stage in tmp_path/project; (counts, quarantine path -> reason, raw)."""
    out = tmp_path / "project"
    record = out / "data" / "source.json"
    probe(params, record)
    counts = download(
        params,
        out_dir=out / "data" / "raw",
        quarantine_csv=out / "reports" / "quarantine.csv",
        duplicates_csv=out / "reports" / "duplicates.csv",
        workers=1,
        record=record,
    )
    rows = read_csv(out / "reports" / "quarantine.csv")
    return counts, {r["path"]: r["reason"] for r in rows}, out / "data" / "raw"


# --------------------------------------------------------------------------- 1. entries


def test_fifo_named_jpeg_hangs_neither_probe_nor_stage(tmp_path: Path) -> None:
    """A FIFO named .jpeg in a class folder is never opened: probe and stage finish."""
    src = _source(tmp_path / "src")
    os.mkfifo(src / "NORMAL" / "pipe.jpeg")
    params = DataParams(source=str(src), max_bad_fraction=0.5)
    with no_hang():
        counts, quarantined, _ = _run(tmp_path, params)
    assert counts["images"] == 4
    assert quarantined == {"NORMAL/pipe.jpeg": "fifo"}


def test_fifo_named_zip_as_the_source_is_refused(tmp_path: Path) -> None:
    """data.source naming a FIFO called data.zip: one line, never opened."""
    os.mkfifo(tmp_path / "data.zip")
    with no_hang(), pytest.raises(DownloadError, match=r"data\.zip is not a regular file$"):
        probe(DataParams(source=str(tmp_path / "data.zip")), tmp_path / "source.json")


def test_every_entry_kind_gets_its_answer(tmp_path: Path) -> None:
    """Links inside are ingested; links out, broken links, sockets, odd names, non-images are
    listed with a reason; hidden files are ignored; nothing outside the source is read."""
    src = _source(tmp_path / "src")
    normal = src / "NORMAL"
    (src / "store").mkdir()
    (src / "store" / "IM-0007-0001.jpeg").write_bytes(_jpeg(7))
    (normal / "IM-0007-0001.jpeg").symlink_to(src / "store" / "IM-0007-0001.jpeg")
    outside = tmp_path / "outside.jpeg"
    outside.write_bytes(_jpeg(8))
    (normal / "out.jpeg").symlink_to(outside)
    (normal / "gone.jpeg").symlink_to(tmp_path / "missing.jpeg")
    (normal / ".hidden.jpeg").write_bytes(_jpeg(9))
    (normal / "notes.txt").write_text("not an image\n")
    os.close(os.open(os.fsencode(normal) + b"/bad\xffname.jpeg", os.O_CREAT | os.O_WRONLY))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(normal / "s.jpeg"))
    try:
        params = DataParams(source=str(src), ignore=("store",), max_bad_fraction=0.9)
        with no_hang():
            counts, quarantined, raw = _run(tmp_path, params)
    finally:
        sock.close()
    assert quarantined == {
        "NORMAL/bad\\xffname.jpeg": "name_not_utf8",
        "NORMAL/gone.jpeg": "broken_link",
        "NORMAL/notes.txt": "not_an_image_type",
        "NORMAL/out.jpeg": "link_outside_source",
        "NORMAL/s.jpeg": "socket",
    }
    rows = read_csv(raw / "manifest.csv")
    assert counts["images"] == 5 == len(rows)  # 2 + 2 + the link inside
    assert any(r["path"].endswith("IM-0007-0001.png") for r in rows)
    from xray.core.hashing import bytes_sha256

    assert bytes_sha256(outside.read_bytes()) not in {r["sha256"] for r in rows}


def test_class_folder_link_inside_the_source_is_followed(tmp_path: Path) -> None:
    """A class folder that is a link to a folder inside the source is not silently lost."""
    src = tmp_path / "src"
    (src / "NORMAL").mkdir(parents=True)
    (src / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(_jpeg(1))
    (src / "store").mkdir()
    (src / "store" / "person1_virus_1.jpeg").write_bytes(_jpeg(2))
    (src / "PNEUMONIA").symlink_to(src / "store", target_is_directory=True)
    _, _, raw = _run(tmp_path, DataParams(source=str(src), ignore=("store",)))
    labels = sorted(r["label"] for r in read_csv(raw / "manifest.csv"))
    assert labels == ["NORMAL", "PNEUMONIA"]


def test_class_folder_link_outside_the_source_is_refused(tmp_path: Path) -> None:
    """A class folder linked to a folder outside the source: one line, nothing read."""
    src = tmp_path / "src"
    (src / "NORMAL").mkdir(parents=True)
    (src / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(_jpeg(1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "person1_virus_1.jpeg").write_bytes(_jpeg(2))
    (src / "PNEUMONIA").symlink_to(elsewhere, target_is_directory=True)
    params = DataParams(source=str(src))
    with pytest.raises(DownloadError) as ei:
        probe(params, tmp_path / "source.json")
    msg = str(ei.value)
    assert "PNEUMONIA is a link to a folder outside the source" in msg and "\n" not in msg
    with pytest.raises(DownloadError, match="PNEUMONIA is a link to a folder outside"):
        download(
            params, tmp_path / "raw", tmp_path / "q.csv", tmp_path / "d.csv", record=None, workers=1
        )
    assert not (tmp_path / "raw").exists()


def test_folder_link_loop_ends(tmp_path: Path) -> None:
    """A link from a class folder to its own parent is skipped, not walked forever."""
    src = _source(tmp_path / "src")
    (src / "NORMAL" / "loop").symlink_to(src / "NORMAL", target_is_directory=True)
    with no_hang():
        counts, quarantined, _ = _run(tmp_path, DataParams(source=str(src)))
    assert counts["images"] == 4
    assert quarantined == {"NORMAL/loop": "link_loop"}


# --------------------------------------------------------------------------- 2. labels


def test_same_image_under_two_classes_is_a_conflict_kept_out(tmp_path: Path) -> None:
    """Identical bytes under NORMAL and PNEUMONIA: both out, each naming the other; an
    exact duplicate within one class stays (grouped by split as before)."""
    src = _source(tmp_path / "src", per_class=3)
    same = _jpeg(555)
    (src / "NORMAL" / "IM-0555-0001.jpeg").write_bytes(same)
    (src / "PNEUMONIA" / "person555_virus_1.jpeg").write_bytes(same)
    (src / "NORMAL" / "IM-0001-0002.jpeg").write_bytes(
        (src / "NORMAL" / "person0_bacteria_0.jpeg").read_bytes()
    )
    params = DataParams(source=str(src), max_bad_fraction=0.3)
    counts, quarantined, raw = _run(tmp_path, params)
    assert quarantined == {
        "NORMAL/IM-0555-0001.jpeg": "label_conflict",
        "PNEUMONIA/person555_virus_1.jpeg": "label_conflict",
    }
    detail = {r["path"]: r["detail"] for r in read_csv(tmp_path / "project/reports/quarantine.csv")}
    assert "PNEUMONIA/person555_virus_1.jpeg (PNEUMONIA)" in detail["NORMAL/IM-0555-0001.jpeg"]
    rows = read_csv(raw / "manifest.csv")
    assert counts["images"] == 7 == len(rows)
    assert counts["duplicate_groups"] == 1
    assert not any("555" in r["path"] for r in rows)


def test_label_conflicts_count_against_max_bad_fraction(tmp_path: Path) -> None:
    """Above data.max_bad_fraction the stage fails with one line naming the conflicts."""
    src = _source(tmp_path / "src", per_class=2)
    same = _jpeg(555)
    (src / "NORMAL" / "a.jpeg").write_bytes(same)
    (src / "PNEUMONIA" / "b.jpeg").write_bytes(same)
    with pytest.raises(DownloadError, match=r"^data\.max_bad_fraction: 2 of 6 images .*2 in label"):
        _run(tmp_path, DataParams(source=str(src), max_bad_fraction=0.1))


# --------------------------------------------------------------------------- 3. classes


def test_empty_class_folder_fails_the_stage(tmp_path: Path) -> None:
    """A class with no images: one line naming the class and the count."""
    src = tmp_path / "src"
    (src / "NORMAL").mkdir(parents=True)
    (src / "PNEUMONIA").mkdir()
    (src / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(_jpeg(1))
    with pytest.raises(
        DownloadError, match=r"^data\.min_images_per_class: class PNEUMONIA has 0 images in "
    ):
        _run(tmp_path, DataParams(source=str(src)))
    with pytest.raises(DownloadError, match=r"class NORMAL has 1 images in .*at least 2 needed$"):
        _run(tmp_path, DataParams(source=str(_source(tmp_path / "two", 1)), min_images_per_class=2))


def test_split_checks_each_class_in_train_and_test(tmp_path: Path) -> None:
    """A test split without PNEUMONIA: one line naming the class, the count and the split."""
    rows = [
        {
            "path": f"images/{s}/{c}/{i}.png",
            "label": c,
            "source_split": s,
            "patient_id": f"{s}{c}{i}",
            "sha256": f"{s}{c}{i}",
            "width": 8,
            "height": 8,
        }
        for s, classes in (("train", ("NORMAL", "PNEUMONIA")), ("test", ("NORMAL",)))
        for c in classes
        for i in range(4)
    ]
    manifest = tmp_path / "manifest.csv"
    write_csv(manifest, rows, tio.MANIFEST_FIELDS)
    with pytest.raises(SplitError, match=r"class PNEUMONIA has 0 images in the test split"):
        split(
            SplitParams(),
            manifest,
            tmp_path / "splits",
            tmp_path / "s.json",
            tmp_path / "s.csv",
            data=DataParams(),
        )


# --------------------------------------------------------------------------- 4. limits


def test_file_byte_cap_is_checked_before_reading(tmp_path: Path) -> None:
    """A 300 MB (sparse) file of zeros is refused by its size, never read into memory."""
    big = tmp_path / "big.jpeg"
    with big.open("wb") as f:
        f.truncate(300 << 20)
    t = time.perf_counter()
    with pytest.raises(BadImage, match="too_large"):
        read_file(big, max_bytes=1 << 20)
    assert time.perf_counter() - t < 1.0
    src = _source(tmp_path / "src")
    os.link(big, src / "NORMAL" / "zeros.jpeg")
    _, quarantined, _ = _run(
        tmp_path, DataParams(source=str(src), max_file_bytes=1 << 20, max_bad_fraction=0.5)
    )
    assert quarantined == {"NORMAL/zeros.jpeg": "too_large"}


def test_pixel_cap_is_read_from_the_header(tmp_path: Path) -> None:
    """A PNG whose header claims 40000 x 40000 pixels is refused before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(BadImage, match="too_many_pixels"):
        load_image(png, max_pixels=10**6)


# --------------------------------------------------------------------------- 5. work folders


def test_work_folders_are_removed_on_success_and_failure(
    tmp_path: Path, private_work: Path
) -> None:
    """The stage's temporary folder lives under the work root and is gone afterwards."""
    src = _source(tmp_path / "src")
    _run(tmp_path, DataParams(source=str(src)))
    assert list(private_work.iterdir()) == []
    with pytest.raises(DownloadError):
        _run(tmp_path, DataParams(source=str(src), min_images_per_class=5))
    assert list(private_work.iterdir()) == []


def test_work_folder_of_a_killed_run_is_swept(tmp_path: Path, private_work: Path) -> None:
    """kill -9 inside work_dir leaves a folder (and an orphaned forked worker); the next run
    removes it, and not the folder of a run still alive."""
    code = (
        "import os, sys, time; from pathlib import Path; from xray.core.io import work_dir\n"
        "with work_dir(sys.argv[2], Path(sys.argv[1])) as d:\n"
        "    (d / 'part').write_bytes(b'x')\n"
        "    worker = os.fork() if sys.argv[2] == 'killed' else 1\n"
        "    if worker == 0: time.sleep(30); os._exit(0)\n"
        "    print(d, worker, flush=True); time.sleep(60)\n"
    )
    root = Path(__file__).resolve().parents[1]
    children, folders, orphans = [], [], []
    for name in ("killed", "alive"):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(private_work), name],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        folder, worker = child.stdout.readline().split()
        children.append(child)
        folders.append(Path(folder))
        orphans.append(int(worker))
    killed, alive = folders
    try:
        children[0].kill()  # SIGKILL: no cleanup of its own; its forked worker lives on
        children[0].wait()
        assert killed.is_dir()
        assert sweep_work(private_work) == 1
        assert not killed.exists() and alive.is_dir()
    finally:
        children[1].kill()
        children[1].wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphans[0], signal.SIGKILL)


# --------------------------------------------------------------------------- 6. modes


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path: Path, mask: int) -> None:
    """data/raw, manifest.csv and source.json get the modes of ordinary files."""
    old = os.umask(mask)
    try:
        _, _, raw = _run(tmp_path, DataParams(source=str(_source(tmp_path / "src"))))
    finally:
        os.umask(old)
    assert stat.S_IMODE(raw.stat().st_mode) == 0o777 & ~mask
    for f in (raw / "manifest.csv", raw / "source.json", raw.parent / "source.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


# --------------------------------------------------------------------------- messages


def test_archive_without_class_folders_is_named_by_its_name(tmp_path: Path) -> None:
    """The error names the archive, not the temporary folder it was extracted to."""
    arc = tmp_path / "photos.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("cats/a.jpeg", _jpeg(1))
    with pytest.raises(DownloadError) as ei:
        download(
            DataParams(source=str(arc)),
            tmp_path / "raw",
            tmp_path / "q.csv",
            tmp_path / "d.csv",
            record=None,
            workers=1,
        )
    msg = str(ei.value)
    assert msg.startswith(f"{arc}: no class folders named like"), msg
    assert "tmp" not in msg.replace(str(tmp_path), "")


def test_staged_output_of_a_killed_run_is_swept(tmp_path: Path) -> None:
    """A `.raw.*.tmp` folder left next to data/raw by a killed run goes on the next run."""
    raw = tmp_path / "project" / "data" / "raw"
    raw.parent.mkdir(parents=True)
    stale = raw.parent / ".raw.killed.tmp"
    (stale / "images").mkdir(parents=True)
    old = time.time() - 2 * tio.STALE_AFTER_S
    os.utime(stale, (old, old))
    _run(tmp_path, DataParams(source=str(_source(tmp_path / "src"))))
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw", "source.json"]
