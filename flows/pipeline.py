"""The pipeline as a Prefect flow: one `dvc status`, then one task run per stale DVC stage.

DVC alone decides what is stale: one `dvc status` over the selected stages (task run
`dvc-status`), widened to every stage downstream of a stale one (DVC sees their changed
deps only once the upstream stage ran), then `dvc repro --single-item` for each of those,
in graph order. Up-to-date stages get no task run. A failed stage's previous outputs are
checked out again (xray/runner/repro.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from xray.core.errors import InputError, WorkError
from xray.core.params import STAGES, load_params
from xray.core.process import CHILD_DIES_WITH_US, run_env
from xray.runner.overrides import one_off_params
from xray.runner.repro import (
    StatusError,
    drop_kept,
    dvc_env,
    error_text,
    keep_uncached,
    restore_outputs,
    stale_stages,
)
from xray.runner.stage_log import StageLog, git_advice

TAIL_LINES = 40
STOP_GRACE_S = 30  # a stopped stage gets this long to exit (SIGINT, then SIGTERM) before SIGKILL
INT_GRACE_S = 5  # ... of which this long on SIGINT alone


class StageFailed(WorkError):
    """A DVC stage exited non-zero; the message carries the stage's own error line: exit 1."""


def stage_env() -> dict[str, str]:
    """The environment for stage commands: this interpreter's bin folder first on PATH."""
    env = dvc_env()
    run_id = current_flow_run_id()
    if run_id:  # xray/reports/lineage.py flow_run_id; no DVC output may depend on it (dvc.lock)
        env["XRAY_FLOW_RUN_ID"] = run_id
    return env


def current_flow_run_id() -> str | None:
    """The id of the Prefect flow run in progress, if any."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def dvc_repro(stage: str, workdir: Path, log: Any) -> dict[str, Any]:
    """Run `dvc repro --single-item STAGE` in workdir, relaying its output to `log`.

    Each line goes to `log` once at its own level (xray/runner/stage_log.py); DVC's git advice is
    held back and the files it names returned as `git_add`, for one line per run.

    An interruption of this task does not cut the stage short unless it is a deliberate stop
    (see `_wait_out_interruption`), so DVC keeps the result of a stage that was in flight.
    """
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    t0 = time.perf_counter()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    ran = False
    relay = StageLog(stage, log)
    keep_uncached(workdir, [stage])  # put back by restore_outputs if the stage fails
    with (
        run_env(workdir) as run_vars,  # one temp folder for TensorFlow, DVC and us; the run's name
        subprocess.Popen(
            cmd,
            cwd=workdir,
            env=stage_env() | run_vars,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # signals meant for this process reach the stage via us
            preexec_fn=CHILD_DIES_WITH_US,  # and a kill -9 of this process reaches it too
        ) as proc,
    ):
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                ran = ran or line.startswith(f"Running stage '{stage}'")
                relay.feed(line)
            rc = proc.wait()
        except BaseException as exc:
            _wait_out_interruption(stage, proc, exc, log, relay)
            if proc.returncode != 0:  # stopped, or failed after the interruption
                note = restore_outputs(workdir, stage, stage_env())
                log.warning("stage %s stopped (%s); %s", stage, type(exc).__name__, note)
            raise
    seconds = round(time.perf_counter() - t0, 2)
    if rc != 0:
        errors = [ln for ln in tail if ln.startswith(("error:", "ERROR:"))]
        reason = error_text(errors[0]) if errors else (tail[-1] if tail else "no output")
        note = restore_outputs(workdir, stage, stage_env())
        raise StageFailed(f"stage {stage} failed (exit {rc}): {reason}; {note}")
    drop_kept(workdir, [stage])
    return {"stage": stage, "ran": ran, "seconds": seconds, "git_add": relay.git_add}


def _wait_out_interruption(
    stage: str, proc: subprocess.Popen[str], exc: BaseException, log: Any, relay: StageLog
) -> None:
    """Stop the stage on Ctrl-C or SIGTERM; on any other interruption let it finish first.

    Prefect interrupts a flow run it can no longer account for (e.g. its deployment
    concurrency lease could not be renewed while the server was away) by raising inside
    it; the stage process runs on, its output still drained (a closed pipe would kill it),
    so its outputs and its dvc.lock entry land as usual and a rerun finds them cached.
    """
    from prefect.exceptions import TerminationSignal

    deliberate = (KeyboardInterrupt, TerminationSignal)  # cancel, Ctrl-C, shutdown
    if proc.poll() is not None:
        return
    if isinstance(exc, deliberate):
        _stop_stage(stage, proc, exc, log)
        return
    log.warning("%s | run interrupted (%r): letting the stage finish", stage, exc)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            relay.feed(line)
    except deliberate as again:
        _stop_stage(stage, proc, again, log)
        raise
    log.warning("%s | stage finished (exit %s) after the interruption", stage, proc.wait())


def _stop_stage(stage: str, proc: subprocess.Popen[str], exc: BaseException, log: Any) -> None:
    """Stop the stage's process group: SIGINT as Ctrl-C would, then SIGTERM, then SIGKILL.

    SIGTERM follows after INT_GRACE_S because a process started in the background by a
    non-interactive shell inherits SIGINT ignored (and so does DVC under it).
    """
    log.warning("%s | stopping the stage (%s)", stage, type(exc).__name__)
    for sig, wait_s in (
        (signal.SIGINT, INT_GRACE_S),  # DVC's own graceful stop
        (signal.SIGTERM, STOP_GRACE_S - INT_GRACE_S),  # the stages unwind on SIGTERM too
        (signal.SIGKILL, None),
    ):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=wait_s)  # drained: a full pipe would block it
            return
        except subprocess.TimeoutExpired:
            log.warning("%s | still running %ss after %s", stage, wait_s, sig.name)


def probe_source(workdir: Path, log: Any) -> None:
    """Record data.source's identity (unchanged -> DVC finds `download` up to date)."""
    from xray.data.intake.source import DownloadError, probe_project

    try:
        log.info(probe_project(workdir))
    except DownloadError as e:
        raise StageFailed(f"stage download: {e}") from None


