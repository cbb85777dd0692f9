"""Deployments: prefect.yaml parsing, and scheduled runs served against a real Prefect server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import HARNESS_STARTUP_S, PrefectServer, api_call, tracked_files
from conftest import wait_for as conftest_wait_for

from flows.deploy import (
    DeployError,
    concurrency,
    deployment_config,
    flow_run_env,
    parameters,
    schedule_kwargs,
)
from xray.cli.server import FILE_LEASE_STORAGE, LEASE_STORAGE_SETTING, server_env

REPO = Path(__file__).resolve().parent.parent
SHRINK = {
    "data.synthetic.patients_per_class": 4,
    "data.synthetic.image_size": 64,
    "train.image_size": 48,
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "finetune.epochs": 1,
    "corrupt.families": ["seed"],
    "corrupt.severities": [3],
    # the proxy's three kinds of target on two shifts and one balance (as conftest.SHRUNK)
    "evaluate.grid_images": 4,
    "evaluate.proxy_shifts": ["equalize", "markers"],
    "evaluate.proxy_priors": [0.6],
}
RUN_TIMEOUT_S = 900
INTERVAL_S = 20
POLL_S = 2.0
ARTIFACT_KEYS = {"xray-metrics", "xray-lineage", "xray-model-card"}


def test_prefect_yaml_holds_the_nightly_schedule_and_limit() -> None:
    """The one place for the schedule: a nightly cron, concurrency 1 that enqueues."""
    config = deployment_config()
    assert config["entrypoint"] == "flows/pipeline.py:pipeline"
    sched = schedule_kwargs(config, None)["schedules"]
    assert [s["schedule"].cron for s in sched] == ["0 2 * * *"]
    limit = concurrency(config)
    assert limit.limit == 1
    assert limit.collision_strategy.value == "ENQUEUE"
    params = parameters(config, Path("."), {"remote": "/x", "source": None})
    assert params["workdir"] == str(Path(".").resolve())
    assert params["remote"] == "/x" and params["record"] is True and params["push"] is True


def test_server_and_flow_runs_ride_out_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """`xray server` keeps leases on disk; flow runs retry the API longer than Prefect's 5."""
    from prefect.settings import Settings

    monkeypatch.delenv(LEASE_STORAGE_SETTING, raising=False)
    env = server_env("postgresql+asyncpg://db/prefect")
    assert env[LEASE_STORAGE_SETTING] == FILE_LEASE_STORAGE
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://db/prefect"
    runs = flow_run_env(deployment_config())
    assert set(runs) == {"PREFECT_CLIENT_MAX_RETRIES", "PREFECT_RUNNER_POLL_FREQUENCY"}
    for key, value in (runs | {LEASE_STORAGE_SETTING: FILE_LEASE_STORAGE}).items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # the names are Prefect's own: a typo would leave the defaults
    assert settings.client.max_retries == int(runs["PREFECT_CLIENT_MAX_RETRIES"]) > 5
    assert settings.runner.poll_frequency == 1  # serve picks a triggered run up within 1 s
    assert settings.server.concurrency.lease_storage == FILE_LEASE_STORAGE
    monkeypatch.setenv(LEASE_STORAGE_SETTING, "prefect.server.concurrency.lease_storage.memory")
    assert server_env()[LEASE_STORAGE_SETTING].endswith(".memory")  # an explicit choice wins


