"""The `xray` command line: help a newcomer can learn from, one-line usage errors, exit codes."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from xray.cli import main as cli
from xray.cli.base import EXIT_USAGE


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


def test_run_options_match_the_deployment_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the nightly deployment can set, `xray run` can set too."""
    import flows.pipeline

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
    assert cli.main(["run"]) == 0
    assert seen["push"] is False and seen["record"] is False and seen["stages"] is None
    assert seen["branch"] == deployment["parameters"]["branch"]


def test_verbose_sets_debug_for_the_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import flows.pipeline
    from xray.core import runtime as cli_support

    monkeypatch.setenv("XRAY_LOG_LEVEL", "INFO")
    monkeypatch.setattr(cli_support, "_QUIET", {})  # leave this process's filters alone
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: None)
    assert cli.main(["--verbose", "run"]) == 0
    assert os.environ["XRAY_LOG_LEVEL"] == "DEBUG"  # inherited by the stage subprocesses
