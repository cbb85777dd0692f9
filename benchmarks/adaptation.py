"""Adaptation variants on the acquisition-shift proxy: which default helps, measured on val only.

Usage: python -m benchmarks.adaptation [--workdir DIR] [--models base,finetuned]

For each model of a workspace that has run `split` and `train_base` (and `finetune`), and
each adaptation variant (none, AdaBN, AdaBN + TENT, each with and without the label-shift
threshold), scores the proxy (xray/reports/proxy.py: the val split under every acquisition shift,
at its own class balance and at `--prior`); every target set is adapted on its own images.
Prints the means over shifts per variant and writes reports/benchmarks/adaptation.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine, write_report

VARIANTS = {
    "none": {"bn": False},
    "prior": {"bn": False, "prior": True},
    "adabn": {},
    "adabn+prior": {"prior": True},
    "adabn+tent": {"tent_steps": 10},
    "adabn+tent+prior": {"tent_steps": 10, "prior": True},
}
KEYS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")


def main() -> None:
    """Run the comparison and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."))
    ap.add_argument("--models", default="base,finetuned")
    ap.add_argument(
        "--prior",
        type=float,
        help="class balance of the 2nd proxy (default: the first of evaluate.proxy_priors)",
    )
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    out_dir = Path.cwd()
    os.chdir(args.workdir)

    from xray.adaptation.adapt import predict_adapted
    from xray.adaptation.references import with_source_references
    from xray.core.io import read_csv
    from xray.core.params import load_params
    from xray.models.architectures import load_model
    from xray.models.dataset import labels_of
    from xray.models.training import configure
    from xray.reports.metrics import binary_metrics
    from xray.reports.proxy import proxy_sets

    params = load_params()
    priors = params.evaluate.proxy_priors
    prior = (priors[0] if priors else None) if args.prior is None else args.prior
    configure(0, True, 0)
    base_settings = params.adapt
    rows = read_csv(Path("data/splits/val.csv"))
    positive = params.data.positive_class
    y_val = labels_of(rows, positive)
    models = {}
    for name in args.models.split(","):
        path = Path(f"models/{name}.keras")
        if path.exists():
            models[name] = load_model(path)
    sizes = sorted({int(meta["image_size"]) for _, meta in models.values()})
    t0 = time.perf_counter()
    sets = proxy_sets(
        rows,
        Path("data/raw"),
        positive,
        sizes,
        params.evaluate.proxy_shifts,
        [] if prior is None else [prior],
        params.evaluate.proxy_seed,
    )
    prep = time.perf_counter() - t0
    result: dict[str, Any] = {"machine": machine(), "proxy_seconds": round(prep, 1), "models": {}}
    for name, (model, meta) in models.items():
        size = int(meta["image_size"])
        clean = next(s for s in sets[size] if s.name == "val/clean")
        meta = with_source_references(
            model, meta, clean.images, clean.labels, base_settings.batch_size
        )
        per_variant: dict[str, Any] = {}
        for variant in args.variants.split(","):
            s = base_settings.model_copy(update=VARIANTS[variant])
            t = time.perf_counter()
            rows_out = {}
            for target in sets[size]:
                p, thr, report = predict_adapted(model, meta, target.images, s)
                m = binary_metrics(target.labels, p, thr)
                rows_out[target.name] = {k: m[k] for k in KEYS} | {
                    "prior_estimate": report.prior.get("estimate"),
                    "tent": report.tent.get("status"),
                }
            means = {}
            for balance in ("val", *([f"val@{prior:g}"] if prior is not None else [])):
                shifted = [
                    v
                    for k, v in rows_out.items()
                    if k.startswith(balance + "/") and not k.endswith("/clean")
                ]
                means[balance] = {
                    "clean": {k: rows_out[f"{balance}/clean"][k] for k in KEYS},
                    "shift_mean": {
                        k: round(float(np.mean([r[k] for r in shifted])), 4) for k in KEYS
                    },
                    "shift_min_accuracy": round(min(r["accuracy"] for r in shifted), 4),
                }
            per_variant[variant] = {
                "summary": means,
                "sets": rows_out,
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(
                name,
                variant,
                {
                    b: (v["clean"]["accuracy"], v["shift_mean"]["accuracy"], v["shift_mean"]["auc"])
                    for b, v in means.items()
                },
                flush=True,
            )
        result["models"][name] = per_variant
    result["val_prior"] = round(float(y_val.mean()), 4)
    os.chdir(out_dir)
    write_report("adaptation", result)


if __name__ == "__main__":
    main()