def test_serve_serves_the_flow_itself_with_prefect_yaml_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`xray serve` serves the flow object (each run a fresh process that need not load the flow
    from storage), one run at a time, polling every 2 s and retrying the API 7 times, though
    Prefect read its settings (at import, by the prefect.yaml loader) before the file's env was
    known; one set in the environment still wins."""
    import prefect.settings
    from prefect.settings import get_current_settings

    from flows.deploy import serve_pipeline
    from flows.pipeline import pipeline

    seen = []

    def fake_serve(**kwargs: Any) -> None:
        settings = get_current_settings()
        seen.append((settings.runner.poll_frequency, settings.client.max_retries, kwargs))

    monkeypatch.setattr(pipeline, "serve", fake_serve)
    runs = flow_run_env(deployment_config())
    for key in runs:  # absent here, and again after the test
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)
    serve_pipeline(Path("."))
    [(poll, retries, kwargs)] = seen
    assert (poll, retries) == (1, int(runs["PREFECT_CLIENT_MAX_RETRIES"]))
    assert kwargs["limit"] == 1 and kwargs["global_limit"].limit == 1
    assert kwargs["name"] == "nightly" and kwargs["parameters"]["record"] is True
    assert get_current_settings().runner.poll_frequency == 10  # only while serving
    with prefect.settings.temporary_settings(updates={"runner.poll_frequency": 5}):
        serve_pipeline(Path("."))  # the operator's own choice
    assert seen[-1][0] == 5


def test_missing_deployment_is_an_error(tmp_path: Path) -> None:
    """A prefect.yaml without the named deployment is reported with its path."""
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments: []\n")
    with pytest.raises(DeployError, match="no deployment named"):
        deployment_config(bad)


# --- the end-to-end test against a real server -------------------------------------------


def git(root: Path, *args: str) -> str:
    """Run git in root; return stdout."""
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def set_params(root: Path, values: dict[str, Any]) -> None:
    """Set dotted keys in root/params.yaml (only those values move, comments kept)."""
    from xray.runner.overrides import set_keys

    path = root / "params.yaml"
    path.write_text(set_keys(path.read_text(), values)[0])


def make_project(dest: Path) -> Path:
    """A git repo holding a copy of the project's files, with shrunk params."""
    for rel in tracked_files():
        src = REPO / rel
        # the committed dvc.lock and reports describe the full default run, not this shrunk one
        outputs = rel == "dvc.lock" or rel.startswith(("reports/", "dvclive/", "tests/"))
        if not outputs:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    set_params(dest, SHRINK)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.name", "test")
    git(dest, "config", "user.email", "test@localhost")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project")
    return dest


@pytest.fixture
def server(prefect_server: PrefectServer) -> dict[str, str]:
    """The environment that points clients at a real Prefect server (see conftest)."""
    return prefect_server.env


def flow_runs(api: str) -> list[dict[str, Any]]:
    """All flow runs on the server, oldest expected start first."""
    r = api_call("POST", f"{api}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC"})
    r.raise_for_status()
    return r.json()


def completed(api: str) -> list[dict[str, Any]]:
    """Completed flow runs, in the order they ended; a failed run fails the test."""
    runs = flow_runs(api)
    failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
    if failed:
        pytest.fail(f"flow run {failed[0]['name']} {failed[0]['state_type']}")
    done = [r for r in runs if r["state_type"] == "COMPLETED"]
    return sorted(done, key=lambda r: r["end_time"])


wait_for = partial(conftest_wait_for, timeout=RUN_TIMEOUT_S, poll_s=POLL_S)


def stamp(value: str) -> datetime:
    """An API timestamp as an aware datetime (string order is wrong when one lacks a fraction)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def deployment_limit(api: str, dep_id: str) -> int | None:
    """The deployment's concurrency limit as the server holds it."""
    deployment = api_call("GET", f"{api}/deployments/{dep_id}").json()
    return deployment["concurrency_limit"] or (
        deployment.get("global_concurrency_limit") or {}
    ).get("limit")


def model_tags(root: Path, pattern: str = "finetuned@*") -> list[str]:
    """The finetuned model's GTO version tags in root (`base@*` for the base model's)."""
    return sorted(git(root, "tag", "--list", pattern).split())


def _duration(run: dict[str, Any]) -> float:
    """Seconds a flow run took (its total run time)."""
    return float(run["total_run_time"])


