"""The project subcommands of `xray`: run, repro, params, probe, deps (the pipeline itself)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xray.cli.base import EXIT_OK, add_command, add_workdir, parse_overrides
from xray.core.errors import WorkError
from xray.core.params import STAGES, load_params
from xray.runner.overrides import check_overrides


def cmd_run(args: argparse.Namespace) -> int:
    """Run the Prefect pipeline flow; params.yaml and the overrides are checked before Prefect."""
    overrides = parse_overrides(args.set or [])
    source = {"data.source": args.source} if args.source else {}
    check_overrides(args.workdir, overrides | source, args.stages or STAGES)  # as the flow will

    from flows.pipeline import pipeline

    pipeline(
        workdir=str(args.workdir),
        stages=args.stages or None,
        source=args.source,
        overrides=overrides or None,
        push=args.push,
        remote=args.remote,
        record=args.record,
        branch=args.branch,
        only_stale=not args.repro_each,
    )
    return EXIT_OK


def cmd_repro(args: argparse.Namespace) -> int:
    """`dvc repro ARGS`; a stage that fails gets its previous outputs back (dvc checkout)."""
    from xray.runner.repro import repro

    dvc_args = [a for a in args.dvc_args if a != "--"]
    return repro(args.workdir.resolve(), dvc_args)


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print the parsed values."""
    print(load_params(args.file, STAGES).model_dump_json(indent=2))
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    """Record data.source's identity in data/source.json when it changed (before `dvc repro`)."""
    from xray.data.intake.source import probe_project

    print(probe_project(args.workdir, args.source))
    return EXIT_OK


def cmd_deps(args: argparse.Namespace) -> int:
    """Check that every DVC stage lists each project module its command imports."""
    from xray.runner.stage_deps import check_stages, describe, describe_deps

    results = check_stages(args.workdir)
    if args.verbose:
        for r in results:
            print("\n".join(describe_deps(r)))
    line = describe(results)
    if not all(r.ok for r in results):
        raise WorkError(line)
    print(line)
    return EXIT_OK


def add_run(sub: argparse._SubParsersAction) -> None:
    """`xray run`: its options match the deployment's parameters (prefect.yaml)."""
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


def add_project_commands(sub: argparse._SubParsersAction) -> None:
    """The project subcommands: run, repro, params, probe, deps."""
    add_run(sub)
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
