"""The operations subcommands of `xray`: server, serve, deploy, audit."""

from __future__ import annotations

import argparse

from xray.cli.base import EXIT_OK, UsageError, add_command, add_workdir, parse_overrides
from xray.cli.server import DEFAULT_PORT
from xray.core.errors import WorkError


def cmd_server(args: argparse.Namespace) -> int:
    """Start a Prefect server on 127.0.0.1."""
    from xray.cli.server import start_server

    return start_server(args.port, args.database_url)


def _deploy_changes(args: argparse.Namespace) -> dict:
    """Deployment parameter changes from the command line."""
    return {
        "source": args.source,
        "overrides": parse_overrides(args.set or []) or None,
        "remote": args.remote,
        "branch": args.branch,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the scheduled deployment from this process."""
    import logging

    from flows.deploy import serve_pipeline

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API poll otherwise
    serve_pipeline(args.workdir, args.interval, _deploy_changes(args))
    return EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    """Register the scheduled deployment on a process work pool."""
    from flows.deploy import register

    dep_id = register(args.workdir, args.pool, args.interval, _deploy_changes(args))
    print(f"deployment xray-pipeline/nightly: {dep_id}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """Answer which data, params and code produced a model (or the reverse)."""
    import json

    from xray.records import audit

    if not (args.model or args.history or args.data):
        raise UsageError("give a MODEL, --history or --data HASH")
    root = args.workdir.resolve()
    if args.history:
        result: object = audit.history(root)
        text = audit.format_history(result)  # type: ignore[arg-type]
    elif args.data:
        result = audit.models_for_data(root, args.data)
        text = audit.format_history(result)  # type: ignore[arg-type]
    else:
        result = audit.audit(root, args.model)
        text = audit.format_audit(result)  # type: ignore[arg-type]
    if args.data and not result:  # nothing found: exit status 1, as for a model never recorded
        if args.json:
            print("[]")
        raise WorkError(f"no recorded model version was trained on data with hash {args.data}")
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash the tracked outputs and their cache objects; name what differs."""
    import json

    from xray.records.verify import VerifyError, summary, verify

    result = verify(args.workdir.resolve())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(result["problems"] or [summary(result)]))
    if result["problems"]:
        raise VerifyError(f"verify: {len(result['problems'])} problem(s), listed above")
    return EXIT_OK


SERVE_TEXT = {
    "serve": (
        "serve the scheduled deployment from this process",
        "Serve the `nightly` deployment of prefect.yaml (its cron, parameters and "
        "concurrency limit of 1) from this process until Ctrl-C; set PREFECT_API_URL to a "
        "Prefect server first (`xray server`). The options change the deployment's "
        "parameters for this process only. Stopping it (Ctrl-C, SIGTERM) pauses the "
        "deployment's schedule and deletes its runs not yet started, as Prefect's `serve` "
        "does: nothing runs until `xray serve` starts again, which resumes the schedule. "
        "For a schedule that outlives the process, use `xray deploy` and a worker.",
        """
xray serve --remote /srv/xray/dvc-remote
xray serve --interval 3600 --set train.epochs=5
""",
    ),
    "deploy": (
        "register the scheduled deployment on a process work pool",
        "Register the `nightly` deployment of prefect.yaml on a process work pool (created "
        "if missing); a worker (`prefect worker start --pool xray-process`) runs it. The "
        "options change the registered deployment's parameters.",
        """
xray deploy --remote /srv/xray/dvc-remote
xray deploy --pool xray-process --source https://host/chest_xray.zip
""",
    ),
}


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    """The operations subcommands: server, serve, deploy, audit."""
    srv = add_command(
        sub,
        "server",
        "start a Prefect server on 127.0.0.1 (SQLite unless --database-url)",
        "Start a Prefect server on 127.0.0.1 that keeps its database and concurrency leases "
        "under PREFECT_HOME, so a restart loses nothing. Other shells then need "
        "`export PREFECT_API_URL=http://127.0.0.1:PORT/api`. A database password never goes "
        "on the command line (every user can read it there): a URL holding one is refused; "
        "export PREFECT_SERVER_DATABASE_CONNECTION_URL instead, or use ~/.pgpass.",
        """
xray server
xray server --port 4300 --database-url postgresql+asyncpg://xray@db-host/prefect
PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://xray:$PW@db-host/prefect xray server
""",
    )
    srv.add_argument(
        "--port", type=int, default=DEFAULT_PORT, metavar="PORT", help="port to listen on"
    )
    srv.add_argument(
        "--database-url",
        metavar="URL",
        help="e.g. postgresql+asyncpg://user@host/prefect, no password (default: SQLite "
        "under PREFECT_HOME)",
    )
    srv.set_defaults(func=cmd_server)
    for name, func in (("serve", cmd_serve), ("deploy", cmd_deploy)):
        summary, description, examples = SERVE_TEXT[name]
        p = add_command(sub, name, summary, description, examples)
        add_workdir(p)
        p.add_argument(
            "--interval",
            type=float,
            metavar="SECONDS",
            help="run every SECONDS instead of on the cron (default: prefect.yaml's cron)",
        )
        p.add_argument(
            "--source", metavar="SOURCE", help="data.source override (default: params.yaml's)"
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="params.yaml override, the value read as YAML, e.g. train.epochs=5 (repeatable)",
        )
        p.add_argument(
            "--remote",
            metavar="REMOTE",
            help="DVC remote name, folder or URL to push to (default: the default remote)",
        )
        p.add_argument(
            "--branch",
            metavar="BRANCH",
            help="git branch for the run records (default: prefect.yaml's, xray-records)",
        )
        if name == "deploy":
            p.add_argument(
                "--pool",
                metavar="POOL",
                help="process work pool (default: prefect.yaml's, xray-process)",
            )
        p.set_defaults(func=func)
    aud = add_command(
        sub,
        "audit",
        "lineage of a model; model history; models per data hash",
        "Answer which data, params and code produced a model (MODEL: a model file or its "
        "content hash), list every recorded model version (--history), or the models "
        "trained on data with a hash (--data). Give exactly one of the three.",
        """
xray audit models/finetuned.keras
xray audit --history
xray audit --data 3f2a9c...  # a sha256 or md5 from dvc.lock
""",
    )
    add_workdir(aud)
    mode = aud.add_mutually_exclusive_group()
    mode.add_argument("model", nargs="?", metavar="MODEL", help="model file or content hash")
    mode.add_argument("--history", action="store_true", help="every model version in git")
    mode.add_argument("--data", metavar="HASH", help="models trained on data with this hash")
    aud.add_argument("--json", action="store_true", help="machine-readable output")
    aud.set_defaults(func=cmd_audit)
    ver = add_command(
        sub,
        "verify",
        "re-hash tracked outputs and the DVC cache objects behind them",
        "Hash every output dvc.lock tracks and compare it with the lock, and every DVC cache "
        "object with the md5 that names it: an output edited in place, which changes its "
        "linked cache object too, a missing object and a file added to a tracked folder are "
        "named, one per line (exit status 1). `xray run --record` and `--push` run it first.",
        """
xray verify
xray verify --json
""",
    )
    add_workdir(ver)
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=cmd_verify)
