"""The model card's markdown sections (Mitchell et al. 2019), from the lineage record and reports.

xray/reports/model_card.py reads the reports, computes the intervals and puts these together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xray.reports import bootstrap

TITLE = "# Model card: xray-transfer (pediatric chest X-ray, NORMAL vs PNEUMONIA)"
# Measured on the real training archive vs the official test set (README, "Results").
CARVED_VS_OFFICIAL = (
    "On the real archive the carved test said 97.7% accuracy for the base model where the "
    "official test set, from other acquisitions, gave 85.4% (AUC 0.966, specificity 62.8%): "
    "README, *Results*."
)


def threshold_of(metrics: dict[str, Any] | None, variant: str) -> float | None:
    """The decision threshold a variant used on the clean test set."""
    clean = ((metrics or {}).get(variant) or {}).get("clean") or {}
    return clean.get("threshold")


def _ci(cell: dict[str, Any] | None) -> str:
    """`0.972 [0.951, 0.989]`, or `n/a` when undefined."""
    if not cell or cell.get("value") is None:
        return "n/a"
    return f"{cell['value']:.3f} [{cell['lo']:.3f}, {cell['hi']:.3f}]"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def model_details(record: dict[str, Any] | None, data: dict[str, Any]) -> list[str]:
    """Section: what the models are."""
    lines = ["## Model details", ""]
    params: dict[str, Any] = {}
    if record:
        main = record["models"].get("finetuned") or next(iter(record["models"].values()))
        for values in main["params"].values():
            for section, v in values.items():
                if isinstance(v, dict):
                    params.setdefault(section, {}).update(v)
    train, fine = params.get("train", {}), params.get("finetune", {})
    classes = params.get("data", {}).get("classes") or ["NORMAL", "PNEUMONIA"]
    lines += [
        f"- Task: binary classification of one frontal chest X-ray, {classes[0]} vs "
        f"{classes[1]}; the output is P({classes[1]}), called at the model's threshold.",
        f"- `base`: a CNN (`train.arch` {train.get('arch', '?')}, input "
        f"{train.get('image_size', '?')} px grayscale) trained on clean images "
        f"(stage `train_base`, up to {train.get('epochs', '?')} epochs, best epoch on val AUC).",
        "- `finetuned`: `base` with its tail fine-tuned on corrupted images (stage `finetune`"
        + (f", up to {fine['epochs']} epochs" if "epochs" in fine else "")
        + ").",
        "- `*_adapted`: the same files adapted at test time to each target set without labels "
        "(BatchNorm statistics re-estimated, threshold moved for the estimated class prior; "
        "`adapt` params, reports/adaptation.json).",
        "- Threshold: chosen on the validation split (Youden's J, middle of its best plateau) "
        "and stored in the model file's metadata.",
        "- Files: Keras 3 `.keras` with an `xray.json` member (threshold, classes, input size, "
        "prior references); lineage and versions at the end of this card.",
    ]
    thresholds = [
        [v, f"{threshold_of(data.get('metrics'), v):.4f}"]
        for v in data.get("metrics") or {}
        if threshold_of(data.get("metrics"), v) is not None
    ]
    if thresholds:
        lines += ["", *_table(["variant", "threshold on the clean test set"], thresholds)]
    return [*lines, ""]


USE = [
    "## Intended use",
    "",
    "- Research and teaching: transfer learning, robustness to image corruptions and to "
    "acquisition shift, unsupervised test-time adaptation, reproducible ML pipelines.",
    "- Inputs like the training data: pediatric (ages 1-5 in the Guangzhou cohort of the "
    "Kermany et al. archive) frontal anterior-posterior (AP) chest X-rays, grayscale.",
    "",
    "## Out-of-scope use",
    "",
    "- **Not for clinical use**: not a medical device, not validated prospectively or on "
    "other hospitals; it must not inform diagnosis, triage or treatment.",
    "- Not for adults, lateral views, CT or other modalities; not for telling bacterial from "
    "viral pneumonia or for other findings (COVID-19, tuberculosis, effusion, ...).",
    "- Not for images of another site without adapting (see below) and checking on labeled "
    "images of that site.",
    "",
]


def has_own_test(data: dict[str, Any]) -> bool:
    """Whether the test images are the source's own test split (else carved from its training
    images): the split stage keeps a source's test split, so its rows say `test`."""
    rows = data.get("predictions") or []
    return bool(rows) and all(r.get("source_split") == "test" for r in rows)


