"""A loop run's per-generation rows summarised for the report (pure Python: the metrics stage imports no torch).
"""

from __future__ import annotations

from typing import Any, Mapping

from factory.core.errors import FactoryError

# The numbers :func:`summarise_rows` follows from the first generation to the last (dotted: nested fields).
SUMMARY_METRICS = ("fd", "kid", "precision", "recall", "recognition", "cas", "diversity.mean_pairwise_distance",
                   "denoise_loss.mean")


def _field(row: Mapping[str, Any], dotted: str) -> Any:
    v: Any = row
    for part in dotted.split("."):
        if not isinstance(v, Mapping):
            return None
        v = v.get(part)
    return v


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarise_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's per-generation rows (each with ``generation``) for the report: ``generations`` (the rows sorted
    by generation), ``first`` and ``last`` (the first and last measured generation's :data:`SUMMARY_METRICS`,
    dotted names for nested fields, and its ``generation``; rows marked ``active: false`` are skipped) and
    ``change`` (last minus first; None where either is missing)."""
    if any(not _number(r.get("generation")) for r in rows):
        raise FactoryError("loop summary: every row needs its generation number")
    ordered = sorted(rows, key=lambda r: r["generation"])
    measured = [r for r in ordered if r.get("active", True)]
    if not measured:
        raise FactoryError("loop summary: no measured generation to summarise")

    def values(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"generation": r["generation"], **{m: _field(r, m) for m in SUMMARY_METRICS}}

    first, last = values(measured[0]), values(measured[-1])
    change = {m: last[m] - first[m] if _number(first[m]) and _number(last[m]) else None for m in SUMMARY_METRICS}
    return {"generations": ordered, "first": first, "last": last, "change": change}
