"""Tests for the evaluate stage: the robustness summary (pure) and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_corrupt import make_split

import xray.reports.evaluation as ev
import xray.reports.scoring as scoring
from xray.core.io import decode_gray, read_csv, write_csv
from xray.core.params import AdaptParams, CorruptParams, EvaluateParams
from xray.models.dataset import resize
from xray.perturbations.materialize import corrupt
from xray.reports.figures import GRID_SEVERITIES
from xray.reports.proxy_targets import TARGET_METRICS
from xray.reports.robustness import suite_metrics, summarize

FAMILIES = ("seed", "jpeg", "elastic")
HELD = ("elastic",)
SEVERITIES = (1, 3)


def m(ba: float, acc: float | None = None, auc: float = 0.9) -> dict[str, Any]:
    """A metrics dict as binary_metrics returns it (only the fields summarize reads)."""
    return {"accuracy": ba if acc is None else acc, "balanced_accuracy": ba, "auc": auc}


def grid(values: dict[str, tuple[float, float]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per-(family, severity) metrics from balanced accuracies at severities 1 and 3."""
    return {(f, s): m(v[i]) for f, v in values.items() for i, s in enumerate(SEVERITIES)}


def test_summarize_formulas() -> None:
    clean = {"base": m(0.9), "finetuned": m(0.95)}
    groups = {
        "base": grid({"seed": (0.8, 0.6), "jpeg": (0.9, 0.9), "elastic": (0.7, 0.5)}),
        "finetuned": grid({"seed": (0.9, 0.8), "jpeg": (0.95, 0.85), "elastic": (0.8, 0.8)}),
    }
    r = summarize(clean, groups, HELD)
    assert r["families"] == list(FAMILIES) and r["held_out"] == ["elastic"]
    assert r["severities"] == [1, 3] and "be" in r["formula"] and "rbe" in r["formula"]
    base, ft = r["models"]["base"], r["models"]["finetuned"]
    # Base model is its own baseline.
    assert all(base["families"][f]["be"] == 1.0 for f in FAMILIES)
    assert base["families"]["jpeg"]["rbe"] is None  # zero denominator: E(jpeg) == E(clean)
    # seed: mean errors base (0.2 + 0.4) / 2 = 0.3, finetuned (0.1 + 0.2) / 2 = 0.15.
    seed = ft["families"]["seed"]
    assert seed["mean"]["balanced_error"] == pytest.approx(0.15)
    assert seed["be"] == pytest.approx(0.5)
    assert seed["rbe"] == pytest.approx((0.15 - 0.05) / (0.3 - 0.1))
    assert seed["severities"]["3"]["drop_accuracy"] == pytest.approx(0.95 - 0.8)
    assert seed["drop"]["drop_balanced_accuracy"] == pytest.approx(0.95 - 0.85)
    assert seed["held_out"] is False and ft["families"]["elastic"]["held_out"] is True
    # Suite (seed, jpeg) apart from held out (elastic).
    suite, held = ft["summary"]["suite"], ft["summary"]["held_out"]
    assert suite["families"] == ["seed", "jpeg"] and held["families"] == ["elastic"]
    assert suite["mean_balanced_accuracy"] == pytest.approx((0.85 + 0.9) / 2)
    assert held["mean_balanced_accuracy"] == pytest.approx(0.8)
    assert suite["mbe"] == pytest.approx((0.5 + 0.1 / 0.1) / 2)
    assert held["mbe"] == pytest.approx(0.2 / 0.4)
    assert suite["be_pooled"] == pytest.approx(((0.15 + 0.1) / 2) / ((0.3 + 0.1) / 2))
    assert suite["drop_accuracy"] == pytest.approx(0.95 - 0.875)
    per_sev = ft["per_severity"]["suite"]["3"]
    assert per_sev["balanced_accuracy"] == pytest.approx((0.8 + 0.85) / 2)
    assert ft["per_severity"]["all"]["1"]["balanced_accuracy"] == pytest.approx(2.65 / 3)
    flat = suite_metrics(ft["summary"])
    assert flat["mean_accuracy"] == suite["mean_accuracy"]
    assert flat["heldout_mean_accuracy"] == held["mean_accuracy"]
    assert flat["all_mbe"] == ft["summary"]["all"]["mbe"]


