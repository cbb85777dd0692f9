"""Benchmark: the pipeline at 1x, 3x and 10x the real archive's size, stage by stage.

For each size (``--sizes``, images in the source: by default 5,216, the real training
archive's count, then 3x and 10x) clones this repository (its committed HEAD) into a fresh
workspace, points params.yaml at the synthetic source sized to that many images (the
``data.synthetic.patients_per_class`` whose image count, train + test + the official val,
is nearest; the test split grows with it: a quarter of the images), records the source
(``xray probe``) and runs each stage of ``dvc.yaml`` in order with ``dvc repro
--single-item``. Per stage and size it reports the wall time, the time per image (wall time
over the source's images), the CPU time of the stage's processes, the peak resident memory,
and the bytes on disk and file count of the stage's outputs and of ``.dvc/cache``. Then it
times ``dvc status`` and a no-change ``xray run`` (against one Prefect server:
PREFECT_API_URL's, else one started here) at each size. Prints JSON and writes
``reports/benchmarks/scale.json`` after every size (``"complete": false`` until the last).

What is cut, at every size alike (the cost per image is what is compared, not the model):
one epoch of training and of fine-tuning (``--epochs``), small images (``--image-size``
for the generator, whose minimum is 64, against the real archive's 224; ``--train-size``
for the model input, against 160), and the corruption suite reduced to a few families
and severities, the acquisition-shift proxy to two shifts at one class balance (``CUT``).
The JSON's ``cut`` lists every value set; ``--set KEY=VALUE`` (a YAML value, repeatable)
sets more. The synthetic source differs from the real archive in ways that change the work
per image a little: its own test split is a quarter of the images (the split carves 15% of
the real archive), its classes are balanced (the real archive: 26% NORMAL) and its patients
have 2.5 images on average (1.8).

Peak memory, two ways: ``peak_rss_bytes`` is the largest sum of RSS over the stage's
whole process tree (``dvc``, the stage's Python, its worker processes), sampled every
``POLL_S`` seconds with psutil (a dependency of dvc and distributed); pages shared between
processes count once per process, and a peak shorter than the interval can be missed.
``max_process_rss_bytes`` is the kernel's exact high-water mark of the largest single
process of the tree (``ru_maxrss`` of os.wait4 on ``dvc``, which covers its waited-for
descendants).

    python -m benchmarks.scale [--sizes 5216,15648,52160] [--epochs 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import REPO, machine, write_report
from benchmarks.nochange_run import timed
from benchmarks.pipeline import disk_bytes

REAL_IMAGES = 5216  # the real training archive (README, Results)
DEFAULT_SIZES = (REAL_IMAGES, 3 * REAL_IMAGES, 10 * REAL_IMAGES)
POLL_S = 0.2  # seconds between two samples of the process tree's memory
REAP_S = 0.02  # seconds between two checks for the stage's end (the wall time's resolution)
CUT = {
    "train.epochs": 1,
    "train.warmup_epochs": 0,  # below train.epochs
    "finetune.epochs": 1,
    "data.synthetic.image_size": 64,
    "train.image_size": 64,
    "corrupt.families": ["seed", "jpeg", "zoom_blur"],  # the blog's, a codec, a held-out one
    "corrupt.severities": [1, 3],  # seed/3: metrics.json's `corrupted`
    "corrupt.held_out": ["zoom_blur"],
    "evaluate.proxy_shifts": ["equalize", "collimation"],
    "evaluate.proxy_priors": [0.5],
}
"""The params set at every size. The real archive's run: 15 and 8 epochs, 1 of warmup,
224-pixel images, a 160-pixel input, 17 families x 5 severities (3 held out), 8 proxy shifts
at 3 class balances. On a 500-image tiny run the proxy took 0.18 s per val image and each
corrupted set 4 ms per test image (4 variants): uncut, evaluate alone would take over half
an hour at 10x on 2 cores."""
OUTPUT_DIRS = ("data", "models", "reports", "dvclive")
LOG_TAIL = 3000


def _env() -> dict[str, str]:
    """This interpreter's folder first on PATH (the stages' `python` and `dvc`); progress
    lines held back (one an hour): the stages' logs are kept for failures only."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "XRAY_PROGRESS_INTERVAL": "3600",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def tree_rss(root: Any) -> int:
    """Bytes resident in a psutil.Process and all its descendants now (0 once it is gone)."""
    import psutil

    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run cmd in cwd (output to `log`): wall and CPU seconds, peak tree and process RSS.

    Exits with the log's tail on failure.
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak, sampled = 0, 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() - sampled >= POLL_S:
                sampled = time.perf_counter()
                peak = max(peak, tree_rss(root))
            time.sleep(REAP_S)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-LOG_TAIL:]
        sys.exit(f"error: {' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_bytes": peak,
        "max_process_rss_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
    }


def file_count(*paths: Path) -> int:
    """Files (and links) under the paths; a path that is a file counts as one."""
    n = 0
    for p in paths:
        if p.is_file():
            n += 1
        elif p.is_dir():
            n += sum(len(files) for _, _, files in os.walk(p))
    return n


