"""Stage `evaluate`: both models on the clean and the corrupted test set, at their val thresholds.

Writes ``reports/metrics.json`` (``<model>.clean``, ``<model>.corrupted`` = the ``seed`` family
at severity 3 when materialized, comparable with the blog, and ``<model>.suite`` = the
corruption suite's means), ``reports/robustness.json`` (every family and severity, means over
families per severity and overall, drops from clean, MedMNIST-C-style balanced-error scores
normalized by the base model, held-out families marked and averaged apart), plot data for
``dvc plots`` and figures under ``reports/figures/``. Each group of images is decoded once
and scored by every model. The arithmetic of the robustness summary is in
xray/reports/robustness.py,
the figures in xray/reports/figures.py; this module reads, scores and writes.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xray.adaptation.adapt import AdaptReport, predict_adapted_many
from xray.adaptation.batchnorm import batchnorm_layers
from xray.adaptation.references import with_source_references
from xray.core.io import read_csv, read_gray, write_csv, write_json
from xray.core.params import AdaptParams, EvaluateParams, load_params
from xray.core.progress import Progress
from xray.models.architectures import load_model
from xray.models.dataset import RAW_DIR, labels_of, load_images, load_members, resize
from xray.models.inference import forward, moments_pass
from xray.models.training import configure
from xray.perturbations.corruptions import HELD_OUT
from xray.reports.figures import (
    GRID_SEVERITIES,
    plot_confusions,
    plot_corruption_grid,
    plot_curves,
    plot_heatmaps,
    plot_history,
    plot_proxy,
    plot_samples,
)
from xray.reports.metrics import binary_metrics
from xray.reports.model_card import PREDICTIONS, write_model_card, write_predictions
from xray.reports.proxy import ProxySet, check_shifts, proxy_sets
from xray.reports.robustness import BASELINE, proxy_summary, suite_metrics, summarize

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
    plain = _plain_predictor(loaded, params.batch_size)
    settings = adapt
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

    adapt_all = _adapted_predictor(loaded, metas, adapted, settings)
    t0 = time.perf_counter()
    n_scored = 0
    adaptation: dict[str, dict[str, Any]] = {v: {} for v in variants if v.endswith(ADAPTED)}

    def score(
        x: dict[int, np.ndarray],
        spans: dict[str, slice],
        done: Callable[[int], None] = lambda n: None,
    ) -> dict[str, dict[str, Any]]:
        """Every model's scores and threshold on each named span of one decoded batch.

        Plain models predict the whole batch at once; adapted ones are adapted to each
        span's images alone (one target set each), never seeing a label. `done(n)` is
        called as each span's n images are scored by every variant (progress).
        """
        nonlocal n_scored
        n_scored += len(next(iter(x.values())))
        out: dict[str, dict[str, Any]] = {span: {} for span in spans}
        for name, p in plain(x).items():
            for span, sl in spans.items():
                out[span][name] = (p[sl], loaded[name][2])
        for span, sl in spans.items():
            for name, (p, thr, report) in adapt_all({k: v[sl] for k, v in x.items()}).items():
                out[span][name + ADAPTED] = (p, thr)
                adaptation[name + ADAPTED][span] = _report_row(report)
            done(len(next(iter(x.values()))[sl]))
        return out

    metrics: dict[str, dict[str, Any]] = {name: {} for name in variants}
    clean: dict[str, dict[str, Any]] = {}
    per_group: dict[str, dict[tuple[str, int], dict[str, Any]]] = {n: {} for n in variants}
    roc_rows: list[dict[str, Any]] = []
    x_clean = {size: load_images([raw_dir / r["path"] for r in test_rows], size) for size in sizes}
    scored = score(x_clean, {"clean": slice(None)})["clean"]
    write_predictions(reports / PREDICTIONS, test_rows, y, scored)  # per image, for the card
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
    progress = Progress(sum(len(by_group[k]) for k in groups), "evaluate", log, unit="images")
    with ThreadPoolExecutor(1) as prefetch, progress:
        pending = prefetch.submit(decode, families[0])
        for i, keys in enumerate(families):
            x = pending.result()
            if i + 1 < len(families):
                pending = prefetch.submit(decode, families[i + 1])
            spans, start = {}, 0
            for key in keys:
                spans[f"{key[0]}/{key[1]}"] = slice(start, start + len(by_group[key]))
                start += len(by_group[key])
            scored_spans = score(x, spans, progress.update)  # a line as each severity is done
            for key in keys:
                y_g = labels_of(by_group[key], positive)
                for name, (p_g, threshold) in scored_spans[f"{key[0]}/{key[1]}"].items():
                    per_group[name][key] = binary_metrics(y_g, p_g, threshold)
                    if key == ref:
                        metrics[name]["corrupted"] = per_group[name][key]
                        roc_rows += _roc_rows(name, "corrupted", y_g, p_g)
    proxy_rows = _score_proxy(proxy, loaded, adapted, plain, adapt_all, adaptation)
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
    write_json(reports / "robustness.json", robustness)
    write_json(
        reports / "adaptation.json",
        {"settings": {**adapt.settings(), "method": settings.method}, "variants": adaptation},
    )
    write_json(
        reports / "proxy.json",
        {"shifts": proxy_names, "prior": params.proxy_prior, "variants": proxy_rows},
    )
    write_model_card(reports)  # intervals.json, lineage.json, model_card.md: reads the above
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


def _by_size(
    loaded: dict[str, tuple[Any, int, float]], names: Sequence[str]
) -> dict[int, list[str]]:
    """The named models grouped by input size (sizes ascending, names in the given order)."""
    sizes = sorted({loaded[n][1] for n in names})
    return {size: [n for n in names if loaded[n][1] == size] for size in sizes}


def _plain_predictor(
    loaded: dict[str, tuple[Any, int, float]], batch_size: int
) -> Callable[[dict[int, np.ndarray]], dict[str, np.ndarray]]:
    """Scores of every plain model for images at each input size: one compiled pass per size.

    The models of one input size run in one call on each batch (xray/models/inference.py).
    """
    groups = _by_size(loaded, list(loaded))
    passes = {size: forward([loaded[n][0] for n in names]) for size, names in groups.items()}

    def scores(x: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for size, names in groups.items():
            ps = passes[size].scores(x[size], batch_size)
            out.update(zip(names, ps, strict=True))
        return {name: out[name] for name in loaded}

    return scores


def _adapted_predictor(
    loaded: dict[str, tuple[Any, int, float]],
    metas: dict[str, dict[str, Any]],
    adapted: Sequence[str],
    settings: AdaptParams,
) -> Callable[[dict[int, np.ndarray]], dict[str, tuple[np.ndarray, float, AdaptReport]]]:
    """Scores, threshold and report of every adapted model, each adapted to the images alone.

    The models of one input size are adapted together (xray.adaptation.adapt.predict_adapted_many):
    one statistics pass and one prediction pass over all of them, the frozen stem once.
    """
    groups = _by_size(loaded, adapted)
    joint = {}
    for size, names in groups.items():
        models = [loaded[n][0] for n in names]
        moments = moments_pass(models, [batchnorm_layers(m) for m in models])
        joint[size] = None if moments is None else (moments, forward(models))

    def scores(x: dict[int, np.ndarray]) -> dict[str, tuple[np.ndarray, float, AdaptReport]]:
        out = {}
        for size, names in groups.items():
            entries = [(loaded[n][0], metas[n]) for n in names]
            results = predict_adapted_many(entries, x[size], settings, joint[size])
            out.update(zip(names, results, strict=True))
        return {name: out[name] for name in adapted}

    return scores


def _score_proxy(
    proxy: dict[int, list[ProxySet]],
    loaded: dict[str, tuple[Any, int, float]],
    adapted: Sequence[str],
    plain: Callable[[dict[int, np.ndarray]], dict[str, np.ndarray]],
    adapt_all: Callable[[dict[int, np.ndarray]], dict[str, tuple[np.ndarray, float, AdaptReport]]],
    adaptation: dict[str, dict[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics of every variant on every proxy set (adapted ones adapted to each set alone)."""
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in loaded}
    out.update({name + ADAPTED: {} for name in adapted})
    names = [s.name for s in next(iter(proxy.values()))]  # the same sets at every size
    for i, set_name in enumerate(names):
        targets = {size: sets[i] for size, sets in proxy.items()}
        images = {size: t.images for size, t in targets.items()}
        for name, p in plain(images).items():
            size, threshold = loaded[name][1], loaded[name][2]
            out[name][set_name] = binary_metrics(targets[size].labels, p, threshold)
        for name, (p, thr, report) in adapt_all(images).items():
            out[name + ADAPTED][set_name] = binary_metrics(targets[loaded[name][1]].labels, p, thr)
            adaptation[name + ADAPTED][f"proxy:{set_name}"] = _report_row(report)
    return out


def main() -> None:
    """Run the stage from params.yaml."""
    params = load_params()
    configure(params.adapt.seed, deterministic=True, threads=params.train.threads)
    evaluate(
        params.evaluate, params.data.classes, held_out=params.corrupt.held_out, adapt=params.adapt
    )


if __name__ == "__main__":
    from xray.core.runtime import run_stage

    run_stage(main)
