"""The Dask executor: byte-identical to local processes, clean failures, never a DVC dependency."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import dvc
from test_corrupt import leftovers, make_split, sigterm_corrupt_midway, tree
from test_download import BROKEN, BROKEN_REASONS, Outs, _folder

import xray.core.compute as compute
from xray.core.compute import ComputeError, Runner, check_workers, fingerprint
from xray.core.io import read_csv
from xray.core.params import ComputeParams, CorruptParams, DataParams, ParamsError, parse_params
from xray.data.intake.source import probe
from xray.perturbations.corruptions import FAMILIES
from xray.perturbations.materialize import corrupt

ROOT = Path(__file__).resolve().parents[1]
DASK_WORKERS = 2
# A worker whose Python cannot import this project (as on a cluster it was not installed on).
NO_PROJECT_PRELOAD = "import sys\nsys.modules['xray'] = None\n"


def _cluster(**kwargs: object) -> object:
    """A LocalCluster of single-threaded worker processes on loopback."""
    from distributed import LocalCluster

    return LocalCluster(
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=compute.LOOPBACK_ANY_PORT,
        **kwargs,
    )


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """One 2-worker cluster for the module, reached by address as a remote one would be."""
    cluster = _cluster(n_workers=DASK_WORKERS)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _free_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_dask(address: str = "", workers: int = 0) -> ComputeParams:
    """Compute params for the Dask executor."""
    return ComputeParams(executor="dask", dask_address=address, workers=workers)


# --------------------------------------------------------------------------- byte identity


def test_corrupt_on_dask_is_byte_identical_to_local(tmp_path: Path, dask_address: str) -> None:
    raw, csv = make_split(tmp_path)
    params = CorruptParams(families=tuple(FAMILIES), severities=(1, 5), seed=11)
    local, remote = tmp_path / "local" / "corrupted", tmp_path / "dask" / "corrupted"
    n_local = corrupt(params, csv, raw, local, compute=ComputeParams(workers=2))
    n_dask = corrupt(params, csv, raw, remote, compute=on_dask(dask_address))
    assert n_local == n_dask == len(read_csv(csv)) * len(FAMILIES) * 2
    a, b = tree(local), tree(remote)
    assert len(a) == len(FAMILIES) * 2 + 1 and "manifest.csv" in a  # zips + manifest
    assert sorted(k for k in a if a[k] != b.get(k)) == []
    assert a.keys() == b.keys()


def test_ingest_on_a_stage_local_cluster_is_byte_identical(tmp_path: Path) -> None:
    """Empty dask_address: the stage starts its own LocalCluster; broken files quarantined alike."""
    src = _folder(tmp_path / "export", good=12, bad=BROKEN)
    params = DataParams(source=str(src), max_bad_fraction=0.2)
    local, remote = Outs(tmp_path / "local"), Outs(tmp_path / "dask")
    probe(params, local.record)
    probe(params, remote.record)
    counts = local.run(params, workers=1)
    assert remote_run(remote, params, on_dask(workers=DASK_WORKERS)) == counts
    assert counts["images"] == 24 and counts["quarantined"] == len(BROKEN)
    assert remote.snapshot() == local.snapshot()
    assert remote.quarantine.read_bytes() == local.quarantine.read_bytes()
    assert remote.duplicates.read_bytes() == local.duplicates.read_bytes()
    assert {r["path"]: r["reason"] for r in read_csv(remote.quarantine)} == BROKEN_REASONS


def remote_run(out: Outs, params: DataParams, on: ComputeParams) -> dict[str, int]:
    """The download stage into `out` on the given executor."""
    from xray.data.intake.ingest import download

    return download(
        params,
        out_dir=out.raw,
        quarantine_csv=out.quarantine,
        duplicates_csv=out.duplicates,
        record=out.record,
        compute=on,
    )


# --------------------------------------------------------------------------- failures


def test_worker_error_keeps_previous_output(tmp_path: Path, dask_address: str) -> None:
    raw, csv = make_split(tmp_path)
    out = tmp_path / "data" / "corrupted"
    params = CorruptParams(families=("seed", "gaussian_blur"), severities=(1, 2), seed=1)
    corrupt(params, csv, raw, out, workers=1)
    before = tree(out)
    broken = read_csv(csv)[8]["path"]
    (raw / broken).write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"{broken}: cannot read image"):
        corrupt(params.model_copy(update={"seed": 2}), csv, raw, out, compute=on_dask(dask_address))
    assert tree(out) == before
    assert leftovers(out.parent) == []


def test_unreachable_scheduler_is_one_line_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compute, "CONNECT_TIMEOUT_S", 2)
    raw, csv = make_split(tmp_path, n=2)
    out = tmp_path / "data" / "corrupted"
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    params = CorruptParams(families=("jpeg",), severities=(1,))
    with pytest.raises(ComputeError) as err:
        corrupt(params, csv, raw, out, compute=on_dask(address))
    assert time.monotonic() - t0 < 30
    message = str(err.value)
    assert message.startswith(f"compute.dask_address: cannot reach a Dask scheduler at {address}")
    assert "\n" not in message
    assert not out.parent.exists()  # failed before the stage touched the workspace


def test_workers_without_the_project_are_refused() -> None:
    cluster = _cluster(n_workers=1, preload=[NO_PROJECT_PRELOAD])
    try:
        with (
            pytest.raises(ComputeError) as err,
            Runner(on_dask(cluster.scheduler_address), ("xray.core.io",)),
        ):
            pass
    finally:
        cluster.close()
    message = str(err.value)
    assert message.startswith("compute.dask_address: the workers at ")
    assert "cannot run this project's code" in message and "same commit" in message
    assert "\n" not in message


def test_workers_with_other_code_are_refused(dask_address: str) -> None:
    from distributed import Client

    modules = ("xray.core.io", "xray.perturbations.corruptions")
    ours = fingerprint(modules)
    with Client(dask_address) as client:
        check_workers(client, modules, ours)  # the same code: accepted
        stale = {**ours, "xray.perturbations.corruptions": "0" * 64}
        differs = r"differs from this process \(xray\.perturbations\.corruptions "
        with pytest.raises(ComputeError, match=differs):
            check_workers(client, modules, stale)


# --------------------------------------------------------------------------- the runner


def _chunk_sum(chunk: list[int]) -> int:
    """A pure function for the runner tests (module level: picklable)."""
    return sum(chunk)


@pytest.mark.parametrize("where", ["inline", "local", "dask"])
def test_runner_keeps_input_order(where: str, request: pytest.FixtureRequest) -> None:
    specs = [list(range(i, i + 3)) for i in range(25)]
    params = {
        "inline": ComputeParams(workers=1),
        "local": ComputeParams(workers=2),
        "dask": on_dask(request.getfixturevalue("dask_address") if where == "dask" else ""),
    }[where]
    prepared: list[int] = []

    def prepare(spec: list[int]) -> list[int]:
        prepared.append(spec[0])
        return spec

    with Runner(params) as runner:
        assert list(runner.imap(_chunk_sum, specs, prepare)) == [sum(s) for s in specs]
    assert prepared == list(range(25))


def test_runner_reads_ahead_only_a_window(dask_address: str) -> None:
    """Inputs are prepared lazily: an abandoned iterator has read only a bounded prefix."""
    seen: list[int] = []

    def prepare(i: int) -> list[int]:
        seen.append(i)
        return [i]

    with Runner(on_dask(dask_address)) as runner:
        results = runner.imap(_chunk_sum, list(range(1000)), prepare)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        results.close()
    assert len(seen) <= 3 + compute.IN_FLIGHT_PER_WORKER * DASK_WORKERS


# --------------------------------------------------------------------------- params


def test_compute_params() -> None:
    p = parse_params({}).compute
    assert (p.executor, p.dask_address, p.workers) == ("local", "", 0)
    d = parse_params({"compute": {"executor": "dask", "dask_address": " tcp://h:8786 "}}).compute
    assert d.dask_address == "tcp://h:8786"
    for address in ("tcp://[::1]:8786", "10.0.0.1:8786", "tls://sched.example.org:8786"):
        on = parse_params({"compute": {"executor": "dask", "dask_address": address}}).compute
        assert on.dask_address == address


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"executor": "spark"}, "params.yaml: compute.executor: "),
        ({"dask_address": "tcp://h:8786"}, "params.yaml: compute: dask_address is set but"),
        ({"executor": "dask", "dask_address": "tcp://a b"}, "params.yaml: compute.dask_address: "),
        ({"workers": -1}, "params.yaml: compute.workers: "),
    ],
)
def test_compute_params_errors(section: dict[str, object], expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"compute": section})
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_compute_is_no_stage_dependency() -> None:
    """Every executor writes the same bytes, so no stage lists compute params."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for param in stage.get("params", []):
            key = param if isinstance(param, str) else next(iter(param))
            assert not str(key).startswith("compute"), f"{name} depends on {key}"
    for name in ("download", "corrupt"):
        assert "xray/core/compute.py" in stages[name]["deps"]


