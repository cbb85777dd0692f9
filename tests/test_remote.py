"""DVC remotes: push with the run cache, then a fresh clone pulls and `dvc repro` runs nothing.

The shrunk pipeline runs once for the module and is committed the way a user commits a run
(`dvc.lock`, DVC's .gitignores and the `cache: false` outputs). Each test pushes it to a
remote (a local folder, then an S3-compatible moto server on 127.0.0.1), clones the git repo
afresh (no DVC cache, no cached outputs, no .dvc/config.local) and checks that pulling is
enough to skip every stage, models byte-identical. A recorded run's `xray-records` branch,
cloned, is such a workspace too (its GTO tags listed by `gto show`).

`--remote` resolution (xray/records/remote.py `resolve_remote`, DVC's config API) runs on a small
`dvc add` repo without `dvc repro`: a default remote's folder on two runs in a row, a remote
listed after the default, a new folder (remote `xray-<hash>`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import copy_run, dvc, git

from xray.core.params import STAGES

MODELS = ("models/base.keras", "models/finetuned.keras")
CACHED = (*MODELS, "data/raw/manifest.csv", "data/corrupted/manifest.csv")  # from the remote
IN_GIT = ("reports/metrics.json", "dvclive/train_base/metrics.json")  # cache: false outputs
S3_BUCKET = "xray-dvc"
S3_KEY = "testing"  # moto accepts any credentials; never a real key
S3_START_S = 60
POLL_S = 0.2
UP_TO_DATE = "Data and pipelines are up to date."
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


def ran_stages(output: str) -> list[str]:
    """Stage names DVC says it ran."""
    return re.findall(r"Running stage '([^']+)'", output)


def skipped_stages(output: str) -> list[str]:
    """Stage names DVC says it skipped as unchanged."""
    return re.findall(r"Stage '([^']+)' didn't change, skipping", output)


def run_cache_entries(runs: Path) -> set[str]:
    """Run-cache entries (key/value paths) under a cache's or remote's `runs` folder."""
    return {str(p.relative_to(runs)) for p in runs.rglob("*") if p.is_file()}


def lock_md5(root: Path) -> dict[str, str]:
    """Output path -> md5 for every output recorded in root/dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def md5(path: Path) -> str:
    """The md5 of a file's bytes (DVC 3's hash for a file)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shrunk_run: tuple[Path, str]) -> Path:
    """A project copy whose shrunk pipeline ran once, committed: lock, .gitignores, git outputs."""
    root = copy_run(shrunk_run[0], tmp_path_factory.mktemp("remote") / "project")
    assert ran_stages(shrunk_run[1]) == list(STAGES)
    tracked = git(root, "ls-files").split()
    assert "dvc.lock" in tracked and not set(CACHED) & set(tracked)
    assert run_cache_entries(root / ".dvc/cache/runs")  # stages DVC can run-cache
    return root


def fresh_clone(root: Path, dest: Path) -> Path:
    """A git clone of root: what git holds, no DVC cache, cached outputs or local config."""
    git(root.parent, "clone", "-q", str(root), str(dest))
    assert not (dest / ".dvc/cache").exists() and not (dest / ".dvc/config.local").exists()
    for out in CACHED:
        assert not (dest / out).exists(), out
    return dest


def pull_and_check(root: Path, clone: Path, remote: str) -> None:
    """In clone: `dvc pull --run-cache`, then `dvc repro` runs nothing; outputs match root's."""
    assert dvc(clone, "status").stdout.strip() != UP_TO_DATE  # nothing pulled yet
    dvc(clone, "pull", "--run-cache", "-r", remote)
    runs = run_cache_entries(root / ".dvc/cache/runs")
    assert run_cache_entries(clone / ".dvc/cache/runs") == runs
    repro = dvc(clone, "repro")
    out = repro.stdout + repro.stderr
    assert ran_stages(out) == [], out
    assert skipped_stages(out) == list(STAGES), out
    assert dvc(clone, "status").stdout.strip() == UP_TO_DATE
    hashes = lock_md5(clone)
    for model in MODELS:
        assert md5(clone / model) == hashes[model], model
    for rel in (*CACHED, *IN_GIT, "dvc.lock"):
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel


