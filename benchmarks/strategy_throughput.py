"""Training throughput (images/s) under train.strategy: default vs mirrored over N logical CPUs.

Each configuration runs in its own process (logical devices must be set up before
TensorFlow starts), through the stage's own code path: make_strategy, build and compile
under strategy.scope(), replicated() around model.fit on an in-memory tf.data pipeline.

    python -m benchmarks.strategy_throughput [--steps 12] [--replicas 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

from benchmarks._common import machine, write_report

BATCH = 32
WARMUP_STEPS = 3
TIMEOUT_S = 1800


def measure(strategy_name: str, cpu_replicas: int, steps: int) -> dict[str, Any]:
    """Images/s of train steps of the default architecture under one strategy (this process)."""
    from xray.core.params import load_params
    from xray.models.architectures import build_model
    from xray.models.dataset import make_dataset
    from xray.models.distribute import make_strategy, replicated, shard
    from xray.models.training import compile_model, configure

    p = load_params().train
    configure(p.seed, p.deterministic, p.threads)
    strategy = make_strategy(strategy_name, cpu_replicas)
    with strategy.scope():
        model = build_model(p.arch, p.image_size)
        compile_model(model, p.learning_rate, p.weight_decay)
    rng = np.random.default_rng(0)
    n = BATCH * (steps + WARMUP_STEPS)
    x = rng.integers(0, 256, (n, p.image_size, p.image_size, 1), dtype=np.uint8)
    y = rng.integers(0, 2, n).astype(np.int32)
    warm = shard(make_dataset(x[: BATCH * WARMUP_STEPS], y[: BATCH * WARMUP_STEPS], BATCH))
    timed = shard(make_dataset(x[BATCH * WARMUP_STEPS :], y[BATCH * WARMUP_STEPS :], BATCH))
    with replicated(model, strategy, warm):
        model.fit(warm, epochs=1, verbose=0)
        t = time.perf_counter()
        model.fit(timed, epochs=1, verbose=0)
        seconds = time.perf_counter() - t
    return {
        "strategy": strategy_name,
        "replicas": int(strategy.num_replicas_in_sync),
        "arch": p.arch,
        "image_size": p.image_size,
        "global_batch": BATCH,
        "steps": steps,
        "seconds": round(seconds, 2),
        "images_per_s": round(BATCH * steps / seconds, 1),
    }


def child(strategy_name: str, replicas: int, steps: int) -> dict[str, Any]:
    """Run `measure` in a fresh interpreter; its result."""
    args = ["--child", strategy_name, "--replicas", str(replicas), "--steps", str(steps)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.strategy_throughput", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure default and mirrored; report the speed-up and the scaling efficiency."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--child", choices=("default", "mirrored"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        replicas = a.replicas if a.child == "mirrored" else 0
        print(json.dumps(measure(a.child, replicas, a.steps)), flush=True)
        return
    start = machine()
    runs = []
    for name in ("default", "mirrored"):
        runs.append(child(name, a.replicas, a.steps))
        print(runs[-1], flush=True)
    default, mirrored = runs
    speedup = mirrored["images_per_s"] / default["images_per_s"]
    write_report(
        "strategy_throughput",
        {
            "runs": runs,
            "mirrored_speedup": round(speedup, 2),
            "scaling_efficiency": round(speedup / mirrored["replicas"], 2),
            "note": "logical CPU devices share the same cores: no gain is expected on a CPU; "
            "the benchmark measures the overhead of the mirrored code path",
            "machine_start": start,
        },
    )


if __name__ == "__main__":
    main()
