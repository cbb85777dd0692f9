"""Deployments of the pipeline flow: the schedule, parameters and concurrency from prefect.yaml.

prefect.yaml is the one place the schedule is set; `serve_pipeline` (`xray serve`) serves that
deployment from this process, `register` (`xray deploy`) registers it on a process work pool
for `prefect worker start`, and `start_server` (`xray server`) runs a local Prefect server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
DEPLOYMENT = "nightly"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 4200
ENTRYPOINT = "flows/pipeline.py:pipeline"
# Surviving a server restart. Deployment concurrency leases live in server memory by default:
# a restart forgets them and the engine then ends the run at its next lease renewal (410).
LEASE_STORAGE_SETTING = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FILE_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"  # PREFECT_HOME


class DeployError(ValueError):
    """prefect.yaml or a deployment option is wrong."""


def deployment_config(path: Path = PREFECT_YAML, name: str = DEPLOYMENT) -> dict[str, Any]:
    """The named deployment entry of prefect.yaml."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DeployError(f"{path}: cannot read ({e})") from None
    for entry in data.get("deployments") or []:
        if entry.get("name") == name:
            return entry
    raise DeployError(f"{path}: no deployment named {name!r}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings (value parsed as YAML) into a dotted-key override mapping."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeployError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.epochs=5")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parameters(
    config: dict[str, Any], workdir: Path, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The deployment's flow parameters with workdir made absolute and `changes` applied."""
    params = dict(config.get("parameters") or {})
    params["workdir"] = str(workdir.resolve())
    for key, value in (changes or {}).items():
        if value is not None:
            params[key] = value
    return params


def schedule_kwargs(config: dict[str, Any], interval_s: float | None) -> dict[str, Any]:
    """to_deployment schedule arguments: prefect.yaml's cron, or an interval (tests, demos)."""
    if interval_s:
        return {"interval": timedelta(seconds=interval_s)}
    from prefect.client.schemas.schedules import CronSchedule

    schedules = [s for s in config.get("schedules") or [] if s.get("active", True)]
    return {
        "schedules": [CronSchedule(cron=s["cron"], timezone=s.get("timezone")) for s in schedules]
    }


def concurrency(config: dict[str, Any]) -> Any:
    """The deployment concurrency limit (1, later runs wait) from prefect.yaml."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    raw = config.get("concurrency_limit") or {"limit": 1, "collision_strategy": "ENQUEUE"}
    return ConcurrencyLimitConfig(
        limit=int(raw["limit"]),
        collision_strategy=ConcurrencyLimitStrategy(raw.get("collision_strategy", "ENQUEUE")),
    )


def flow_run_env(config: dict[str, Any]) -> dict[str, str]:
    """The flow runs' environment from prefect.yaml (work_pool.job_variables.env)."""
    job = (config.get("work_pool") or {}).get("job_variables") or {}
    return {str(k): str(v) for k, v in (job.get("env") or {}).items()}


def serve_pipeline(
    workdir: Path, interval_s: float | None = None, changes: dict[str, Any] | None = None
) -> None:
    """Serve the nightly deployment from this process until interrupted (runs one at a time)."""
    config = deployment_config()
    for key, value in flow_run_env(config).items():  # before Prefect reads its settings
        os.environ.setdefault(key, value)  # this process and the flow runs it starts
    from prefect import serve

    from flows.pipeline import pipeline

    deployment = pipeline.to_deployment(
        name=config["name"],
        description=config.get("description"),
        tags=config.get("tags"),
        parameters=parameters(config, workdir, changes),
        concurrency_limit=concurrency(config),
        **schedule_kwargs(config, interval_s),
    )
    serve(deployment, limit=1)


def register(
    workdir: Path,
    pool: str | None = None,
    interval_s: float | None = None,
    changes: dict[str, Any] | None = None,
) -> str:
    """Register the deployment on a process work pool (created if missing); return its id."""
    from prefect import flow as load_flow

    config = deployment_config()
    pool = pool or config.get("work_pool", {}).get("name", "xray-process")
    ensure_pool(pool)
    root = workdir.resolve()
    remote_flow = load_flow.from_source(source=str(root), entrypoint=ENTRYPOINT)
    dep_id = remote_flow.deploy(
        name=config["name"],
        work_pool_name=pool,
        description=config.get("description"),
        tags=config.get("tags"),
        parameters=parameters(config, root, changes),
        concurrency_limit=concurrency(config),
        job_variables={"env": flow_run_env(config)},
        build=False,
        push=False,
        print_next_steps=False,
        **schedule_kwargs(config, interval_s),
    )
    return str(dep_id)


def ensure_pool(pool: str) -> None:
    """Create the process work pool when the server has none by that name."""
    r = subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "inspect", pool],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        subprocess.run(
            [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
            check=True,
            capture_output=True,
        )


def server_command(port: int = DEFAULT_PORT) -> list[str]:
    """The command that runs a Prefect server on the loopback interface."""
    return [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]


def server_env(
    database_url: str | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The server's environment (from base or os.environ): leases on disk unless set otherwise."""
    env = dict(os.environ if base is None else base)
    env.setdefault(LEASE_STORAGE_SETTING, FILE_LEASE_STORAGE)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return env


def start_server(port: int = DEFAULT_PORT, database_url: str | None = None) -> int:
    """Run a Prefect server on 127.0.0.1 (SQLite under PREFECT_HOME unless a database URL)."""
    env = server_env(database_url)
    print(f"Prefect server on http://{LOOPBACK}:{port} (UI and API at /api)", file=sys.stderr)
    print(f"clients: export PREFECT_API_URL=http://{LOOPBACK}:{port}/api", file=sys.stderr)
    try:
        return subprocess.run(server_command(port), env=env, check=False).returncode
    except KeyboardInterrupt:
        return 0