@pytest.mark.slow
def test_fresh_clone_pulls_from_a_local_folder_remote(trained: Path, tmp_path: Path) -> None:
    """Local-folder remote: push --run-cache; a fresh clone pulls and reruns no stage."""
    store = tmp_path / "dvc-store"
    dvc(trained, "remote", "add", "--force", "folder", str(store))
    git(trained, "commit", "-q", "-am", "DVC remote: a local folder")
    dvc(trained, "push", "--run-cache", "-r", "folder")
    assert run_cache_entries(store / "runs") == run_cache_entries(trained / ".dvc/cache/runs")
    clone = fresh_clone(trained, tmp_path / "clone")
    pull_and_check(trained, clone, "folder")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on a free 127.0.0.1 port with one bucket; AWS env made offline."""
    pytest.importorskip("moto.server", reason="moto[server] not installed (uv sync: dev group)")
    boto3 = pytest.importorskip("boto3", reason="boto3 not installed (comes with moto)")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)  # the project copy uses .dvc/config.local
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)  # anything not on loopback fails at once
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto.log").open("w")
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name="us-east-1",
        )
        deadline = time.monotonic() + S3_START_S
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start: {(tmp_path / 'moto.log').read_text()}"
                    ) from None
                time.sleep(POLL_S)
        client.create_bucket(Bucket=S3_BUCKET)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_fresh_clone_pulls_from_an_s3_compatible_server(
    trained: Path, tmp_path: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 remote on a loopback moto server: URL and endpoint in git, credentials never."""
    dvc(trained, "remote", "add", "--force", "s3", f"s3://{S3_BUCKET}/xray")
    dvc(trained, "remote", "modify", "s3", "endpointurl", s3_server)
    dvc(trained, "remote", "modify", "--local", "s3", "access_key_id", S3_KEY)
    dvc(trained, "remote", "modify", "--local", "s3", "secret_access_key", S3_KEY)
    git(trained, "commit", "-q", "-am", "DVC remote: S3-compatible")
    committed = git(trained, "show", "HEAD:.dvc/config")
    assert s3_server in committed and "access_key_id" not in committed
    assert git(trained, "check-ignore", ".dvc/config.local").strip() == ".dvc/config.local"

    dvc(trained, "push", "--run-cache", "-r", "s3")
    import boto3

    client = boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    hashes = lock_md5(trained)
    for model in MODELS:
        assert f"xray/files/md5/{hashes[model][:2]}/{hashes[model][2:]}" in keys, model
    runs = {k.removeprefix("xray/runs/") for k in keys if k.startswith("xray/runs/")}
    assert runs == run_cache_entries(trained / ".dvc/cache/runs")

    clone = fresh_clone(trained, tmp_path / "clone")
    denied = dvc(clone, "pull", "-r", "s3", check=False)  # the clone has no credentials yet
    assert denied.returncode != 0
    assert "Unable to locate credentials" in denied.stdout + denied.stderr, denied.stderr
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)  # a fresh clone's user: credentials in env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_KEY)
    pull_and_check(trained, clone, "s3")


# --- `--remote` resolution through DVC's config API (no `dvc repro`: models are `dvc add`ed) ---


