"""Stage `evaluate`: both models on the clean and the corrupted test set, at their val thresholds.

Writes ``reports/metrics.json`` (``<model>.clean``, ``<model>.corrupted`` = the ``seed`` family
at severity 3 when materialized, comparable with the blog, and ``<model>.suite`` = the
corruption suite's means), ``reports/robustness.json`` (every family and severity, means over
families per severity and overall, drops from clean, MedMNIST-C-style balanced-error scores
normalized by the base model, held-out families marked and averaged apart), plot data for
``dvc plots`` and figures under ``reports/figures/``. Each group of images is decoded once
and scored by both models.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tasks.adapt import AdaptReport, AdaptSettings, predict_adapted, with_source_references
from tasks.corruptions import HELD_OUT
from tasks.data import RAW_DIR, labels_of, load_images, load_members, resize
from tasks.io import read_csv, read_gray, write_csv, write_json
from tasks.lineage import write_model_card
from tasks.metrics import binary_metrics
from tasks.models import load_model
from tasks.params import AdaptParams, EvaluateParams, load_params
from tasks.progress import Progress
from tasks.proxy import ProxySet, check_shifts, proxy_sets
from tasks.training import configure, predict

log = logging.getLogger("xray.evaluate")

MODELS = {"base": Path("models/base.keras"), "finetuned": Path("models/finetuned.keras")}
TEST_CSV = Path("data/splits/test.csv")
VAL_CSV = Path("data/splits/val.csv")
ADAPTED = "_adapted"  # suffix of a model adapted to each target set without its labels
CORRUPTED_DIR = Path("data/corrupted")
REPORTS = Path("reports")
LIVE = {"base": Path("dvclive/train_base"), "finetuned": Path("dvclive/finetune")}
REFERENCE = ("seed", 3)  # the blog's perturbations: the `corrupted` numbers in metrics.json
ROC_POINTS = 101
BASELINE = "base"  # the model whose errors normalize the balanced-error scores
SCORES = ("accuracy", "balanced_accuracy", "auc")  # averaged over families and severities
GRID_SEVERITIES = (1, 3, 5)  # rows of the corruption sample grid
GRID_COLUMNS = 9  # panels per row of the corruption sample grid
FORMULAS = {
    "balanced_error": "E(model, family, s) = 1 - balanced_accuracy(model, family, s) at the "
    "model's validation threshold; E_clean(model) likewise on the clean test set",
    "drop": "drop_<metric>(family, s) = <metric>(clean) - <metric>(family, s); positive = worse",
    "family_mean": "<metric>(family) = mean over severities s of <metric>(family, s)",
    "mean": "mean_<metric> = mean over families of <metric>(family) (families weighted equally)",
    "be": "BE(model, family) = mean_s E(model, family, s) / mean_s E(base, family, s) "
    "(MedMNIST-C's normalized balanced error, ImageNet-C's CE; here the baseline is the base "
    "model instead of AlexNet, so BE(base) = 1)",
    "rbe": "rBE(model, family) = (mean_s E(model, family, s) - E_clean(model)) / "
    "(mean_s E(base, family, s) - E_clean(base)) (MedMNIST-C's relative balanced error)",
    "mbe": "mBE = mean over families of BE; rmBE = mean over families of rBE; "
    "mean_balanced_error = mean over families of mean_s E (unnormalized)",
    "be_pooled": "be_pooled = mean_balanced_error(model) / mean_balanced_error(base) over the "
    "same families: a ratio of means, robust to families where the base model's error is "
    "near zero (which inflate BE and hence mBE)",
    "groups": "suite = listed families fine-tuned on; held_out = families never fine-tuned on "
    "(corrupt.held_out); all = both; a null is an undefined value (zero denominator, one class)",
}


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Save a figure through a temporary file and a rename.

    Never writes into an existing file: with DVC linking its cache (`cache.type`), an old
    figure may be a hardlink to the cache, which an in-place write would corrupt.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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


def _num(x: float | None) -> float | None:
    """A finite float rounded for JSON, or None for NaN/None."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), 6)


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values, None when none is defined."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return _num(sum(vals) / len(vals)) if vals else None


def _ratio(num: float | None, den: float | None) -> float | None:
    """num / den, None when either is undefined or den is zero."""
    if num is None or den is None or den == 0.0:
        return None
    return _num(num / den)


