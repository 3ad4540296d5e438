"""Seed summaries: the Student-t 95% interval, its clipping, one seed, and interval overlap."""

import math

import numpy as np
import pytest
from scipy import stats

from factory.core.errors import FactoryError
from factory.core.stats import mean_ci95, overlaps, seed_summary


def test_interval_is_the_student_t_interval():
    vals = [0.95, 0.97, 0.96]
    mean, (lo, hi) = mean_ci95(vals)
    ref = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    assert mean == pytest.approx(0.96) and (lo, hi) == pytest.approx(ref)
    # t with 2 degrees of freedom is 4.303: three seeds give a wide interval, as they should
    assert hi - mean == pytest.approx(4.303 * np.std(vals, ddof=1) / math.sqrt(3), rel=1e-3)


def test_interval_is_clipped_and_none_for_one_seed():
    _, (lo, hi) = mean_ci95([0.99, 1.0, 1.0], bounds=(0.0, 1.0))
    assert hi == 1.0 and lo < 0.99
    assert mean_ci95([0.5]) == (0.5, None)
    with pytest.raises(FactoryError, match="finite"):
        mean_ci95([0.5, float("nan")])


def test_seed_summary_fields():
    s = seed_summary("top1", [0.9, 0.8], [0, 1], bounds=(0.0, 1.0))
    assert s["top1_mean"] == pytest.approx(0.85) and s["top1_per_seed"] == [0.9, 0.8]
    assert s["top1_ci95"][0] >= 0.0 and s["top1_ci95"][1] <= 1.0


def test_overlap_is_within_noise():
    assert overlaps([0.1, 0.3], [0.25, 0.5]) and not overlaps([0.1, 0.2], [0.25, 0.5])
