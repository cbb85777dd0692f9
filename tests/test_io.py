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