def data_section(record: dict[str, Any] | None, data: dict[str, Any]) -> list[str]:
    """Section: training and evaluation data, the split report."""
    lines = ["## Training and evaluation data", ""]
    source = ((record or {}).get("data") or {}).get("source")
    identity = ((record or {}).get("data") or {}).get("identity") or {}
    lines.append(f"- Source: `{source}`" + (f" ({identity['kind']})" if "kind" in identity else ""))
    if source == "synthetic":
        lines.append(
            "- **Synthetic images** (the default for a quick run): the numbers below say how "
            "the pipeline works, nothing about chest X-rays."
        )
    lines += [
        "- Split: grouped by patient (no patient in two splits), stratified by class; "
        + (
            "val carved from the source's training images, test the source's own test split "
            "(no patient or image of it left in train or val; see `split` params)."
            if has_own_test(data)
            else "val and test carved from the source's training images (it has no test "
            "split; see `split` params)."
        ),
        "- Test sets: the clean test split; the same images under each corruption family and "
        "severity (stage `corrupt`); and the acquisition-shift proxy, the val split under "
        "simulated site differences (reports/proxy.json).",
    ]
    split = data.get("split")
    if split:
        classes = sorted({k for s in split.values() for k in s if k not in ("images", "patients")})
        rows = [
            [
                name,
                *(str(s.get(c, 0)) for c in classes),
                str(s.get("images")),
                str(s.get("patients")),
            ]
            for name, s in sorted(split.items())
        ]
        lines += ["", *_table(["split", *classes, "images", "patients"], rows)]
    rows_pred = data.get("predictions")
    if rows_pred:
        counts: dict[str, int] = {}
        for r in rows_pred:
            counts[r["source_split"]] = counts.get(r["source_split"], 0) + 1
        shown = ", ".join(f"{k or '?'}: {n}" for k, n in sorted(counts.items()))
        lines += ["", f"Test images by the archive folder they came from: {shown}."]
    return [*lines, ""]


def metrics_section(ci: dict[str, Any]) -> list[str]:
    """Section: clean-test metrics with intervals."""
    m = ci["method"]
    lines = ["## Metrics", ""]
    lines.append(
        f"On the clean test set, at each variant's threshold; 95% bootstrap intervals "
        f"({m['samples']} resamples of patients, seed {m['seed']}, percentile). Values and "
        "intervals are in reports/intervals.json."
    )
    clean = ci.get("clean")
    if not clean:
        return [*lines, "", "No per-image predictions (reports/predictions.csv): no intervals.", ""]
    rows = [[v, *(_ci(c[k]) for k in bootstrap.METRICS)] for v, c in clean.items()]
    return [*lines, "", *_table(["variant", *bootstrap.METRICS], rows), ""]


def _num(value: Any) -> str:
    """A metric to three decimals, `n/a` when undefined."""
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


# proxy.json's summary metrics, in the order of the card's columns; its kinds, in row order
PROXY_COLUMNS = ("auc", "ece", "accuracy", "spec_at_sens95", "share_error")
KIND_ORDER = ("shift", "balance", "damage")


def _kind_rank(kind: str) -> int:
    """A kind's row position (JSON sorts the keys): KIND_ORDER, then any other kind."""
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def proxy_targets_section(proxy: dict[str, Any] | None) -> list[str]:
    """Section: every variant on the proxy's kinds of target, and the variant recommended."""
    if not proxy or not proxy.get("summary"):
        return []
    kinds = proxy.get("kinds") or {}
    head = ["variant", "target", "sets", "AUC", "ECE", "accuracy", "spec. at sens. >= 95%"]
    rows = [
        [v, kinds.get(k, k), str(m["sets"]), *(_num(m[x]) for x in PROXY_COLUMNS)]
        for v, by_kind in proxy["summary"].items()
        for k, m in sorted(by_kind.items(), key=lambda km: _kind_rank(km[0]))
    ]
    damage = proxy.get("damage") or {}
    lines = [
        "## Proxy for a new site",
        "",
        "Means over the val split's shifted sets (reports/proxy.json): clean shift; shift + "
        f"class balance, drawn again at PNEUMONIA shares {proxy.get('priors')}; shift + damage, "
        f"the `{damage.get('family')}` family at severity {damage.get('severity')} after the "
        "shift. ECE: 10 equal-width bins of the variant's P(PNEUMONIA); accuracy at its "
        "threshold; share error: |estimated - true PNEUMONIA share| of an adapted variant's "
        "class-balance estimate (n/a: no estimate).",
        "",
        *_table([*head, "share error"], rows),
        "",
    ]
    chosen = proxy.get("recommended") or {}
    if chosen.get("variant"):
        lines.append(f"**Recommended for a new site: `{chosen['variant']}`.** {chosen['reason']}.")
    else:
        lines.append(f"No variant recommended: {chosen.get('reason', 'no proxy summary')}.")
    return [*lines, "", f"Rule: {chosen.get('rule')}.", ""]


def _grid(
    per_variant: dict[str, dict[str, Any]], label: str, metric: str, extra: str | None = None
) -> list[str]:
    """A table: one row per subgroup, one column per variant, `metric` with its interval."""
    variants = list(per_variant)
    groups = list(next(iter(per_variant.values())))
    rows = []
    for g in groups:
        first = per_variant[variants[0]][g]
        name = f"{g} (held out)" if first.get("held_out") else g
        row = [name] + ([str(first.get(extra))] if extra else [])
        rows.append(row + [_ci(per_variant[v].get(g, {}).get(metric)) for v in variants])
    return _table([label, *([extra] if extra else []), *variants], rows)


