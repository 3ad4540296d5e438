"""The evidence of a curation decision: what shows a user why a sample was left out (or flagged).

Every decision of :func:`factory.curate.filter.curate` that is not a plain keep carries, in the sample's
provenance ``decision``, an ``evidence`` object whose fields depend on the reason:

- ``low_clip_score``: ``{"clip": <the sample's score>, "threshold": <min_score>}``
- ``low_clip_margin``: ``{"clip_margin": <the sample's margin>, "threshold": <min_margin>}``
- ``leak``, ``near_duplicate``, ``memorized`` (a *match*): ``{"matched_key", "matched_dataset", "distance",
  "method", "similarity"?}``: the key matched, the dataset it is in (the path as given), the Hamming
  distance of the two hashes, ``"hash"`` (distance within the limit) or ``"semantic"`` (found by embedding
  similarity only; then ``similarity`` is the cosine), and ``similarity`` whenever both were embedded.
  A leak names the real TEST image, a memorised sample the real TRAIN image; where several match, the
  closest (:func:`closest_pair`: smallest distance, then highest similarity, ties broken by key). A
  near-duplicate names the member of its cluster that deduplication KEPT, in the same dataset; when the
  two are joined only through other members of the cluster (no direct pair), ``method`` is ``"cluster"``
  and ``distance``/``similarity`` are still theirs.
- ``over_quota``: ``{"class", "cell": {<attributes>}, "quota": <target>, "survivors": <n before dropping>}``.

A kept sample carries no ``evidence`` unless it was found memorised (it matches a real TRAIN image but
``drop_memorized`` is off): then ``memorized: true`` and the ``evidence`` of its closest train match.

:func:`pair_rows` lists every match that decided something, for ``pairs`` in ``reports/curate.json``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

MATCH_REASONS = ("leak", "near_duplicate", "memorized")


def match_evidence(key: str, dataset: str, distance: int, method: str, similarity: float | None = None
                   ) -> dict[str, Any]:
    """The evidence of a match with ``key`` of ``dataset``."""
    ev: dict[str, Any] = {"matched_key": key, "matched_dataset": dataset, "distance": int(distance),
                          "method": method}
    if similarity is not None:
        ev["similarity"] = round(float(similarity), 6)
    return ev


def pair_evidence(pair: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence for sample ``pair["a"]`` of a pair record of :func:`~factory.curate.dedup.find_duplicates`
    (``a``, ``b``, ``b_dataset``, ``distance``, ``method``, ``similarity``?)."""
    return match_evidence(pair["b"], pair["b_dataset"], pair["distance"], pair["method"], pair.get("similarity"))


def closest_pair(pairs: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The closest of ``pairs``: smallest distance, then highest similarity, then by matched key and dataset."""
    return min(pairs, key=lambda p: (p["distance"], -p.get("similarity", 0.0), p["b"], p["b_dataset"]), default=None)


def closest_matches(pairs: Iterable[Mapping[str, Any]], datasets: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per sample key (``a``), the evidence of its closest match in one of ``datasets``."""
    wanted = set(datasets)
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for p in pairs:
        if p["b_dataset"] in wanted:
            by_key.setdefault(p["a"], []).append(p)
    return {k: pair_evidence(closest_pair(ps)) for k, ps in by_key.items()}  # type: ignore[arg-type]


def score_evidence(reason: str, clip: float, margin: float, min_score: float, min_margin: float) -> dict[str, Any]:
    """The evidence of a ``low_clip_score`` or ``low_clip_margin`` decision."""
    if reason == "low_clip_score":
        return {"clip": clip, "threshold": min_score}
    return {"clip_margin": margin, "threshold": min_margin}


def pair_rows(reasons: Mapping[str, str], evidence: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"key", "reason", "matched_key", "matched_dataset", "distance", "method", "similarity"?}]`` for every
    sample left out for a match (:data:`MATCH_REASONS`), sorted by key."""
    return [{"key": k, "reason": r, **evidence[k]} for k, r in sorted(reasons.items())
            if r in MATCH_REASONS and k in evidence]
