"""The operations subcommands of `xray`: server, serve, deploy, audit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_server(args: argparse.Namespace) -> int:
    """Start a Prefect server on 127.0.0.1."""
    from flows.deploy import start_server

    return start_server(args.port, args.database_url)


def _deploy_changes(args: argparse.Namespace) -> dict:
    """Deployment parameter changes from the command line."""
    from flows.deploy import parse_overrides

    return {
        "source": args.source,
        "overrides": parse_overrides(args.set or []) or None,
        "remote": args.remote,
        "branch": args.branch,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the scheduled deployment from this process."""
    import logging

    from flows.deploy import DeployError, serve_pipeline

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API poll otherwise
    try:
        serve_pipeline(args.workdir, args.interval, _deploy_changes(args))
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Register the scheduled deployment on a process work pool."""
    from flows.deploy import DeployError, register

    try:
        dep_id = register(args.workdir, args.pool, args.interval, _deploy_changes(args))
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deployment xray-pipeline/nightly: {dep_id}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Answer which data, params and code produced a model (or the reverse)."""
    import json

    from flows import audit
    from tasks.lineage import LineageError

    root = args.workdir.resolve()
    try:
        if args.history:
            result: object = audit.history(root)
            text = audit.format_history(result)  # type: ignore[arg-type]
        elif args.data:
            result = audit.models_for_data(root, args.data)
            text = audit.format_history(result)  # type: ignore[arg-type]
        elif args.model:
            result = audit.audit(root, args.model)
            text = audit.format_audit(result)  # type: ignore[arg-type]
        else:
            print("error: give a MODEL, --history or --data HASH", file=sys.stderr)
            return 1
    except (audit.AuditError, LineageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    """The operations subcommands: server, serve, deploy, audit."""
    srv = sub.add_parser("server", help="start a Prefect server on 127.0.0.1 (SQLite default)")
    srv.add_argument("--port", type=int, default=4200)
    srv.add_argument("--database-url", help="e.g. postgresql+asyncpg://user:pw@host/prefect")
    srv.set_defaults(func=cmd_server)
    for name, func, text in (
        ("serve", cmd_serve, "serve the scheduled deployment from this process"),
        ("deploy", cmd_deploy, "register the scheduled deployment on a process work pool"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--workdir", type=Path, default=Path("."), help="project folder")
        p.add_argument("--interval", type=float, help="seconds between runs instead of the cron")
        p.add_argument("--source", help="data.source override")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="params override")
        p.add_argument("--remote", help="DVC remote name, folder or URL to push to")
        p.add_argument("--branch", help="git branch for the run records")
        if name == "deploy":
            p.add_argument("--pool", help="process work pool (default from prefect.yaml)")
        p.set_defaults(func=func)
    aud = sub.add_parser("audit", help="lineage of a model; model history; models per data hash")
    aud.add_argument("model", nargs="?", help="model file or content hash")
    aud.add_argument("--workdir", type=Path, default=Path("."), help="project folder")
    aud.add_argument("--history", action="store_true", help="every model version in git")
    aud.add_argument("--data", metavar="HASH", help="models trained on data with this hash")
    aud.add_argument("--json", action="store_true", help="machine-readable output")
    aud.set_defaults(func=cmd_audit)
