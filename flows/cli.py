"""The `xray` command: run the pipeline flow, check params, predict with a trained model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.ops_cli import add_ops_commands
from tasks.cli_support import setup_logging
from tasks.params import STAGES, AdaptParams, ParamsError, load_params

PREDICT_BATCH = 32
_AD = AdaptParams()  # the defaults of tasks.adapt.AdaptSettings (no TF import here)
ADAPT_EXAMPLE = """\
Re-estimates the model's BatchNorm statistics on the images (AdaBN; optionally TENT on
BatchNorm scale/shift and a label-shift threshold move by the EM prior estimate). No
label is read. Use a few dozen images or more from one site/setting, both classes
ideally present. Defaults come from params.yaml's `adapt` section when a params.yaml is
in the current folder, else the values shown; options override both. The output is a
model file like any other: its metadata names the adaptation and the images' sha256.

example:
  xray adapt models/finetuned.keras site_b/ -o models/finetuned_site_b.keras
  xray predict --model models/finetuned_site_b.keras site_b/
"""


def _add_adapt_options(p: argparse._ActionsContainer, batch_help: str | None = None) -> None:
    """The adaptation options shared by `xray adapt` and `xray predict --adapt`."""
    src = "params.yaml adapt.{}, else {}"
    p.add_argument(
        "--no-bn",
        action="store_true",
        help="skip AdaBN, the re-estimation of BatchNorm statistics "
        f"(default: {src.format('bn', 'AdaBN on')})",
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
        f"model file with prior_reference (default: {src.format('prior', 'off')})",
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
    from flows.pipeline import StageFailed, pipeline

    try:
        pipeline(
            workdir=str(args.workdir), stages=args.stages or None, only_stale=not args.repro_each
        )
    except (StageFailed, ParamsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    """`dvc repro ARGS`; a stage that fails gets its previous outputs back (dvc checkout)."""
    from flows.repro import repro

    dvc_args = [a for a in args.dvc_args if a != "--"]
    return repro(args.workdir.resolve(), dvc_args)


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print the parsed values."""
    try:
        params = load_params(args.file)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(params.model_dump_json(indent=2))
    return 0


def _adapt_settings(args: argparse.Namespace, batch_size: int | None) -> object:
    """AdaptSettings: params.yaml's `adapt` section (if in the current folder), then options."""
    from tasks.adapt_cli import settings_from

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
    from tasks.adapt_cli import AdaptError
    from tasks.predict import predict_paths

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
    from tasks.adapt_cli import AdaptError, adapt_file

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
    except (DownloadError, ParamsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_deps(args: argparse.Namespace) -> int:
    """Check that every DVC stage lists each project module its command imports."""
    from flows.stage_deps import check_stages, describe

    try:
        results = check_stages(args.workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.verbose:
        for r in results:
            print(f"{r.stage}: {' '.join(r.needed)}")
    line = describe(results)
    ok = all(r.ok for r in results)
    print(line if ok else f"error: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `xray`."""
    parser = argparse.ArgumentParser(prog="xray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline flow (each stage through DVC)")
    run.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    run.add_argument(
        "--stage",
        dest="stages",
        action="append",
        choices=STAGES,
        help="run only this stage (repeatable)",
    )
    run.add_argument(
        "--repro-each",
        action="store_true",
        help="run `dvc repro --single-item` for every selected stage instead of only those "
        "`dvc status` finds stale (slower; the behaviour before)",
    )
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser(
        "repro",
        help="`dvc repro [ARGS...]`; a failed or stopped stage gets its previous outputs back",
        description="Run `dvc repro` with these arguments (targets, -f, -s, ...). When a "
        "stage fails or is stopped (Ctrl-C, SIGTERM), `dvc checkout STAGE` puts back the "
        "outputs dvc.lock records for it, as far as the DVC cache has them.",
    )
    rep.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    rep.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for dvc repro")
    rep.set_defaults(func=cmd_repro)
    par = sub.add_parser("params", help="validate params.yaml")
    par.add_argument("--file", type=Path, default=Path("params.yaml"))
    par.set_defaults(func=cmd_params)
    prb = sub.add_parser("probe", help="record the data source's identity (run before dvc repro)")
    prb.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    prb.add_argument("--source", help="probe this source instead of data.source (for dvc exp run)")
    prb.set_defaults(func=cmd_probe)
    pred = sub.add_parser("predict", help="classify images with a trained model")
    pred.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    pred.add_argument(
        "--model",
        type=Path,
        default=Path("models/finetuned.keras"),
        help="model file (default: models/finetuned.keras)",
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
    ada = sub.add_parser(
        "adapt",
        help="adapt a model to unlabeled images of a new site (BatchNorm statistics, ...)",
        description=ADAPT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ada.add_argument("model", type=Path, help="the trained model file (.keras), left unchanged")
    ada.add_argument("paths", nargs="+", type=Path, help="image files or folders (JPEG/PNG)")
    ada.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="where to write the adapted model (.keras, not the input model)",
    )
    ada.add_argument(
        "--json", action="store_true", help="print the report as JSON (default: one line)"
    )
    _add_adapt_options(ada)
    ada.set_defaults(func=cmd_adapt)
    dep = sub.add_parser(
        "deps",
        help="check that each dvc.yaml stage lists every project module it imports",
        description="Exit 1 naming each stage whose deps miss a module its command imports "
        "(a stale cache) or list one it never imports (needless reruns).",
    )
    dep.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    dep.add_argument("-v", "--verbose", action="store_true", help="print each stage's modules")
    dep.set_defaults(func=cmd_deps)
    add_ops_commands(sub)  # server, serve, deploy, audit: flows/ops_cli.py
    return parser


EPHEMERAL_STARTUP_TIMEOUT_S = "120"  # Prefect's 20 s default fails on a busy 2-core machine


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `xray` console script."""
    setup_logging()
    # Before Prefect reads its settings; an explicit setting wins.
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S
    )
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "repro":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:  # options for dvc repro (xray repro -f STAGE)
        args.dvc_args = unknown + args.dvc_args
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
