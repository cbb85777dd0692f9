"""Prefect's private prefect.yaml loader: the code `prefect deploy` itself reads the file with.

Prefect 3 has no public API that loads prefect.yaml (PrefectHQ/prefect#19503 asks for one), so
`xray serve` and `xray deploy` (flows/deploy.py) call the two private functions the
`prefect deploy` command uses, here and nowhere else:
- `prefect.cli.deploy._config._load_deploy_configs_and_actions`: reads and validates the file
  with Prefect's own pydantic models; each deployment comes back as a plain dict;
- `prefect.cli.deploy._schedules._schedule_config_to_deployment_schedule`: one `schedules`
  entry to the schedule mapping Prefect's deployment APIs take.
The version is pinned by uv.lock; tests/test_prefect_private.py fails when an upgrade moves,
renames or changes them. No public fallback exists (the loader before this read the YAML with
its own code, which is what the issue asked to end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class _Complaints:
    """Stands in for the rich Console the loader prints its warnings to; keeps them instead."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, *objects: Any, **_style: Any) -> None:
        self.lines.append(" ".join(str(o) for o in objects))


def load_deployments(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The deployments of prefect.yaml as `prefect deploy` reads them, and its complaints.

    Prefect skips a file it cannot read or validate with a printed warning; those warnings
    are returned (an empty list: the file is fine).
    """
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions

    complaints = _Complaints()
    configs, _actions = _load_deploy_configs_and_actions(Path(path), console=complaints)  # type: ignore[arg-type]
    return configs, complaints.lines


def deployment_schedule(entry: dict[str, Any]) -> dict[str, Any]:
    """One `schedules` entry of a deployment as `prefect deploy` passes it on (schedule, active)."""
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    return _schedule_config_to_deployment_schedule(entry)
