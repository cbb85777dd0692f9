"""The evaluate stage's scoring: every variant on the clean, corrupted and proxy test sets.

A `Scorer` holds the predictors (xray/reports/predictors.py) and what adaptation did on
each target set. Each group of images is decoded once and scored by every variant; the
next corruption family decodes on a thread while the models score this one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xray.core.progress import Progress
from xray.models.dataset import labels_of, load_images, load_members, resize
from xray.reports.metrics import binary_metrics, proxy_metrics
from xray.reports.predictors import (
    ADAPTED,
    AdaptedPredictor,
    Loaded,
    PlainPredictor,
    report_row,
)
from xray.reports.proxy import ProxySet

log = logging.getLogger("xray.evaluate")

REFERENCE = ("seed", 3)  # the blog's perturbations: the `corrupted` numbers in metrics.json
ROC_POINTS = 101

Group = tuple[str, int]  # (family, severity)


def roc_rows(model: str, dataset: str, y: np.ndarray, p: np.ndarray) -> list[dict[str, Any]]:
    """ROC curve resampled on a fixed FPR grid, for dvc plots."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    grid = np.linspace(0.0, 1.0, ROC_POINTS)
    return [
        {"model": model, "dataset": dataset, "fpr": round(float(f), 4), "tpr": round(float(t), 4)}
        for f, t in zip(grid, np.interp(grid, fpr, tpr), strict=True)
    ]


def reference_group(groups: list[Group]) -> Group:
    """The (family, severity) reported as `corrupted`: seed/3 when present, else the middle one."""
    if REFERENCE in groups:
        return REFERENCE
    return groups[len(groups) // 2]


class Scorer:
    """Scores of every variant (plain models, and adapted ones) on decoded image batches."""

    def __init__(
        self,
        loaded: Loaded,
        adapted: Sequence[str],
        plain: PlainPredictor,
        adapt_all: AdaptedPredictor,
    ) -> None:
        self.loaded, self.adapted = loaded, list(adapted)
        self.plain, self.adapt_all = plain, adapt_all
        self.variants = [*loaded, *(m + ADAPTED for m in self.adapted)]
        self.n_scored = 0
        # what adaptation did on each target set, by adapted variant (reports/adaptation.json)
        self.adaptation: dict[str, dict[str, Any]] = {
            v: {} for v in self.variants if v.endswith(ADAPTED)
        }

    def score(
        self,
        x: dict[int, np.ndarray],
        spans: dict[str, slice],
        done: Callable[[int], None] = lambda n: None,
    ) -> dict[str, dict[str, Any]]:
        """Every model's scores and threshold on each named span of one decoded batch.

        Plain models predict the whole batch at once; adapted ones are adapted to each
        span's images alone (one target set each), never seeing a label. `done(n)` is
        called as each span's n images are scored by every variant (progress).
        """
        self.n_scored += len(next(iter(x.values())))
        out: dict[str, dict[str, Any]] = {span: {} for span in spans}
        for name, p in self.plain(x).items():
            for span, sl in spans.items():
                out[span][name] = (p[sl], self.loaded[name][2])
        for span, sl in spans.items():
            for name, (p, thr, report) in self.adapt_all({k: v[sl] for k, v in x.items()}).items():
                out[span][name + ADAPTED] = (p, thr)
                self.adaptation[name + ADAPTED][span] = report_row(report)
            done(len(next(iter(x.values()))[sl]))
        return out

    def clean(
        self, test_rows: list[dict[str, str]], raw_dir: Path, sizes: list[int]
    ) -> dict[str, Any]:
        """(scores, threshold) of every variant on the clean test images."""
        x_clean = {
            size: load_images([raw_dir / r["path"] for r in test_rows], size) for size in sizes
        }
        return self.score(x_clean, {"clean": slice(None)})["clean"]

    def corrupted(
        self,
        by_group: dict[Group, list[dict[str, str]]],
        corrupted_dir: Path,
        sizes: list[int],
        positive: str,
        ref: Group,
    ) -> tuple[dict[str, dict[Group, dict[str, Any]]], list[dict[str, Any]]]:
        """Metrics of every variant on each corrupted group; the ROC rows of the `ref` group.

        One decode and one plain predict call per family (all its severities).
        """
        groups = list(by_group)
        by_family: dict[str, list[Group]] = defaultdict(list)
        for key in groups:
            by_family[key[0]].append(key)
        families = list(by_family.values())

        def decode(keys: list[Group]) -> dict[int, np.ndarray]:
            """One family's images (all its severities) at every model input size."""
            rows = [r for key in keys for r in by_group[key]]
            raw = load_members(corrupted_dir, rows, None)
            return {size: np.stack([resize(im, size) for im in raw])[..., None] for size in sizes}

        per_group: dict[str, dict[Group, dict[str, Any]]] = {n: {} for n in self.variants}
        ref_roc: list[dict[str, Any]] = []
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
                scored = self.score(x, spans, progress.update)  # a line per severity done
                for key in keys:
                    y_g = labels_of(by_group[key], positive)
                    for name, (p_g, threshold) in scored[f"{key[0]}/{key[1]}"].items():
                        per_group[name][key] = binary_metrics(y_g, p_g, threshold)
                        if key == ref:
                            ref_roc += roc_rows(name, "corrupted", y_g, p_g)
        return per_group, ref_roc

    def proxy(self, proxy: dict[int, list[ProxySet]]) -> dict[str, dict[str, dict[str, Any]]]:
        """Metrics of every variant on every proxy set (adapted ones adapted to each set alone).

        A plain model's scores of a class-balance draw are its scores of the full set, indexed;
        an adapted one is adapted to the draw's images alone, and its class-balance estimate is
        compared with the draw's true share (`share_error`).
        """
        out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.variants}
        names = [s.name for s in next(iter(proxy.values()))]  # the same sets at every size
        plain: dict[str, dict[str, np.ndarray]] = {}  # plain scores of the full sets
        for i, set_name in enumerate(names):
            targets = {size: sets[i] for size, sets in proxy.items()}
            first = next(iter(targets.values()))
            images = {size: t.images for size, t in targets.items()}
            if first.parent in plain:
                scores = {n: p[first.index] for n, p in plain[first.parent].items()}
            else:
                scores = plain[set_name] = self.plain(images)
            for name, p in scores.items():
                out[name][set_name] = proxy_metrics(first.labels, p, self.loaded[name][2])
            for name, (p, thr, report) in self.adapt_all(images).items():
                row = report_row(report)
                estimate = (row.get("prior") or {}).get("estimate")
                out[name + ADAPTED][set_name] = proxy_metrics(first.labels, p, thr, estimate)
                self.adaptation[name + ADAPTED][f"proxy:{set_name}"] = row
        return out
