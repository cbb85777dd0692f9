"""The acquisition-shift proxy sets (xray/reports/proxy.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_corrupt import make_split

from xray.core.io import read_csv
from xray.reports.proxy import prior_subset, proxy_sets


@pytest.mark.parametrize("prior", [0.3, 0.5, 0.8])
def test_prior_subset_reaches_the_share_and_keeps_one_class_whole(prior: float) -> None:
    y = np.array([1] * 300 + [0] * 100)
    idx = prior_subset(y, prior, seed=1)
    assert np.all(np.diff(idx) > 0)
    assert y[idx].mean() == pytest.approx(prior, abs=0.01)
    kept_pos, kept_neg = int(y[idx].sum()), int((y[idx] == 0).sum())
    assert kept_neg == 100 or kept_pos == 300  # one class whole
    np.testing.assert_array_equal(idx, prior_subset(y, prior, seed=1))


def test_prior_subset_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="needs both classes"):
        prior_subset(np.ones(10, int), 0.5, 0)


def test_proxy_sets_shift_every_image_deterministically(tmp_path: Path) -> None:
    raw, csv = make_split(tmp_path, n=12)
    rows = read_csv(csv)
    a = proxy_sets(rows, raw, "PNEUMONIA", [24], ["equalize", "heel"], [0.4], seed=3)
    b = proxy_sets(rows, raw, "PNEUMONIA", [24], ["equalize", "heel"], [0.4], seed=3)
    names = [s.name for s in a[24]]
    assert names == [
        "val/clean",
        "val@0.4/clean",
        "val/equalize",
        "val@0.4/equalize",
        "val/heel",
        "val@0.4/heel",
    ]
    for s, t in zip(a[24], b[24], strict=True):
        assert s.images.shape[1:] == (24, 24, 1) and s.images.dtype == np.uint8
        np.testing.assert_array_equal(s.images, t.images)
    clean, shifted = a[24][0].images, a[24][2].images
    assert not np.array_equal(clean, shifted)
    assert a[24][1].labels.mean() == pytest.approx(0.4, abs=0.1)
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        proxy_sets(rows, raw, "PNEUMONIA", [24], ["fog"], [], seed=3)


def test_the_default_proxy_is_every_shift() -> None:
    from xray.core.params import EvaluateParams
    from xray.perturbations.shift import SHIFTS

    # params.py keeps its own copy (importing xray.perturbations.shift would make it a dep of every
    # stage)
    assert EvaluateParams().proxy_shifts == tuple(SHIFTS)