def stage_outputs(dvc_yaml: dict[str, Any], stage: str) -> list[str]:
    """The paths a stage writes: its outs and metrics in dvc.yaml."""
    spec = dvc_yaml["stages"][stage]
    entries = [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def patients_for(images: int, synthetic: dict[str, Any], classes: tuple[str, str]) -> int:
    """The data.synthetic.patients_per_class whose image count is nearest `images`."""
    from xray.core.params import SyntheticParams
    from xray.data.intake.synthetic import count

    def n(ppc: int) -> int:
        return count(SyntheticParams(**{**synthetic, "patients_per_class": ppc}), classes)

    lo, hi = synthetic["images_per_patient"]
    per = 2 * (lo + hi) / 2 * 4 / 3  # train + a third as many test patients, both classes
    ppc = max(1, round(images / per))
    tried: dict[int, int] = {}
    while ppc not in tried:
        tried[ppc] = got = n(ppc)
        if got == images:
            break
        step = round((images - got) / per) or (1 if got < images else -1)
        ppc = max(1, ppc + step)
    return min(tried, key=lambda p: (abs(tried[p] - images), p))


def sized_params(text: str, size: int, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """params.yaml's text with the overrides and the synthetic source sized to `size` images
    (checked as the stages check it: one line naming a bad key); the values set."""
    from xray.core.errors import InputError
    from xray.core.params import parse_params
    from xray.runner.overrides import set_keys

    raw = yaml.safe_load(text)
    synthetic = {**raw["data"]["synthetic"]}
    for key, value in overrides.items():
        if key.startswith("data.synthetic."):
            synthetic[key.removeprefix("data.synthetic.")] = value
    try:
        values = {
            **overrides,
            "data.source": "synthetic",
            "data.synthetic.patients_per_class": patients_for(
                size, synthetic, tuple(raw["data"]["classes"])
            ),
        }
        text, _ = set_keys(text, values)
        parse_params(yaml.safe_load(text), "params.yaml with the benchmark's values")
    except (InputError, ValueError, TypeError) as e:  # ParamsError too
        sys.exit(f"error: {' '.join(str(e).split())}")
    return text, values


def prepare(ws: Path, size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Clone the repository into ws and write its params.yaml (sized_params); the values set."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(ws)], check=True)
    text, values = sized_params((ws / "params.yaml").read_text(), size, overrides)
    (ws / "params.yaml").write_text(text)
    return values


@contextlib.contextmanager
def prefect_api(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` with PREFECT_API_URL: the caller's, else a server started here (stopped after)."""
    if env.get("PREFECT_API_URL"):
        yield env
        return
    from benchmarks.nochange_run import start_server

    server_env = dict(env)
    server, api = start_server(server_env)
    try:
        yield {**server_env, "PREFECT_API_URL": api}
    finally:
        server.terminate()
        server.wait(timeout=60)


def run_size(
    ws: Path, size: int, overrides: dict[str, Any], env: dict[str, str], repeat: int
) -> dict[str, Any]:
    """Every stage of one fresh workspace, measured; then `dvc status`, a no-change
    `xray run` and the disk."""
    values = prepare(ws, size, overrides)
    from xray.core.io import read_csv

    py = sys.executable
    out: dict[str, Any] = {"values": values, "stages": {}}
    out["probe_seconds"], _ = timed([py, "-m", "xray.cli.main", "probe"], ws, env)
    dvc_yaml = yaml.safe_load((ws / "dvc.yaml").read_text())
    images = 0
    for stage in dvc_yaml["stages"]:
        m = measured([py, "-m", "dvc", "repro", "--single-item", stage], ws, env,
                     ws.parent / "logs" / f"{size}-{stage}.log")  # fmt: skip
        if stage == "download":
            images = len(read_csv(ws / "data/raw/manifest.csv"))
            out["images"] = images
        outs = [ws / p for p in stage_outputs(dvc_yaml, stage)]
        cache = ws / ".dvc" / "cache"
        m |= {
            "seconds_per_image": round(m["seconds"] / images, 6),
            "cpu_seconds_per_image": round(m["cpu_seconds"] / images, 6),
            "out_bytes": disk_bytes(*outs),
            "out_files": file_count(*outs),
            "cache_bytes": disk_bytes(cache),
            "cache_files": file_count(cache),
        }
        out["stages"][stage] = m
        print(f"{size}: {stage} {m['seconds']}s", file=sys.stderr, flush=True)
    out["splits"] = {
        name: len(read_csv(ws / f"data/splits/{name}.csv")) for name in ("train", "val", "test")
    }
    dvc = [py, "-m", "dvc", "status"]
    out["dvc_status_first_seconds"], stale = timed(dvc, ws, env)
    out["stale_after_stages"] = stale.strip()[-300:]
    runs = [timed(dvc, ws, env)[0] for _ in range(repeat)]
    out["dvc_status"] = {"median": statistics.median(runs), "runs": runs}
    lock = (ws / "dvc.lock").read_bytes()
    noop, ran = [], set()
    for _ in range(repeat):
        seconds, printed = timed([py, "-m", "xray.cli.main", "run"], ws, env)
        noop.append(seconds)
        ran |= {ln.strip() for ln in printed.splitlines() if "stages run:" in ln}
    out["noop_run"] = {
        "median": statistics.median(noop),
        "runs": noop,
        "stages_run_lines": sorted(ran),
        "dvc_lock_unchanged": (ws / "dvc.lock").read_bytes() == lock,
    }
    outputs = [ws / d for d in OUTPUT_DIRS]
    out["disk"] = {
        "outputs_bytes": disk_bytes(*outputs),
        "dvc_cache_bytes": disk_bytes(ws / ".dvc" / "cache"),
        "together_bytes": disk_bytes(*outputs, ws / ".dvc" / "cache"),
        "outputs_files": file_count(*outputs),
        "dvc_cache_files": file_count(ws / ".dvc" / "cache"),
    }
    return out


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """--set KEY=VALUE options as {key: YAML value}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"error: --set {item}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def report(
    sizes: list[int], results: dict[int, dict[str, Any]], base: dict[str, Any]
) -> dict[str, Any]:
    """The JSON: per stage and size, and per size, from the sizes measured so far."""
    done = [n for n in sizes if n in results]
    stages: dict[str, dict[str, Any]] = {}
    for n in done:
        for stage, m in results[n]["stages"].items():
            stages.setdefault(stage, {})[str(n)] = m
    by_size = {str(n): results[n] for n in done}
    order = next(iter(results.values()))["stages"] if results else {}
    return {
        **base,
        "sizes": sizes,
        "stage_order": list(order),  # dvc.yaml's (the JSON's keys are sorted)
        "images": {k: r["images"] for k, r in by_size.items()},
        "splits": {k: r["splits"] for k, r in by_size.items()},
        "stages": stages,
        "total_stage_seconds": {
            k: round(sum(m["seconds"] for m in r["stages"].values()), 2) for k, r in by_size.items()
        },
        "probe_seconds": {k: r["probe_seconds"] for k, r in by_size.items()},
        "dvc_status_seconds": {k: r["dvc_status"]["median"] for k, r in by_size.items()},
        "dvc_status": {
            k: {**r["dvc_status"], "first": r["dvc_status_first_seconds"]}
            for k, r in by_size.items()
        },
        "stale_after_stages": {k: r["stale_after_stages"] for k, r in by_size.items()},
        "noop_run_seconds": {k: r["noop_run"]["median"] for k, r in by_size.items()},
        "noop_run": {k: r["noop_run"] for k, r in by_size.items()},
        "disk": {k: r["disk"] for k, r in by_size.items()},
        "values": {k: r["values"] for k, r in by_size.items()},
        "complete": len(done) == len(sizes),
    }


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="source images per workspace, comma-separated (default: %(default)s)",
    )
    ap.add_argument("--epochs", type=int, default=CUT["train.epochs"], help="train and finetune")
    ap.add_argument("--image-size", type=int, default=CUT["data.synthetic.image_size"])
    ap.add_argument("--train-size", type=int, default=CUT["train.image_size"])
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="more params (YAML)")
    ap.add_argument("--repeat", type=int, default=2, help="dvc status and no-change runs")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="build (and keep) workspaces here")
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"error: --sizes {args.sizes}: expected comma-separated integers")
    if not sizes or min(sizes) < 1:
        sys.exit(f"error: --sizes {args.sizes}: expected positive integers")
    overrides = {
        **CUT,
        "train.epochs": args.epochs,
        "finetune.epochs": args.epochs,
        "data.synthetic.image_size": args.image_size,
        "train.image_size": args.train_size,
        **parse_sets(args.set),
    }
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    sized_params(committed, min(sizes), overrides)  # a bad --set fails before any work
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"error: {args.keep}: exists and is not empty")
    root = args.keep or Path(tempfile.mkdtemp(prefix="xray-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    base: dict[str, Any] = {
        "commit": commit,
        "machine": {
            **machine(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        },
        "cut": overrides,
        "rss": {
            "peak_rss_bytes": f"sum of RSS over the stage's process tree, sampled every {POLL_S}s",
            "max_process_rss_bytes": "largest single process of the tree (ru_maxrss, exact)",
        },
        "seconds_per_image": "wall seconds over the source's images (train + val + test)",
    }
    results: dict[int, dict[str, Any]] = {}
    env = _env()
    t0 = time.perf_counter()
    try:
        with prefect_api(env) as run_env:
            for size in sizes:
                ws = root / f"ws-{size}"
                results[size] = run_size(ws, size, overrides, run_env, max(1, args.repeat))
                if not args.keep:
                    shutil.rmtree(ws, ignore_errors=True)
                result = report(sizes, results, base)
                result["wall_seconds"] = round(time.perf_counter() - t0, 1)
                write_report("scale", result)  # after every size: a long run loses nothing
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
