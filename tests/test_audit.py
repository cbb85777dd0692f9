"""Lineage, git records and `xray audit` on a tiny generated project (no training)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from xray.cli.main import main
from xray.core.hashing import file_md5
from xray.records.artifacts import render_stamps
from xray.records.audit import AuditError, audit, format_audit, history, models_for_data, run_record
from xray.records.record import RUN_JSON, RecordError, record_run
from xray.records.registry import registrations
from xray.reports.model_card import render_card, write_model_card

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
DVC_YAML = Path(__file__).resolve().parent.parent / "dvc.yaml"


def git(root: Path, *args: str) -> str:
    """Run git in root; return stdout."""
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def fake_md5(text: str) -> str:
    """A deterministic md5-looking hash."""
    return hashlib.md5(text.encode()).hexdigest()


def out(path: str, md5: str) -> dict[str, Any]:
    """A dvc.lock out/dep entry."""
    return {"path": path, "hash": "md5", "md5": md5, "size": 1}


def write_version(root: Path, seed: int, base_seed: int | None = None) -> dict[str, str]:
    """Models, data identity, metrics and a dvc.lock describing them, as `seed` would make.

    `base_seed` gives the base model of another seed (a new finetuned model on an old base).
    """
    (root / "models").mkdir(exist_ok=True)
    (root / "models/base.keras").write_bytes(
        f"base-{seed if base_seed is None else base_seed}".encode()
    )
    (root / "models/finetuned.keras").write_bytes(f"finetuned-{seed}".encode())
    (root / "data/raw").mkdir(parents=True, exist_ok=True)
    source = {"kind": "synthetic", "seed": seed, "content_sha256": fake_md5(f"c{seed}") * 2}
    (root / "data/raw/source.json").write_text(json.dumps(source))
    h = {
        "raw": fake_md5(f"raw{seed}") + ".dir",
        "manifest": fake_md5(f"manifest{seed}"),
        "splits": fake_md5(f"splits{seed}") + ".dir",
        "train": fake_md5(f"train{seed}"),
        "base": file_md5(root / "models/base.keras"),
        "finetuned": file_md5(root / "models/finetuned.keras"),
    }
    stages = {
        "download": {
            "cmd": "python -m tasks.download",
            "deps": [out("tasks/download.py", fake_md5("code"))],
            "params": {"params.yaml": {"data": {"source": "synthetic", "seed": seed}}},
            "outs": [out("data/raw", h["raw"])],
        },
        "split": {
            "cmd": "python -m tasks.split",
            "deps": [out("data/raw/manifest.csv", h["manifest"])],
            "params": {"params.yaml": {"split": {"seed": 42}}},
            "outs": [out("data/splits", h["splits"])],
        },
        "train_base": {
            "cmd": "python -m tasks.train_base",
            "deps": [out("data/splits/train.csv", h["train"])],
            "params": {"params.yaml": {"train": {"epochs": 1}}},
            "outs": [out("models/base.keras", h["base"])],
        },
        "finetune": {
            "cmd": "python -m tasks.finetune",
            "deps": [out("models/base.keras", h["base"]), out("data/splits/train.csv", h["train"])],
            "params": {"params.yaml": {"finetune": {"epochs": 1}}},
            "outs": [out("models/finetuned.keras", h["finetuned"])],
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    metrics = {
        m: {"clean": {"accuracy": 0.5 + seed / 100, "auc": 0.6}} for m in ("base", "finetuned")
    }
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/metrics.json").write_text(json.dumps(metrics))
    write_model_card(root / "reports", root, source_json=root / "data/raw/source.json")
    return h


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repo with params.yaml, a code file and .gitignore'd data/models."""
    root = tmp_path / "proj"
    (root / "tasks").mkdir(parents=True)
    (root / "tasks/download.py").write_text("# code\n")
    (root / "params.yaml").write_bytes(PARAMS.read_bytes())
    artifacts = yaml.safe_load(DVC_YAML.read_text())["artifacts"]  # what GTO tags are made for
    (root / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": artifacts}))
    (root / ".gitignore").write_text("/data\n/models\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "t")
    git(root, "config", "user.email", "t@localhost")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


def test_audit_matches_dvc_lock(project: Path) -> None:
    """Every hash and param the audit reports is the one dvc.lock records."""
    h = write_version(project, 7)
    a = audit(project, "models/finetuned.keras")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert a["md5"] == h["finetuned"] == lock["finetune"]["outs"][0]["md5"]
    assert a["stage"] == "finetune"
    up = {e["path"]: (e["stage"], e["md5"]) for e in a["upstream"]}
    # Files inside a folder output bring the folder too: data/raw reached via its manifest.
    assert up == {
        "models/base.keras": ("train_base", h["base"]),
        "data/raw": ("download", h["raw"]),
        "data/raw/manifest.csv": ("download", h["manifest"]),
        "data/splits": ("split", h["splits"]),
        "data/splits/train.csv": ("split", h["train"]),
    }
    assert a["params"]["download"] == lock["download"]["params"]["params.yaml"]
    assert a["params"]["finetune"] == {"finetune": {"epochs": 1}}
    assert a["data"]["identity"]["seed"] == 7
    # no record yet: the run stamps are unknown, the code is the one at audit time
    assert a["source"] == "workspace" and a["created"] is None and a["flow_run_id"] is None
    assert a["code"]["commit"] == git(project, "rev-parse", "HEAD")
    assert a["code"]["dirty"] is False
    assert a["code"]["note"] == "at audit time, not at training time"
    assert set(a["versions"]) == {"tensorflow", "keras", "prefect", "dvc"}
    assert a["versions"]["dvc"]
    assert a["metrics"]["clean"]["accuracy"] == pytest.approx(0.57)
    by_hash = audit(project, h["base"][:10])
    assert by_hash["stage"] == "train_base" and by_hash["md5"] == h["base"]
    card = (project / "reports/model_card.md").read_text()
    assert h["finetuned"] in card and h["raw"] in card and "train_base" in card


def test_dirty_code_is_flagged_but_outputs_are_not(project: Path) -> None:
    """A changed code file makes the run record dirty; dvc.lock and params.yaml do not."""
    write_version(project, 7)
    config = project / ".dvc" / "config"
    config.parent.mkdir(exist_ok=True)
    config.write_text(config.read_text() if config.exists() else "[core]\n")
    git(project, "add", "-f", "dvc.lock", ".dvc/config")
    git(project, "commit", "-qm", "lock")
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\n")
    with config.open("a") as f:  # `dvc remote add -d`, as docs/operations.md instructs
        f.write("['remote \"storage\"']\n    url = /srv/remote\n")
    clean = record_run(project, "records")
    assert run_record(project, clean["commit"])["code"]["dirty"] is False
    (project / "tasks/download.py").write_text("# changed\n")
    write_version(project, 8)
    dirty = record_run(project, "records")
    code = run_record(project, dirty["commit"])["code"]
    assert code["dirty"] is True and code["dirty_files"] == ["tasks/download.py"]
    assert "Xray-Code-Dirty: true" in git(project, "log", "-1", "--format=%B", dirty["commit"])


def test_lineage_and_model_card_are_the_same_on_every_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No run stamps in the DVC outputs: another flow run, commit or dirty tree, equal bytes."""
    write_version(project, 7)  # writes both once
    reports = project / "reports"
    names = ("lineage.json", "model_card.md")
    first = {f: (reports / f).read_bytes() for f in names}
    monkeypatch.setenv("XRAY_FLOW_RUN_ID", "run-a")
    (project / "tasks/download.py").write_text("# changed\n")  # a dirty tree
    write_model_card(reports, project, source_json=project / "data/raw/source.json")
    assert {f: (reports / f).read_bytes() for f in names} == first
    monkeypatch.setenv("XRAY_FLOW_RUN_ID", "run-b")
    git(project, "commit", "-qam", "another commit")
    record = write_model_card(reports, project, source_json=project / "data/raw/source.json")
    assert {f: (reports / f).read_bytes() for f in names} == first
    assert record is not None and not {"created", "flow_run_id", "code"} & set(record)
    card = first["model_card.md"].decode()
    assert "run-a" not in card and "run-b" not in card and "- git commit:" not in card
    assert "- code: the md5 of each stage's code deps in dvc.lock" in card


def test_the_run_record_carries_the_stamps_and_audit_reads_them(project: Path, capsys: Any) -> None:
    """record_run commits run.json (flow run, commit, time, host) and trailers; audit reads it."""
    write_version(project, 7)
    head = git(project, "rev-parse", "HEAD")
    result = record_run(project, "records", "run-42")
    stamps = json.loads(git(project, "show", f"{result['commit']}:{RUN_JSON}"))
    assert stamps["flow_run_id"] == "run-42"
    assert stamps["code"] == {"commit": head, "dirty": False, "dirty_files": []}
    assert stamps["created"] and stamps["host"]
    message = git(project, "log", "-1", "--format=%B", result["commit"])
    assert "Xray-Flow-Run: run-42" in message and f"Xray-Code-Commit: {head}" in message
    assert not (project / RUN_JSON).exists()  # only in the record commit
    # a rerun with another flow run id changed no recorded file: nothing new is recorded
    assert record_run(project, "records", "run-43")["recorded"] is False

    for a in (audit(project, "models/finetuned.keras"), audit(project, "models/base.keras")):
        assert a["flow_run_id"] == "run-42" and a["code"]["commit"] == head
        assert a["created"] == stamps["created"] and a["host"] == stamps["host"]
        assert a["source"] == f"workspace (run record: git {result['commit']})"
    assert history(project)[0]["flow_run_id"] == "run-42"
    text = format_audit(audit(project, "models/finetuned.keras"))
    assert "flow run:     run-42" in text and f"code:         git {head}" in text
    assert "created:      " + stamps["created"] in text
    card = render_stamps(stamps)
    assert "## Run provenance" in card and "run-42" in card and head in card


def test_records_made_before_run_json_fall_back(project: Path) -> None:
    """An older record: stamps from its lineage.json when it had them, else the commit time."""
    write_version(project, 7)
    result = record_run(project, "records", "run-1")
    tree = git(project, "rev-parse", f"{result['commit']}^{{tree}}")
    git(project, "read-tree", tree)  # rebuild that record without run.json in a scratch index
    git(project, "rm", "-q", "--cached", RUN_JSON)
    old = git(project, "commit-tree", git(project, "write-tree"), "-m", "old record")
    git(project, "reset", "-q")
    when = git(project, "show", "-s", "--format=%cI", old)
    assert run_record(project, old) == {
        "created": when,
        "flow_run_id": None,
        "code": {"commit": None, "dirty": None, "dirty_files": []},
        "host": None,
    }
    legacy = {"created": "2026-01-01T00:00:00+00:00", "flow_run_id": "run-0", "code": {"c": 1}}
    stamps = run_record(project, old, lineage=legacy)
    assert stamps["flow_run_id"] == "run-0" and stamps["created"] == legacy["created"]


def test_unknown_model_is_one_clear_error(project: Path) -> None:
    """A hash nobody recorded is an AuditError naming it; the CLI exits 1."""
    write_version(project, 7)
    with pytest.raises(AuditError, match="deadbeef00"):
        audit(project, "deadbeef00")
    assert main(["audit", "--workdir", str(project), "deadbeef00"]) == 1


def test_records_history_and_reverse_lookup(
    project: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two data versions: two tags; no-change records nothing; --data finds the right model."""
    monkeypatch.setenv("XRAY_FLOW_RUN_ID", "run-1")
    h1 = write_version(project, 7)
    first = record_run(project, "records", "run-1")
    assert first["recorded"] and first["tag"] == "finetuned@v0.1.0"
    head_before = git(project, "rev-parse", "HEAD")
    again = record_run(project, "records", "run-2")
    assert again == {
        "recorded": False,
        "branch": "records",
        "commit": first["commit"],
        "tag": "finetuned@v0.1.0",
        "registry": {"base": "base@v0.1.0", "finetuned": "finetuned@v0.1.0"},
    }
    assert git(project, "rev-parse", "HEAD") == head_before  # checked-out branch untouched
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    monkeypatch.setenv("XRAY_FLOW_RUN_ID", "run-3")
    h2 = write_version(project, 8)
    second = record_run(project, "records", "run-3")
    assert second["recorded"] and second["tag"] == "finetuned@v0.2.0"
    assert git(project, "rev-parse", "records~1") == first["commit"]

    versions = history(project)
    assert [v["model_md5"] for v in versions] == [h1["finetuned"], h2["finetuned"]]
    assert [v["data"]["data/raw"] for v in versions] == [h1["raw"], h2["raw"]]
    tags = [["finetuned@v0.1.0"], ["finetuned@v0.2.0"]]
    assert [v["tags"] for v in versions] == tags
    assert [v["registry"]["base"] for v in versions] == ["base@v0.1.0", "base@v0.2.0"]
    assert [v["model_md5"] for v in models_for_data(project, h1["raw"])] == [h1["finetuned"]]
    assert [v["model_md5"] for v in models_for_data(project, h2["train"][:8])] == [h2["finetuned"]]
    identity = versions[0]["source_identity"]["content_sha256"]
    assert [v["model_md5"] for v in models_for_data(project, identity)] == [h1["finetuned"]]
    assert models_for_data(project, "0" * 12) == []

    # the older model is still auditable from its record after the workspace moved on
    old = audit(project, h1["finetuned"])
    assert old["source"] == f"git {first['commit']}"
    assert old["flow_run_id"] == "run-1"
    assert old["code"]["commit"] == head_before
    assert [v["flow_run_id"] for v in versions] == ["run-1", "run-3"]
    assert old["tags"] == ["finetuned@v0.1.0"]
    assert old["data"]["identity"]["seed"] == 7

    assert main(["audit", "--workdir", str(project), "--history", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["tags"] for v in listed] == tags
    assert main(["audit", "--workdir", str(project), "--data", h2["raw"]]) == 0
    text = capsys.readouterr().out
    assert "finetuned@v0.2.0" in text and "finetuned@v0.1.0" not in text
    unknown = ["audit", "--workdir", str(project), "--data", "0123abcd" * 4]
    assert main(unknown) == 1  # nothing found: exit status 1, one line
    err = capsys.readouterr().err
    assert err.startswith("error: no recorded model version was trained on data with hash 0123")
    assert err.count("\n") == 1
    assert main([*unknown, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == []
    assert main(["audit", "--workdir", str(project), "models/finetuned.keras"]) == 0
    text = capsys.readouterr().out
    assert h2["finetuned"] in text and "stage finetune" in text
    assert "flow run:     run-3" in text


def test_failed_run_leaves_the_record_intact(project: Path) -> None:
    """Recording needs a finetuned output in dvc.lock; without it nothing moves."""
    write_version(project, 7)
    first = record_run(project, "records")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    del lock["stages"]["finetune"]
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(RecordError, match="finetuned"):
        record_run(project, "records")
    assert git(project, "rev-parse", "records") == first["commit"]


def test_model_card_renders_without_metrics() -> None:
    """A record with no metrics still renders every section."""
    record = {
        "models": {
            "finetuned": {
                "path": "m",
                "md5": "abc",
                "stage": "finetune",
                "upstream": [{"stage": "download", "path": "data/raw", "md5": "r.dir"}],
                "params": {"download": {"data": {"source": "synthetic"}}},
            }
        },
        "data": {"source": "synthetic", "identity": None, "raw_md5": "r.dir"},
        "versions": {"dvc": "3"},
        "metrics": None,
    }
    card = render_card(record)
    for heading in (
        "## Model details",
        "## Intended use",
        "## Out-of-scope use",
        "## Training and evaluation data",
        "## Metrics",
        "## Performance by subgroup",
        "## Caveats and recommendations",
        "## Adapting to a new site",
        "## Lineage",
        "### Models",
        "### Data",
        "### Upstream outputs",
        "### Params",
        "### Provenance",
    ):
        assert heading in card
    assert "No per-image predictions" in card  # no reports: said, not made up
    assert "- versions: dvc 3" in card
    stamps = render_stamps({"created": "t", "flow_run_id": None, "code": {}, "host": "h"})
    assert "none (not run by a flow)" in stamps


def test_audit_text_shows_the_suite_means() -> None:
    """The `suite` metrics block prints its means; a block with nothing to show is left out."""
    answer = {
        "model": "m",
        "md5": "abc",
        "stage": "finetune",
        "upstream": [],
        "params": {},
        "metrics": {
            "clean": {"accuracy": 0.9, "auc": 0.95},
            "suite": {"mean_accuracy": 0.8, "mean_auc": 0.85, "mbe": 1.2, "rmbe": None},
            "other": {"n": "x"},
        },
    }
    text = format_audit(answer)
    assert "  clean: accuracy 0.9000, auc 0.9500" in text
    assert "  suite: mean_accuracy 0.8000, mean_auc 0.8500, mbe 1.2000" in text
    assert "other" not in text and not any(line.endswith(": ") for line in text.splitlines())


def test_without_a_record_the_audit_says_provenance_is_unknown(project: Path) -> None:
    """No lineage.json and no git record: hashes from dvc.lock, provenance marked unknown."""
    h = write_version(project, 7)
    (project / "reports/lineage.json").unlink()
    a = audit(project, "models/finetuned.keras")
    assert a["md5"] == h["finetuned"] and a["stage"] == "finetune"
    assert "provenance unknown" in a["source"]
    assert a["code"]["note"] == "at audit time, not at training time"
    (project / "models/finetuned.keras").write_bytes(b"retrained, lock not updated")
    with pytest.raises(AuditError, match=r"neither dvc\.lock nor any record"):
        audit(project, "models/finetuned.keras")


def test_recording_on_the_checked_out_branch_keeps_the_tree_clean(project: Path) -> None:
    """branch = the current branch: it advances, and git status shows the record as committed."""
    write_version(project, 7)
    result = record_run(project, "main")
    assert result["recorded"] and git(project, "rev-parse", "HEAD") == result["commit"]
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    assert "dvc.lock" in git(project, "ls-files").split()
    assert record_run(project, "main")["recorded"] is False


def test_a_record_stopped_before_its_tag_is_tagged_by_the_rerun(project: Path) -> None:
    """A run stopped between the record commit and its tag: the rerun tags that commit."""
    write_version(project, 7)
    first = record_run(project, "records", "run-1")
    git(project, "tag", "-d", first["tag"])  # as if the run died after update-ref
    again = record_run(project, "records", "run-2")
    assert again["recorded"] is False and again["commit"] == first["commit"]
    assert again["tag"] == "finetuned@v0.1.0"
    assert git(project, "rev-parse", "finetuned@v0.1.0^{commit}") == first["commit"]
    assert record_run(project, "records", "run-3")["tag"] == "finetuned@v0.1.0"  # tagged once
    assert git(project, "tag", "--list", "finetuned@*").split() == ["finetuned@v0.1.0"]


def tag_commit(root: Path, tag: str) -> str:
    """The commit an (annotated) tag points at."""
    return git(root, "rev-parse", f"{tag}^{{commit}}")


def test_history_shows_the_record_commit_its_tags_time_and_flow_run(
    project: Path, capsys: Any
) -> None:
    """The lock committed on main first, then recorded by a flow run: history gives the record."""
    h = write_version(project, 7)
    git(project, "add", "-f", "dvc.lock", "reports")
    git(project, "commit", "-qm", "dvc repro on main")  # main holds the model first
    on_main = git(project, "rev-parse", "HEAD")
    result = record_run(project, "records", "run-7")
    stamps = json.loads(git(project, "show", f"{result['commit']}:{RUN_JSON}"))
    for tag in ("finetuned@v0.1.0", "base@v0.1.0"):
        assert tag_commit(project, tag) == result["commit"], tag
        assert git(project, "cat-file", "-t", tag) == "tag", tag  # annotated

    [entry] = history(project)
    assert entry["model_md5"] == h["finetuned"] and entry["base_md5"] == h["base"]
    assert entry["commit"] == result["commit"] and entry["commits"] == [on_main, result["commit"]]
    assert entry["tags"] == ["finetuned@v0.1.0"]
    assert entry["registry"] == {"finetuned": "finetuned@v0.1.0", "base": "base@v0.1.0"}
    assert entry["flow_run_id"] == "run-7" and entry["created"] == stamps["created"]
    assert main(["audit", "--workdir", str(project), "--history", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["flow_run_id"] == "run-7" and listed["commit"] == result["commit"]
    assert main(["audit", "--workdir", str(project), "--history"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"finetuned@v0.1.0  model {h['finetuned']}")
    assert f"record {result['commit'][:12]}  created {stamps['created']}  flow run run-7" in text
    assert f"base model               {h['base']}  base@v0.1.0" in text
    assert on_main[:12] not in text
    a = audit(project, h["finetuned"][:12])
    assert a["flow_run_id"] == "run-7" and a["tags"] == ["finetuned@v0.1.0"]
    assert audit(project, "models/base.keras")["tags"] == ["base@v0.1.0"]


def test_gto_tags_follow_each_artifacts_hash(project: Path) -> None:
    """A GTO version per new hash of each dvc.yaml artifact; a known hash keeps its version."""
    write_version(project, 7)
    first = record_run(project, "records", "run-1")
    write_version(project, 8)
    second = record_run(project, "records", "run-2")
    assert second["registry"] == {"base": "base@v0.2.0", "finetuned": "finetuned@v0.2.0"}
    write_version(project, 9, base_seed=8)  # a new finetuned model on the same base
    third = record_run(project, "records", "run-3")
    assert third["registry"] == {"base": "base@v0.2.0", "finetuned": "finetuned@v0.3.0"}
    assert tag_commit(project, "base@v0.2.0") == second["commit"]
    assert tag_commit(project, "finetuned@v0.3.0") == third["commit"]

    git(project, "tag", "-d", "finetuned@v0.3.0")  # as if the run died before its GTO tags
    again = record_run(project, "records", "run-4")
    assert again["recorded"] is False and again["registry"]["finetuned"] == "finetuned@v0.3.0"
    assert tag_commit(project, "finetuned@v0.3.0") == third["commit"]

    write_version(project, 7)  # back to the first models: a record, no new version
    back = record_run(project, "records", "run-5")
    assert back["recorded"] and back["tag"] == "finetuned@v0.1.0"
    assert back["registry"] == first["registry"]
    tags = {r["tag"]: r["commit"] for r in registrations(project)}
    assert sorted(tags) == [
        "base@v0.1.0", "base@v0.2.0", "finetuned@v0.1.0", "finetuned@v0.2.0", "finetuned@v0.3.0"
    ]  # fmt: skip
    assert [v["registry"]["finetuned"] for v in history(project)] == [
        "finetuned@v0.1.0", "finetuned@v0.2.0", "finetuned@v0.3.0"
    ]  # fmt: skip

    gto = Path(sys.executable).parent / "gto"
    shown = subprocess.run(
        [str(gto), "show", "--repo", str(project), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    latest = json.loads(shown.stdout)
    assert {k: v["version"] for k, v in latest.items()} == {"base": "v0.2.0", "finetuned": "v0.3.0"}
    listed = subprocess.run(
        [str(gto), "show", "--repo", str(project), "finetuned", "--plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for version in ("v0.1.0", "v0.2.0", "v0.3.0"):
        assert f"finetuned@{version}" in listed, listed


def test_older_xray_model_tags_are_migrated_into_gto_by_the_next_record(project: Path) -> None:
    """A pre-GTO record (no dvc.yaml artifacts, an `xray-model-v1` tag): the next record
    registers its model in GTO first (the md5 from the old tag), then its own; once only."""
    from xray.records.legacy_tags import legacy_tags, migrate_legacy_tags

    artifacts = (project / "dvc.yaml").read_text()
    git(project, "rm", "-q", "dvc.yaml")
    git(project, "commit", "-qm", "before GTO: no artifacts declared")
    h1 = write_version(project, 7)
    first = record_run(project, "records", "run-1")
    assert first["registry"] == {"finetuned": "finetuned@v0.1.0"}  # declared or not
    git(project, "tag", "-d", "finetuned@v0.1.0")  # as a record made before GTO
    git(
        project,
        "tag",
        "-a",
        "xray-model-v1",
        first["commit"],
        "-m",
        f"xray model {h1['finetuned']}",
    )
    assert [v["tags"] for v in history(project)] == [[]]  # audit reads GTO only

    (project / "dvc.yaml").write_text(artifacts)
    git(project, "add", "dvc.yaml")
    git(project, "commit", "-qm", "declare the artifacts")
    h2 = write_version(project, 8)
    second = record_run(project, "records", "run-2")
    assert second["registry"] == {"base": "base@v0.1.0", "finetuned": "finetuned@v0.2.0"}
    assert tag_commit(project, "finetuned@v0.1.0") == first["commit"]
    by_tag = {r["tag"]: r["md5"] for r in registrations(project)}
    assert by_tag == {
        "finetuned@v0.1.0": h1["finetuned"],
        "finetuned@v0.2.0": h2["finetuned"],
        "base@v0.1.0": h2["base"],
    }
    versions = history(project)
    assert [v["tags"] for v in versions] == [["finetuned@v0.1.0"], ["finetuned@v0.2.0"]]
    assert audit(project, h1["finetuned"])["tags"] == ["finetuned@v0.1.0"]

    [old] = legacy_tags(project)  # left in place, migrated once
    assert old == {
        "tag": "xray-model-v1",
        "n": 1,
        "commit": first["commit"],
        "md5": h1["finetuned"],
    }
    assert migrate_legacy_tags(project, "t", "t@localhost") == {
        "xray-model-v1": {"finetuned": "finetuned@v0.1.0"}
    }
    assert sorted(by_tag) == sorted(r["tag"] for r in registrations(project))
