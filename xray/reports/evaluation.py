"""The evaluate stage: both models on the clean and the corrupted test set, at their val thresholds.

Writes ``metrics.json`` (``<model>.clean``, ``<model>.corrupted`` = the ``seed`` family at
severity 3 when materialized, comparable with the blog, and ``<model>.suite`` = the corruption
suite's means), ``robustness.json`` (every family and severity, means over families per
severity and overall, drops from clean, MedMNIST-C-style balanced-error scores normalized by
the base model, held-out families marked and averaged apart), ``adaptation.json``,
``proxy.json``, the model card, plot data for ``dvc plots`` and figures under ``figures/``,
all in the `reports` folder. Each group of images is decoded once and scored by every model
(xray/reports/scoring.py). The arithmetic of the robustness summary is in
xray/reports/robustness.py, the figures in xray/reports/figures.py; this module reads, scores
and writes, in that order.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xray.adaptation.references import with_source_references
from xray.core.io import read_csv, read_gray, write_csv, write_json
from xray.core.params import AdaptParams, EvaluateParams
from xray.models.architectures import load_model
from xray.models.dataset import labels_of, load_members
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
from xray.reports.predictors import Loaded, adapted_predictor, plain_predictor
from xray.reports.proxy import (
    DAMAGE_FAMILY,
    KINDS,
    ProxySet,
    check_shifts,
    proxy_sets,
    target_names,
)
from xray.reports.proxy_targets import recommend, target_summary
from xray.reports.robustness import BASELINE, proxy_summary, suite_metrics, summarize
from xray.reports.scoring import Group, Scorer, reference_group, roc_rows

log = logging.getLogger("xray.evaluate")


def evaluate(
    params: EvaluateParams,
    classes: tuple[str, ...],
    *,
    models: dict[str, Path],
    test_csv: Path,
    val_csv: Path,
    corrupted_manifest: Path,
    raw_dir: Path,
    reports: Path,
    live: dict[str, Path],
    held_out: Sequence[str],
    adapt: AdaptParams,
    source_json: Path,
) -> dict[str, Any]:
    """Evaluate every model, and each adapted to every target set; write reports and figures.

    `models` and `live` map a variant (base, finetuned) to its model file and dvclive folder;
    `raw_dir` is the root of the split files' image paths; `source_json` the source's
    identity, for the model card's lineage.
    """
    positive = classes[1]
    proxy_names = list(params.proxy_shifts)
    check_shifts(proxy_names)  # a bad name fails before anything is read
    test_rows = read_csv(test_csv)
    y = labels_of(test_rows, positive)
    bad_rows, by_group = _read_manifest(corrupted_manifest)
    ref = reference_group(list(by_group))
    baseline = BASELINE if BASELINE in models else next(iter(models))
    loaded, metas = _load_models(models)
    sizes = sorted({size for _, size, _ in loaded.values()})
    plain = plain_predictor(loaded, params.batch_size)
    settings = adapt
    adapted = [m for m in adapt.models if m in loaded] if settings.method != "none" else []
    proxy = _proxy_sets(params, read_csv(val_csv), raw_dir, positive, sizes)
    _add_references(loaded, metas, adapted, proxy, settings)
    scorer = Scorer(loaded, adapted, plain, adapted_predictor(loaded, metas, adapted, settings))
    t0 = time.perf_counter()
    scored = scorer.clean(test_rows, raw_dir, sizes)
    write_predictions(reports / PREDICTIONS, test_rows, y, scored)  # per image, for the card
    metrics, clean, roc = _clean_metrics(scorer.variants, scored, y)
    per_group, ref_roc = scorer.corrupted(by_group, corrupted_manifest.parent, sizes, positive, ref)
    for name in scorer.variants:
        metrics[name]["corrupted"] = per_group[name][ref]
    roc += ref_roc
    _log_speed(scorer, time.perf_counter() - t0)
    proxy_report = _score_proxy(scorer, proxy, params, metrics)
    proxy_rows = proxy_report["variants"]
    robustness = _robustness(metrics, clean, per_group, held_out, baseline, ref)
    _write_reports(reports, metrics, robustness, scorer, adapt, settings, proxy_report)
    write_model_card(reports, source_json=source_json)  # intervals, lineage, card: read the above
    _write_figures(metrics, robustness, proxy_rows, roc, live, list(classes), reports)
    _plot_images(
        params,
        test_rows,
        by_group,
        bad_rows,
        ref,
        robustness,
        raw_dir,
        corrupted_manifest.parent,
        reports / "figures",
    )
    return metrics


def _read_manifest(
    manifest: Path,
) -> tuple[list[dict[str, str]], dict[Group, list[dict[str, str]]]]:
    """The corrupted images' manifest rows, and the rows of each (family, severity) group."""
    bad_rows = read_csv(manifest)
    by_group: dict[Group, list[dict[str, str]]] = defaultdict(list)
    for r in bad_rows:
        by_group[(r["family"], int(r["severity"]))].append(r)
    if not by_group:
        raise ValueError(f"{manifest}: no corrupted images listed")
    return bad_rows, by_group


