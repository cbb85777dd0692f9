"""DVC's private API as the project uses it (xray/core/dvc_private.py): fails on an upgrade
that breaks one.

Each private name is checked three ways: it exists, it has the signature relied on, and it
gives the result relied on, on a tiny DVC repository in tmp_path (no git, no pipeline run).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xray.core import dvc_private
from xray.core.dvc_private import (
    DvcError,
    add_local_remote,
    changed_stages,
    forget_repo,
    one_repo,
    pipeline_outs,
    remote_config,
)
from xray.core.errors import WorkError

DVC_YAML = """\
stages:
  make:
    cmd: echo make
    deps:
      - input.txt
    outs:
      - cached.txt
      - uncached.txt:
          cache: false
      - folder
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A DVC repository without git: .dvc/config, a remote with a relative URL, one stage."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text(
        "[core]\n    no_scm = True\n    remote = store\n"
        "['remote \"store\"']\n    url = ../dvc-store\n"
        "['remote \"cloud\"']\n    url = s3://bucket/path\n"
    )
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "input.txt").write_text("x\n")
    return tmp_path


def test_the_repo_index_outputs_attributes_exist() -> None:
    from dvc.output import Output
    from dvc.repo import Repo
    from dvc.repo.index import Index

    assert hasattr(Repo, "index") and hasattr(Index, "outs")
    assert "cache" in inspect.signature(Output.__init__).parameters  # -> Output.use_cache


def test_pipeline_outs_gives_each_output_with_its_cache_flag(repo: Path) -> None:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        outs = list(dvc_repo.index.outs)
    assert all(isinstance(o.use_cache, bool) and isinstance(o.fs_path, str) for o in outs)
    outs = sorted(pipeline_outs(repo))
    assert outs == [
        (repo / "cached.txt", True),
        (repo / "folder", True),
        (repo / "uncached.txt", False),
    ]


def test_remote_config_gives_absolute_local_urls_and_the_default(repo: Path) -> None:
    from dvc.config import Config

    assert callable(Config.edit) and "level" in inspect.signature(Config.edit).parameters
    remotes, default = remote_config(repo)
    assert remotes == {
        "store": str(repo / "dvc-store"),  # relative to .dvc/, made absolute
        "cloud": "s3://bucket/path",
    }
    assert default == "store"


def test_add_local_remote_writes_config_local_only(repo: Path) -> None:
    before = (repo / ".dvc/config").read_text()
    add_local_remote(repo, "extra", "/somewhere/else")
    assert (repo / ".dvc/config").read_text() == before
    assert "/somewhere/else" in (repo / ".dvc/config.local").read_text()
    remotes, default = remote_config(repo)
    assert remotes["extra"] == "/somewhere/else" and default == "store"
    # the documented public fallback reads the same remote
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "list", "--local"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listed.split() == ["extra", "/somewhere/else"]


def test_a_dvc_failure_is_one_line_dvc_error(repo: Path) -> None:
    (repo / "dvc.yaml").write_text("stages:\n  make:\n    cmd: [unclosed\n")
    with pytest.raises(DvcError) as caught:
        pipeline_outs(repo)
    assert isinstance(caught.value, WorkError) and "\n" not in str(caught.value)


def test_every_private_api_is_named_in_the_module_docstring() -> None:
    doc = dvc_private.__doc__ or ""
    names = ("index.outs", "use_cache", "fs_path", 'config["remote"]', "edit", "status()")
    for name in (*names, "cache.local.path", "Tree.as_bytes"):
        assert name in doc, name


def test_tree_md5_is_dvcs_own_folder_hash() -> None:
    """The folder md5 of dvc_data's Tree, which dvc.lock records, for a nested folder."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    from xray.core.dvc_private import tree_md5

    files = [("b.txt", "0" * 32), ("a/z.txt", "1" * 32), ("a-b.txt", "2" * 32)]
    tree = Tree()
    for rel, md5 in files:
        tree.add(tuple(rel.split("/")), Meta(), HashInfo("md5", md5))
    tree.digest()
    assert tree.hash_info.value == tree_md5(files) + ".dir"


TWO_STAGES = """\
stages:
  first:
    cmd: python -c "open('a.txt', 'w').write(open('input.txt').read())"
    deps: [input.txt]
    outs: [a.txt]
  second:
    cmd: python -c "open('b.txt', 'w').write(open('a.txt').read())"
    deps: [a.txt]
    outs: [b.txt]