@task(cache_policy=NO_CACHE, persist_result=False, name="dvc-status", task_run_name="dvc-status")
def check_stages(workdir: str, selected: list[str]) -> list[str]:
    """Probe the source (if `download` is selected), then ask DVC once which stages to run."""
    root, log = Path(workdir), get_run_logger()
    if "download" in selected:
        probe_source(root, log)
    t0 = time.perf_counter()
    try:
        to_run, reported = stale_stages(root, selected)
    except StatusError as e:
        log.warning("%s; running every selected stage through dvc repro", e)
        return selected
    log.info(
        "dvc status in %.1f s: stale %s; to run %s; up to date %s",
        time.perf_counter() - t0,
        ", ".join(s for s in selected if s in reported) or "none",
        ", ".join(to_run) or "none",
        ", ".join(s for s in selected if s not in to_run) or "none",
    )
    return to_run


@task(cache_policy=NO_CACHE, persist_result=False)
def run_stage(stage: str, workdir: str, probe: bool = False) -> dict[str, Any]:
    """Run one DVC stage (skipped by DVC when cached); `probe`: record the source first."""
    if probe:
        probe_source(Path(workdir), get_run_logger())
    return dvc_repro(stage, Path(workdir), get_run_logger())


@task(cache_policy=NO_CACHE, persist_result=False, name="verify", task_run_name="verify")
def verify_outputs(workdir: str) -> dict[str, Any]:
    """Re-hash tracked outputs and their cache objects; fail naming what differs."""
    from xray.records.verify import check_verified, summary

    result = check_verified(Path(workdir), remember=True)  # unchanged files: not read again
    get_run_logger().info(summary(result))
    return result


@task(cache_policy=NO_CACHE, persist_result=False, name="dvc-push", task_run_name="dvc-push")
def push_outputs(workdir: str, remote: str | None) -> dict[str, Any]:
    """Push data and models to the DVC remote."""
    from xray.records.remote import dvc_push

    result = dvc_push(Path(workdir), remote)
    get_run_logger().info("dvc push to %s: %s", result["remote"], result["output"])
    return result


