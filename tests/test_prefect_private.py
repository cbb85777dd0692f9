"""Guards of Prefect's private prefect.yaml loader (xray/runner/prefect_private.py).

They fail when a Prefect upgrade moves, renames or changes the two private functions that
`prefect deploy` reads prefect.yaml with, so `xray serve` and `xray deploy` break in a test,
not in production.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from flows.deploy import DeployError, concurrency, deployment_config, schedule_kwargs
from xray.runner.prefect_private import deployment_schedule, load_deployments

ROOT = Path(__file__).resolve().parent.parent


def test_the_private_functions_keep_their_names_and_signatures() -> None:
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    load = inspect.signature(_load_deploy_configs_and_actions).parameters
    assert list(load) == ["prefect_file", "console"]
    assert list(inspect.signature(_schedule_config_to_deployment_schedule).parameters) == [
        "schedule_config"
    ]


def test_prefect_reads_the_project_s_prefect_yaml() -> None:
    configs, complaints = load_deployments(ROOT / "prefect.yaml")
    assert complaints == []
    nightly = next(c for c in configs if c["name"] == "nightly")
    assert nightly["entrypoint"] == "flows/pipeline.py:pipeline"
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert nightly["work_pool"]["name"] == "xray-process"
    assert nightly["parameters"]["branch"] == "xray-records"
    assert nightly["work_pool"]["job_variables"]["env"] == {
        "PREFECT_CLIENT_MAX_RETRIES": "7",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }


def test_a_schedule_entry_becomes_what_prefect_s_deployments_take() -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.schedules import normalize_to_deployment_schedule

    got = deployment_schedule({"cron": "0 2 * * *", "timezone": "UTC", "active": False})
    assert isinstance(got["schedule"], CronSchedule) and got["active"] is False
    assert got["schedule"].cron == "0 2 * * *" and got["schedule"].timezone == "UTC"
    (created,) = normalize_to_deployment_schedule([got])  # what to_deployment does with it
    assert created.schedule == got["schedule"] and created.active is False


def test_the_nightly_deployment_builds_without_a_server() -> None:
    """The loaded schedule and limit are accepted by the flow's public to_deployment."""
    from flows.pipeline import pipeline

    config = deployment_config()
    deployment = pipeline.to_deployment(
        name=config["name"],
        concurrency_limit=concurrency(config),
        **schedule_kwargs(config, None),
    )
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    assert deployment.concurrency_limit == 1


@pytest.mark.parametrize(
    "text",
    [
        "deployments: [{name: nightly, concurrency_limit: lots}]\n",  # a bad value
        "- just\n- a list\n",  # not a mapping at all
        "deployments: [\n",  # not YAML
    ],
)
def test_prefect_s_complaints_about_a_bad_file_are_one_error(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "prefect.yaml"
    bad.write_text(text)
    _, complaints = load_deployments(bad)
    assert complaints
    with pytest.raises(DeployError, match=str(bad)) as info:
        deployment_config(bad)
    assert "\n" not in str(info.value)
