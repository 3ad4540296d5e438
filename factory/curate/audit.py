"""Bias audit: the distribution of each attribute axis in a dataset's images, per class, against a target.

Where provenance is ground truth (real samples, e.g. ``sklearn:digits-colored``'s ``color``), it is read
from provenance. For synthetic samples provenance only says what was *asked for*, so the attribute is
measured in the image by CLIP zero-shot over attribute prompts ("a red digit three", "a green digit
three", ...): the value whose prompt scores highest. The distance to the target is the total variation
distance, 0.5 * sum |p - q| (0: identical, 1: disjoint).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.generate.plans import read_plan

Mode = Literal["auto", "provenance", "clip"]


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def _normalise(counts: Mapping[str, int], values: Sequence[str]) -> dict[str, float]:
    n = sum(counts.values())
    return {v: (counts.get(v, 0) / n if n else 0.0) for v in values}


def _zero_shot(scorer: Any, dataset: Dataset, axes: Mapping[str, Sequence[str]],
               batch_size: int = 256) -> dict[str, dict[str, Counter[str]]]:
    """Per class, per axis: counts of the attribute value CLIP sees in each image."""
    counts: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    prompt_emb: dict[tuple[str, str], np.ndarray] = {}
    for cls in dataset.classes:
        for axis, values in axes.items():
            prompts = [scorer.class_prompts([cls], {axis: v})[0] for v in values]
            prompt_emb[(cls, axis)] = scorer.embed_texts(prompts)
    batch: list = []

    def flush() -> None:
        if not batch:
            return
        emb = scorer.embed_images([s.pil() for s in batch])
        for i, s in enumerate(batch):
            cls = s.provenance["class_name"]
            for axis, values in axes.items():
                counts[cls][axis][values[int(np.argmax(prompt_emb[(cls, axis)] @ emb[i]))]] += 1
        batch.clear()

    for s in dataset:
        batch.append(s)
        if len(batch) == batch_size:
            flush()
    flush()
    return counts


def audit(dataset: Path | str, *, plan: Path | str | None = None, scorer: Any = None, mode: Mode = "auto",
          axes: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Measure each attribute axis per class against the target: the plan's target distribution
    when a plan is given, else uniform over the axis's values."""
    ds = Dataset(dataset)
    target: dict[str, dict[str, float]] = {}
    if plan is not None:
        target = {a: dict(v) for a, v in read_plan(plan).header["target"]["attributes"].items()}
    if axes is None:
        axes = {a: list(v) for a, v in target.items()} or dict(ds.meta.get("attributes") or {})
    if not axes:  # fall back to what the provenance records
        seen: dict[str, set[str]] = defaultdict(set)
        for rec in ds.records():
            for a, v in (rec.get("attributes") or {}).items():
                seen[a].add(str(v))
        axes = {a: sorted(v) for a, v in seen.items()}
    if not axes:
        raise FactoryError(f"{ds.path}: no attribute axes to audit (give a plan with attributes, or a dataset "
                           "whose provenance records attributes)")
    sources = Counter(rec.get("source") for rec in ds.records())
    if mode == "auto":
        mode = "provenance" if set(sources) == {"real"} else "clip"
    if mode == "clip":
        if scorer is None:
            raise FactoryError(f"{ds.path}: synthetic samples need a scorer to measure attributes in the images "
                               "(--scorer), or --mode provenance to count what was asked for")
        counts = _zero_shot(scorer, ds, axes)
    elif mode == "provenance":
        counts = defaultdict(lambda: defaultdict(Counter))
        for rec in ds.records():
            for axis in axes:
                value = (rec.get("attributes") or {}).get(axis)
                if value is not None:
                    counts[rec["class_name"]][axis][str(value)] += 1
    else:
        raise FactoryError(f"audit mode must be one of auto, provenance, clip; got {mode!r}")
    result: dict[str, Any] = {"dataset": str(ds.path), "mode": mode, "axes": {}, "samples": sum(sources.values())}
    for axis, values in axes.items():
        tgt = target.get(axis) or {v: 1.0 / len(values) for v in values}
        per_class = {}
        total: Counter[str] = Counter()
        for cls in ds.classes:
            c = counts.get(cls, {}).get(axis, Counter())
            if not c:
                continue
            total.update(c)
            dist = _normalise(c, values)
            per_class[cls] = {"counts": {v: int(c.get(v, 0)) for v in values}, "distribution": dist,
                              "tv": round(total_variation(dist, tgt), 4)}
        overall = _normalise(total, values)
        result["axes"][axis] = {
            "values": list(values), "target": tgt, "per_class": per_class, "overall": overall,
            "tv_overall": round(total_variation(overall, tgt), 4),
            "tv_mean_per_class": round(float(np.mean([r["tv"] for r in per_class.values()])), 4) if per_class else None,
        }
    return result


def format_audit(result: Mapping[str, Any]) -> str:
    lines = [f"audit of {result['dataset']} ({result['samples']} samples; attributes from {result['mode']})"]
    for axis, a in result["axes"].items():
        values = a["values"]
        width = max([5] + [len(c) for c in a["per_class"]])
        cols = [max(6, len(v)) for v in values]
        lines.append("")
        lines.append("  ".join([f"{axis:<{width}}"] + [f"{v:>{w}}" for v, w in zip(values, cols)] + ["    TV"]))
        for cls, r in a["per_class"].items():
            lines.append("  ".join([f"{cls:<{width}}"] + [f"{r['distribution'][v]:>{w}.1%}" for v, w in zip(values, cols)]
                                   + [f"{r['tv']:>6.3f}"]))
        lines.append("  ".join([f"{'all':<{width}}"] + [f"{a['overall'][v]:>{w}.1%}" for v, w in zip(values, cols)]
                               + [f"{a['tv_overall']:>6.3f}"]))
        lines.append("  ".join([f"{'target':<{width}}"] + [f"{a['target'].get(v, 0):>{w}.1%}" for v, w in zip(values, cols)]))
        lines.append(f"total-variation distance to target: overall {a['tv_overall']:.3f}, "
                     f"mean per class {a['tv_mean_per_class']:.3f}")
    return "\n".join(lines)