"""


def test_changed_stages_is_what_dvc_status_reports(repo: Path) -> None:
    """In-process Repo.status(): the same stages as `dvc status --json`, none when clean."""
    (repo / "dvc.yaml").write_text(TWO_STAGES)
    (repo / ".dvc/config").write_text("[core]\n    no_scm = True\n")
    from dvc.repo.status import status

    assert "targets" in inspect.signature(status).parameters  # what Repo.status() is

    def command() -> set[str]:
        out = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return set(json.loads(out.strip().splitlines()[-1]))

    assert changed_stages(repo) == command() == {"first", "second"}  # never ran
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=repo, check=True, capture_output=True
    )
    assert changed_stages(repo) == command() == set()
    (repo / "input.txt").write_text("y\n")
    assert changed_stages(repo) == command() == {"first"}  # `second` is stale only after it


def _count_repo_opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """A list that gets the arguments of every DVC Repo opened from now on (this test)."""
    from dvc import repo as dvc_repo

    opened: list[tuple[object, ...]] = []
    real_init = dvc_repo.Repo.__init__

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        opened.append(args)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dvc_repo.Repo, "__init__", counting_init)
    return opened


def test_one_repo_opens_dvc_once_for_every_helper_inside(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _count_repo_opens(monkeypatch)
    pipeline_outs(repo), remote_config(repo)
    assert len(opened) == 2  # one each, outside
    opened.clear()
    with one_repo(repo):
        with one_repo(repo):  # nested: the outer one's
            pipeline_outs(repo)
        remote_config(repo), changed_stages(repo), pipeline_outs(repo / ".")
    assert len(opened) == 1
    opened.clear()
    pipeline_outs(repo)  # closed again on exit
    assert len(opened) == 1
    opened.clear()
    with one_repo(repo):  # opened by the first helper that needs it, not on entry
        pass
    with one_repo(repo.parent):  # nor where no helper runs (not a DVC repository)
        pass
    assert opened == []
    with pytest.raises(DvcError), one_repo(repo.parent):
        pipeline_outs(repo.parent)


def test_forget_repo_makes_the_next_helper_read_the_pipeline_afresh(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _count_repo_opens(monkeypatch)
    more = DVC_YAML.replace("      - folder\n", "      - folder\n      - more.txt\n")
    with one_repo(repo):
        before = pipeline_outs(repo)
        (repo / "dvc.yaml").write_text(more)  # as a stage run rewrites dvc.lock
        assert pipeline_outs(repo) == before  # the held Repo answers from what it read
        forget_repo(repo)
        after = pipeline_outs(repo)
        forget_repo(repo.parent)  # nothing held there: nothing to do
    assert (repo / "more.txt", True) in after and (repo / "more.txt", True) not in before
    assert len(opened) == 2


def test_the_status_checks_index_lists_the_outputs_once(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvc.repo.index import Index

    fresh = pipeline_outs(repo)
    built = []
    real = Index.from_repo.__func__  # type: ignore[attr-defined]

    def counting(cls: type, *args: object, **kwargs: object) -> object:
        built.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Index, "from_repo", classmethod(counting))
    with one_repo(repo):
        assert changed_stages(repo) == {"make"}
        assert pipeline_outs(repo) == fresh  # from the status check's own index
        assert len(built) == 1
        forget_repo(repo)
        assert pipeline_outs(repo) == fresh
    assert len(built) == 2  # a fresh one after forget_repo
    assert changed_stages(repo) == {"make"} and pipeline_outs(repo) == fresh  # outside: as ever
