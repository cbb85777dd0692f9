"""End to end: `dvc repro` and the Prefect flow on a shrunk config, caching both ways."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import HARNESS_STARTUP_S, copy_run, dvc

from xray.core.params import STAGES
from xray.core.stage import dvc_yaml_paths

METRIC_KEYS = [
    f"{model}.{dataset}.{metric}"
    for model in ("base", "finetuned")
    for dataset in ("clean", "corrupted")
    for metric in ("accuracy", "auc")
]


def ran_stages(output: str) -> list[str]:
    """Stage names DVC says it ran."""
    return re.findall(r"Running stage '([^']+)'", output)


def lookup(tree: dict, dotted: str) -> object:
    """Value at a dotted key of nested dicts."""
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_dvc_stages_in_order() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    assert tuple(spec["stages"]) == STAGES
    for name, stage in spec["stages"].items():
        assert f"tasks/{name}.py" in stage["deps"], f"{name} does not list its own code"
        assert stage["cmd"].split()[:3] == ["python", "-m", f"tasks.{name}"]
        declared = [
            Path(next(iter(entry)) if isinstance(entry, dict) else entry)
            for key in ("deps", "outs", "metrics", "plots")
            for entry in stage.get(key, [])
        ]
        for flag, path in dvc_yaml_paths(name).items():  # every path the cmd passes is declared
            if flag == "raw" and name != "download":
                continue  # read through the split CSVs, which carry each image's sha256
            related = (p for d in declared for p in ((d, path), (path, d)))
            assert any(a == b or a in b.parents for a, b in related), (name, path)


@pytest.mark.slow
def test_repro_then_flow_then_repro_cache_both_ways(
    shrunk_run: tuple[Path, str], tmp_path: Path
) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    proj = copy_run(shrunk_run[0], tmp_path / "project")  # `dvc repro` of a fresh copy
    assert ran_stages(shrunk_run[1]) == list(STAGES)
    metrics = json.loads((proj / "reports/metrics.json").read_text())
    for key in METRIC_KEYS:
        value = lookup(metrics, key)
        assert isinstance(value, float) and 0.0 <= value <= 1.0, key
    for out in (
        "models/base.keras",
        "models/finetuned.keras",
        "reports/figures/history.png",
        "reports/figures/confusion.png",
        "reports/figures/samples.png",
        "reports/plots/roc.csv",
        "reports/predictions.csv",
        "reports/intervals.json",
        "data/corrupted/manifest.csv",
    ):
        assert (proj / out).is_file(), out
    card = (proj / "reports/model_card.md").read_text()
    intervals = json.loads((proj / "reports/intervals.json").read_text())
    auc = intervals["clean"]["finetuned"]["auc"]
    assert auc["lo"] <= lookup(metrics, "finetuned.clean.auc") <= auc["hi"]
    assert f"{auc['value']:.3f} [{auc['lo']:.3f}, {auc['hi']:.3f}]" in card
    assert "## Performance by subgroup" in card and "### By corruption family" in card
    lock = (proj / "dvc.lock").read_bytes()

    second = dvc(proj, "repro")
    assert ran_stages(second.stdout) == []
    assert (proj / "dvc.lock").read_bytes() == lock

    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_S):
        results = pipeline(workdir=str(proj))
        assert [r["stage"] for r in results] == list(STAGES)
        assert [r["stage"] for r in results if r["ran"]] == []
        assert (proj / "dvc.lock").read_bytes() == lock

        # Changing only a finetune param reruns only finetune and evaluate, in the flow too.
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["finetune"]["learning_rate"] = 0.0005
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dry = dvc(proj, "repro", "--dry")  # evaluate's turn is known only once finetune ran
        assert ran_stages(dry.stdout) == ["finetune"]
        results = pipeline(workdir=str(proj))
        assert [r["stage"] for r in results if r["ran"]] == ["finetune", "evaluate"]
    assert ran_stages(dvc(proj, "repro").stdout) == []


@pytest.mark.slow
def test_flow_fails_with_the_stage_error(make_project) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import StageFailed, pipeline

    proj = make_project({"data": {"source": "no/such/archive.zip"}})
    with (
        prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_S),
        pytest.raises(StageFailed) as info,
    ):
        pipeline(workdir=str(proj), stages=["download"])
    assert "stage download" in str(info.value)
    assert "no/such/archive.zip does not exist" in str(info.value)
    assert not (proj / "data" / "raw").exists()
