"""Stage `evaluate`: both models on the clean and the corrupted test set, at their val thresholds.

Writes ``reports/metrics.json`` (``<model>.clean`` and ``<model>.corrupted``, the latter
the ``seed`` family at severity 3 when materialized: comparable with the blog),
``reports/robustness.json`` (every family and severity), plot data for ``dvc plots``
and figures under ``reports/figures/``.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tasks.data import RAW_DIR, labels_of, load_images
from tasks.io import read_csv, read_gray, write_csv, write_json
from tasks.lineage import write_model_card
from tasks.metrics import binary_metrics
from tasks.models import load_model
from tasks.params import EvaluateParams, load_params
from tasks.training import predict

log = logging.getLogger("xray.evaluate")

MODELS = {"base": Path("models/base.keras"), "finetuned": Path("models/finetuned.keras")}
TEST_CSV = Path("data/splits/test.csv")
CORRUPTED_DIR = Path("data/corrupted")
REPORTS = Path("reports")
LIVE = {"base": Path("dvclive/train_base"), "finetuned": Path("dvclive/finetune")}
REFERENCE = ("seed", 3)  # the blog's perturbations: the `corrupted` numbers in metrics.json
ROC_POINTS = 101


def _roc_rows(model: str, dataset: str, y: np.ndarray, p: np.ndarray) -> list[dict[str, Any]]:
    """ROC curve resampled on a fixed FPR grid, for dvc plots."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    grid = np.linspace(0.0, 1.0, ROC_POINTS)
    return [
        {"model": model, "dataset": dataset, "fpr": round(float(f), 4), "tpr": round(float(t), 4)}
        for f, t in zip(grid, np.interp(grid, fpr, tpr), strict=True)
    ]


def _reference_group(groups: list[tuple[str, int]]) -> tuple[str, int]:
    """The (family, severity) reported as `corrupted`: seed/3 when present, else the middle one."""
    if REFERENCE in groups:
        return REFERENCE
    return groups[len(groups) // 2]


def _history(live_dir: Path, name: str) -> dict[str, list[float]]:
    """Per-epoch series from a dvclive folder (train/eval loss and accuracy)."""
    out: dict[str, list[float]] = {}
    for split in ("train", "eval"):
        for metric in ("loss", "accuracy"):
            tsv = live_dir / "plots" / "metrics" / split / f"{metric}.tsv"
            if tsv.exists():
                with tsv.open() as f:
                    out[f"{split}/{metric}"] = [
                        float(r[metric]) for r in csv.DictReader(f, delimiter="\t")
                    ]
    if not out:
        log.warning("no training history for %s in %s", name, live_dir)
    return out


def plot_history(live: dict[str, Path], path: Path) -> None:
    """The seed's two figures in one: loss and accuracy per epoch, train and val, both models."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for name, folder in live.items():
            series = _history(folder, name)
            for split, style in (("train", "-"), ("eval", "--")):
                values = series.get(f"{split}/{metric}")
                if values:
                    label = f"{name} {'val' if split == 'eval' else 'train'}"
                    ax.plot(range(1, len(values) + 1), values, style, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusions(
    metrics: dict[str, dict[str, dict[str, Any]]], classes: list[str], path: Path
) -> None:
    """Confusion matrices of each model on each test set."""
    cells = [(m, d) for m in metrics for d in metrics[m]]
    fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.4), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], cells, strict=True):
        r = metrics[model][dataset]
        cm = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black")
        ax.set_xticks([0, 1], classes)
        ax.set_yticks([0, 1], classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{model} / {dataset}\nacc {r['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(pairs: list[tuple[np.ndarray, np.ndarray, str]], title: str, path: Path) -> None:
    """The seed's image_show: clean test images beside their corrupted copies."""
    fig, axes = plt.subplots(2, len(pairs), figsize=(2.0 * len(pairs), 4.4), squeeze=False)
    for k, (clean, bad, label) in enumerate(pairs):
        for row, img in enumerate((clean, bad)):
            ax = axes[row][k]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][k].set_title(label, fontsize=8)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    params: EvaluateParams,
    classes: tuple[str, ...],
    models: dict[str, Path] | None = None,
    test_csv: Path = TEST_CSV,
    corrupted_dir: Path = CORRUPTED_DIR,
    reports: Path = REPORTS,
    live: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Evaluate every model; write metrics, robustness, plot data and figures."""
    models = models or MODELS
    live = live or LIVE
    positive = classes[1]
    test_rows = read_csv(test_csv)
    y = labels_of(test_rows, positive)
    bad_rows = read_csv(corrupted_dir / "manifest.csv")
    by_group: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for r in bad_rows:
        by_group[(r["family"], int(r["severity"]))].append(r)
    groups = list(by_group)
    ref = _reference_group(groups)
    cache: dict[tuple[str, int, int], np.ndarray] = {}

    def images(key: tuple[str, int], size: int) -> np.ndarray:
        if (*key, size) not in cache:
            if key == ("clean", 0):
                paths = [RAW_DIR / r["path"] for r in test_rows]
            else:
                paths = [corrupted_dir / r["path"] for r in by_group[key]]
            cache[(*key, size)] = load_images(paths, size)
        return cache[(*key, size)]

    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    robustness: dict[str, Any] = {"reference": {"family": ref[0], "severity": ref[1]}, "models": {}}
    roc_rows: list[dict[str, Any]] = []
    for name, path in models.items():
        model, meta = load_model(path)
        size, threshold = int(meta["image_size"]), float(meta["threshold"])
        p_clean = predict(model, images(("clean", 0), size), params.batch_size)
        metrics[name] = {"clean": binary_metrics(y, p_clean, threshold)}
        roc_rows += _roc_rows(name, "clean", y, p_clean)
        per_group: dict[str, dict[str, Any]] = defaultdict(dict)
        for key in groups:
            y_g = labels_of(by_group[key], positive)
            p_g = predict(model, images(key, size), params.batch_size)
            per_group[key[0]][str(key[1])] = binary_metrics(y_g, p_g, threshold)
            if key == ref:
                metrics[name]["corrupted"] = per_group[key[0]][str(key[1])]
                roc_rows += _roc_rows(name, "corrupted", y_g, p_g)
        robustness["models"][name] = per_group
        log.info(
            "%s: clean acc %.4f auc %.4f | corrupted (%s/%d) acc %.4f auc %.4f",
            name,
            metrics[name]["clean"]["accuracy"],
            metrics[name]["clean"]["auc"],
            *ref,
            metrics[name]["corrupted"]["accuracy"],
            metrics[name]["corrupted"]["auc"],
        )

    figures = reports / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", metrics)
    write_model_card(reports)  # lineage.json + model_card.md (reads metrics.json)
    write_json(reports / "robustness.json", robustness)
    write_csv(reports / "plots" / "roc.csv", roc_rows, ("model", "dataset", "fpr", "tpr"))
    plot_history(live, figures / "history.png")
    plot_confusions(metrics, list(classes), figures / "confusion.png")
    ref_rows = by_group[ref][: params.grid_images]
    by_path = {r["path"]: r for r in test_rows}
    pairs = [
        (
            read_gray(RAW_DIR / r["source_path"]),
            read_gray(corrupted_dir / r["path"]),
            by_path[r["source_path"]]["label"],
        )
        for r in ref_rows
    ]
    plot_samples(pairs, f"{ref[0]} s{ref[1]}", figures / "samples.png")
    return metrics


def main() -> None:
    """Run the stage from params.yaml."""
    params = load_params()
    evaluate(params.evaluate, params.data.classes)


if __name__ == "__main__":
    from tasks.cli_support import run_stage

    run_stage(main)
