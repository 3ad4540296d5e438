"""Summaries of repeated runs: the mean over training seeds with a Student-t 95% interval.

A result trained with several seeds is reported as ``{"seeds": [...], "<metric>_mean": m,
"<metric>_ci95": [lo, hi], "<metric>_per_seed": [...]}``; two results are "within noise" when their
intervals overlap (:func:`overlaps`). With one seed the interval is ``None`` (not zero width).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from factory.core.errors import FactoryError


def mean_ci95(values: Sequence[float], *, bounds: tuple[float, float] = (-math.inf, math.inf)
              ) -> tuple[float, list[float] | None]:
    """The mean of ``values`` and its two-sided 95% Student-t interval (``None`` for one value),
    clipped to ``bounds`` (e.g. ``(0, 1)`` for an accuracy)."""
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise FactoryError(f"mean_ci95: need finite values; got {values!r}")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    from scipy import stats  # here, not at the top: scipy.stats costs every stage ~0.9 s of import

    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    lo, hi = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return mean, [lo, hi]


def seed_summary(metric: str, per_seed: Sequence[float], seeds: Sequence[int], *, digits: int = 6,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """``{metric}_mean``, ``{metric}_ci95`` and ``{metric}_per_seed`` of one metric over training seeds."""
    if len(per_seed) != len(seeds):
        raise FactoryError(f"seed_summary: {len(per_seed)} values for {len(seeds)} seeds")
    mean, ci = mean_ci95(per_seed, bounds=bounds)
    return {f"{metric}_mean": round(mean, digits),
            f"{metric}_ci95": None if ci is None else [round(ci[0], digits), round(ci[1], digits)],
            f"{metric}_per_seed": [round(float(v), digits) for v in per_seed]}


def overlaps(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    """Whether two intervals overlap (``None`` if either is missing): "within noise"."""
    if a is None or b is None:
        return None
    return bool(a[0] <= b[1] and b[0] <= a[1])
