"""What every `xray` subcommand shares: exit codes, one-line usage errors, help with defaults."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any, NoReturn

import yaml

from xray.core.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, InputError
from xray.core.yaml_text import load_yaml

EXIT_CODES = f"""\
exit status:
  {EXIT_OK}  done
  {EXIT_FAILED}  the work failed: a stage, some images, a refused adaptation, the probe, the
     deployment; or nothing found
  {EXIT_USAGE}  usage error or bad input (options, params.yaml, a missing model file, XRAY_* values)
"""


WIDTH = 88  # descriptions are wrapped to this many columns
WORKDIR_HELP = "project folder (the one with dvc.yaml and params.yaml)"


class UsageError(InputError):
    """A usage error found after parsing (conflicting or missing options): exit status 2.

    Shown as `xray COMMAND: error: MESSAGE (see xray COMMAND --help)` (usage_line).
    """


def usage_line(prog: str, message: object) -> str:
    """`PROG: error: MESSAGE (see PROG --help)`: how every usage error is shown."""
    return f"{prog}: error: {message} (see {prog} --help)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and examples as written; appends each option's real default."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, with where to read more."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (see PROG --help)` and exit with status 2."""
        self.exit(EXIT_USAGE, usage_line(self.prog, message) + "\n")


def add_workdir(p: argparse.ArgumentParser) -> None:
    """The --workdir option every project subcommand takes."""
    p.add_argument("--workdir", type=Path, default=Path("."), metavar="DIR", help=WORKDIR_HELP)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    examples: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand with a one-line summary, a description and examples in its --help."""
    lines = "\n".join(f"  {line}" for line in examples.strip().splitlines())
    paragraphs = [textwrap.fill(" ".join(p.split()), WIDTH) for p in description.split("\n\n")]
    return sub.add_parser(
        name,
        help=summary,
        description="\n\n".join(paragraphs),
        epilog=f"example:\n{lines}\n\n{EXIT_CODES}",
        formatter_class=HelpFormatter,
        **kwargs,
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` options (value parsed as YAML) into a dotted-key override mapping."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.epochs=5")
        try:
            out[key.strip()] = load_yaml(value)
        except yaml.YAMLError as e:
            raise UsageError(f"--set {pair!r}: the value is not valid YAML ({e})") from None
    return out