# --------------------------------------------------------------------------- stage process


def test_sigterm_on_dask_leaves_previous_output(tmp_path: Path) -> None:
    """A terminated stage on a LocalCluster removes its staging folder and exits."""
    sigterm_corrupt_midway(tmp_path, {"executor": "dask", "workers": DASK_WORKERS}, timeout_s=120)


@pytest.mark.slow
def test_switching_executor_reruns_nothing_and_forced_rerun_matches(
    make_project: Callable[..., Path],
) -> None:
    """dvc: executor dask leaves the pipeline up to date; forced reruns on Dask keep the hashes."""
    root = make_project()
    dvc(root, "repro", "corrupt")
    lock = (root / "dvc.lock").read_text()
    ran = dvc(root, "exp", "run", "-S", "compute.executor=dask", "corrupt").stdout
    assert "Running stage" not in ran, ran
    assert yaml.safe_load((root / "params.yaml").read_text())["compute"]["executor"] == "dask"
    assert yaml.safe_load(dvc(root, "status", "--json", "corrupt").stdout) == {}
    for stage in ("download", "corrupt"):  # each on a LocalCluster of compute.workers (2)
        ran = dvc(root, "repro", "--force", "--single-item", stage)
        assert "dask workers at tcp://127.0.0.1:" in ran.stdout + ran.stderr
    assert (root / "dvc.lock").read_text() == lock
    assert yaml.safe_load(dvc(root, "status", "--json", "corrupt").stdout) == {}
