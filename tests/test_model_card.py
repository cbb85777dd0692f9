"""The model card: bootstrap intervals, every section from generated reports, stable bytes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xray.core.git import GitError, git, succeeds
from xray.core.hashing import file_md5, file_sha256, json_sha256
from xray.core.text import one_line
from xray.records.artifacts import card_markdown
from xray.reports import bootstrap
from xray.reports.metrics import binary_metrics
from xray.reports.model_card import (
    CARD,
    INTERVALS,
    PREDICTIONS,
    render_card,
    write_model_card,
    write_predictions,
)

VARIANTS = ("base", "finetuned", "finetuned_adapted")
SECTIONS = (
    "## Model details",
    "## Intended use",
    "## Out-of-scope use",
    "## Training and evaluation data",
    "## Metrics",
    "## Performance by subgroup",
    "### By class",
    "### By source split",
    "### By corruption family",
    "### Acquisition-shift proxy",
    "### Adapted variants",
    "## Caveats and recommendations",
    "## Adapting to a new site",
    "## Lineage",
)


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and overlapping scores of n images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 3)


def test_clustered_point_values_are_the_metrics_and_intervals_hold_them() -> None:
    """Point values equal binary_metrics/sklearn; each interval contains its point; seeded."""
    y, p = scores(300, 1)
    ci = bootstrap.clustered(y, p, 0.5, samples=300)
    m = binary_metrics(y, p, 0.5)
    for key in bootstrap.THRESHOLD_METRICS:
        assert ci[key]["value"] == pytest.approx(m[key], abs=1e-4)
    assert ci["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    for cell in ci.values():
        assert cell["lo"] <= cell["value"] <= cell["hi"] and cell["lo"] < cell["hi"]
    assert bootstrap.clustered(y, p, 0.5, samples=300) == ci  # same seed, same numbers
    assert bootstrap.clustered(y, p, 0.5, samples=300, seed=5) != ci


def test_bootstrap_auc_is_the_weighted_auc_with_ties_counted_half() -> None:
    rng = np.random.default_rng(3)
    n = 500
    y = rng.integers(0, 2, n)
    p = rng.integers(0, 40, n) / 40.0  # many tied scores
    weights = rng.integers(0, 4, (6, n)).astype(float)
    got = bootstrap._auc(weights, y, p)
    for row, value in zip(weights, got, strict=True):
        assert value == pytest.approx(roc_auc_score(y, p, sample_weight=row), abs=1e-12)
    assert np.isnan(bootstrap._auc(weights, np.ones(n, int), p)).all()  # one class only
    assert bootstrap._auc(np.ones((2, 0)), np.zeros(0, int), np.zeros(0)).shape == (2,)


def test_patient_clusters_widen_the_interval() -> None:
    """Four identical images per patient: resampling patients gives a wider interval."""
    y, p = scores(100, 2)
    y4, p4 = np.repeat(y, 4), np.repeat(p, 4)
    patients = [str(i // 4) for i in range(400)]
    by_image = bootstrap.clustered(y4, p4, 0.5)["accuracy"]
    by_patient = bootstrap.clustered(y4, p4, 0.5, patients)["accuracy"]
    assert by_image["value"] == by_patient["value"]
    width = by_patient["hi"] - by_patient["lo"]
    assert width > 1.5 * (by_image["hi"] - by_image["lo"])


def test_from_counts_and_undefined_metrics() -> None:
    """Counts give the metrics of the matrix; a class with no image is None, not a number."""
    ci = bootstrap.from_counts({"tp": 40, "fn": 10, "tn": 45, "fp": 5})
    assert ci["accuracy"]["value"] == 0.85 and ci["sensitivity"]["value"] == 0.8
    assert ci["accuracy"]["lo"] < 0.85 < ci["accuracy"]["hi"]
    only_negatives = bootstrap.from_counts({"tp": 0, "fn": 0, "tn": 9, "fp": 1})
    assert only_negatives["sensitivity"] == {"value": None, "lo": None, "hi": None}
    mean = bootstrap.from_counts(
        [{"tp": 5, "fn": 5, "tn": 5, "fp": 5}, {"tp": 10, "fn": 0, "tn": 0, "fp": 0}]
    )
    assert mean["sensitivity"]["value"] == 0.75  # mean over severities
    assert mean["specificity"]["value"] is None  # undefined in one severity: no mean
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        bootstrap.clustered([0, 1, 1], [0.1, 0.2], 0.5)


def write_reports(reports: Path, n: int = 120) -> dict[str, np.ndarray]:
    """Generated evaluate outputs: predictions, metrics, split, robustness, proxy, adaptation."""
    reports.mkdir(parents=True, exist_ok=True)
    y, _ = scores(n, 3)
    rows = [
        {
            "path": f"images/{i}.png",
            "patient_id": f"P{i // 3}",
            "source_split": "train" if i % 4 else "test",
            "label": ["NORMAL", "PNEUMONIA"][y[i]],
        }
        for i in range(n)
    ]
    probs = {v: np.clip(scores(n, 3)[1] + 0.05 * k, 0, 1) for k, v in enumerate(VARIANTS)}
    write_predictions(reports / PREDICTIONS, rows, y, {v: (p, 0.5) for v, p in probs.items()})
    metrics = {v: {"clean": binary_metrics(y, np.round(p, 6), 0.5)} for v, p in probs.items()}
    cells = {"tp": 50, "fn": 10, "tn": 40, "fp": 20}
    families = {"noise": False, "blur": True}
    robustness = {
        "severities": [1, 2],
        "reference": {"family": "noise", "severity": 2},
        "models": {
            v: {
                "families": {
                    f: {"held_out": h, "severities": {"1": cells, "2": cells}}
                    for f, h in families.items()
                }
            }
            for v in VARIANTS
        },
    }
    proxy = {"variants": {v: {"val/clean": cells, "val/heel": cells} for v in VARIANTS}}
    adaptation = {
        "settings": {"method": "adabn+prior", "min_images": 32},
        "variants": {
            "finetuned_adapted": {
                "clean": {"adapted": True, "threshold": 0.5, "prior": {"estimate": 0.41}}
            }
        },
    }
    split = {"test": {"NORMAL": 60, "PNEUMONIA": 60, "images": 120, "patients": 40}}
    for name, value in (
        ("metrics", metrics),
        ("robustness", robustness),
        ("proxy", proxy),
        ("adaptation", adaptation),
        ("split", split),
    ):
        (reports / f"{name}.json").write_text(json.dumps(value))
    return {"y": y, **probs}


def test_card_has_every_section_filled_from_the_reports(tmp_path: Path) -> None:
    """Sections in order; metrics with intervals; subgroups by class, source, family, proxy."""
    reports = tmp_path / "reports"
    data = write_reports(reports)
    assert (
        write_model_card(reports, tmp_path, source_json=tmp_path / "source.json") is None
    )  # no dvc.lock: no lineage record
    card = (reports / CARD).read_text()
    places = [card.index(s) for s in SECTIONS]
    assert places == sorted(places)
    ci = json.loads((reports / INTERVALS).read_text())
    assert set(ci["clean"]) == set(VARIANTS)
    accuracy = binary_metrics(data["y"], data["finetuned"], 0.5)["accuracy"]
    assert ci["clean"]["finetuned"]["accuracy"]["value"] == pytest.approx(accuracy, abs=1e-4)
    cell = ci["clean"]["finetuned"]["auc"]
    assert f"{cell['value']:.3f} [{cell['lo']:.3f}, {cell['hi']:.3f}]" in card
    assert set(ci["by_class"]["base"]) == {"NORMAL", "PNEUMONIA"}
    assert set(ci["by_source_split"]["base"]) == {"test", "train"}
    assert ci["by_source_split"]["base"]["test"]["images"] == 30
    assert "| blur (held out) |" in card and "| val/heel |" in card
    assert ci["by_family"]["base"]["noise"]["accuracy"]["value"] == 0.75
    assert "not for clinical use" in card.lower() and "xray adapt" in card
    assert "xray predict --model models/finetuned.keras --adapt" in card
    assert "85.4%" in card  # the carved-vs-official measurement from the README
    assert "Lineage unavailable" in card


def test_card_bytes_are_a_function_of_the_reports(tmp_path: Path) -> None:
    """Written twice, same bytes; no time stamps in the card or the intervals."""
    reports = tmp_path / "reports"
    write_reports(reports)
    write_model_card(reports, tmp_path, source_json=tmp_path / "source.json")
    first = {n: (reports / n).read_bytes() for n in (CARD, INTERVALS)}
    write_model_card(reports, tmp_path, source_json=tmp_path / "source.json")
    assert {n: (reports / n).read_bytes() for n in (CARD, INTERVALS)} == first
    assert not re.search(rb"\d{4}-\d\d-\d\dT\d\d:", first[CARD] + first[INTERVALS])
    stamps = {"created": "2026-01-01T00:00:00+00:00", "flow_run_id": "r1", "code": {}, "host": "h"}
    root = Path(__file__).resolve().parents[1]  # the artifact finds reports/ in dvc.yaml's cmd
    (tmp_path / "dvc.yaml").write_text((root / "dvc.yaml").read_text())
    published = card_markdown(tmp_path, stamps)
    assert published.startswith(first[CARD].decode())  # the artifact is the file + provenance
    assert "## Run provenance" in published and "r1" in published
    (reports / CARD).unlink()  # without the file: rendered from the reports, the same card
    assert card_markdown(tmp_path, stamps) == published


def test_card_says_how_the_test_split_was_made() -> None:
    """Issue 24 item 15: a source with its own test split is not called carved."""
    from xray.reports.card_sections import caveats, data_section

    own = {"predictions": [{"source_split": "test"}] * 3}
    carved = {"predictions": [{"source_split": "train"}] * 3}
    own_card, carved_card = ("\n".join(data_section(None, d) + caveats(d)) for d in (own, carved))
    assert "test the source's own test split" in own_card and "overstates" not in own_card
    assert "The test split is the source's own" in own_card
    assert "val and test carved from the source's training images" in carved_card
    assert "A carved test overstates accuracy" in carved_card


def test_card_without_reports_says_what_is_missing() -> None:
    """No reports and no lineage: every section is still there, nothing is made up."""
    card = render_card(None, {})
    for heading in ("## Metrics", "## Caveats and recommendations", "## Lineage"):
        assert heading in card
    assert "No per-image predictions" in card and "[" not in card.split("## Metrics")[1][:200]


def test_predictions_must_cover_every_image(tmp_path: Path) -> None:
    """A score array of the wrong length is an error naming the file."""
    rows = [{"path": "a.png", "patient_id": "p", "source_split": "train", "label": "NORMAL"}]
    with pytest.raises(ValueError, match=r"predictions\.csv: base has 2 scores for 1 images"):
        write_predictions(
            tmp_path / "predictions.csv", rows, np.zeros(1), {"base": np.array([0.1, 0.2])}
        )


def test_git_helper_and_hashes(tmp_path: Path) -> None:
    """git(): stdout, None on failure, one-line GitError with check; hashes match hashlib."""
    assert git(tmp_path, "rev-parse", "HEAD") is None  # not a repository
    with pytest.raises(GitError, match=r"^git rev-parse: .*not a git repository"):
        git(tmp_path, "rev-parse", "HEAD", check=True)
    assert git(tmp_path, "init", "-q") == ""
    assert succeeds(tmp_path, "rev-parse", "--git-dir")
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 3_000_000)
    assert file_md5(f) == hashlib.md5(f.read_bytes()).hexdigest()
    assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert json_sha256({"b": 1, "a": 2}) == json_sha256({"a": 2, "b": 1})
    assert one_line("a\n  b\tc") == "a b c" and one_line(ValueError()) == "ValueError"
