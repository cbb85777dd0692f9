"""The `xray` command: run the pipeline flow, check params, predict with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.ops_cli import add_ops_commands
from tasks.cli_support import setup_logging
from tasks.params import STAGES, ParamsError, load_params


def cmd_run(args: argparse.Namespace) -> int:
    """Run the Prefect pipeline flow."""
    from flows.pipeline import StageFailed, pipeline

    try:
        pipeline(workdir=str(args.workdir), stages=args.stages or None)
    except (StageFailed, ParamsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print the parsed values."""
    try:
        params = load_params(args.file)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(params.model_dump_json(indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict images or folders with a trained model."""
    from tasks.predict import predict_paths

    return predict_paths(args.paths, args.model, as_json=args.json, batch_size=args.batch_size)


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
    run.set_defaults(func=cmd_run)
    par = sub.add_parser("params", help="validate params.yaml")
    par.add_argument("--file", type=Path, default=Path("params.yaml"))
    par.set_defaults(func=cmd_params)
    prb = sub.add_parser("probe", help="record the data source's identity (run before dvc repro)")
    prb.add_argument("--workdir", type=Path, default=Path("."), help="project folder (default: .)")
    prb.add_argument("--source", help="probe this source instead of data.source (for dvc exp run)")
    prb.set_defaults(func=cmd_probe)
    pred = sub.add_parser("predict", help="classify images with a trained model")
    pred.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    pred.add_argument("--model", type=Path, default=Path("models/finetuned.keras"))
    pred.add_argument("--json", action="store_true", help="one JSON object per line")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.set_defaults(func=cmd_predict)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `xray` console script."""
    setup_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
