"""Deployments of the pipeline flow: the schedule, parameters and concurrency from prefect.yaml.

prefect.yaml is the one place the schedule is set, read with Prefect's own loader, the one
`prefect deploy` uses (xray/runner/prefect_private.py). `serve_pipeline` (`xray serve`) serves
that deployment from this process; `register` (`xray deploy`) registers it on a process work
pool for `prefect worker start`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from xray.core.errors import WorkError

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
DEPLOYMENT = "nightly"


class DeployError(WorkError):
    """prefect.yaml cannot be used (unreadable, invalid, no such deployment): exit status 1."""


def deployment_config(path: Path = PREFECT_YAML, name: str = DEPLOYMENT) -> dict[str, Any]:
    """The named deployment of prefect.yaml, as `prefect deploy` reads and templates it."""
    from prefect.utilities.templating import apply_values

    from xray.runner.prefect_private import load_deployments

    configs, complaints = load_deployments(path)
    if complaints:
        raise DeployError(f"{path}: {' '.join(complaints)}")
    for entry in configs:
        if entry.get("name") == name:
            return apply_values(entry, dict(os.environ), remove_notset=False)
    raise DeployError(f"{path}: no deployment named {name!r}")


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
    """to_deployment schedule arguments: prefect.yaml's schedules, or an interval (tests, demos)."""
    if interval_s:
        return {"interval": timedelta(seconds=interval_s)}
    from xray.runner.prefect_private import deployment_schedule

    return {"schedules": [deployment_schedule(s) for s in config.get("schedules") or []]}


def concurrency(config: dict[str, Any]) -> Any:
    """The deployment concurrency limit from prefect.yaml (1, later runs wait), or None."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    raw = config.get("concurrency_limit")
    if raw is None or isinstance(raw, int):
        return raw
    return ConcurrencyLimitConfig(**{k: v for k, v in raw.items() if v is not None})


def flow_run_env(config: dict[str, Any]) -> dict[str, str]:
    """The flow runs' environment from prefect.yaml (work_pool.job_variables.env)."""
    job = (config.get("work_pool") or {}).get("job_variables") or {}
    return {str(k): str(v) for k, v in (job.get("env") or {}).items()}


def serve_pipeline(
    workdir: Path, interval_s: float | None = None, changes: dict[str, Any] | None = None
) -> None:
    """Serve the nightly deployment from this process until interrupted (runs one at a time)."""
    config = deployment_config()  # Prefect's loader: Prefect has read its settings by now
    env = flow_run_env(config)
    for key, value in env.items():
        os.environ.setdefault(key, value)  # the flow runs this process starts
    import prefect.settings

    from flows.pipeline import pipeline

    # ... and this process: as defaults, so a value set in its own environment still wins
    defaults = {getattr(prefect.settings, k): v for k, v in env.items() if k.startswith("PREFECT_")}
    with prefect.settings.temporary_settings(set_defaults=defaults):
        pipeline.serve(  # the flow object itself: each run starts it in a fresh process
            name=config["name"],
            description=config.get("description"),
            tags=config.get("tags"),
            parameters=parameters(config, workdir, changes),
            global_limit=concurrency(config),
            limit=1,
            **schedule_kwargs(config, interval_s),
        )


def register(
    workdir: Path,
    pool: str | None = None,
    interval_s: float | None = None,
    changes: dict[str, Any] | None = None,
) -> str:
    """Register the deployment on a process work pool (created if missing); return its id."""
    from prefect import flow as load_flow

    config = deployment_config()
    pool = pool or (config.get("work_pool") or {}).get("name") or "xray-process"
    ensure_pool(pool)
    root = workdir.resolve()
    remote_flow = load_flow.from_source(source=str(root), entrypoint=config["entrypoint"])
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