def remote_object(store: Path, path: Path) -> Path:
    """Where a DVC 3 remote folder keeps a file's content."""
    h = md5(path)
    return store / "files" / "md5" / h[:2] / h[2:]


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    """A git + DVC repo whose `finetuned` model is `dvc add`ed; dvc.lock names it (for records)."""
    root = tmp_path / "small"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    dvc(root, "init", "-q")
    (root / "code.py").write_text("# code\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


def new_model(root: Path, seed: int) -> Path:
    """A new finetuned model: `dvc add`ed (so pushed) and named by a dvc.lock entry."""
    model = root / "models/finetuned.keras"
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(f"finetuned-{seed}".encode())
    dvc(root, "add", "-q", "models/finetuned.keras")
    out = {"path": "models/finetuned.keras", "hash": "md5", "md5": md5(model), "size": 1}
    stage = {"cmd": "python -m tasks.finetune", "outs": [out]}
    lock = {"schema": "2.0", "stages": {"finetune": stage}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    return model


def test_a_folder_of_the_default_remote_pushes_and_records_on_every_run(
    small_repo: Path, tmp_path: Path
) -> None:
    """`dvc remote add -d storage DIR` + `--remote DIR`: two runs in a row both push and record."""
    from xray.records.record import record_run
    from xray.records.remote import configured_remotes, dvc_push

    store = tmp_path / "store"
    dvc(small_repo, "remote", "add", "-d", "storage", str(store))
    git(small_repo, "commit", "-q", "-am", "DVC remote")
    for seed, tag in ((1, "finetuned@v0.1.0"), (2, "finetuned@v0.2.0")):
        model = new_model(small_repo, seed)
        assert dvc_push(small_repo, str(store))["remote"] == "storage"
        assert remote_object(store, model).is_file()
        result = record_run(small_repo, "xray-records")
        assert result["recorded"] and result["tag"] == tag
    assert configured_remotes(small_repo) == ({"storage": str(store)}, "storage")
    assert dvc_push(small_repo, None)["remote"] == "storage"
    assert dvc_push(small_repo, "storage")["remote"] == "storage"


def test_a_remote_listed_after_the_default_and_new_folders(
    small_repo: Path, tmp_path: Path
) -> None:
    """A name after the default is a name; a new folder becomes `xray-<hash>`, default kept."""
    from xray.records.remote import RemoteError, configured_remotes, derived_remote_name, dvc_push

    with pytest.raises(RemoteError, match="no DVC remote configured"):
        dvc_push(small_repo, None)
    first, second, third = (tmp_path / n for n in ("a", "b", "c"))
    dvc(small_repo, "remote", "add", "-d", "storage", str(first))
    dvc(small_repo, "remote", "add", "zz", str(second))
    listed = dvc(small_repo, "remote", "list").stdout
    assert listed.index("(default)") < listed.index("zz")  # the layout that shifted names
    model = new_model(small_repo, 1)
    assert dvc_push(small_repo, "zz")["remote"] == "zz"
    assert remote_object(second, model).is_file() and not first.exists()

    name = derived_remote_name(str(third))
    assert name.startswith("xray-")
    assert dvc_push(small_repo, str(third))["remote"] == name
    assert dvc_push(small_repo, str(third))["remote"] == name  # reused, not added twice
    assert remote_object(third, model).is_file()
    remotes, default = configured_remotes(small_repo)
    assert default == "storage" and remotes[name] == str(third) and len(remotes) == 3
    assert name in (small_repo / ".dvc/config.local").read_text()
    assert name not in (small_repo / ".dvc/config").read_text()  # never committed

    with pytest.raises(RemoteError, match=r"no remote or folder named 'zzz'") as e:
        dvc_push(small_repo, "zzz")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_clone_of_the_records_branch_pulls_and_reruns_no_stage(
    trained: Path, tmp_path: Path
) -> None:
    """Record a run (GTO tags too); a clone of `xray-records` + `dvc pull` is up to date."""
    from xray.records.record import record_run
    from xray.records.remote import dvc_push

    root = tmp_path / "project"
    shutil.copytree(trained, root, symlinks=True)
    # the code branch keeps no pipeline outputs in git: the record must hold the uncached ones
    git(root, "rm", "-r", "-q", "--cached", "reports", "dvclive")
    store = tmp_path / "store"
    dvc(root, "remote", "add", "-d", "--force", "storage", str(store))
    git(root, "add", ".dvc/config")
    git(root, "commit", "-q", "-m", "outputs out of git; DVC remote: a local folder")
    assert dvc_push(root, str(store))["remote"] == "storage"
    result = record_run(root, "xray-records", "run-1")
    assert result["registry"] == {"base": "base@v0.1.0", "finetuned": "finetuned@v0.1.0"}

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "xray-records", str(root), str(clone))
    for rel in CACHED:
        assert not (clone / rel).exists(), rel
    for rel in (*IN_GIT, "reports/lineage.json", "dvclive/finetune/metrics.json", "run.json"):
        assert (clone / rel).is_file(), rel
    dvc(clone, "pull")
    repro = dvc(clone, "repro")
    out = repro.stdout + repro.stderr
    assert ran_stages(out) == [], out
    assert skipped_stages(out) == list(STAGES), out
    assert dvc(clone, "status").stdout.strip() == UP_TO_DATE
    for rel in MODELS:
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel

    gto = Path(sys.executable).parent / "gto"
    shown = subprocess.run(
        [str(gto), "show", "--repo", str(clone), "--json"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    latest = json.loads(shown.stdout)
    assert {k: v["version"] for k, v in latest.items()} == {"base": "v0.1.0", "finetuned": "v0.1.0"}
