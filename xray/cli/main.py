"""The `xray` command: run the pipeline, check params, predict with and adapt a trained model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xray.cli.base import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    add_command,
    add_workdir,
)
from xray.cli.ops import add_ops_commands
from xray.core.params import STAGES, AdaptParams, ParamsError, load_params
from xray.core.runtime import (
    LOG_LEVEL_ENV,
    UserError,
    filter_stderr,
    set_verbose,
    setup_logging,
)

PREDICT_BATCH = 32
_AD = AdaptParams()  # the adaptation defaults (the help shows them; no TF import here)
ADAPT_DESCRIPTION = """\
Re-estimates the model's BatchNorm statistics on the images (AdaBN; optionally TENT on
BatchNorm scale/shift and a label-shift threshold move by the EM prior estimate). No
label is read. Use a few dozen images or more from one site/setting, both classes
ideally present. Defaults come from params.yaml's `adapt` section when a params.yaml is
in the current folder, else the values shown; options override both. The output is a
model file like any other: its metadata names the adaptation and the images' sha256."""


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _add_adapt_options(p: argparse._ActionsContainer, batch_help: str | None = None) -> None:
    """The adaptation options shared by `xray adapt` and `xray predict --adapt`."""
    src = "params.yaml adapt.{}, else {}"
    p.add_argument(
        "--no-bn",
        action="store_true",
        help="skip AdaBN, the re-estimation of BatchNorm statistics "
        f"(default: {src.format('bn', 'AdaBN ' + _on(_AD.bn))})",
    )
    p.add_argument(
        "--tent-steps",
        type=int,
        metavar="N",
        help="TENT entropy-minimization steps on BatchNorm scale/shift, 0 = off "
        f"(default: {src.format('tent_steps', _AD.tent_steps)})",
    )
    p.add_argument(
        "--tent-lr",
        type=float,
        metavar="X",
        help=f"TENT learning rate (default: {src.format('tent_lr', _AD.tent_lr)})",
    )
    p.add_argument(
        "--prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="move the threshold by the estimated change of class balance (EM); needs a "
        f"model file with prior_reference (default: {src.format('prior', _on(_AD.prior))})",
    )
    p.add_argument(
        "--min-images",
        type=int,
        metavar="N",
        help="fewest usable images to adapt to "
        f"(default: {src.format('min_images', _AD.min_images)})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=batch_help
        or f"images per adaptation batch (default: {src.format('batch_size', _AD.batch_size)})",
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Run the Prefect pipeline flow."""
    from flows.deploy import DeployError, parse_overrides
    from flows.pipeline import StageFailed, pipeline

    try:
        overrides = parse_overrides(args.set or []) or None
    except DeployError as e:
        raise UsageError(str(e)) from None
    try:
        pipeline(
            workdir=str(args.workdir),
            stages=args.stages or None,
            source=args.source,
            overrides=overrides,
            push=args.push,
            remote=args.remote,
            record=args.record,
            branch=args.branch,
            only_stale=not args.repro_each,
        )
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (ParamsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_repro(args: argparse.Namespace) -> int:
    """`dvc repro ARGS`; a stage that fails gets its previous outputs back (dvc checkout)."""
    from xray.runner.repro import repro

    dvc_args = [a for a in args.dvc_args if a != "--"]
    return repro(args.workdir.resolve(), dvc_args)


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print the parsed values."""
    try:
        params = load_params(args.file)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(params.model_dump_json(indent=2))
    return EXIT_OK


def _adapt_settings(args: argparse.Namespace, batch_size: int | None) -> object:
    """AdaptParams: params.yaml's `adapt` section (if in the current folder), then options."""
    from xray.cli.adapt import settings_from

    return settings_from(
        bn=False if args.no_bn else None,
        tent_steps=args.tent_steps,
        tent_lr=args.tent_lr,
        prior=args.prior,
        min_images=args.min_images,
        batch_size=batch_size,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict images or folders with a trained model (optionally adapted to them first)."""
    from xray.cli.adapt import AdaptError
    from xray.cli.predict import predict_paths

    settings = None
    if args.adapt:
        try:
            settings = _adapt_settings(args, args.batch_size)
        except AdaptError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return predict_paths(
        args.paths,
        args.model,
        as_json=args.json,
        batch_size=args.batch_size or PREDICT_BATCH,
        adapt=settings,
        prior_flag=args.prior,
    )


def cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt a model file to unlabeled images and write the adapted model."""
    from xray.cli.adapt import AdaptError, adapt_file

    try:
        settings = _adapt_settings(args, args.batch_size)
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return adapt_file(
        args.model, args.paths, args.output, settings, prior_flag=args.prior, as_json=args.json
    )


def cmd_probe(args: argparse.Namespace) -> int:
    """Record data.source's identity in data/source.json when it changed (before `dvc repro`)."""
    from tasks.download import DownloadError, probe_project

    try:
        print(probe_project(args.workdir, args.source))
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_deps(args: argparse.Namespace) -> int:
    """Check that every DVC stage lists each project module its command imports."""
    from xray.runner.stage_deps import check_stages, describe

    try:
        results = check_stages(args.workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.verbose:
        for r in results:
            print(f"{r.stage}: {' '.join(r.needed)}")
    line = describe(results)
    ok = all(r.ok for r in results)
    print(line if ok else f"error: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


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

    run = add_command(
        sub,
        "run",
        "run the pipeline flow: the stale stages, each through DVC",
        "Run the pipeline as a Prefect flow: one `dvc status` finds the stale stages, then "
        "each of them and every stage downstream runs through `dvc repro --single-item`. A "
        "failed stage gets its previous outputs back. The options match the scheduled "
        "deployment's parameters (prefect.yaml): --source and --set rewrite params.yaml "
        "first (as `dvc exp run -S` would), --push and --record run after the stages.",
        """
xray run
xray run --stage evaluate
xray run --source /data/chest_xray.zip --set train.epochs=5
xray run --push --remote /srv/xray/dvc-remote --record
""",
    )
    add_workdir(run)
    run.add_argument(
        "--stage",
        dest="stages",
        action="append",
        choices=STAGES,
        metavar="STAGE",
        help=f"run only this stage, if stale (repeatable; one of: {', '.join(STAGES)}; "
        "default: every stage)",
    )
    run.add_argument(
        "--source",
        metavar="SOURCE",
        help="set data.source in params.yaml first: synthetic, a folder, a .zip/.tar.gz or an "
        "http(s) URL (default: params.yaml's)",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set a params.yaml key first, the value read as YAML, e.g. train.epochs=5 "
        "(repeatable)",
    )
    run.add_argument(
        "--push", action="store_true", help="push data and models to the DVC remote afterwards"
    )
    run.add_argument(
        "--remote",
        metavar="REMOTE",
        help="DVC remote name, folder or URL for --push (default: the default remote)",
    )
    run.add_argument(
        "--record",
        action="store_true",
        help="commit dvc.lock and params on the record branch, tag a new model version "
        "(only when every stage was selected)",
    )
    run.add_argument(
        "--branch", default="xray-records", metavar="BRANCH", help="git branch for --record"
    )
    run.add_argument(
        "--repro-each",
        action="store_true",
        help="run `dvc repro --single-item` for every selected stage instead of only those "
        "`dvc status` finds stale (slower; the behaviour before)",
    )
    run.set_defaults(func=cmd_run)

    rep = add_command(
        sub,
        "repro",
        "`dvc repro [ARGS...]`; a failed or stopped stage gets its previous outputs back",
        "Run `dvc repro` with these arguments (targets, -f, -s, ...), its output passed "
        "through. When a stage fails or is stopped (Ctrl-C, SIGTERM), `dvc checkout STAGE` "
        "puts back the outputs dvc.lock records for it, as far as the DVC cache has them. "
        "Exits with DVC's status (130 after Ctrl-C/SIGTERM).",
        """
xray repro
xray repro -f evaluate
""",
    )
    add_workdir(rep)
    rep.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for dvc repro")
    rep.set_defaults(func=cmd_repro)

    par = add_command(
        sub,
        "params",
        "validate params.yaml and print the parsed values",
        "Parse params.yaml with the pipeline's own models (xray/core/params.py) and print every "
        "value, defaults filled in, as JSON. An unknown key or a bad value is one line "
        "naming the key, exit status 2.",
        """
xray params
xray params --file experiments/params.yaml
""",
    )
    par.add_argument(
        "--file", type=Path, default=Path("params.yaml"), metavar="FILE", help="params file"
    )
    par.set_defaults(func=cmd_params)

    prb = add_command(
        sub,
        "probe",
        "record the data source's identity in data/source.json (before dvc repro)",
        "Record data.source's identity (a URL's ETag/Last-Modified/size or pinned sha256, an "
        "archive's sha256, a folder's tree hash) in data/source.json when it changed, so "
        "that `dvc repro` reruns `download` exactly when the source changed. `xray run` "
        "probes by itself.",
        """
xray probe && dvc repro
xray probe --source /data/chest_xray.zip && dvc exp run -S data.source=/data/chest_xray.zip
""",
    )
    add_workdir(prb)
    prb.add_argument(
        "--source",
        metavar="SOURCE",
        help="probe this source instead of data.source (for dvc exp run -S data.source=...)",
    )
    prb.set_defaults(func=cmd_probe)

    pred = add_command(
        sub,
        "predict",
        "classify images with a trained model",
        "Print one line per image: its label, P(PNEUMONIA) and the model's threshold (or one "
        "JSON object per line). Any JPEG/PNG size and mode is accepted; a bad file gets a "
        "one-line error and the others are still predicted (exit status 1).",
        """
xray predict path/to/image.jpeg path/to/folder/
xray predict --json --model models/base.keras image.png
xray predict --adapt --model models/finetuned.keras site_b/
""",
    )
    pred.add_argument("paths", nargs="+", type=Path, help="image files or folders", metavar="PATH")
    pred.add_argument(
        "--model",
        type=Path,
        default=Path("models/finetuned.keras"),
        metavar="FILE",
        help="model file written by the pipeline (.keras)",
    )
    pred.add_argument(
        "--json", action="store_true", help="one JSON object per line (default: text lines)"
    )
    pred.add_argument(
        "--adapt",
        action="store_true",
        help="first adapt the model (in memory) to all the given images, then predict them at "
        "the adapted threshold (default: off); fewer than --min-images: predicted unadapted",
    )
    _add_adapt_options(
        pred.add_argument_group("adaptation (used with --adapt)"),
        batch_help=f"images per batch (default: {PREDICT_BATCH}; with --adapt, also the "
        f"adaptation batch, default params.yaml adapt.batch_size, else {_AD.batch_size})",
    )
    pred.set_defaults(func=cmd_predict)

    ada = add_command(
        sub,
        "adapt",
        "adapt a model to unlabeled images of a new site (BatchNorm statistics, ...)",
        ADAPT_DESCRIPTION,
        """
xray adapt models/finetuned.keras site_b/ -o models/finetuned_site_b.keras
xray predict --model models/finetuned_site_b.keras site_b/
""",
    )
    ada.add_argument("model", type=Path, help="the trained model file (.keras), left unchanged")
    ada.add_argument(
        "paths", nargs="+", type=Path, help="image files or folders (JPEG/PNG)", metavar="PATH"
    )
    ada.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write the adapted model (.keras, not the input model; required)",
    )
    ada.add_argument(
        "--json", action="store_true", help="print the report as JSON (default: one line)"
    )
    _add_adapt_options(ada)
    ada.set_defaults(func=cmd_adapt)

    dep = add_command(
        sub,
        "deps",
        "check that each dvc.yaml stage lists every project module it imports",
        "Exit 1 naming each stage whose deps miss a module its command imports (a stale "
        "cache) or list one it never imports (needless reruns).",
        """
xray deps
xray deps -v
""",
    )
    add_workdir(dep)
    dep.add_argument("-v", "--verbose", action="store_true", help="print each stage's modules")
    dep.set_defaults(func=cmd_deps)
    add_ops_commands(sub)  # server, serve, deploy, audit: xray/cli/ops.py
    return parser


TF_COMMANDS = ("predict", "adapt")
EPHEMERAL_STARTUP_TIMEOUT_S = "120"  # Prefect's 20 s default fails on a busy 2-core machine


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
    try:
        setup_logging()
    except UserError as e:
        print(f"xray: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    # Before Prefect reads its settings; an explicit setting wins.
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S
    )
    # The temporary server's telemetry fails, with an ERROR line, on machines without internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        if args.command in TF_COMMANDS:  # TensorFlow's known harmless runtime lines filtered
            with filter_stderr():
                return int(args.func(args))
        return int(args.func(args))
    except UsageError as e:
        print(f"xray {args.command}: error: {e} (see xray {args.command} --help)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
