"""Stage deps cannot drift: every module a stage imports is one of its deps in dvc.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray.cli.main import main
from xray.runner.stage_deps import check_stages, describe, describe_deps, import_closure

ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path, deps: list[str], files: dict[str, str]) -> Path:
    """A tiny project: one stage `a` running `python -m pkg.a` with the given deps."""
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  a:\n    cmd: python -m pkg.a\n    deps:\n"
        + "".join(f"      - {d}\n" for d in deps)
        + "  shell:\n    cmd: echo not a python stage\n"
    )
    for name, text in {"pkg/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


FILES = {
    "pkg/a.py": "import os\n\ndef main():\n    from pkg import b  # a lazy import counts\n",
    "pkg/b.py": "from .c import helper\nimport numpy\n",
    "pkg/c.py": "helper = 1\n",
    "pkg/unrelated.py": "x = 1\n",
}


def test_the_pipeline_lists_every_imported_module() -> None:
    results = check_stages(ROOT)
    assert {r.stage for r in results} == {
        "download",
        "split",
        "corrupt",
        "train_base",
        "finetune",
        "evaluate",
    }
    assert all(r.ok for r in results), describe(results)
    by_stage = {r.stage: set(r.needed) for r in results}
    assert "xray/core/params.py" in by_stage["split"]
    # Per-module granularity: evaluate's own code is not a dep of corrupt.
    assert "tasks/evaluate.py" not in by_stage["corrupt"]


@pytest.mark.parametrize(
    ("module", "stages"),
    [
        ("xray/perturbations/medmnist.py", {"corrupt", "finetune"}),
        # the `seed` family is also the proxy's damage (xray/reports/proxy.py)
        ("xray/perturbations/keras_seed.py", {"corrupt", "finetune", "evaluate"}),
        (
            "xray/perturbations/names.py",
            {"download", "split", "corrupt", "train_base", "finetune", "evaluate"},
        ),
        ("xray/models/finetune_training.py", {"finetune"}),
        ("xray/reports/figures.py", {"evaluate"}),
    ],
)
def test_a_module_reruns_only_the_stages_that_import_it(module: str, stages: set[str]) -> None:
    """Editing one corruption family's code does not rerun download, split or train_base."""
    results = check_stages(ROOT)
    assert {r.stage for r in results if module in r.needed} == stages
    import yaml

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = {
        name
        for name, stage in spec.items()
        if any(module == d or module.startswith(str(d).rstrip("/") + "/") for d in stage["deps"])
    }
    assert listed == stages  # and dvc.yaml lists it (or its folder) for exactly those


def test_transitive_lazy_and_relative_imports_are_followed(tmp_path: Path) -> None:
    root = _project(tmp_path, ["pkg/a.py"], FILES)
    assert import_closure("pkg/a.py", root) == {"pkg/a.py", "pkg/b.py", "pkg/c.py"}


def test_an_import_without_its_dep_is_reported(tmp_path: Path) -> None:
    root = _project(tmp_path, ["pkg/a.py", "pkg/b.py"], FILES)
    [result] = check_stages(root)
    assert result.missing == ("pkg/c.py",)
    assert not result.ok
    assert "stage a misses deps pkg/c.py" in describe([result])


def test_a_folder_dep_covers_its_modules(tmp_path: Path) -> None:
    root = _project(tmp_path, ["pkg"], FILES)
    [result] = check_stages(root)
    assert result.ok


def test_a_folder_dep_of_which_nothing_is_imported_is_reported_unused(tmp_path: Path) -> None:
    """A code folder the stage imports nothing from is unused, like an unused file; a data
    folder (no .py in it) is not code and never reported."""
    files = {**FILES, "lib/__init__.py": "", "lib/x.py": "x = 1\n", "lib/sub/y.py": "y = 1\n"}
    files["data/raw/image.txt"] = "pixels\n"
    root = _project(tmp_path, ["pkg", "lib", "data/raw"], files)
    [result] = check_stages(root)
    assert result.missing == () and result.unused == ("lib",)
    assert "never imports lib" in describe([result])
    assert dict(result.covers) == {"pkg": ("pkg/a.py", "pkg/b.py", "pkg/c.py"), "lib": ()}
    lines = ["a:", "  pkg (a.py, b.py, c.py)", "  lib (unused: imports nothing in it)"]
    assert describe_deps(result) == lines


def test_a_folder_dep_counts_as_used_when_one_module_in_it_is_imported(tmp_path: Path) -> None:
    files = {**FILES, "lib/__init__.py": "", "lib/x.py": "x = 1\n", "lib/sub/y.py": "y = 1\n"}
    files["pkg/c.py"] = "from lib.sub import y\n"
    root = _project(tmp_path, ["pkg/", "lib"], files)
    [result] = check_stages(root)
    assert result.ok, describe([result])
    assert dict(result.covers)["lib"] == ("lib/sub/y.py",)
    root = _project(tmp_path, ["pkg", "lib/x.py"], files)
    [result] = check_stages(root)
    assert result.missing == ("lib/sub/y.py",) and result.unused == ("lib/x.py",)
    assert "  lib/sub/y.py (missing: not a dep)" in describe_deps(result)


def test_a_listed_module_that_is_never_imported_is_reported(tmp_path: Path) -> None:
    root = _project(tmp_path, ["pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/unrelated.py"], FILES)
    [result] = check_stages(root)
    assert result.unused == ("pkg/unrelated.py",)
    assert "never imports pkg/unrelated.py" in describe([result])


def test_a_stage_module_that_does_not_exist_fails_with_one_line(tmp_path: Path) -> None:
    root = _project(tmp_path, ["pkg/a.py"], {})
    with pytest.raises(ValueError, match=r"stage a: no module pkg\.a"):
        check_stages(root)


def test_xray_deps_exits_1_naming_the_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _project(tmp_path, ["pkg/a.py"], FILES)
    assert main(["deps", "--workdir", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: dvc.yaml: stage a misses deps pkg/b.py, pkg/c.py")
    assert main(["deps", "--workdir", str(ROOT)]) == 0