def _scores(m: dict[str, Any]) -> dict[str, float | None]:
    """The summary scores of one metrics dict, plus its balanced error."""
    out = {k: _num(m[k]) for k in SCORES}
    ba = out["balanced_accuracy"]
    out["balanced_error"] = None if ba is None else _num(1.0 - ba)
    return out


def summarize(
    clean: dict[str, dict[str, Any]],
    groups: dict[str, dict[tuple[str, int], dict[str, Any]]],
    held_out: Sequence[str],
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Robustness report from clean and per-(family, severity) metrics of every model (pure)."""
    keys = list(next(iter(groups.values())))
    families = list(dict.fromkeys(f for f, _ in keys))
    severities = sorted({s for _, s in keys})
    sets = {
        "suite": [f for f in families if f not in held_out],
        "held_out": [f for f in families if f in held_out],
        "all": families,
    }
    base = groups.get(baseline)
    base_clean_err = _scores(clean[baseline])["balanced_error"] if baseline in clean else None

    def fam_error(g: dict[tuple[str, int], dict[str, Any]], family: str) -> float | None:
        return _mean([_scores(g[(family, s)])["balanced_error"] for s in severities])

    base_means: dict[tuple[str, str], float | None] = {}
    if base is not None:
        for set_name, members in sets.items():
            base_means[(set_name, "error")] = _mean([fam_error(base, f) for f in members])
    report: dict[str, Any] = {}
    for name, g in groups.items():
        c = _scores(clean[name])
        fams: dict[str, Any] = {}
        for family in families:
            per_sev = {}
            for s in severities:
                sc = _scores(g[(family, s)])
                drops = {
                    f"drop_{k}": _num(c[k] - sc[k]) if None not in (c[k], sc[k]) else None
                    for k in SCORES
                }
                per_sev[str(s)] = {**g[(family, s)], **sc, **drops}
            mean = {
                k: _mean([per_sev[str(s)][k] for s in severities])
                for k in (*SCORES, "balanced_error")
            }
            err = mean["balanced_error"]
            base_err = fam_error(base, family) if base is not None else None
            fams[family] = {
                "held_out": family in held_out,
                "severities": per_sev,
                "mean": mean,
                "drop": {
                    f"drop_{k}": _num(c[k] - mean[k]) if None not in (c[k], mean[k]) else None
                    for k in SCORES
                },
                "be": _ratio(err, base_err),
                "rbe": _ratio(
                    None
                    if err is None or c["balanced_error"] is None
                    else err - c["balanced_error"],
                    None
                    if base_err is None or base_clean_err is None
                    else base_err - base_clean_err,
                ),
            }
        per_severity: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        for set_name, members in sets.items():
            per_severity[set_name] = {
                str(s): {
                    k: _mean([fams[f]["severities"][str(s)][k] for f in members])
                    for k in (*SCORES, "balanced_error")
                }
                for s in severities
            }
            means = {
                f"mean_{k}": _mean([fams[f]["mean"][k] for f in members])
                for k in (*SCORES, "balanced_error")
            }
            summary[set_name] = {
                "families": members,
                **means,
                **{
                    f"drop_{k}": _num(c[k] - means[f"mean_{k}"])
                    if None not in (c[k], means[f"mean_{k}"])
                    else None
                    for k in SCORES
                },
                "mbe": _mean([fams[f]["be"] for f in members]),
                "be_pooled": _ratio(
                    means["mean_balanced_error"], base_means.get((set_name, "error"))
                ),
                "rmbe": _mean([fams[f]["rbe"] for f in members]),
            }
        report[name] = {
            "clean": {**clean[name], **c},
            "families": fams,
            "per_severity": per_severity,
            "summary": summary,
        }
    return {
        "formula": FORMULAS,
        "baseline_model": baseline,
        "families": families,
        "held_out": sets["held_out"],
        "severities": severities,
        "models": report,
    }


def suite_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """The flat `<model>.suite` block of metrics.json from one model's robustness summary."""
    out: dict[str, float | None] = {}
    for set_name, prefix in (("suite", ""), ("held_out", "heldout_"), ("all", "all_")):
        block = summary[set_name]
        for key in (
            *(f"mean_{k}" for k in (*SCORES, "balanced_error")),
            "mbe",
            "rmbe",
            "be_pooled",
        ):
            out[f"{prefix}{key}"] = block[key]
    return out


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


def evaluate(
    params: EvaluateParams,
    classes: tuple[str, ...],
    models: dict[str, Path] | None = None,
    test_csv: Path = TEST_CSV,
    corrupted_dir: Path = CORRUPTED_DIR,
    reports: Path = REPORTS,
    live: dict[str, Path] | None = None,
    held_out: Sequence[str] = HELD_OUT,
    raw_dir: Path = RAW_DIR,
    adapt: AdaptParams | None = None,
    val_csv: Path = VAL_CSV,
) -> dict[str, Any]:
    """Evaluate every model, and each adapted to every target set; write reports and figures."""
    models = models or MODELS
    live = live or LIVE
    adapt = adapt or AdaptParams()
    positive = classes[1]
    proxy_names = list(params.proxy_shifts)
    check_shifts(proxy_names)  # a bad name fails before anything is read
    test_rows = read_csv(test_csv)
    y = labels_of(test_rows, positive)
    bad_rows = read_csv(corrupted_dir / "manifest.csv")
    by_group: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for r in bad_rows:
        by_group[(r["family"], int(r["severity"]))].append(r)
    if not by_group:
        raise ValueError(f"{corrupted_dir / 'manifest.csv'}: no corrupted images listed")
    groups = list(by_group)
    ref = _reference_group(groups)
    baseline = BASELINE if BASELINE in models else next(iter(models))

    loaded = {}
    metas: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        model, meta = load_model(path)
        loaded[name] = (model, int(meta["image_size"]), float(meta["threshold"]))
        metas[name] = meta
    sizes = sorted({size for _, size, _ in loaded.values()})
    settings = AdaptSettings(**adapt.settings())
    adapted = [m for m in adapt.models if m in loaded] if settings.method != "none" else []
    variants = [*models, *(m + ADAPTED for m in adapted)]

    val_rows = read_csv(val_csv)
    t0 = time.perf_counter()
    proxy = proxy_sets(
        val_rows, raw_dir, positive, sizes, proxy_names, params.proxy_prior, params.proxy_seed
    )
    log.info(
        "proxy: %d val sets per input size in %.1fs", len(proxy[sizes[0]]), time.perf_counter() - t0
    )
    for name in adapted:  # model files from before the references were stored
        clean_val = next(s for s in proxy[loaded[name][1]] if s.name == "val/clean")
        metas[name] = with_source_references(
            loaded[name][0], metas[name], clean_val.images, clean_val.labels, settings.batch_size
        )

    t0 = time.perf_counter()
    n_scored = 0
    models_pool = ThreadPoolExecutor(len(loaded))
    adaptation: dict[str, dict[str, Any]] = {v: {} for v in variants if v.endswith(ADAPTED)}

    def one_model(
        name: str, x: dict[int, np.ndarray], spans: dict[str, slice]
    ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, float, AdaptReport]]]:
        """One model's plain scores on the batch, and adapted to each span when listed."""
        model, size, _ = loaded[name]
        p = predict(model, x[size], params.batch_size)
        adapted_spans = {}
        if name in adapted:
            for span, sl in spans.items():
                adapted_spans[span] = predict_adapted(model, metas[name], x[size][sl], settings)
        return p, adapted_spans

    def score(x: dict[int, np.ndarray], spans: dict[str, slice]) -> dict[str, dict[str, Any]]:
        """Every model's scores and threshold on each named span of one decoded batch.

        Plain models predict the whole batch at once; adapted ones are adapted to each
        span's images alone (one target set each), never seeing a label. Each model runs
        on its own thread (its own weights and statistics; TF releases the GIL), so the
        cores stay busy between one model's small ops; every result is as computed alone.
        """
        nonlocal n_scored
        n_scored += len(next(iter(x.values())))
        scored = models_pool.map(lambda n: one_model(n, x, spans), loaded)
        results = dict(zip(loaded, scored, strict=True))
        out: dict[str, dict[str, Any]] = {span: {} for span in spans}
        for name, (p, _) in results.items():
            for span, sl in spans.items():
                out[span][name] = (p[sl], loaded[name][2])
        for name in adapted:
            for span, (p, thr, report) in results[name][1].items():
                out[span][name + ADAPTED] = (p, thr)
                adaptation[name + ADAPTED][span] = _report_row(report)
        return out

    metrics: dict[str, dict[str, Any]] = {name: {} for name in variants}
    clean: dict[str, dict[str, Any]] = {}
    per_group: dict[str, dict[tuple[str, int], dict[str, Any]]] = {n: {} for n in variants}
    roc_rows: list[dict[str, Any]] = []
    x_clean = {size: load_images([raw_dir / r["path"] for r in test_rows], size) for size in sizes}
    scored = score(x_clean, {"clean": slice(None)})["clean"]
    for name, (p, threshold) in scored.items():
        clean[name] = binary_metrics(y, p, threshold)
        metrics[name]["clean"] = clean[name]
        roc_rows += _roc_rows(name, "clean", y, p)
    # One decode and one plain predict call per family (all its severities).
    by_family: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key in groups:
        by_family[key[0]].append(key)
    families = list(by_family.values())

    def decode(keys: list[tuple[str, int]]) -> dict[int, np.ndarray]:
        """One family's images (all its severities) at every model input size."""
        rows = [r for key in keys for r in by_group[key]]
        raw = load_members(corrupted_dir, rows, None)
        return {size: np.stack([resize(im, size) for im in raw])[..., None] for size in sizes}

    # The next family decodes on a thread while the models score this one (TF and Pillow
    # both release the GIL), so neither waits for the other.
    prefetch = ThreadPoolExecutor(1)
    pending = prefetch.submit(decode, families[0])
    progress = Progress(sum(len(by_group[k]) for k in groups), "evaluate", log, unit="images")
    for i, keys in enumerate(families):
        x = pending.result()
        if i + 1 < len(families):
            pending = prefetch.submit(decode, families[i + 1])
        spans, start = {}, 0
        for key in keys:
            spans[f"{key[0]}/{key[1]}"] = slice(start, start + len(by_group[key]))
            start += len(by_group[key])
        scored_spans = score(x, spans)
        for key in keys:
            y_g = labels_of(by_group[key], positive)
            for name, (p_g, threshold) in scored_spans[f"{key[0]}/{key[1]}"].items():
                per_group[name][key] = binary_metrics(y_g, p_g, threshold)
                if key == ref:
                    metrics[name]["corrupted"] = per_group[name][key]
                    roc_rows += _roc_rows(name, "corrupted", y_g, p_g)
        progress.update(sum(len(by_group[k]) for k in keys))
    progress.close()
    prefetch.shutdown()
    proxy_rows = _score_proxy(
        proxy, loaded, metas, adapted, settings, params.batch_size, adaptation
    )
    models_pool.shutdown()
    for name in variants:
        metrics[name]["proxy"] = proxy_summary(proxy_rows[name], params.proxy_prior)
    seconds = time.perf_counter() - t0
    log.info(
        "scored %d images x %d models in %.1fs (%.0f images/s decoded, %.0f predictions/s)",
        n_scored,
        len(variants),
        seconds,
        n_scored / seconds,
        n_scored * len(variants) / seconds,
    )

    robustness = summarize(clean, per_group, held_out, baseline)
    robustness["reference"] = {"family": ref[0], "severity": ref[1]}
    for name in variants:
        metrics[name]["suite"] = suite_metrics(robustness["models"][name]["summary"])
        s = metrics[name]["suite"]
        log.info(
            "%s: clean acc %.4f auc %.4f | corrupted (%s/%d) acc %.4f auc %.4f | "
            "suite mean acc %s, held-out mean acc %s, mBE %s",
            name,
            metrics[name]["clean"]["accuracy"],
            metrics[name]["clean"]["auc"],
            *ref,
            metrics[name]["corrupted"]["accuracy"],
            metrics[name]["corrupted"]["auc"],
            s["mean_accuracy"],
            s["heldout_mean_accuracy"],
            s["mbe"],
        )

    figures = reports / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", metrics)
    write_model_card(reports)  # lineage.json + model_card.md (reads metrics.json)
    write_json(reports / "robustness.json", robustness)
    write_json(
        reports / "adaptation.json",
        {"settings": {**adapt.settings(), "method": settings.method}, "variants": adaptation},
    )
    write_json(
        reports / "proxy.json",
        {"shifts": proxy_names, "prior": params.proxy_prior, "variants": proxy_rows},
    )
    plot_proxy(proxy_rows, figures / "proxy_accuracy.png")
    write_csv(reports / "plots" / "roc.csv", roc_rows, ("model", "dataset", "fpr", "tpr"))
    plot_history(live, figures / "history.png")
    confusions = {m: {d: metrics[m][d] for d in ("clean", "corrupted")} for m in metrics}
    plot_confusions(confusions, list(classes), figures / "confusion.png")
    plot_heatmaps(robustness, "accuracy", figures / "robustness_heatmap_accuracy.png")
    plot_heatmaps(
        robustness, "balanced_accuracy", figures / "robustness_heatmap_balanced_accuracy.png"
    )
    plot_curves(robustness, "accuracy", figures / "robustness_curves_accuracy.png")
    ref_rows = by_group[ref][: params.grid_images]
    by_path = {r["path"]: r for r in test_rows}
    pairs = [
        (
            read_gray(raw_dir / r["source_path"]),
            image,
            by_path[r["source_path"]]["label"],
        )
        for r, image in zip(ref_rows, load_members(corrupted_dir, ref_rows, None), strict=True)
    ]
    plot_samples(pairs, f"{ref[0]} s{ref[1]}", figures / "samples.png")
    sample = by_group[ref][0]["source_path"]
    cell_rows = [
        r for r in bad_rows if r["source_path"] == sample and int(r["severity"]) in GRID_SEVERITIES
    ]
    cells = {
        (r["family"], int(r["severity"])): image
        for r, image in zip(cell_rows, load_members(corrupted_dir, cell_rows, None), strict=True)
    }
    plot_corruption_grid(
        read_gray(raw_dir / sample),
        cells,
        robustness["families"],
        robustness["held_out"],
        figures / "corruption_grid.png",
    )
    return metrics


