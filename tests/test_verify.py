"""`xray verify` on a real DVC repository (issue 24 item 2): a hand edit of a linked output,
which changes its cache object too, is found and named; a clean repository passes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xray.cli.main import main
from xray.core.dvc_private import cache_files_dir
from xray.records.verify import VerifyError, check_verified, verify

DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps:
      - make.py
    outs:
      - model.bin
      - metrics.json:
          cache: false
      - images
      - live:
          cache: false
"""
MAKE = """\
from pathlib import Path
Path("model.bin").write_bytes(b"weights" * 1000)
Path("metrics.json").write_text('{"auc": 0.9}')
Path("images").mkdir(exist_ok=True)
for i in range(3):
    Path("images", f"{i}.png").write_bytes(bytes([i]) * 100)
Path("live", "plots").mkdir(parents=True, exist_ok=True)
Path("live", "plots", "auc.tsv").write_text("step,auc,0,0.5")
Path("live", "metrics.json").write_text("{}")
"""


def _dvc(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC repository (no git) whose one stage ran, its cache linked as the project's is."""
    root = tmp_path_factory.mktemp("verify")
    (root / ".dvc").mkdir()
    (root / ".dvc/config").write_text(
        '[core]\n    no_scm = True\n[cache]\n    type = "hardlink,symlink"\n'
    )
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "make.py").write_text(MAKE)
    _dvc(root, "repro")
    return root


def _poke(path: Path, data: bytes) -> None:
    """Edit a file in place, as root does regardless of the read-only bit."""
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    with path.open("r+b") as f:
        f.write(data)


def test_the_cache_folder_is_dvcs_own(built: Path) -> None:
    """The private `repo.cache.local.path` against the public `dvc cache dir`."""
    public = Path(_dvc(built, "cache", "dir").strip())
    assert cache_files_dir(built) == public / "files" / "md5"


def test_a_clean_repository_verifies(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = check_verified(built)
    assert result["problems"] == [] and result["files"] == 7  # model, metrics, 3 images, live
    # the hardlinked model and its cache object are hashed once
    assert result["bytes_hashed"] == 7000 + len('{"auc": 0.9}') + 300 + len("step,auc,0,0.5{}")
    assert main(["verify", "--workdir", str(built)]) == 0
    assert capsys.readouterr().out.startswith("verified 7 files")


def test_an_in_place_edit_poisons_the_linked_cache_and_is_named(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(built, root, symlinks=True)
    _dvc(root, "checkout", "--relink")  # outputs linked to this copy's cache, as after a run
    assert (root / "model.bin").stat().st_nlink == 2
    _poke(root / "model.bin", b"WEIGHTS")
    _poke(root / "images" / "1.png", b"\xff")
    (root / "images" / "extra.png").write_bytes(b"new")
    (root / "live" / "plots" / "auc.tsv").write_text("step\tauc\n0\t0.9\n")  # no cache
    problems = verify(root)["problems"]
    assert sorted(problems) == sorted(
        [
            "images/1.png: differs from dvc.lock (edited after its stage wrote it)",
            f"images/1.png: cache object {_object(root, 'images/1.png')} does not match its "
            "md5 (poisoned)",
            "images/extra.png: in the workspace, not in dvc.lock (added by hand?)",
            "live: differs from dvc.lock (a file in it edited, added or gone)",
            "model.bin: differs from dvc.lock (edited after its stage wrote it)",
            f"model.bin: cache object {_object(root, 'model.bin')} does not match its md5 "
            "(poisoned)",
        ]
    )
    with pytest.raises(
        VerifyError, match=r"^verify: 6 problem\(s\): .* \(and 1 more: xray verify\)$"
    ):
        check_verified(root)
    assert main(["verify", "--workdir", str(root)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and len(err.splitlines()) == 1


def _object(root: Path, rel: str) -> Path:
    """The cache object an output's workspace file is linked to (same inode)."""
    ino = (root / rel).stat().st_ino
    cache = cache_files_dir(root)
    return next(p for p in cache.rglob("*") if p.is_file() and p.stat().st_ino == ino)


def test_a_missing_cache_is_named_not_passed(built: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "bare"
    shutil.copytree(built, root, symlinks=True)  # copies, then the cache goes
    shutil.rmtree(root / ".dvc" / "cache")
    problems = verify(root)["problems"]
    assert problems == [
        f"images: the cache has no listing {_lock_md5(root, 'images')} (dvc pull, or rerun its "
        "stage)",
        f"model.bin: no cache object {cache_files_dir(root)}/"
        f"{_lock_md5(root, 'model.bin')[:2]}/{_lock_md5(root, 'model.bin')[2:]} "
        "(dvc commit, or dvc pull)",
    ]


def _lock_md5(root: Path, path: str) -> str:
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["make"]["outs"] if o["path"] == path)


def test_a_run_reads_only_what_changed_since_its_last_verify(tmp_path: Path, built: Path) -> None:
    """remember=True (a run's check): unchanged files are not read again, a written one is."""
    import shutil

    root = tmp_path / "again"
    shutil.copytree(built, root, symlinks=True)
    _dvc(root, "checkout", "--relink")
    first = verify(root, remember=True)
    assert first["problems"] == [] and first["bytes_hashed"] > 7000
    second = verify(root, remember=True)
    assert second["problems"] == [] and second["bytes_hashed"] == 0
    _poke(root / "model.bin", b"WEIGHTS")  # mtime, ctime move: read again, and found
    third = verify(root, remember=True)
    assert third["bytes_hashed"] == 7000 and len(third["problems"]) == 2
    assert verify(root)["bytes_hashed"] > 7000  # `xray verify`: everything, every time


def test_a_push_is_skipped_when_the_folder_remote_has_everything(
    tmp_path: Path, built: Path
) -> None:
    """Issue 24 item 5: the second push of an unchanged workspace runs no `dvc push`."""
    import shutil

    from xray.records.remote import dvc_push

    root = tmp_path / "pushing"
    shutil.copytree(built, root, symlinks=True)
    remote = tmp_path / "store"
    _dvc(root, "remote", "add", "-d", "store", str(remote))
    first = dvc_push(root, None)
    assert first["skipped"] is False and any(remote.rglob("*"))
    assert dvc_push(root, None)["skipped"] is True
    victim = next(p for p in remote.rglob("*") if p.is_file())
    victim.unlink()  # the remote lost an object: pushed again
    assert dvc_push(root, None)["skipped"] is False and victim.exists()