@task(cache_policy=NO_CACHE, persist_result=False, name="record", task_run_name="record")
def record_model(workdir: str, branch: str, stamps: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commit dvc.lock, params, lineage and the run stamps on the record branch; tag a new model."""
    from xray.records.record import record_run

    result = record_run(Path(workdir), branch, current_flow_run_id(), stamps)
    if result["recorded"]:
        get_run_logger().info("recorded %s on %s (tag %s)", result["commit"], branch, result["tag"])
    else:
        get_run_logger().info("nothing new to record (%s, tag %s)", branch, result["tag"])
    return result


@task(cache_policy=NO_CACHE, persist_result=False, name="artifacts", task_run_name="artifacts")
def publish(workdir: str, stamps: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics table, lineage table and model card (with the run stamps) as Prefect artifacts."""
    from xray.records.artifacts import publish_artifacts

    return publish_artifacts(Path(workdir), stamps)


def after_stages(
    root: Path, full: bool, push: bool, remote: str | None, record: bool, branch: str
) -> dict[str, Any]:
    """The steps after a successful run of the stages: push, artifacts, and the record last.

    The record comes last so that a run which fails anywhere (a stage, the push, or Prefect's
    API when the server is away) records nothing; a rerun then records it.
    """
    from xray.core.dvc_private import one_repo
    from xray.records.record import run_stamps

    out: dict[str, Any] = {}
    stamps = run_stamps(root, current_flow_run_id())  # one set for the artifacts and the record
    with one_repo(root):  # opened once for verify, the push check and the record
        if push or (record and full):  # nothing poisoned is pushed or recorded
            out["verify"] = verify_outputs(str(root))
        if push:
            out["push"] = push_outputs(str(root), remote)
        out["artifacts"] = publish(str(root), stamps)
        if record and full:
            out["record"] = record_model(str(root), branch, stamps)
        elif record:
            print("not recording: only some stages ran")
    return out


@flow(name="xray-pipeline", log_prints=True, persist_result=False)
def pipeline(
    workdir: str = ".",
    stages: list[str] | None = None,
    source: str | None = None,
    overrides: dict[str, Any] | None = None,
    push: bool = False,
    remote: str | None = None,
    record: bool = False,
    branch: str = "xray-records",
    only_stale: bool = True,
) -> list[dict[str, Any]]:
    """Apply overrides, validate params.yaml, run the stale stages through DVC, then push/record.

    only_stale=False is the old path: `dvc repro --single-item` for every selected stage.
    """
    root = Path(workdir).resolve()
    if not (root / "dvc.yaml").exists():
        raise InputError(f"{root}: no dvc.yaml here (run inside the project)")
    selected = list(stages or STAGES)
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise InputError(f"stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    changes = dict(overrides or {}) | ({"data.source": source} if source else {})
    with one_off_params(root, changes) as changed:  # put back when the run ends, however
        if changes:
            print(f"params.yaml for this run only: {', '.join(changed) or 'nothing changed'}")
        load_params(root / "params.yaml", selected)  # validated before any stage runs
        return _run_stages(root, selected, stages is None, push, remote, record, branch, only_stale)


def _run_stages(
    root: Path,
    selected: list[str],
    full: bool,
    push: bool,
    remote: str | None,
    record: bool,
    branch: str,
    only_stale: bool,
) -> list[dict[str, Any]]:
    """The stale (or all) selected stages through DVC, then push, artifacts and the record."""
    # No Prefect retries: xray/data/intake/fetch.py retries transient network errors itself,
    # the probe's HEAD included (and a rerun resumes its partial download); every other
    # failure is permanent.
    from xray.core.dvc_private import forget_repo, one_repo

    with one_repo(root):  # the status check's Repo serves the steps after, if no stage ran
        to_run = check_stages(str(root), selected) if only_stale else selected
        results = []
        for stage in selected:
            if stage not in to_run:  # up to date: no task run, no DVC process
                results.append({"stage": stage, "ran": False, "seconds": 0.0, "cached": True})
                continue
            forget_repo(root)  # the stage rewrites dvc.lock: the steps after open a fresh Repo
            options: dict[str, Any] = {"name": stage, "task_run_name": stage}
            probe = stage == "download" and not only_stale
            results.append(run_stage.with_options(**options)(stage, str(root), probe))
        ran = [r["stage"] for r in results if r["ran"]]
        print(f"stages run: {', '.join(ran) or 'none (all cached)'}")
        advice = git_advice(f for r in results for f in r.get("git_add", []))
        if advice and not (record and full):  # a recorded run commits dvc.lock itself
            print(advice)
        after_stages(root, full, push, remote, record, branch)
    return results