def subgroups_section(ci: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Section: performance by class, source split, corruption family and proxy set."""
    lines = ["## Performance by subgroup", ""]
    if ci.get("by_class"):
        lines += [
            "### By class",
            "",
            "Accuracy within each class (the negative class's is the specificity, the "
            "positive class's the sensitivity).",
            "",
            *_grid(ci["by_class"], "class", "accuracy", "images"),
            "",
            "### By source split",
            "",
            "Accuracy by the archive folder an image came from (`source_split`).",
            "",
            *_grid(ci["by_source_split"], "source split", "accuracy", "images"),
            "",
        ]
    if ci.get("by_family"):
        ref = (data.get("robustness") or {}).get("reference") or {}
        lines += [
            "### By corruption family",
            "",
            "Accuracy on the corrupted test images, mean over severities "
            f"{(data.get('robustness') or {}).get('severities')}; held-out families were never "
            "fine-tuned on. Reference set for metrics.json `corrupted`: "
            f"{ref.get('family')}/{ref.get('severity')}. Full grid: reports/robustness.json.",
            "",
            *_grid(ci["by_family"], "family", "accuracy"),
            "",
        ]
    if ci.get("proxy"):
        lines += [
            "### Acquisition-shift proxy",
            "",
            "Accuracy on the val split under simulated site differences; `val@P` sets are "
            "resampled to a P share of the positive class (a prior shift too).",
            "",
            *_grid(ci["proxy"], "set", "accuracy"),
            "",
        ]
    adaptation = data.get("adaptation")
    if adaptation and adaptation.get("variants"):
        s = adaptation.get("settings") or {}
        lines += [
            "### Adapted variants",
            "",
            f"Method `{s.get('method')}` (at least {s.get('min_images')} images per target set). "
            "On the clean test set:",
            "",
        ]
        preds = data.get("predictions") or []
        share = f"{np.mean([int(r['y']) for r in preds]):.3f}" if preds else "n/a"
        rows = []
        for v, sets in adaptation["variants"].items():
            r = sets.get("clean") or {}
            prior = r.get("prior") or {}
            est = prior.get("estimate")
            done = sum(1 for t in sets.values() if t.get("adapted"))
            rows.append(
                [
                    v,
                    "yes" if r.get("adapted") else f"no ({r.get('skipped')})",
                    f"{est:.3f}" if isinstance(est, int | float) else "n/a",
                    share,
                    f"{r['threshold']:.4f}" if isinstance(r.get("threshold"), int | float) else "",
                    f"{done}/{len(sets)}",
                ]
            )
        head = [
            "variant",
            "adapted",
            "estimated positive share",
            "true share",
            "threshold used",
            "target sets adapted (all)",
        ]
        lines += [*_table(head, rows), ""]
    return lines


def caveats(data: dict[str, Any]) -> list[str]:
    """Section: caveats and recommendations (the first says how the test split was made)."""
    if has_own_test(data):
        first = (
            "- **The test split is the source's own.** It was not carved by this pipeline; how "
            "far it stands from the training acquisitions (scanners, processing, time) decides "
            "how far its metrics say anything about another site. " + CARVED_VS_OFFICIAL
        )
    else:
        first = (
            "- **A carved test overstates accuracy on other acquisitions.** The test split is "
            "carved from the training archive: same scanners, same processing. "
            + CARVED_VS_OFFICIAL
            + " Read the clean-test metrics as an upper bound; the proxy and corruption tables "
            "move with acquisition differences, the carved test does not."
        )
    return [CAVEATS[0], CAVEATS[1], first, *CAVEATS[2:]]


CAVEATS = [
    "## Caveats and recommendations",
    "",
    "- **The threshold may not transfer.** It was chosen on validation images of the training "
    "archive; another site's class balance and calibration (`ece` in reports/metrics.json) move "
    "the best threshold. The adapted variants re-estimate it from the unlabeled target images.",
    "- **Adaptation is unsupervised, not validated on real other sites.** It assumes the target "
    "set is one site with enough images; its prior estimate is biased when the scores are "
    "miscalibrated. It was chosen on the proxy, whose shifts are simulated.",
    "- **Intervals.** Clean-test intervals resample patients; the corruption and proxy "
    "intervals resample images from counts, and the corrupted sets are the same test images "
    "corrupted, so they are narrower than a new test sample's would be.",
    "- Corruptions are synthetic; real artefacts (devices, positioning, lines) differ.",
    "",
]

ADAPT = [
    "## Adapting to a new site",
    "",
    "Adapt a model file to a folder of the site's unlabeled images (no label is read), then "
    "predict with the adapted file; or adapt on the fly:",
    "",
    "```sh",
    "xray adapt models/finetuned.keras site_b/ -o models/finetuned_site_b.keras",
    "xray predict --model models/finetuned_site_b.keras site_b/",
    "xray predict --model models/finetuned.keras --adapt site_b/",
    "```",
    "",
    "Then check the adapted model on some labeled images of that site before relying on it.",
    "",
]
