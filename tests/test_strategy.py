"""Tests for tf.distribute training (xray/models/distribute.py): mirrored, multi-worker, errors.

Logical CPU devices and MultiWorkerMirroredStrategy must be set up before TensorFlow
initializes, so every training run here is a fresh `python` subprocess.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_env, stage_argv, write_generated_split

from xray.core.params import ParamsError, parse_params
from xray.models.distribute import is_chief, tf_config, usable_rows, worker_dirs

IMAGE = 64
PER_SPLIT = 64  # 8 steps of 8 per epoch
TRAIN = {
    "image_size": IMAGE,
    "epochs": 10,  # 80 steps: BatchNorm's moving statistics settle, val predictions spread out
    "batch_size": 8,
    "patience": 10,
    "warmup_epochs": 1,
    "learning_rate": 5e-4,  # slow enough for BatchNorm's moving statistics to keep up
    "augment_strength": 0.3,  # AcquisitionAugment runs, mild enough to learn quickly
    "threads": 1,
}
# Both runs see the same initial weights, shuffle order and augmentation (the tf.data
# pipeline runs before the batch is split); they differ only in per-replica dropout masks
# and all-reduce summation order, so their trajectories drift slightly apart and the
# best-epoch choice may differ. On this separable task both rank val images almost
# perfectly (>= MIN_AUC); 0.05 of AUC is 51 of the 1024 positive/negative val pairs.
MIN_AUC = 0.9
AUC_TOLERANCE = 0.05
RUN_TIMEOUT = 900

DRIVER = """
import json, sys
from pathlib import Path
from xray.core.params import parse_params
from xray.adaptation.references import source_references
from xray.models.base_training import train_base
root, out, train = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
summary = train_base(
    parse_params({"train": train}),
    train_csv=root / "splits" / "train.csv",
    val_csv=root / "splits" / "val.csv",
    model_path=out / "base.keras",
    live_dir=out / "live",
    work_dir=out / "work",
    raw_dir=root / "raw",
    references=source_references,
)
print("SUMMARY " + json.dumps(summary))
"""


def write_split(root: Path) -> Path:
    """Generated train/val splits: PNEUMONIA images carry a brighter disc at a random place."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:IMAGE, :IMAGE]

    def draw(label: str) -> np.ndarray:
        img = rng.normal(100, 40, (IMAGE, IMAGE))
        r, (cy, cx) = rng.uniform(8, 14), rng.uniform(20, IMAGE - 20, 2)
        if label == "PNEUMONIA":
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += 80
        return np.clip(img, 0, 255).astype(np.uint8)

    for split in ("train", "val"):
        write_generated_split(root / "raw", root / "splits", split, PER_SPLIT, draw)
    return root


def train_env(tf_config_json: str | None = None) -> dict[str, str]:
    """run_env() with TF_CONFIG set to the given JSON, or removed."""
    env = run_env()
    env.pop("TF_CONFIG", None)
    if tf_config_json is not None:
        env["TF_CONFIG"] = tf_config_json
    return env


