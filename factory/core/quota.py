"""Largest-remainder apportionment: exact integer quotas (plans per class and attribute, pools per component)."""

from __future__ import annotations

from typing import Sequence

from factory.core.errors import FactoryError


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Integer quotas summing to ``total`` proportional to ``weights`` (Hamilton's method).

    Ties in the remainders go to the earlier cell, so the result is deterministic.
    """
    if total < 0:
        raise FactoryError(f"quota total must be >= 0; got {total}")
    s = float(sum(weights))
    exact = [total * w / s for w in weights]
    quotas = [int(e) for e in exact]
    short = total - sum(quotas)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[:short]:
        quotas[i] += 1
    return quotas