@pytest.mark.slow
def test_scheduled_runs_on_a_real_server(tmp_path: Path, server: dict[str, str]) -> None:
    """serve runs the schedule: run 1 records v1, a no-change run nothing, new data v2.

    The project has a default DVC remote and `--remote` names its folder: every run pushes.
    """
    api = server["PREFECT_API_URL"]
    root = make_project(tmp_path / "project")
    remote = tmp_path / "dvc-remote"
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", str(remote)],
        cwd=root,
        check=True,
    )
    git(root, "commit", "-qam", "DVC remote: a local folder (the default)")
    serve_log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "xray.cli.main", "serve", "--workdir", str(root)]
    cmd += ["--interval", str(INTERVAL_S), "--remote", str(remote), "--branch", "records"]
    with serve_log.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=server, stdout=log, stderr=log)
    try:
        first = wait_for(lambda: completed(api), "the first scheduled run", serve_log)[0]
        assert model_tags(root) == ["finetuned@v0.1.0"]
        tip = git(root, "rev-parse", "records")
        assert "dvc.lock" in git(root, "show", "--name-only", "--format=", tip).split()
        assert git(root, "rev-parse", "finetuned@v0.1.0^{commit}") == tip
        assert "models/.gitignore" in git(root, "ls-tree", "-r", "--name-only", tip).split()
        locked = git(root, "show", f"{tip}:dvc.lock")
        assert "models/finetuned.keras" in locked
        assert any(remote.rglob("*")), "dvc push left the remote empty"
        lineage = json.loads(git(root, "show", f"{tip}:reports/lineage.json"))
        assert "flow_run_id" not in lineage  # a DVC output: no run stamps (dvc.lock stays put)
        stamps = json.loads(git(root, "show", f"{tip}:run.json"))
        assert stamps["flow_run_id"] == first["id"]
        r = api_call(
            "POST",
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [first["id"]]}}},
            timeout=10,
        )
        assert {a["key"] for a in r.json()} >= ARTIFACT_KEYS
        assert deployment_limit(api, first["deployment_id"]) == 1

        # a scheduled run with nothing changed records nothing new
        second = wait_for(
            lambda: (d := completed(api)) and len(d) >= 2 and d[1], "a no-change run", serve_log
        )
        assert model_tags(root) == ["finetuned@v0.1.0"]
        assert git(root, "rev-parse", "records") == tip
        took = f"{_duration(second):.1f} s (first run {_duration(first):.1f} s)"
        print(f"\nno-change scheduled run: {took}")

        # a new fine-tuning seed: a later scheduled run records a second model version (only
        # finetune and evaluate rerun; the data and the base model stay)
        set_params(root, {"finetune.seed": 44})
        # the record registers the new model with GTO: wait for its tag
        wait_for(
            lambda: len(model_tags(root)) == 2,
            "a second model version, registered",
            serve_log,
        )
        assert git(root, "rev-parse", "records") != tip
        from xray.records.audit import history, models_for_data

        versions = history(root)
        tags = [["finetuned@v0.1.0"], ["finetuned@v0.2.0"]]
        assert [v["tags"] for v in versions] == tags
        assert versions[0]["flow_run_id"] == first["id"] and all(v["flow_run_id"] for v in versions)
        assert [v["commit"] for v in versions] == [tip, git(root, "rev-parse", "records")]
        local = root / ".dvc/config.local"  # the default remote's folder: no remote added
        assert not local.exists() or "xray-" not in local.read_text()
        raw = [v["data"]["data/raw"] for v in versions]
        spans = sorted((stamp(r["start_time"]), stamp(r["end_time"])) for r in completed(api))
        assert all(a[1] <= b[0] for a, b in pairwise(spans)), "runs overlapped"
        assert raw[0] == raw[1] and versions[0]["model_md5"] != versions[1]["model_md5"]
        on_raw = [v["model_md5"] for v in models_for_data(root, raw[0])]
        assert on_raw == [v["model_md5"] for v in versions]  # both came from that data
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dvc_push_to_a_local_folder_remote(tmp_path: Path) -> None:
    """A folder given as `remote` becomes a local remote and receives the cache."""
    from xray.records.remote import RemoteError, derived_remote_name, dvc_push

    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=root, check=True)
    (root / "blob.txt").write_text("some data\n")
    subprocess.run([*dvc, "add", "-q", "blob.txt"], cwd=root, check=True)
    with pytest.raises(RemoteError, match="no DVC remote configured"):
        dvc_push(root, None)
    remote = tmp_path / "remote"
    result = dvc_push(root, str(remote))
    name = derived_remote_name(str(remote.resolve()))
    assert result["remote"] == name and name.startswith("xray-")
    stored = [p for p in remote.rglob("*") if p.is_file()]
    assert len(stored) == 1 and stored[0].read_text() == "some data\n"
    assert name in (root / ".dvc/config.local").read_text()
    assert dvc_push(root, name)["remote"] == name  # a configured name is used as is