def start(root: Path, out: Path, train: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    """Start train_base on the generated split in a fresh interpreter."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(root), str(out), json.dumps({**TRAIN, **train})],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict[str, Any]:
    """Wait for a run; its summary dict (or an assertion error with the output)."""
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, out[-4000:]
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("SUMMARY "))
    return json.loads(line.removeprefix("SUMMARY "))


def val_auc(model_path: Path, root: Path) -> float:
    """ROC AUC of a saved model on the generated val split (sklearn: exact, not bucketed)."""
    from sklearn.metrics import roc_auc_score

    from xray.models.architectures import load_model
    from xray.models.dataset import load_split
    from xray.models.training import predict

    model, meta = load_model(model_path)
    x, y, _ = load_split(root / "splits" / "val.csv", meta["image_size"], "PNEUMONIA", root / "raw")
    return float(roc_auc_score(y, predict(model, x, 16)))


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated split, shared by every run."""
    return write_split(tmp_path_factory.mktemp("strategy"))


@pytest.fixture(scope="module")
def both_runs(data: Path) -> dict[str, dict[str, Any]]:
    """train_base under the default strategy and under MirroredStrategy over 2 logical CPU
    devices, at once (each is one thread: the two share the machine's cores)."""
    settings = {"default": {}, "mirrored": {"strategy": "mirrored", "cpu_replicas": 2}}
    procs = {k: start(data, data / k, train, train_env()) for k, train in settings.items()}
    return {k: {"out": data / k, **finish(proc)} for k, proc in procs.items()}


@pytest.fixture(scope="module")
def default_run(both_runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """train_base under the default strategy."""
    return both_runs["default"]


@pytest.fixture(scope="module")
def mirrored_run(both_runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """train_base under MirroredStrategy over 2 logical CPU devices."""
    return both_runs["mirrored"]


def test_mirrored_over_two_cpus_trains_as_well_as_default(
    data: Path, default_run: dict[str, Any], mirrored_run: dict[str, Any]
) -> None:
    assert default_run["replicas"] == 1 and mirrored_run["replicas"] == 2
    assert mirrored_run["epochs_run"] == default_run["epochs_run"] == TRAIN["epochs"]
    auc_default = val_auc(default_run["out"] / "base.keras", data)
    auc_mirrored = val_auc(mirrored_run["out"] / "base.keras", data)
    assert auc_default >= MIN_AUC and auc_mirrored >= MIN_AUC, (auc_default, auc_mirrored)
    assert abs(auc_mirrored - auc_default) <= AUC_TOLERANCE
    assert abs(mirrored_run["best_val_auc"] - default_run["best_val_auc"]) <= AUC_TOLERANCE
    assert 0.0 < mirrored_run["threshold"] < 1.0
    assert (mirrored_run["out"] / "live" / "metrics.json").exists()
    assert not (mirrored_run["out"] / "work").exists()


def _layout(path: Path) -> dict[str, Any]:
    """A saved model's structure: config, Keras metadata and every weight's name/shape/dtype."""
    import h5py

    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
        weights = []
        with h5py.File(io.BytesIO(z.read("model.weights.h5"))) as h5:
            h5.visititems(
                lambda k, v: (
                    weights.append((k, v.shape, str(v.dtype)))
                    if isinstance(v, h5py.Dataset)
                    else None
                )
            )
        return {
            "members": names,
            "config": json.loads(z.read("config.json")),
            "metadata": json.loads(z.read("metadata.json")),
            "weights": weights,
            "meta_keys": sorted(json.loads(z.read("xray.json"))),
        }


def test_mirrored_model_file_has_the_default_format(
    default_run: dict[str, Any], mirrored_run: dict[str, Any]
) -> None:
    a = _layout(default_run["out"] / "base.keras")
    b = _layout(mirrored_run["out"] / "base.keras")
    assert a == b
    norms = [
        layer
        for layer in a["config"]["config"]["layers"]
        if layer["class_name"] == "BatchNormalization"
    ]
    assert norms and not any(n["config"]["synchronized"] for n in norms)


def test_strategy_params_and_their_errors() -> None:
    p = parse_params({})
    assert (p.train.strategy, p.train.cpu_replicas) == ("default", 0)
    assert p.finetune.strategy == "default"
    assert parse_params({"train": {"strategy": "multi_worker"}}).train.strategy == "multi_worker"
    with pytest.raises(ParamsError, match=r"^params\.yaml: train\.strategy: .*'mirrored'"):
        parse_params({"train": {"strategy": "horovod"}})
    with pytest.raises(ParamsError, match=r"^params\.yaml: finetune\.strategy: "):
        parse_params({"finetune": {"strategy": "multi_worker"}})
    with pytest.raises(ParamsError, match=r"^params\.yaml: train\.cpu_replicas: "):
        parse_params({"train": {"cpu_replicas": -1}})


def test_tf_config_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"^train\.strategy: multi_worker needs the TF_CONFIG"):
        tf_config()
    cases = {
        "{not json": r"^TF_CONFIG: not valid JSON",
        '{"task": {"type": "worker", "index": 0}}': r'^TF_CONFIG: needs "cluster"',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}': r'needs "task"',
        '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}': (
            r"task index 2 is not in 0\.\.1"
        ),
    }
    for raw, pattern in cases.items():
        monkeypatch.setenv("TF_CONFIG", raw)
        with pytest.raises(ValueError, match=pattern) as err:
            tf_config()
        assert "\n" not in str(err.value)
    good = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    monkeypatch.setenv("TF_CONFIG", good)
    assert tf_config()["task"]["index"] == 1


def _fake_strategy(task_type: str, task_id: int, cluster: dict[str, list[str]]) -> Any:
    spec = SimpleNamespace(as_dict=lambda: cluster)
    resolver = SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
    return SimpleNamespace(cluster_resolver=resolver, num_replicas_in_sync=2)


def test_only_the_chief_writes_the_real_outputs(tmp_path: Path) -> None:
    workers = {"worker": ["a:1", "b:2"]}
    with_chief = {"chief": ["c:0"], **workers}
    work, live = Path("models/.train_base.work"), Path("dvclive/train_base")
    assert is_chief(_fake_strategy("worker", 0, workers))
    assert not is_chief(_fake_strategy("worker", 1, workers))
    assert is_chief(_fake_strategy("chief", 0, with_chief))
    assert not is_chief(_fake_strategy("worker", 0, with_chief))
    assert worker_dirs(_fake_strategy("worker", 0, workers), work, live) == (work, live)
    own, own_live = worker_dirs(_fake_strategy("worker", 1, workers), work, live)
    assert own == Path("models/.train_base.worker1.work")  # matches .gitignore models/.*.work/
    assert own_live.parent == own  # removed with it: a non-chief leaves nothing behind


def test_no_replica_is_left_without_images() -> None:
    assert usable_rows(64, 8, 1) == 64 and usable_rows(65, 8, 1) == 65  # one device: all
    assert usable_rows(64, 8, 2) == 64
    assert usable_rows(65, 8, 2) == 64  # a last batch of 1 cannot feed 2 replicas
    assert usable_rows(67, 8, 2) == 67  # a last batch of 3 can (2 + 1)
    assert usable_rows(67, 8, 4) == 64


def test_multi_worker_without_tf_config_is_a_one_line_stage_error(
    make_project: Any,
) -> None:
    project = make_project({"train": {"strategy": "multi_worker"}})
    proc = subprocess.run(
        stage_argv("train_base", project),  # as dvc.yaml runs it, with its paths
        cwd=project,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train.strategy: multi_worker needs the TF_CONFIG"), proc.stderr
    assert "docs/scale-out.md" in last
    assert not (project / "models" / "base.keras").exists()


@pytest.mark.slow
def test_two_workers_on_loopback_train_in_step_and_only_the_chief_writes(
    data: Path, default_run: dict[str, Any], tmp_path: Path
) -> None:
    """Two processes with TF_CONFIG on 127.0.0.1, each in its own copy (as on two machines)."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs, outs = [], []
    for index in range(2):
        out = tmp_path / f"machine{index}" / "models"
        cfg = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(start(data, out, {"strategy": "multi_worker"}, train_env(cfg)))
        outs.append(out)
    try:
        chief, worker = (finish(p) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert chief["chief"] and not worker["chief"]
    assert chief["replicas"] == worker["replicas"] == 2
    for key in ("epochs_run", "best_epoch", "best_val_auc"):  # the same synchronized run
        assert chief[key] == worker[key]
    assert (outs[0] / "base.keras").exists() and (outs[0] / "live" / "metrics.json").exists()
    left = [p for p in outs[1].parent.rglob("*") if p.is_file()] if outs[1].exists() else []
    assert left == []  # no model, no dvclive log, no resume state on the non-chief
    assert not (outs[0] / "work").exists()
    auc = val_auc(outs[0] / "base.keras", data)
    auc_default = val_auc(default_run["out"] / "base.keras", data)
    assert auc >= MIN_AUC and abs(auc - auc_default) <= AUC_TOLERANCE, (auc, auc_default)


FINETUNE_DRIVER = """
import json, sys
from pathlib import Path
from xray.core.params import parse_params
from xray.adaptation.references import source_references
from xray.models.finetune_training import finetune
root, base, out, strategy = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
params = parse_params({
    "finetune": {"trainable_layers": 3, "epochs": 2, "batch_size": 8, "strategy": strategy},
    "corrupt": {"families": ["seed", "jpeg"], "held_out": ["jpeg"], "severities": [3]},
    "train": {"threads": 1, "cpu_replicas": 2 if strategy == "mirrored" else 0},
})
summary = finetune(params, train_csv=root / "splits" / "train.csv",
                   val_csv=root / "splits" / "val.csv", base_path=base,
                   model_path=out / "ft.keras", live_dir=out / "live", work_dir=out / "work",
                   layers_csv=out / "layers.csv", raw_dir=root / "raw",
                   references=source_references)
print("SUMMARY " + json.dumps(summary))
"""


@pytest.mark.slow
def test_finetune_under_mirrored_matches_default(data: Path, default_run: dict[str, Any]) -> None:
    base = default_run["out"] / "base.keras"
    procs = {
        strategy: subprocess.Popen(  # both at once, as the train_base pair
            [
                *(sys.executable, "-c", FINETUNE_DRIVER),
                *(str(data), str(base), str(data / f"finetune-{strategy}"), strategy),
            ],
            cwd=ROOT,
            env=train_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for strategy in ("default", "mirrored")
    }
    runs = {
        strategy: {**finish(proc), "auc": val_auc(data / f"finetune-{strategy}" / "ft.keras", data)}
        for strategy, proc in procs.items()
    }
    assert runs["default"]["replicas"] == 1 and runs["mirrored"]["replicas"] == 2
    assert abs(runs["mirrored"]["auc"] - runs["default"]["auc"]) <= AUC_TOLERANCE, runs


def test_cpu_replicas_after_tensorflow_started_is_a_one_line_user_error() -> None:
    import tensorflow as tf

    from xray.core.errors import InputError, is_user_error
    from xray.models.distribute import split_cpu

    have = len(tf.config.list_logical_devices("CPU"))  # initializes TensorFlow here
    with pytest.raises(InputError, match=r"^train\.cpu_replicas: TensorFlow already started") as e:
        split_cpu(have + 1)
    assert is_user_error(e.value) and "\n" not in str(e.value)
