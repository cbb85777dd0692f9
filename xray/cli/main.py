"""The `xray` command: run the pipeline, check params, predict with and adapt a trained model.

main() is the one place a command's error becomes its line and exit status: a command raises
(an XrayError, xray/core/errors.py) and `report_error` maps it; a UsageError also names the
command's --help. The subcommands live by group: xray/cli/project.py (run, repro, params,
probe, deps), xray/cli/model.py (predict, adapt), xray/cli/ops.py (server, serve, deploy,
audit).
"""

from __future__ import annotations

import argparse
import os
import sys

from xray.cli.base import EXIT_CODES, Parser, UsageError, usage_line
from xray.cli.model import add_model_commands
from xray.cli.ops import add_ops_commands
from xray.cli.project import add_project_commands
from xray.core.runtime import (
    LOG_LEVEL_ENV,
    filter_stderr,
    quiet_tensorflow,
    report_error,
    set_verbose,
    setup_logging,
)


def _version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xray-transfer")
    except PackageNotFoundError:
        return "unknown (not installed)"


DESCRIPTION = """\
A reproducible pipeline (DVC stages: download, split, corrupt, train_base, finetune,
evaluate) that trains a CNN on pediatric chest X-rays (NORMAL vs PNEUMONIA), fine-tunes it
on corrupted images and evaluates both; this command runs it as a Prefect flow, checks its
params and uses the trained models. `xray COMMAND --help` shows each command's options,
defaults and an example."""

EPILOG = f"""\
getting started:
  xray params                              # check params.yaml
  xray run                                 # run the stale stages (synthetic data by default)
  xray predict path/to/images/             # classify images with models/finetuned.keras

{EXIT_CODES}
environment:
  XRAY_LOG_LEVEL          DEBUG, INFO, WARNING or ERROR: the CLI's and the stages' log level
                          (default INFO); DEBUG (= --verbose) filters nothing: TensorFlow's
                          start-up lines and known harmless warnings are shown too
  XRAY_TRACEBACK          any value: a traceback for bad-input errors too (bugs always get one)
  XRAY_PROGRESS_INTERVAL  seconds between progress lines of long work (default 5)
  XRAY_NO_BAR             any value: progress as log lines even on a terminal
  PREFECT_API_URL         a Prefect server's API (default: a temporary local server)

code:
  tasks/<stage>.py        the six DVC stages, thin (`python -m tasks.<stage>` + dvc.yaml's paths)
  flows/                  the Prefect flow (pipeline.py) and its deployment (deploy.py)
  xray/                   the library, a folder per layer: core, data, perturbations, models,
                          adaptation, reports, records, runner, cli (docs/architecture.md)
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `xray`."""
    parser = Parser(prog="xray", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="log_verbose",
        action="store_true",
        help=f"debug logging, nothing filtered (the same as {LOG_LEVEL_ENV}=DEBUG)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_project_commands(sub)  # run, repro, params, probe, deps
    add_model_commands(sub)  # predict, adapt
    add_ops_commands(sub)  # server, serve, deploy, audit
    return parser


TF_COMMANDS = ("predict", "adapt")
EPHEMERAL_STARTUP_TIMEOUT_S = "120"  # Prefect's 20 s default fails on a busy 2-core machine


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error it raises is one line and its exit status."""
    try:
        setup_logging()
        if args.command in TF_COMMANDS:  # TensorFlow's known harmless lines filtered
            with filter_stderr():
                return int(args.func(args))
        return int(args.func(args))
    except Exception as e:
        prog = f"xray {args.command}"
        template = usage_line(prog, "{}") if isinstance(e, UsageError) else "error: {}"
        code = report_error(e, template)
        if code is None:  # a bug, or XRAY_TRACEBACK set: the traceback
            raise
        return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `xray` console script."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "repro":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:  # options for dvc repro (xray repro -f STAGE)
        args.dvc_args = unknown + args.dvc_args
    if args.log_verbose:
        set_verbose()  # this process and the stages it starts
    quiet_tensorflow()  # before any command imports TensorFlow; the stages inherit it
    # Before Prefect reads its settings; an explicit setting wins.
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S
    )
    # The temporary server's telemetry fails, with an ERROR line, on machines without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
