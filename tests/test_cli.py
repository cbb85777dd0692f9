"""The `xray` command line: help a newcomer can learn from, one-line usage errors, exit codes."""

from __future__ import annotations

import argparse
import inspect
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from xray.cli import main as cli
from xray.cli.base import EXIT_USAGE, UsageError, parse_overrides
from xray.core.errors import EXIT_FAILED, InputError, WorkError


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every `xray` subcommand's parser by name."""
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_a_description_an_example_and_exit_codes() -> None:
    subs = subcommands()
    assert {"run", "repro", "params", "probe", "predict", "adapt", "deps", "audit"} <= set(subs)
    for name, parser in subs.items():
        text = parser.format_help()
        assert parser.description, name
        assert "example:\n  xray " in text, name
        assert "exit status:" in text and "2  usage error" in text, name


def test_every_option_has_help_and_shows_a_real_default() -> None:
    for name, parser in subcommands().items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {action.option_strings or action.dest}"
            assert action.help, where
            default = action.default
            if action.option_strings and default not in (None, False, []):
                assert f"default: {default}" in text or "default:" in action.help, where


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("predict", "(default: models/finetuned.keras)"),
        ("predict", "(default: 32;"),
        ("params", "(default: params.yaml)"),
        ("run", "(default: xray-records)"),
        ("server", "(default: 4200)"),
    ],
)
def test_named_defaults_are_shown(command: str, shown: str) -> None:
    assert shown in " ".join(subcommands()[command].format_help().split())


