"""The rejected samples of a curation, grouped by reason, each with the evidence that rejected it.

A rejected sample's record holds ``decision = {"kept", "reason", "min_score", "min_margin", "evidence"}``
(see :mod:`factory.curate.filter`): the score and its threshold (``low_clip_score``, ``low_clip_margin``),
the matched sample (``leak``, ``near_duplicate``, ``memorized``: ``matched_dataset``, ``matched_key``,
``distance``, ``method``) or the quota (``over_quota``). Records written before the evidence existed still
show their reason; what they lack is said, never made up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from factory.core.errors import FactoryError
from factory.core.sample import Sample
from factory.core.shards import Dataset
from factory.measure.sheets import choose

MATCHES = ("leak", "near_duplicate", "memorized")


@dataclass
class Rejection:
    sample: Sample
    reason: str
    why: str                           # "CLIP score 0.512 < threshold 0.626", or what is not recorded
    matched: tuple[str, str] | None    # (dataset, key) of the matched image, when the evidence names one


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def explain(record: Mapping[str, Any]) -> tuple[str, tuple[str, str] | None]:
    """What rejected the sample of ``record``, in words, and the ``(dataset, key)`` it matched if any."""
    decision = record.get("decision") or {}
    reason, ev = decision.get("reason"), decision.get("evidence")
    scores = record.get("scores") or {}
    if reason == "low_clip_score":
        value = (ev or {}).get("clip", scores.get("clip"))
        limit = (ev or {}).get("threshold", decision.get("min_score"))
        return f"CLIP score {_num(value)} < threshold {_num(limit)}", None
    if reason == "low_clip_margin":
        value = (ev or {}).get("clip_margin", scores.get("clip_margin"))
        limit = (ev or {}).get("threshold", decision.get("min_margin"))
        return f"CLIP margin {_num(value)} < threshold {_num(limit)}", None
    if reason in MATCHES:
        if not ev or not ev.get("matched_key"):
            return "matched image not recorded (curated before the evidence was kept)", None
        sim = f", similarity {_num(ev['similarity'])}" if ev.get("similarity") is not None else ""
        return (f"{ev.get('method', 'hash')} distance {_num(ev.get('distance'))}{sim} to "
                f"{ev.get('matched_dataset')} / {ev['matched_key']}"), (str(ev.get("matched_dataset")),
                                                                      str(ev["matched_key"]))
    if reason == "over_quota":
        if not ev:
            return "quota not recorded (curated before the evidence was kept)", None
        cell = ev.get("cell")
        cell = ", ".join(f"{k} {v}" for k, v in cell.items()) if isinstance(cell, dict) else cell
        return f"class {ev.get('class')}, {cell}: quota {ev.get('quota')}, {ev.get('survivors')} survivors", None
    return f"reason {reason!r}: evidence not recorded" if reason else "no decision recorded", None


def rejections(path: Path | str, per_reason: int = 6, seed: int = 0) -> tuple[Counter[str], dict[str, list[Rejection]]]:
    """The count of every reason in the rejected dataset at ``path`` and, for each, ``per_reason`` samples
    (a deterministic choice, as for contact sheets) with their evidence."""
    counts: Counter[str] = Counter()

    def reason(s: Sample) -> str:
        r = str((s.provenance.get("decision") or {}).get("reason") or "unknown")
        counts[r] += 1
        return r

    chosen = choose(Dataset(path), per_reason, seed, group=reason)
    out = {}
    for r in sorted(chosen, key=lambda r: (-counts[r], r)):
        out[str(r)] = [Rejection(s, str(r), *explain(s.provenance)) for s in chosen[r]]
    return counts, out


def _norm(path: Path | str) -> str:
    return Path(path).as_posix().rstrip("/")


def matched_samples(wanted: Iterable[tuple[str, str]], datasets: Mapping[str, Path | str]
                    ) -> tuple[dict[tuple[str, str], Sample], dict[str, str]]:
    """The samples ``(dataset, key)`` of ``wanted``, read in one pass per dataset from those of ``datasets``
    (``{path as recorded: folder}``: the report's declared inputs). Returned with a note for every dataset
    that could not be read (not among the inputs, or broken)."""
    by_path = {_norm(k): Path(v) for k, v in datasets.items()}
    keys: dict[str, set[str]] = {}
    for ds, key in wanted:
        keys.setdefault(ds, set()).add(key)
    found: dict[tuple[str, str], Sample] = {}
    notes: dict[str, str] = {}
    for ds, want in sorted(keys.items()):
        folder = by_path.get(_norm(ds))
        if folder is None:
            notes[ds] = f"{ds} is not among the report's inputs"
            continue
        try:
            for s in Dataset(folder):
                if s.key in want:
                    found[(ds, s.key)] = s
                    if len(want) == sum(1 for d, _ in found if d == ds):
                        break
        except FactoryError as exc:
            notes[ds] = str(exc)
    return found, notes
