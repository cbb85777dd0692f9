"""Training throughput (images/s) and forward FLOPs per image: seed_cnn vs the default
architecture at 150x150 and at the default size, plus the bfloat16 and XLA options.

    python -m benchmarks.train_throughput [--steps 8]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import keras
import numpy as np

from benchmarks._common import machine, write_report
from xray.core.params import load_params
from xray.models.architectures import build_model
from xray.models.training import compile_model, precision

BATCH = 32
WARMUP_STEPS = 2
SEED_SIZE = 150


def flops_per_image(model: keras.Model) -> int:
    """Forward-pass FLOPs of one image (a multiply-add counts 2), from TF's graph profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=opts
    )
    return int(info.total_float_ops)


def throughput(
    arch: str, size: int, steps: int, *, mixed: bool = False, xla: bool = False
) -> dict[str, Any]:
    """Images/s of train steps (forward, backward, update) on in-memory batches."""
    keras.utils.set_random_seed(0)
    with precision(mixed):
        model = build_model(arch, size)
    compile_model(model, 1e-3, 1e-4, jit_compile=xla)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH * (steps + WARMUP_STEPS), size, size, 1)).astype("float32")
    y = rng.integers(0, 2, len(x)).astype("float32")
    model.fit(x[: BATCH * WARMUP_STEPS], y[: BATCH * WARMUP_STEPS], batch_size=BATCH, verbose=0)
    t = time.perf_counter()
    model.fit(x[BATCH * WARMUP_STEPS :], y[BATCH * WARMUP_STEPS :], batch_size=BATCH, verbose=0)
    seconds = time.perf_counter() - t
    return {
        "arch": arch,
        "image_size": size,
        "mixed_bfloat16": mixed,
        "xla": xla,
        "params": int(model.count_params()),
        "images_per_s": round(BATCH * steps / seconds, 1),
        "gflops_per_image": round(flops_per_image(model) / 1e9, 3),
    }


def main() -> None:
    """Measure each configuration and report speed-ups against seed_cnn."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    default = load_params().train
    start = machine()
    runs = []
    for size in sorted({SEED_SIZE, default.image_size}):
        for arch in ("seed_cnn", default.arch):
            runs.append(throughput(arch, size, a.steps))
            print(runs[-1], flush=True)
    for mixed, xla in ((True, False), (False, True)):
        runs.append(throughput(default.arch, default.image_size, a.steps, mixed=mixed, xla=xla))
        print(runs[-1], flush=True)
    seed150 = next(r for r in runs if r["arch"] == "seed_cnn" and r["image_size"] == SEED_SIZE)
    plain = [r for r in runs if not r["mixed_bfloat16"] and not r["xla"]]
    speedups = {
        f"{r['arch']}@{r['image_size']}": {
            "speed_vs_seed_cnn@150": round(r["images_per_s"] / seed150["images_per_s"], 1),
            "flops_vs_seed_cnn@150": round(seed150["gflops_per_image"] / r["gflops_per_image"], 1),
        }
        for r in plain
    }
    write_report(
        "train_throughput",
        {
            "batch_size": BATCH,
            "steps": a.steps,
            "default_arch": default.arch,
            "default_size": default.image_size,
            "runs": runs,
            "speedups": speedups,
            "goal": "default >= 5x faster per image than seed_cnn, with better val AUC",
            "machine_start": start,
        },
    )


if __name__ == "__main__":
    main()