def test_top_level_help_lists_exit_codes_and_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for needle in ("XRAY_LOG_LEVEL", "XRAY_TRACEBACK", "--verbose", "exit status:", "  1  "):
        assert needle in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("xray ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "--history", "--data", "abc"], "argument --data: not allowed with"),
        (["audit", "models/x.keras", "--history"], "not allowed with argument MODEL"),
        (["audit", "models/x.keras", "--data", "abc"], "not allowed with argument MODEL"),
        (["audit"], "give a MODEL, --history or --data HASH"),
        (["run", "--set", "train.epochs"], "expected KEY=VALUE"),
        (["run", "--stage", "nope"], "invalid choice: 'nope'"),
        (["params", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("xray"), err
    assert err[0].endswith("--help)")


def test_bad_params_file_and_log_level_are_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train: {epochs: 0}\n")
    assert cli.main(["params", "--file", str(bad)]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"error: {bad}: train.epochs")
    assert cli.main(["params", "--file", str(ROOT / "params.yaml")]) == 0
    capsys.readouterr()
    monkeypatch.setenv("XRAY_LOG_LEVEL", "loud")
    assert cli.main(["params"]) == EXIT_USAGE
    assert "XRAY_LOG_LEVEL='loud'" in capsys.readouterr().err


def test_run_options_match_the_deployment_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the nightly deployment can set, `xray run` can set too."""
    import flows.pipeline

    (tmp_path / "w").mkdir()
    for name in ("params.yaml", "dvc.yaml"):  # checked before Prefect starts
        shutil.copy(ROOT / name, tmp_path / "w" / name)
    monkeypatch.chdir(tmp_path)

    flow_params = set(inspect.signature(flows.pipeline.pipeline.fn).parameters)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: seen.update(kw))
    argv = ["run", "--workdir", "w", "--stage", "split", "--source", "s.zip"]
    argv += ["--set", "train.epochs=3", "--set", "data.classes=[A, B]", "--push"]
    argv += ["--remote", "r", "--record", "--branch", "b"]
    assert cli.main(argv) == 0
    assert seen == {
        "workdir": "w",
        "stages": ["split"],
        "source": "s.zip",
        "overrides": {"train.epochs": 3, "data.classes": ["A", "B"]},
        "push": True,
        "remote": "r",
        "record": True,
        "branch": "b",
        "only_stale": True,
    }
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert set(deployment["parameters"]) <= set(seen) <= flow_params
    seen.clear()  # no project there: one line before Prefect starts
    assert cli.main(["run", "--workdir", "nowhere"]) == EXIT_USAGE and not seen
    monkeypatch.chdir(tmp_path / "w")
    assert cli.main(["run"]) == 0
    assert seen["push"] is False and seen["record"] is False and seen["stages"] is None
    assert seen["branch"] == deployment["parameters"]["branch"]


def test_verbose_sets_debug_for_the_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import flows.pipeline

    monkeypatch.setenv("XRAY_LOG_LEVEL", "INFO")
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: None)
    assert cli.main(["--verbose", "run"]) == 0
    assert os.environ["XRAY_LOG_LEVEL"] == "DEBUG"  # inherited by the stage subprocesses


def test_overrides_parse_and_reject() -> None:
    """KEY=VALUE pairs parse as YAML values; a pair without `=` is one clear usage error."""
    assert parse_overrides(["train.epochs=3", "corrupt.families=[seed, fog]"]) == {
        "train.epochs": 3,
        "corrupt.families": ["seed", "fog"],
    }
    with pytest.raises(UsageError, match=r"train\.epochs"):
        parse_overrides(["train.epochs"])
    with pytest.raises(UsageError, match="not valid YAML"):
        parse_overrides(["corrupt.families=[seed"])


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (WorkError("stage x failed:\n  why"), EXIT_FAILED, "error: stage x failed: why"),
        (InputError("params.yaml: bad"), EXIT_USAGE, "error: params.yaml: bad"),
        (UsageError("give a MODEL"), EXIT_USAGE, "xray audit: error: give a MODEL (see xray"),
    ],
)
def test_the_dispatcher_maps_every_project_error_in_one_place(
    error: Exception,
    code: int,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A command raises; main prints one line and returns the error's exit status."""

    def fail(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.delenv("XRAY_TRACEBACK", raising=False)
    args = argparse.Namespace(command="audit", func=fail)
    assert cli.run_command(args) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err
    monkeypatch.setenv("XRAY_TRACEBACK", "1")
    with pytest.raises(type(error)):  # the traceback, on request
        cli.run_command(args)


def test_a_bug_in_a_command_keeps_its_traceback() -> None:
    def bug(args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.run_command(argparse.Namespace(command="run", func=bug))


def test_no_command_imports_tensorflow_before_main_quiets_it() -> None:
    """Building the parser (every subcommand's module) loads no TensorFlow or Keras."""
    import subprocess
    import sys

    code = (
        "import sys; from xray.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--set", "train.epochs=0"], "error: "),
        (["--set", "train.epocs=3"], "error: overrides: train.epocs: no such key in params.yaml"),
        (["--source", "ftp://example.org/x.zip"], "error: "),
    ],
)
def test_run_checks_params_and_overrides_before_the_flow(
    argv: list[str],
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad override is one line and exit 2 before Prefect starts; params.yaml is untouched."""
    import flows.pipeline

    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())

    def never(**kw: object) -> None:
        raise AssertionError("the flow started")

    monkeypatch.setattr(flows.pipeline, "pipeline", never)
    monkeypatch.delenv("XRAY_TRACEBACK", raising=False)
    assert cli.main(["run", "--workdir", str(tmp_path), *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_a_database_password_never_goes_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 24 item 8: `--database-url` with a password is refused before a server starts;
    without one (or from the environment) it reaches the server's environment."""
    import subprocess

    from xray.cli import server

    started: list[dict[str, str]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool) -> Any:
        started.append(env)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(server.subprocess, "run", fake_run)
    secret = "postgresql+asyncpg://xray:s3cret@db/prefect"
    assert cli.main(["server", "--database-url", secret]) == EXIT_USAGE and not started
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "s3cret" not in err
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" in err
    assert cli.main(["server", "--database-url", "postgresql+asyncpg://xray@db/prefect"]) == 0
    assert (
        started[0]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
        == "postgresql+asyncpg://xray@db/prefect"
    )