def _load_models(models: dict[str, Path]) -> tuple[Loaded, dict[str, dict[str, Any]]]:
    """Each model file as (model, input size, threshold), and its metadata."""
    loaded = {}
    metas: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        model, meta = load_model(path)
        loaded[name] = (model, int(meta["image_size"]), float(meta["threshold"]))
        metas[name] = meta
    return loaded, metas


def _proxy_sets(
    params: EvaluateParams,
    val_rows: list[dict[str, str]],
    raw_dir: Path,
    positive: str,
    sizes: list[int],
) -> dict[int, list[ProxySet]]:
    """The acquisition-shift proxy: the val split under each shift, at every input size."""
    t0 = time.perf_counter()
    proxy = proxy_sets(
        val_rows,
        raw_dir,
        positive,
        sizes,
        list(params.proxy_shifts),
        list(params.proxy_priors),
        params.proxy_seed,
        params.proxy_damage_severity,
    )
    log.info(
        "proxy: %d val sets per input size in %.1fs", len(proxy[sizes[0]]), time.perf_counter() - t0
    )
    return proxy


def _score_proxy(
    scorer: Scorer,
    proxy: dict[int, list[ProxySet]],
    params: EvaluateParams,
    metrics: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Every variant on every proxy set, by kind of target, and the variant recommended for
    a new site: proxy.json's content. Each variant's `proxy` (clean val and shift means at the
    first balance) and `proxy_targets` (by kind) blocks go into `metrics`."""
    t0 = time.perf_counter()
    rows = scorer.proxy(proxy)
    targets = target_names(next(iter(proxy.values())))
    summary = target_summary(rows, targets)
    first = params.proxy_priors[0] if params.proxy_priors else None
    for name in scorer.variants:
        metrics[name]["proxy"] = proxy_summary(rows[name], first)
        metrics[name]["proxy_targets"] = summary[name]
    chosen = recommend(summary, list(scorer.loaded))
    log.info(
        "proxy: %d sets x %d variants in %.1fs; recommended for a new site: %s",
        len(next(iter(proxy.values()))),
        len(scorer.variants),
        time.perf_counter() - t0,
        chosen["reason"],
    )
    damage = params.proxy_damage_severity
    return {
        "shifts": list(params.proxy_shifts),
        "prior": first,  # the first of `priors` (metrics.json's `balanced_*` proxy keys)
        "priors": list(params.proxy_priors),
        "damage": None if damage is None else {"family": DAMAGE_FAMILY, "severity": damage},
        "kinds": KINDS,
        "targets": targets,
        "summary": summary,
        "recommended": chosen,
        "variants": rows,
    }


def _add_references(
    loaded: Loaded,
    metas: dict[str, dict[str, Any]],
    adapted: Sequence[str],
    proxy: dict[int, list[ProxySet]],
    settings: AdaptParams,
) -> None:
    """The source references of each adapted model, in `metas` (model files from before the
    references were stored get them from the clean val images)."""
    for name in adapted:
        clean_val = next(s for s in proxy[loaded[name][1]] if s.name == "val/clean")
        metas[name] = with_source_references(
            loaded[name][0], metas[name], clean_val.images, clean_val.labels, settings.batch_size
        )


def _clean_metrics(
    variants: Sequence[str], scored: dict[str, Any], y: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """metrics.json's rows with their `clean` metrics, the clean metrics, the clean ROC rows."""
    metrics: dict[str, dict[str, Any]] = {name: {} for name in variants}
    clean: dict[str, dict[str, Any]] = {}
    roc: list[dict[str, Any]] = []
    for name, (p, threshold) in scored.items():
        clean[name] = binary_metrics(y, p, threshold)
        metrics[name]["clean"] = clean[name]
        roc += roc_rows(name, "clean", y, p)
    return metrics, clean, roc


def _log_speed(scorer: Scorer, seconds: float) -> None:
    """How many images each variant scored, how fast."""
    n, variants = scorer.n_scored, len(scorer.variants)
    log.info(
        "scored %d images x %d models in %.1fs (%.0f images/s decoded, %.0f predictions/s)",
        n,
        variants,
        seconds,
        n / seconds,
        n * variants / seconds,
    )


def _robustness(
    metrics: dict[str, dict[str, Any]],
    clean: dict[str, dict[str, Any]],
    per_group: dict[str, dict[Group, dict[str, Any]]],
    held_out: Sequence[str],
    baseline: str,
    ref: Group,
) -> dict[str, Any]:
    """The robustness summary; each variant's suite means into `metrics` (and the log)."""
    robustness = summarize(clean, per_group, held_out, baseline)
    robustness["reference"] = {"family": ref[0], "severity": ref[1]}
    for name in metrics:
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
    return robustness


def _write_reports(
    reports: Path,
    metrics: dict[str, dict[str, Any]],
    robustness: dict[str, Any],
    scorer: Scorer,
    adapt: AdaptParams,
    settings: AdaptParams,
    proxy_report: dict[str, Any],
) -> None:
    """metrics.json, robustness.json, adaptation.json and proxy.json (and the figures folder)."""
    (reports / "figures").mkdir(parents=True, exist_ok=True)
    write_json(reports / "metrics.json", metrics)
    write_json(reports / "robustness.json", robustness)
    write_json(
        reports / "adaptation.json",
        {
            "settings": {**adapt.settings(), "method": settings.method},
            "variants": scorer.adaptation,
        },
    )
    write_json(reports / "proxy.json", proxy_report)


def _write_figures(
    metrics: dict[str, dict[str, Any]],
    robustness: dict[str, Any],
    proxy_rows: dict[str, dict[str, dict[str, Any]]],
    roc: list[dict[str, Any]],
    live: dict[str, Path],
    classes: list[str],
    reports: Path,
) -> None:
    """The proxy, history and result figures, and the ROC plot data."""
    figures = reports / "figures"
    plot_proxy(proxy_rows, figures / "proxy_accuracy.png")
    write_csv(reports / "plots" / "roc.csv", roc, ("model", "dataset", "fpr", "tpr"))
    plot_history(live, figures / "history.png")
    _plot_results(metrics, robustness, classes, figures)


def _plot_results(
    metrics: dict[str, dict[str, Any]],
    robustness: dict[str, Any],
    classes: list[str],
    figures: Path,
) -> None:
    """The confusion matrices and the robustness heatmaps and curves."""
    confusions = {m: {d: metrics[m][d] for d in ("clean", "corrupted")} for m in metrics}
    plot_confusions(confusions, classes, figures / "confusion.png")
    plot_heatmaps(robustness, "accuracy", figures / "robustness_heatmap_accuracy.png")
    plot_heatmaps(
        robustness, "balanced_accuracy", figures / "robustness_heatmap_balanced_accuracy.png"
    )
    plot_curves(robustness, "accuracy", figures / "robustness_curves_accuracy.png")


def _plot_images(
    params: EvaluateParams,
    test_rows: list[dict[str, str]],
    by_group: dict[Group, list[dict[str, str]]],
    bad_rows: list[dict[str, str]],
    ref: Group,
    robustness: dict[str, Any],
    raw_dir: Path,
    corrupted_dir: Path,
    figures: Path,
) -> None:
    """Sample pairs of the reference group, and one image under every family and severity."""
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