def _report_row(report: AdaptReport) -> dict[str, Any]:
    """What adaptation did on one target set, for reports/adaptation.json (no label in it)."""
    row = report.as_dict()
    return {
        k: row[k]
        for k in ("images", "adapted", "skipped", "threshold", "prior", "tent", "warnings")
    }


def _score_proxy(
    proxy: dict[int, list[ProxySet]],
    loaded: dict[str, tuple[Any, int, float]],
    metas: dict[str, dict[str, Any]],
    adapted: Sequence[str],
    settings: AdaptSettings,
    batch_size: int,
    adaptation: dict[str, dict[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics of every variant on every proxy set (adapted ones adapted to each set alone)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (model, size, threshold) in loaded.items():
        out[name] = {}
        for target in proxy[size]:
            p = predict(model, target.images, batch_size)
            out[name][target.name] = binary_metrics(target.labels, p, threshold)
    for name in adapted:
        model, size, _ = loaded[name]
        out[name + ADAPTED] = {}
        for target in proxy[size]:
            p, thr, report = predict_adapted(model, metas[name], target.images, settings)
            out[name + ADAPTED][target.name] = binary_metrics(target.labels, p, thr)
            adaptation[name + ADAPTED][f"proxy:{target.name}"] = _report_row(report)
    return out


PROXY_KEYS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")


def proxy_summary(rows: dict[str, dict[str, Any]], prior: float | None) -> dict[str, Any]:
    """The flat `<model>.proxy` block of metrics.json: clean val and means over the shifts."""
    out: dict[str, Any] = {}
    balances = [("val", "")] + ([(f"val@{prior:g}", "balanced_")] if prior is not None else [])
    for balance, prefix in balances:
        if f"{balance}/clean" not in rows:  # no set at that balance (one class in val)
            continue
        shifted = [
            m for k, m in rows.items() if k.startswith(balance + "/") and k != f"{balance}/clean"
        ]
        for key in PROXY_KEYS:
            out[f"{prefix}clean_{key}"] = _num(rows[f"{balance}/clean"][key])
            out[f"{prefix}shift_{key}"] = _mean([m[key] for m in shifted])
        out[f"{prefix}shift_min_accuracy"] = (
            _num(min(m["accuracy"] for m in shifted)) if shifted else None
        )
    return out


def plot_proxy(rows: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Accuracy of every variant on every proxy set: grouped bars, one group per set."""
    variants = list(rows)
    sets = list(next(iter(rows.values())))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(sets) * len(variants) / 2), 5.2))
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


def main() -> None:
    """Run the stage from params.yaml."""
    params = load_params()
    configure(params.adapt.seed, deterministic=True, threads=params.train.threads)
    evaluate(
        params.evaluate, params.data.classes, held_out=params.corrupt.held_out, adapt=params.adapt
    )


if __name__ == "__main__":
    from tasks.cli_support import run_stage

    run_stage(main)
