"""Benchmark: base-model options compared over seeds on val and the shift proxy only.

Takes a workspace whose data stages ran (``data/splits/{train,val}.csv``, ``data/raw``),
trains the base model once per option and seed (params.yaml's ``train`` section with the
option's overrides and ``train.seed`` set to each seed) into a temporary folder, and scores
each model on the val split: clean, and the proxy's three kinds of target (clean shift,
shift + class balance, shift + damage; xray/reports/proxy.py), each by AUC, ECE, accuracy at
the model's own threshold and specificity at sensitivity >= 95%. Reports every run and,
per option, the mean and spread (sample standard deviation) over seeds, with the training
time. Never reads a test split. Prints JSON and writes ``reports/benchmarks/base_options.json``
after every run (``"complete": false`` until the last), so a long sweep loses nothing.

    python -m benchmarks.base_options --workspace DIR [--seeds 42 43 44]
        [--option NAME:key=value[,key=value]] ... [--epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine, require, write_report
from benchmarks.finetune_options import parse_option

DEFAULT_OPTIONS = ("default:", "crop_0.1:crop=0.1", "mixup_0.2:mixup=0.2")
DEFAULT_SEEDS = (42, 43, 44)
METRICS = ("auc", "ece", "accuracy", "spec_at_sens95")


def score(model: Any, threshold: float, sets: list[Any], batch: int) -> dict[str, Any]:
    """Clean val and each proxy kind: the mean over its sets of every METRICS entry, grouped
    and averaged as the evaluate stage does (`target_names`, `target_summary`)."""
    from xray.models.training import predict
    from xray.reports.metrics import proxy_metrics
    from xray.reports.proxy import CLEAN, target_names
    from xray.reports.proxy_targets import target_summary

    scores: dict[str, np.ndarray] = {}
    rows: dict[str, dict[str, Any]] = {}
    for s in sets:
        if s.parent is None:
            scores[s.name] = predict(model, s.source, batch)
        p = scores[s.parent][s.index] if s.parent else scores[s.name]
        rows[s.name] = proxy_metrics(s.labels, p, threshold)
    targets = {"clean": [f"val/{CLEAN}"], **target_names(sets)}
    summary = target_summary({"model": rows}, targets)["model"]
    return {kind: {m: v[m] for m in ("sets", *METRICS)} for kind, v in summary.items()}


def spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind and metric: mean and sample standard deviation over the runs (seeds)."""
    out: dict[str, Any] = {
        "seeds": len(runs),
        "train_seconds": {
            "mean": round(statistics.fmean(r["train_seconds"] for r in runs), 1),
            "sd": round(statistics.stdev(r["train_seconds"] for r in runs), 1)
            if len(runs) > 1
            else None,
        },
    }
    from xray.reports.proxy import KINDS

    for kind in ("clean", *KINDS):
        out[kind] = {}
        for m in METRICS:
            values = [r["scores"][kind][m] for r in runs]
            out[kind][m] = {
                "mean": round(statistics.fmean(values), 4),
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            }
    return out


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--option", action="append", help="NAME:key=value,... (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs for every run")
    args = ap.parse_args()
    ws = args.workspace.resolve()
    require(
        ws,
        ("data/splits/train.csv", "data/splits/val.csv", "data/raw"),
        "run the data stages first",
    )

    from xray.core.params import ParamsError, load_params, parse_params

    params = load_params(ws / "params.yaml")
    options = [parse_option(o) for o in (args.option or DEFAULT_OPTIONS)]

    def with_train(name: str, update: dict[str, Any]) -> Any:
        """params with `update` in its train section, checked as params.yaml is (one line)."""
        raw = params.model_dump()
        raw["train"] = {**raw["train"], **update}
        try:
            return parse_params(raw, source=f"--option {name}")
        except ParamsError as err:
            raise SystemExit(f"error: {err}") from None

    for name, overrides in options:  # every option valid before hours of training
        with_train(name, overrides)
    import keras

    from xray.adaptation.references import source_references
    from xray.core.io import read_csv
    from xray.models.architectures import load_model
    from xray.models.base_training import train_base
    from xray.reports.proxy import proxy_sets

    e = params.evaluate
    rows = read_csv(ws / "data/splits/val.csv")
    sets_by_size: dict[int, list[Any]] = {}
    result: dict[str, Any] = {
        "workspace": str(ws),
        "machine": machine(),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "val_images": len(rows),
        "proxy": {
            "shifts": list(e.proxy_shifts),
            "priors": list(e.proxy_priors),
            "damage_severity": e.proxy_damage_severity,
        },
        "runs": {},
        "options": {},
        "complete": False,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in options}
    for seed in args.seeds:  # seeds outside: a sweep cut short still compares every option
        for name, overrides in options:
            update = {**overrides, "seed": seed}
            if args.epochs:
                update["epochs"] = args.epochs
            run_params = with_train(name, update)
            keras.backend.clear_session()
            with tempfile.TemporaryDirectory(prefix="xray-bench-base-") as tmp:
                out = Path(tmp)
                t0 = time.perf_counter()
                summary = train_base(
                    run_params,
                    train_csv=ws / "data/splits/train.csv",
                    val_csv=ws / "data/splits/val.csv",
                    raw_dir=ws / "data/raw",
                    model_path=out / "base.keras",
                    live_dir=out / "live",
                    work_dir=out / "work",
                    references=source_references,
                )
                seconds = time.perf_counter() - t0
                model, meta = load_model(out / "base.keras")
            size = int(meta["image_size"])
            if size not in sets_by_size:
                sets_by_size[size] = proxy_sets(
                    rows,
                    ws / "data/raw",
                    params.data.positive_class,
                    [size],
                    e.proxy_shifts,
                    e.proxy_priors,
                    e.proxy_seed,
                    e.proxy_damage_severity,
                )[size]
            run = {
                "option": name,
                "overrides": overrides,
                "seed": seed,
                "train_seconds": round(seconds, 1),
                "epochs_run": summary["epochs_run"],
                "best_epoch": summary["best_epoch"],
                "val_auc_in_training": round(summary["best_val_auc"], 6),
                "threshold": round(float(meta["threshold"]), 6),
                "scores": score(model, float(meta["threshold"]), sets_by_size[size], 64),
            }
            runs[name].append(run)
            result["runs"][f"{name}/seed{seed}"] = run
            result["options"][name] = spread(runs[name])
            write_report("base_options", result)  # after every run: a long sweep loses nothing
    result["complete"] = True
    write_report("base_options", result)


if __name__ == "__main__":
    main()
