"""Figures of the evaluate stage (reports/figures/*.png), each saved by temp file + rename."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from xray.core.io import atomic_file

log = logging.getLogger("xray.evaluate")

GRID_SEVERITIES = (1, 3, 5)  # rows of the corruption sample grid
GRID_COLUMNS = 9  # panels per row of the corruption sample grid


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Save a figure through a temporary file and a rename (never into an old, linked file)."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")


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
    save_figure(fig, path, dpi=100)
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
    save_figure(fig, path, dpi=100)
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
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _family_label(family: str, held_out: Sequence[str]) -> str:
    """Row label of a family, marked when held out of fine-tuning."""
    return f"{family} (held out)" if family in held_out else family


def plot_heatmaps(robustness: dict[str, Any], metric: str, path: Path) -> None:
    """Family x severity heatmaps of `metric` per model and of finetuned - base (clean first)."""
    families, severities = robustness["families"], robustness["severities"]
    held = robustness["held_out"]
    models = robustness["models"]

    def grid(name: str) -> np.ndarray:
        m = models[name]
        rows = []
        for f in families:
            vals = [m["clean"][metric]] + [
                m["families"][f]["severities"][str(s)][metric] for s in severities
            ]
            rows.append([np.nan if v is None else v for v in vals])
        return np.array(rows, dtype=float)

    panels = [(n, grid(n), "viridis", (0.0, 1.0)) for n in models]
    if "base" in models and "finetuned" in models:
        diff = grid("finetuned") - grid("base")
        lim = max(0.05, float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.05)
        panels.append(("finetuned - base", diff, "RdBu", (-lim, lim)))
    cols = ["clean", *(f"s{s}" for s in severities)]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.2 + 0.75 * len(cols) * len(panels), 0.42 * len(families) + 1.6),
        squeeze=False,
    )
    for k, (ax, (title, data, cmap, (lo, hi))) in enumerate(zip(axes[0], panels, strict=True)):
        im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for (i, j), v in np.ndenumerate(data):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if cmap == "viridis" and v < 0.6 else "black",
                )
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(
            range(len(families)),
            [_family_label(f, held) if k == 0 else "" for f in families],
            fontsize=8,
        )
        ax.set_title(f"{title}: {metric}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def plot_curves(robustness: dict[str, Any], metric: str, path: Path) -> None:
    """`metric` vs severity (0 = clean) per family, one panel per model, suite means in bold."""
    families, severities = robustness["families"], robustness["severities"]
    held = robustness["held_out"]
    models = robustness["models"]
    xs = [0, *severities]
    fig, axes = plt.subplots(
        1, len(models), figsize=(6.5 * len(models), 4.6), squeeze=False, sharey=True
    )
    cmap = plt.get_cmap("tab20")
    for ax, (name, m) in zip(axes[0], models.items(), strict=True):
        for i, f in enumerate(families):
            ys = [m["clean"][metric]] + [
                m["families"][f]["severities"][str(s)][metric] for s in severities
            ]
            ax.plot(
                xs,
                [np.nan if v is None else v for v in ys],
                ":" if f in held else "-",
                color=cmap(i % 20),
                lw=1,
                label=_family_label(f, held),
            )
        for set_name, style in (("suite", "k-"), ("held_out", "k--")):
            if m["summary"][set_name]["families"]:
                ys = [m["clean"][metric]] + [
                    m["per_severity"][set_name][str(s)][metric] for s in severities
                ]
                ax.plot(
                    xs,
                    [np.nan if v is None else v for v in ys],
                    style,
                    lw=2.5,
                    label=f"mean: {set_name}",
                )
        ax.set_xticks(xs, ["clean", *map(str, severities)])
        ax.set_xlabel("severity")
        ax.set_ylabel(metric)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def plot_corruption_grid(
    clean: np.ndarray,
    cells: dict[tuple[str, int], np.ndarray],
    families: Sequence[str],
    held_out: Sequence[str],
    path: Path,
) -> None:
    """One test image, clean and under every family at GRID_SEVERITIES, in blocks of columns."""
    items = ["clean", *families]
    ncols = min(len(items), GRID_COLUMNS)
    blocks = math.ceil(len(items) / ncols)
    nsev = len(GRID_SEVERITIES)
    fig, axes = plt.subplots(
        blocks * nsev,
        ncols,
        figsize=(1.7 * ncols, (1.75 * nsev + 0.3) * blocks),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for k, f in enumerate(items):
        block, col = divmod(k, ncols)
        for r, s in enumerate(GRID_SEVERITIES):
            ax = axes[block * nsev + r][col]
            img = clean if f == "clean" else cells.get((f, s))
            if f == "clean" and r > 0:
                continue
            ax.axis("on")
            if img is not None:
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            else:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            if r == 0:
                name = f.replace("_", " ") + (" (held out)" if f in held_out else "")
                ax.set_title(name, fontsize=8)
            if f != "clean":
                ax.set_ylabel(f"s{s}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


PROXY_MAX_WIDTH = 32.0  # inches: the proxy has dozens of sets


def plot_proxy(rows: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Accuracy of every variant on every proxy set: grouped bars, one group per set."""
    variants = list(rows)
    sets = list(next(iter(rows.values())))
    width = 0.8 / len(variants)
    width_in = min(PROXY_MAX_WIDTH, max(8.0, 0.55 * len(sets) * len(variants) / 2))
    fig, ax = plt.subplots(figsize=(width_in, 5.2))
    xs = np.arange(len(sets))
    for i, v in enumerate(variants):
        ax.bar(xs + i * width, [rows[v][s]["accuracy"] for s in sets], width, label=v)
    ax.set_xticks(xs + 0.4 - width / 2, sets, rotation=60, ha="right", fontsize=7)
    lo = min(rows[v][s]["accuracy"] for v in variants for s in sets)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("acquisition-shift proxy: val images under unseen site differences")
    ax.legend(fontsize=8, ncol=len(variants), loc="lower center", bbox_to_anchor=(0.5, 1.08))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
