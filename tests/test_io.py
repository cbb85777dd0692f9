"""Atomic writes: modes under the umask, nothing half-written, links never written through."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from xray.core.io import atomic_file, write_bytes_atomic, write_zip
from xray.reports.figures import save_figure


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_every_writer_follows_the_umask(tmp_path: Path, umask_027: None) -> None:
    fig = plt.figure()
    try:
        save_figure(fig, tmp_path / "f.png", dpi=20)
    finally:
        plt.close(fig)
    write_zip(tmp_path / "z.zip", [("a.png", b"x")])
    write_bytes_atomic(tmp_path / "b.bin", b"x")
    for name in ("f.png", "z.zip", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_output_hardlinked_to_a_cache_file_is_replaced_not_written_through(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    cache.write_bytes(b"cached")
    out = tmp_path / "out.zip"
    os.link(cache, out)  # what DVC's cache.type hardlink leaves in the workspace
    write_zip(out, [("a.png", b"new")])
    assert cache.read_bytes() == b"cached"
    assert out.stat().st_ino != cache.stat().st_ino


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_full_disk_is_one_line_naming_the_output_and_keeps_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 24 item 11: writing fails with ENOSPC (the kernel's, from /dev/full): one line that
    names the output, exit status 1, the previous output kept, no temporary left."""
    from xray.core.errors import EXIT_FAILED, DiskFullError
    from xray.core.io import atomic_file, staged_dir
    from xray.core.runtime import report_error

    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "kept.png").write_bytes(b"old")
    full = r"raw: no space left on device while writing it \("
    with pytest.raises(DiskFullError, match=full), staged_dir(raw) as stage:
        (stage / "new.png").write_bytes(b"new")
        Path("/dev/full").write_bytes(b"x" * 4096)  # the disk fills
    assert [p.name for p in raw.iterdir()] == ["kept.png"]
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]
    model = tmp_path / "model.keras"
    model.write_bytes(b"old model")
    full = r"model\.keras: no space left on device"
    with pytest.raises(DiskFullError, match=full), atomic_file(model):
        Path("/dev/full").write_bytes(b"x")
    assert model.read_bytes() == b"old model" and sorted(os.listdir(tmp_path)) == [
        "data",
        "model.keras",
    ]
    try:  # outside the writers: the raw OSError, still one line and exit status 1
        Path("/dev/full").write_bytes(b"x")
    except OSError as e:
        assert report_error(e) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: no space left on device "
        "(free space, then rerun; nothing already saved was replaced)"
    ]
