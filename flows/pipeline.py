"""The pipeline as a Prefect flow: one task run per DVC stage; DVC alone decides what is cached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.download import is_url
from tasks.params import STAGES, load_params

TAIL_LINES = 40
DOWNLOAD_RETRIES = 2
DOWNLOAD_RETRY_DELAY_S = 30


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the stage's own error line."""


def stage_env() -> dict[str, str]:
    """The environment for stage commands: this interpreter's bin folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def dvc_repro(stage: str, workdir: Path, log: Any) -> dict[str, Any]:
    """Run `dvc repro --single-item STAGE` in workdir, streaming its output to `log`."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    t0 = time.perf_counter()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    ran = False
    with subprocess.Popen(
        cmd,
        cwd=workdir,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            ran = ran or line.startswith(f"Running stage '{stage}'")
            log.info("%s | %s", stage, line)
        rc = proc.wait()
    seconds = round(time.perf_counter() - t0, 2)
    if rc != 0:
        errors = [ln for ln in tail if ln.startswith(("error:", "ERROR:"))]
        reason = errors[0] if errors else (tail[-1] if tail else "no output")
        raise StageFailed(f"stage {stage} failed (exit {rc}): {reason}")
    return {"stage": stage, "ran": ran, "seconds": seconds}


@task(cache_policy=NO_CACHE, persist_result=False)
def run_stage(stage: str, workdir: str) -> dict[str, Any]:
    """Run one DVC stage (skipped by DVC when cached)."""
    if stage == "download":  # record the source's identity: unchanged -> DVC skips the stage
        from tasks.download import DownloadError, probe_project

        try:
            get_run_logger().info(probe_project(Path(workdir)))
        except DownloadError as e:
            raise StageFailed(f"stage download: {e}") from None
    return dvc_repro(stage, Path(workdir), get_run_logger())


@flow(name="xray-pipeline", log_prints=True, persist_result=False)
def pipeline(workdir: str = ".", stages: list[str] | None = None) -> list[dict[str, Any]]:
    """Validate params.yaml, then run the stages in order through DVC."""
    root = Path(workdir).resolve()
    if not (root / "dvc.yaml").exists():
        raise FileNotFoundError(f"{root}: no dvc.yaml here (run inside the project)")
    params = load_params(root / "params.yaml")
    selected = list(stages or STAGES)
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise ValueError(f"stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    results = []
    for stage in selected:
        options: dict[str, Any] = {"name": stage, "task_run_name": stage}
        if stage == "download" and is_url(params.data.source):  # the only network access
            options |= {"retries": DOWNLOAD_RETRIES, "retry_delay_seconds": DOWNLOAD_RETRY_DELAY_S}
        results.append(run_stage.with_options(**options)(stage, str(root)))
    ran = [r["stage"] for r in results if r["ran"]]
    print(f"stages run: {', '.join(ran) or 'none (all cached)'}")
    return results
