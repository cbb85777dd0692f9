"""Nothing lost on failure (a failed stage's outputs come back) and one `dvc status` per run."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import HARNESS_STARTUP_S, ROOT, dvc, git
from test_server_restart import InterruptingLog

from xray.core.params import STAGES
from xray.runner.repro import repro, stage_graph, with_downstream

STAGE_SCRIPT = """import os, sys, time
print("begin", flush=True)
os.makedirs("live", exist_ok=True)
with open("live/metrics.json", "w") as f:  # a dvclive-like `cache: false` output, written early
    f.write("partial\\n")
time.sleep(float(os.environ.get("XRAY_TEST_STAGE_S", "0")))
if os.path.exists("broken"):
    sys.exit("error: the source is broken")
with open("out.txt", "w") as f:
    f.write("done\\n")
with open("live/metrics.json", "w") as f:
    f.write("final\\n")
"""
DVC_YAML = {
    "stages": {
        "slow": {
            "cmd": "python slow.py",
            "deps": ["slow.py"],
            "outs": ["out.txt", {"live": {"cache": False}}],
        }
    }
}
RESTORED = "its previous outputs were restored (dvc checkout {})"


def snapshot(root: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under the given paths."""
    files = [f for p in paths for f in [*sorted((root / p).rglob("*")), root / p] if f.is_file()]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def break_stage(root: Path) -> None:
    """Make the `slow` stage stale (its code changed) and failing."""
    (root / "broken").write_text("")
    with (root / "slow.py").open("a") as f:
        f.write("# changed\n")


def test_downstream_closure_follows_dvc_yaml() -> None:
    graph = stage_graph(ROOT)
    assert list(graph) == list(STAGES)
    # evaluate reads data/raw/source.json (the source identity in the model card)
    assert set(graph["evaluate"]) == {"download", "split", "corrupt", "train_base", "finetune"}
    assert graph["download"] == []
    assert with_downstream({"finetune"}, graph) == {"finetune", "evaluate"}
    assert with_downstream({"corrupt"}, graph) == {"corrupt", "evaluate"}
    assert with_downstream({"download"}, graph) == set(STAGES)
    assert with_downstream(set(), graph) == set()


@pytest.mark.slow
def test_a_failed_or_stopped_stage_gets_its_outputs_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One-stage DVC repo: a failure, a SIGTERM, `xray repro`, and a cache that lacks the outs."""
    from prefect.exceptions import TerminationSignal

    from flows.pipeline import StageFailed, dvc_repro

    root = tmp_path / "tiny"
    root.mkdir()
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    (root / "slow.py").write_text(STAGE_SCRIPT)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    assert dvc_repro("slow", root, InterruptingLog(None))["ran"] is True
    lock = (root / "dvc.lock").read_bytes()

    break_stage(root)
    with pytest.raises(StageFailed) as info:
        dvc_repro("slow", root, InterruptingLog(None))
    assert str(info.value) == (
        f"stage slow failed (exit 255): the source is broken; {RESTORED.format('slow')}"
    )
    assert (root / "out.txt").read_text() == "done\n"
    # issue 24 item 6: the `cache: false` output is back too (DVC has no copy of it)
    assert (root / "live" / "metrics.json").read_text() == "final\n"
    assert not (root / ".xray" / "uncached" / "slow").exists()

    monkeypatch.setenv("XRAY_TEST_STAGE_S", "60")  # stopped mid-stage (a cancel)
    log = InterruptingLog(TerminationSignal(signal.SIGTERM))
    with pytest.raises(TerminationSignal):
        dvc_repro("slow", root, log)
    assert (root / "out.txt").read_text() == "done\n"
    assert any(RESTORED.format("slow") in line for line in log.lines)
    assert (root / "live" / "metrics.json").read_text() == "final\n"  # not the partial one
    monkeypatch.setenv("XRAY_TEST_STAGE_S", "0")

    assert repro(root, ["slow"]) != 0  # `xray repro slow`
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: stage slow failed (exit 255): the source is broken; " + RESTORED.format(
        "slow"
    )
    assert (root / "out.txt").read_text() == "done\n"
    assert (root / "live" / "metrics.json").read_text() == "final\n"  # `xray repro` too
    assert (root / "dvc.lock").read_bytes() == lock

    shutil.rmtree(root / ".dvc" / "cache")  # nothing to restore from: said in the same line
    failed = r"; restoring its previous outputs failed \(dvc checkout slow\): "
    with pytest.raises(StageFailed, match=failed):
        dvc_repro("slow", root, InterruptingLog(None))


@pytest.mark.slow
def test_nochange_flow_runs_no_repro_and_a_bad_source_loses_nothing(
    make_project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shrunk project: an up-to-date stage starts no `dvc repro`; a broken archive restores."""
    from prefect.testing.utilities import prefect_test_harness

    from flows import pipeline as flow_module
    from flows.pipeline import StageFailed, pipeline

    proj = make_project()
    dvc(proj, "repro", "download")
    outs = ("data/raw", "reports/quarantine.csv", "reports/duplicates.csv")
    before = snapshot(proj, *outs)
    lock = (proj / "dvc.lock").read_bytes()

    def no_repro(stage: str, *_: object) -> dict[str, Any]:
        raise AssertionError(f"dvc repro {stage} started on a no-change run")

    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_S):
        with monkeypatch.context() as m:
            m.setattr(flow_module, "dvc_repro", no_repro)
            results = pipeline(workdir=str(proj), stages=["download"])
        assert results == [{"stage": "download", "ran": False, "seconds": 0.0, "cached": True}]

        (proj / "broken.zip").write_bytes(b"not a zip archive")
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["data"]["source"] = "broken.zip"
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with pytest.raises(StageFailed) as info:
            pipeline(workdir=str(proj), stages=["download"])
    assert str(info.value).startswith("stage download failed (exit 255): broken.zip: corrupt")
    assert str(info.value).endswith(RESTORED.format("download"))
    assert snapshot(proj, *outs) == before

    capsys.readouterr()
    assert repro(proj, ["download"]) != 0  # `xray repro download`, the same
    assert capsys.readouterr().err.strip().endswith(RESTORED.format("download"))
    assert snapshot(proj, *outs) == before
    assert (proj / "dvc.lock").read_bytes() == lock