def test_summarize_undefined_values_are_null() -> None:
    clean = {"base": m(0.9)}
    groups = {"base": grid({"seed": (float("nan"), 0.5)})}
    groups["base"][("seed", 1)]["auc"] = float("nan")
    r = summarize(clean, groups, ())
    fam = r["models"]["base"]["families"]["seed"]
    assert fam["severities"]["1"]["balanced_error"] is None
    assert fam["mean"]["balanced_accuracy"] == 0.5  # the defined severity only
    assert fam["mean"]["auc"] == 0.9
    assert r["models"]["base"]["summary"]["held_out"]["mean_accuracy"] is None
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN anywhere in the new fields


def _tiny_model(
    path: Path, weight: float, threshold: float, size: int, extra: dict[str, Any] | None = None
) -> None:
    """p = sigmoid(weight * (mean pixel / 255 - 0.4)), saved as the pipeline saves models."""
    import keras

    from xray.models.architectures import save_model

    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, out)
    model.layers[-1].set_weights([np.array([[weight]]), np.array([-0.4 * weight])])
    meta = {"image_size": size, "threshold": threshold, "positive_class": "PNEUMONIA"}
    save_model(model, path, {**meta, **(extra or {})})


def _expected_probs(images: list[np.ndarray], weight: float, size: int) -> np.ndarray:
    """The tiny model's probabilities, computed without Keras."""
    means = np.array([resize(im, size).astype(np.float64).mean() / 255 for im in images])
    return 1.0 / (1.0 + np.exp(-weight * (means - 0.4)))


def _member_images(folder: Path, rows: list[dict[str, str]]) -> list[np.ndarray]:
    """Manifest rows' images, read straight from their zips."""
    out = []
    for r in rows:
        with zipfile.ZipFile(folder / r["archive"]) as z:
            out.append(decode_gray(z.read(r["member"])))
    return out


