"""The DVC cache is linked into the workspace, and outputs are replaced, never edited in place."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from conftest import ROOT


def test_cache_links_every_output() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    types = [t.strip() for t in config["cache"]["type"].strip('"').split(",")]
    assert types[0] == "hardlink"
    # With copy or reflink listed, DVC takes copied files of a directory output for linked
    # ones and never relinks them (docs/operations.md): the disk saving would be lost.
    assert not {"copy", "reflink"} & set(types)


def test_figures_replace_a_linked_file_without_touching_the_cache(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from xray.reports.figures import save_figure

    cache, out = tmp_path / "cache_entry", tmp_path / "figures" / "plot.png"
    out.parent.mkdir()
    cache.write_bytes(b"cached figure")
    os.link(cache, out)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, out, dpi=50)
    plt.close(fig)
    assert cache.read_bytes() == b"cached figure"
    assert out.read_bytes().startswith(b"\x89PNG") and os.stat(out).st_nlink == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["plot.png"]  # no temporary left