@pytest.mark.slow
def test_a_failing_stage_fails_the_run_and_records_nothing(tmp_path: Path) -> None:
    """download fails on a missing source: the flow fails, the record branch and tags stay."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import StageFailed, pipeline

    root = make_project(tmp_path / "project")
    git(root, "branch", "records")
    before = git(root, "rev-parse", "records")
    params_before = (root / "params.yaml").read_bytes()
    with (
        prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_S),
        pytest.raises(StageFailed, match="stage download"),
    ):
        pipeline(
            workdir=str(root),
            source=str(tmp_path / "missing.zip"),
            push=True,
            remote=str(tmp_path / "remote"),
            record=True,
            branch="records",
        )
    assert git(root, "rev-parse", "records") == before
    assert model_tags(root) == []
    assert not (tmp_path / "remote").exists()
    # the override applied to that run only: params.yaml is back as it was (issue 24 item 4)
    assert (root / "params.yaml").read_bytes() == params_before
    assert not (root / ".xray" / "params.yaml.before-run").exists()


def run_states(api: str, run_id: str) -> list[dict[str, Any]]:
    """Every state a flow run went through, oldest first."""
    r = api_call("GET", f"{api}/flow_run_states/", params={"flow_run_id": run_id})
    r.raise_for_status()
    return sorted(r.json(), key=lambda s: stamp(s["timestamp"]))


def completed_runs(api: str, ids: list[str]) -> list[dict[str, Any]] | None:
    """The runs `ids` once all are COMPLETED (None before); a failed one fails the test."""
    runs = [api_call("GET", f"{api}/flow_runs/{i}").json() for i in ids]
    bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED", "CANCELLED")]
    if bad:
        pytest.fail(f"flow run {bad[0]['name']} {bad[0]['state_type']}")
    return runs if all(r["state_type"] == "COMPLETED" for r in runs) else None


@pytest.mark.slow
def test_second_run_waits_for_the_first_on_a_process_worker(
    tmp_path: Path, server: dict[str, str]
) -> None:
    """`xray deploy` on a process pool; two runs at once: one waits, starting after the other.

    Both runs exist before the worker starts, so its first poll submits both: the server gives
    the deployment's one slot to one of them (at Pending) and turns the other back to
    Scheduled/AwaitingConcurrencySlot (later perhaps renamed Late) until the first has ended.
    """
    api = server["PREFECT_API_URL"]
    root = make_project(tmp_path / "project")
    env = server | {"XRAY_WORKDIR": str(root), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    deploy = [sys.executable, "-m", "xray.cli.main", "deploy", "--workdir", str(root)]
    out = subprocess.run(deploy, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    dep_id = out.stdout.strip().rsplit(" ", 1)[-1]
    assert deployment_limit(api, dep_id) == 1
    quick = {"stages": ["download"], "push": False, "record": False}
    ids = []
    for _ in range(2):
        r = api_call(
            "POST", f"{api}/deployments/{dep_id}/create_flow_run", json={"parameters": quick}
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    worker_log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "xray-process"]
    with worker_log.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=log)
    try:
        runs = wait_for(lambda: completed_runs(api, ids), "both runs", worker_log, timeout=600)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    names = {i: [s["name"] for s in run_states(api, i)] for i in ids}
    waited = [i for i in ids if "AwaitingConcurrencySlot" in names[i]]
    assert len(waited) == 1, f"expected exactly one run to wait for the slot: {names}"
    waiter, holder = (runs[1], runs[0]) if waited[0] == ids[1] else (runs[0], runs[1])
    assert stamp(holder["end_time"]) <= stamp(waiter["start_time"]), "the two runs overlapped"