def _val_split(tmp_path: Path, raw: Path) -> Path:
    """A val.csv of other generated images in the same raw folder."""
    _, val = make_split(tmp_path / "v", seed=5)
    rows = read_csv(val)
    for r in rows:
        r["path"] = r["path"].replace("test/", "val/")
        (raw / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (raw / r["path"]).write_bytes(
            (tmp_path / "v" / "raw" / r["path"].replace("val/", "test/")).read_bytes()
        )
    out = tmp_path / "splits" / "val.csv"
    write_csv(out, rows, list(rows[0]))
    return out


ADAPT = AdaptParams(prior=True, min_images=4, batch_size=8)
PROXY = EvaluateParams(
    batch_size=7, grid_images=3, proxy_shifts=("equalize", "low_res"), proxy_priors=(0.4,)
)


def test_evaluate_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, csv = make_split(tmp_path)
    val_csv = _val_split(tmp_path, raw)
    corrupted = tmp_path / "corrupted"
    corrupt(CorruptParams(families=FAMILIES, severities=SEVERITIES), csv, raw, corrupted, 1)
    size = 32
    models = {"base": tmp_path / "base.keras", "finetuned": tmp_path / "finetuned.keras"}
    _tiny_model(models["base"], 8.0, 0.5, size)
    _tiny_model(models["finetuned"], -5.0, 0.45, size)

    decoded: list[str] = []
    real_load, real_members = scoring.load_images, scoring.load_members

    def counting_load(paths: list[Path], size: int | None) -> Any:
        decoded.extend(str(p) for p in paths)
        return real_load(paths, size)

    def counting_members(folder: Path, rows: list[dict[str, str]], size: int | None) -> Any:
        decoded.extend(f"{r['archive']}:{r['member']}" for r in rows)
        return real_members(folder, rows, size)

    monkeypatch.setattr(scoring, "load_images", counting_load)  # the images scored
    monkeypatch.setattr(scoring, "load_members", counting_members)
    monkeypatch.setattr(ev, "load_members", counting_members)  # the figures' samples
    reports = tmp_path / "reports"
    live = {"base": tmp_path / "live_b", "finetuned": tmp_path / "live_f"}
    metrics = ev.evaluate(
        PROXY,
        ("NORMAL", "PNEUMONIA"),
        models=models,
        test_csv=csv,
        corrupted_manifest=corrupted / "manifest.csv",
        reports=reports,
        live=live,
        held_out=HELD,
        raw_dir=raw,
        adapt=ADAPT,
        val_csv=val_csv,
        source_json=tmp_path / "source.json",
    )
    manifest = read_csv(corrupted / "manifest.csv")
    # Every image decoded exactly once for scoring, shared by all models (+ the figures'
    # samples: grid_images of the reference group, one source image in each family).
    grid = len(FAMILIES) * len(set(SEVERITIES) & set(GRID_SEVERITIES))
    figures = PROXY.grid_images + grid
    assert len(decoded) == len(read_csv(csv)) + len(manifest) + figures
    assert len(set(decoded)) == len(read_csv(csv)) + len(manifest)

    robust = json.loads((reports / "robustness.json").read_text())
    on_disk = json.loads((reports / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert robust["reference"] == {"family": "seed", "severity": 3}
    assert robust["held_out"] == ["elastic"] and robust["families"] == list(FAMILIES)
    for name, weight in (("base", 8.0), ("finetuned", -5.0)):
        rep = robust["models"][name]
        threshold = 0.5 if name == "base" else 0.45
        # The reference group's accuracy, recomputed without Keras.
        rows = [r for r in manifest if r["family"] == "seed" and r["severity"] == "3"]
        p = _expected_probs(_member_images(corrupted, rows), weight, size)
        y = np.array([r["label"] == "PNEUMONIA" for r in rows])
        acc = float(((p >= threshold) == y).mean())
        assert on_disk[name]["corrupted"]["accuracy"] == pytest.approx(acc, abs=1e-6)
        seed3 = rep["families"]["seed"]["severities"]["3"]
        assert seed3["accuracy"] == on_disk[name]["corrupted"]["accuracy"]
        # Suite means beside `corrupted` in metrics.json, equal to the robustness summary.
        suite = on_disk[name]["suite"]
        accs = {
            f: [rep["families"][f]["severities"][str(s)]["accuracy"] for s in SEVERITIES]
            for f in FAMILIES
        }
        assert suite["mean_accuracy"] == pytest.approx(
            (sum(accs["seed"]) / 2 + sum(accs["jpeg"]) / 2) / 2, abs=1e-6
        )
        assert suite["heldout_mean_accuracy"] == pytest.approx(sum(accs["elastic"]) / 2, abs=1e-6)
        assert rep["clean"]["accuracy"] == on_disk[name]["clean"]["accuracy"]
    assert all(robust["models"]["base"]["families"][f]["be"] in (1.0, None) for f in FAMILIES)
    be = robust["models"]["finetuned"]["families"]["seed"]["be"]
    assert be is None or math.isfinite(be)
    for fig in (
        "robustness_heatmap_accuracy.png",
        "robustness_heatmap_balanced_accuracy.png",
        "robustness_curves_accuracy.png",
        "corruption_grid.png",
        "samples.png",
        "confusion.png",
        "proxy_accuracy.png",
    ):
        assert (reports / "figures" / fig).stat().st_size > 1000
    # Adapted variants beside the plain models, on the clean, corrupted and proxy sets.
    assert set(on_disk) == {"base", "finetuned", "base_adapted", "finetuned_adapted"}
    for name in on_disk:
        assert {"clean", "corrupted", "suite", "proxy"} <= set(on_disk[name])
        assert on_disk[name]["proxy"]["shift_accuracy"] is not None
        assert on_disk[name]["proxy"]["balanced_shift_accuracy"] is not None
    adaptation = json.loads((reports / "adaptation.json").read_text())
    assert adaptation["settings"]["method"] == "adabn+prior"
    clean_report = adaptation["variants"]["base_adapted"]["clean"]
    assert clean_report["adapted"] and clean_report["prior"]["estimate"] is not None
    # The adapted threshold is the one metrics used.
    assert on_disk["base_adapted"]["clean"]["threshold"] == pytest.approx(
        clean_report["threshold"], abs=1e-6
    )
    assert "proxy:val@0.4/low_res" in adaptation["variants"]["finetuned_adapted"]
    proxy = json.loads((reports / "proxy.json").read_text())
    assert set(proxy["variants"]["base"]) == {
        f"{b}/{s}" for b in ("val", "val@0.4") for s in ("clean", "equalize", "low_res")
    } | {"val+seed3/equalize", "val+seed3/low_res"}
    assert proxy["targets"] == {
        "shift": ["val/equalize", "val/low_res"],
        "balance": ["val@0.4/equalize", "val@0.4/low_res"],
        "damage": ["val+seed3/equalize", "val+seed3/low_res"],
    }
    assert proxy["prior"] == 0.4 and proxy["damage"] == {"family": "seed", "severity": 3}
    # Every variant x kind of target x metric, in proxy.json and metrics.json.
    for name in on_disk:
        assert on_disk[name]["proxy_targets"] == proxy["summary"][name]
        for kind, row in proxy["summary"][name].items():
            assert set(row) == {"sets", *TARGET_METRICS}
            for metric in ("auc", "ece", "accuracy", "spec_at_sens95"):
                assert 0.0 <= row[metric] <= 1.0, (name, kind, metric)
            mean = np.mean([proxy["variants"][name][s]["ece"] for s in proxy["targets"][kind]])
            assert row["ece"] == pytest.approx(mean, abs=1e-6)
            # the class-balance estimate's error: adapted variants only
            assert (row["share_error"] is None) == (not name.endswith("_adapted"))
    for s in proxy["targets"]["balance"]:
        est = adaptation["variants"]["base_adapted"][f"proxy:{s}"]["prior"]["estimate"]
        row = proxy["variants"]["base_adapted"][s]
        assert row["share_error"] == pytest.approx(abs(est - row["share"]), abs=1e-6)
        assert row["share"] == pytest.approx(0.4, abs=0.1)
    scores = proxy["recommended"]["scores"]
    best = max(scores.values())
    simplest_first = ("base", "finetuned", "base_adapted", "finetuned_adapted")
    tied = [v for v in simplest_first if scores[v] >= best - 0.005]
    assert proxy["recommended"]["variant"] == tied[0]
    card = (reports / "model_card.md").read_text()
    assert f"**Recommended for a new site: `{tied[0]}`.**" in card
    assert "| base_adapted | shift + damage | 2 |" in card


def _shuffle_labels(csv: Path, seed: int) -> None:
    """Permute the label column of a split or manifest file in place."""
    rows = read_csv(csv)
    labels = [r["label"] for r in rows]
    np.random.default_rng(seed).shuffle(labels)
    for r, label in zip(rows, labels, strict=True):
        r["label"] = label
    write_csv(csv, rows, list(rows[0]))


def test_adaptation_never_reads_labels(tmp_path: Path) -> None:
    raw, csv = make_split(tmp_path)
    val_csv = _val_split(tmp_path, raw)
    corrupted = tmp_path / "corrupted"
    corrupt(CorruptParams(families=("seed",), severities=(3,)), csv, raw, corrupted, 1)
    models = {"base": tmp_path / "base.keras"}
    # The source references in the file, so that no val label is read at evaluate time.
    refs = {"prior_reference": 0.6, "prior_reference_adabn": 0.6, "threshold_adabn": 0.5}
    _tiny_model(models["base"], 8.0, 0.5, 32, refs)
    outputs = []
    labels_before = [r["label"] for r in read_csv(csv)]
    for run in range(2):
        if run:
            for f in (csv, val_csv, corrupted / "manifest.csv"):
                _shuffle_labels(f, seed=3)
        reports = tmp_path / f"reports{run}"
        ev.evaluate(
            PROXY,
            ("NORMAL", "PNEUMONIA"),
            models=models,
            test_csv=csv,
            corrupted_manifest=corrupted / "manifest.csv",
            reports=reports,
            live={"base": tmp_path / "live"},
            held_out=(),
            raw_dir=raw,
            adapt=AdaptParams(models=("base",), prior=True, min_images=4, batch_size=8),
            val_csv=val_csv,
            source_json=tmp_path / "source.json",
        )
        outputs.append(reports)
    a, b = (json.loads((r / "adaptation.json").read_text()) for r in outputs)

    def unlabeled(report: dict) -> dict:
        """The sets whose images no label picks: the proxy's sets at evaluate.proxy_prior
        ('@') are drawn by label, so shuffled labels give other images (the guard's mean
        entropy of them differs)."""
        return {k: v for k, v in report["variants"]["base_adapted"].items() if "@" not in k}

    assert a["settings"] == b["settings"]
    assert unlabeled(a) == unlabeled(b)  # estimates, thresholds, reports: same when shuffled
    assert len(unlabeled(a)) > 3
    assert labels_before != [r["label"] for r in read_csv(csv)]  # the shuffle did shuffle
