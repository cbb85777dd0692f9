"""Benchmark: fine-tuning options compared on validation images only (never the test split).

Takes a built workspace (its ``models/base.keras``, ``data/splits`` and ``data/raw``), fine-tunes
the base model once per option set (params.yaml's ``finetune`` section with ``--option``
overrides) into a temporary folder, and mixes base and fine-tuned weights (WiSE-FT, Wortsman et
al. 2022) at each ``--wise`` share of the default run, with a threshold chosen the way finetune
chooses it (clean and corrupted val). Every model is scored at its own threshold on the val
split only: clean; under the fine-tuning families; under each held-out family
(``corrupt.held_out``) at severities 1, 3 and 5; and under the shift proxy's site differences
(xray/reports/proxy.py). For the held-out families at severity 5 it reports the share called
positive beside the true share, so a calibration shift shows apart from a ranking loss. Prints
JSON and writes ``reports/benchmarks/finetune_options.json``.

    python -m benchmarks.finetune_options [--workspace DIR]
        [--option NAME:key=value[,key=value]] ... [--wise 0.25 0.5 0.75]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine, require, write_report

DEFAULT_OPTIONS = (
    "default:",
    "no_augmix:augmix_views=0",
    "augmix_1_view:augmix_views=1",
    "consistency_4:consistency=4",
    "augment_1.0:augment_strength=1.0",
    "lr_0.0001:learning_rate=0.0001",
)
DEFAULT_WISE = (0.25, 0.5, 0.75)
HELD_OUT_SEVERITIES = (1, 3, 5)
SEED = 2025  # the corruptions of the val images drawn here (not the stages' seeds)


def parse_option(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:key=value,key=value` -> (NAME, finetune overrides); values parsed as YAML."""
    import yaml

    name, _, body = text.partition(":")
    if not name:
        raise SystemExit(f"error: --option {text!r}: give NAME:key=value,...")
    overrides: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --option {text!r}: {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def val_sets(
    ws: Path, rows: list[dict[str, str]], raw: list[np.ndarray], params: Any, size: int
) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """The val labels, the named val image sets at the model's input size, and the proxy sets."""
    from xray.models.dataset import labels_of, resize
    from xray.models.finetuning import corrupt_one
    from xray.perturbations.corruptions import corrupt_image, rng_for
    from xray.reports.proxy import proxy_sets

    positive = params.data.classes[-1]
    y = labels_of(rows, positive)
    keys = [r["sha256"] for r in rows]

    def damaged(image: np.ndarray, key: str, family: str, s: int) -> np.ndarray:
        return resize(
            corrupt_image(image, family, s, rng_for(f"{key}|bench", family, s, SEED)), size
        )

    suite = list(params.corrupt.finetune_families)
    sets = {"clean": np.stack([resize(im, size) for im in raw])[..., None]}
    sets["finetune_families"] = np.stack(
        [
            corrupt_one(im, f"{k}|bench", suite, list(params.corrupt.severities), SEED, size)
            for im, k in zip(raw, keys, strict=True)
        ]
    )[..., None]
    for family in params.corrupt.held_out:
        for s in HELD_OUT_SEVERITIES:
            sets[f"held_out/{family}/{s}"] = np.stack(
                [damaged(im, k, family, s) for im, k in zip(raw, keys, strict=True)]
            )[..., None]
    shifts = list(params.evaluate.proxy_shifts)
    proxy = {
        p.name: p
        for p in proxy_sets(rows, ws / "data/raw", positive, [size], shifts, None, SEED)[size]
        if p.name != "val/clean"
    }
    return y, sets, proxy


def score(
    model: Any, threshold: float, y: np.ndarray, sets: dict[str, np.ndarray], proxy: dict
) -> dict[str, Any]:
    """Accuracy per val set, the means, the proxy's, and calibration on the hardest held-out."""
    from xray.models.training import predict
    from xray.reports.metrics import binary_metrics

    out: dict[str, Any] = {"threshold": round(threshold, 6), "sets": {}}
    for name, x in sets.items():
        p = predict(model, x, 64)
        m = binary_metrics(y, p, threshold)
        row = {"accuracy": m["accuracy"], "auc": m["auc"]}
        if name.startswith("held_out/") and name.endswith(f"/{HELD_OUT_SEVERITIES[-1]}"):
            row["called_positive"] = round(float(np.mean(p >= threshold)), 4)
            row["specificity"] = m["specificity"]
        out["sets"][name] = row
    held = [v["accuracy"] for k, v in out["sets"].items() if k.startswith("held_out/")]
    proxy_rows = [
        binary_metrics(s.labels, predict(model, s.images, 64), threshold) for s in proxy.values()
    ]
    out["summary"] = {
        "clean": out["sets"]["clean"]["accuracy"],
        "finetune_families": out["sets"]["finetune_families"]["accuracy"],
        "held_out_mean": round(float(np.mean(held)), 6),
        "proxy_mean_accuracy": round(float(np.mean([m["accuracy"] for m in proxy_rows])), 6),
        "proxy_mean_auc": round(float(np.mean([m["auc"] for m in proxy_rows])), 6),
    }
    return out


def wise(base: Any, tuned: Any, share: float) -> None:
    """Set `tuned`'s weights to (1 - share) * base + share * tuned, in place."""
    tuned.set_weights(
        [
            (1.0 - share) * b + share * t
            for b, t in zip(base.get_weights(), tuned.get_weights(), strict=True)
        ]
    )


def main() -> None:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--option", action="append", help="NAME:key=value,... (repeatable)")
    ap.add_argument("--wise", type=float, nargs="*", default=list(DEFAULT_WISE))
    args = ap.parse_args()
    ws = args.workspace.resolve()
    require(ws, ("models/base.keras", "data/splits/train.csv", "data/splits/val.csv"))

    from xray.adaptation.references import source_references
    from xray.core.io import read_csv
    from xray.core.params import load_params
    from xray.models.architectures import load_model, read_meta
    from xray.models.dataset import load_images
    from xray.models.finetune_training import finetune
    from xray.models.finetuning import corrupted_val
    from xray.models.threshold import choose_threshold
    from xray.models.training import configure, predict

    params = load_params(ws / "params.yaml")
    configure(params.finetune.seed, params.train.deterministic, params.train.threads)
    options = [parse_option(o) for o in (args.option or DEFAULT_OPTIONS)]
    size = int(read_meta(ws / "models/base.keras")["image_size"])
    rows = read_csv(ws / "data/splits/val.csv")
    raw = load_images([ws / "data/raw" / r["path"] for r in rows], None)
    y, sets, proxy = val_sets(ws, rows, raw, params, size)
    base, base_meta = load_model(ws / "models/base.keras")
    result: dict[str, Any] = {
        "workspace": str(ws),
        "machine": machine(),
        "val_images": len(y),
        "val_positive_share": round(float(np.mean(y)), 4),
        "models": {"base": score(base, float(base_meta["threshold"]), y, sets, proxy)},
    }
    with tempfile.TemporaryDirectory(prefix="xray-bench-finetune-") as tmp:
        tuned_paths: dict[str, Path] = {}
        for name, overrides in options:
            out = Path(tmp) / name
            ft = params.finetune.model_copy(update=overrides)
            t0 = time.perf_counter()
            summary = finetune(
                params.model_copy(update={"finetune": ft}),
                train_csv=ws / "data/splits/train.csv",
                val_csv=ws / "data/splits/val.csv",
                base_path=ws / "models/base.keras",
                model_path=out / "finetuned.keras",
                live_dir=out / "live",
                work_dir=out / "work",
                layers_csv=out / "layers.csv",
                raw_dir=ws / "data/raw",
                references=source_references,
            )
            model, meta = load_model(out / "finetuned.keras")
            row = score(model, float(meta["threshold"]), y, sets, proxy)
            row.update(
                overrides=overrides,
                seconds=round(time.perf_counter() - t0, 1),
                best_epoch=summary["best_epoch"],
            )
            result["models"][name] = row
            tuned_paths[name] = out / "finetuned.keras"
        if args.wise and "default" in tuned_paths:
            # The threshold as finetune chooses it: clean and corrupted val (its own draws).
            fams, sevs = list(params.corrupt.finetune_families), list(params.corrupt.severities)
            x_corr = corrupted_val(raw, rows, fams, sevs, params.finetune.seed, size)
            x_thr = np.concatenate([x_corr, sets["clean"]])
            y_thr = np.concatenate([y, y])
            for share in args.wise:
                model, _ = load_model(tuned_paths["default"])
                wise(base, model, share)
                threshold = choose_threshold(y_thr, predict(model, x_thr, 64))
                result["models"][f"wise_{share:g}"] = score(model, threshold, y, sets, proxy)
    result["table"] = {
        name: {
            k: round(100 * v, 1) if "auc" not in k else round(v, 4) for k, v in r["summary"].items()
        }
        for name, r in result["models"].items()
    }
    if not all(math.isfinite(v) for r in result["table"].values() for v in r.values()):
        raise SystemExit("error: a score is not finite (one class in val?)")
    write_report("finetune_options", result)


if __name__ == "__main__":
    main()
