"""Bias audit: the distribution of each attribute axis in a dataset's images, per class, against a target;
and what a synthetic set's images *show* against what their prompts *asked for*.

Where provenance is ground truth (real samples, e.g. ``sklearn:digits-colored``'s ``color``), it is read
from provenance. For synthetic samples provenance only says what was *asked for*, so the attribute is
measured in the image: from its pixels where the axis is measurable (colour, thickness, slant:
:mod:`factory.data.attributes`; thickness and slant as per-class tertile levels fit on a real reference
set, the real train split), else by CLIP zero-shot over attribute prompts ("a red digit three", ...).
The realised values are what the audit counts; the requested ones are shown beside them, with the
agreement rate and a confusion of requested against realised values per axis. The distance to the target
is the total variation distance, 0.5 * sum |p - q| (0: identical, 1: disjoint).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.attributes import MEASURED_AXES, STYLE_AXES, Levels, fit_levels, measure
from factory.generate.plans import read_plan

Mode = Literal["auto", "provenance", "pixels", "clip"]
MODES = ("auto", "provenance", "pixels", "clip")
UNMEASURED = "(none)"  # the realised value of an image that shows no value (e.g. an empty image's colour)


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def _normalise(counts: Mapping[str, int], values: Sequence[str]) -> dict[str, float]:
    n = sum(counts.values())
    return {v: (counts.get(v, 0) / n if n else 0.0) for v in values}


def requested_attributes(rec: Mapping[str, Any]) -> dict[str, str]:
    """What a sample's prompt asked for (synthetic: ``prompt.attributes``), else its recorded ``attributes``."""
    prompt = rec.get("prompt")
    attrs = prompt.get("attributes") if isinstance(prompt, Mapping) else None
    if attrs is None:
        attrs = rec.get("attributes")
    return {str(k): str(v) for k, v in (attrs or {}).items()}


def reference_levels(reference: Dataset | Path | str, axes: Sequence[str] = STYLE_AXES) -> Levels:
    """Per-class tertile levels of the style ``axes``, fit on a real ``reference`` dataset (the real train
    split) in its stored order: deterministic."""
    ref = reference if isinstance(reference, Dataset) else Dataset(reference)
    images, classes = [], []
    for s in ref:
        images.append(s.pil())
        classes.append(s.provenance["class_name"])
    if not images:
        raise FactoryError(f"{ref.path}: the reference dataset for style levels is empty")
    return fit_levels(images, axes, classes)


@dataclass(frozen=True)
class Realised:
    """One sample: its class, what was requested and what its pixels show (per measured axis)."""

    key: str
    class_name: str
    requested: dict[str, str]
    realised: dict[str, str | None]


def realised_attributes(dataset: Dataset | Path | str, axes: Sequence[str], levels: Levels | None = None
                        ) -> list[Realised]:
    """Every sample's requested attributes and its realised values of ``axes`` measured from its pixels
    (style axes need ``levels``, e.g. :func:`reference_levels` of the real train split)."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    bad = [a for a in axes if a not in MEASURED_AXES]
    if bad:
        raise FactoryError(f"{ds.path}: attribute(s) {bad} cannot be measured from pixels; measurable: "
                           f"{list(MEASURED_AXES)}")
    if any(a in STYLE_AXES for a in axes) and levels is None:
        raise FactoryError(f"{ds.path}: measuring {[a for a in axes if a in STYLE_AXES]} needs style levels fit "
                           "on a real reference set (--reference, the real train split)")
    out = []
    for s in ds:
        cls = s.provenance["class_name"]
        out.append(Realised(s.key, cls, requested_attributes(s.provenance),
                            measure(s.pil(), list(axes), levels, cls) if axes else {}))
    return out


def realised_report(rows: Iterable[Realised], axes: Sequence[str],
                    values: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Realised against requested, per axis: per class the requested and realised counts, how many
    samples show what they asked for (``agree``, ``agreement``), and a confusion ``requested -> realised
    -> count`` (a realised ``None`` counts as :data:`UNMEASURED`); samples that requested no value of the
    axis are counted as ``not_requested`` and left out of the agreement."""
    rows = list(rows)
    out: dict[str, Any] = {}
    for axis in axes:
        per_class: dict[str, dict[str, Any]] = {}
        confusion: dict[str, Counter[str]] = defaultdict(Counter)
        agree = asked = 0
        for r in rows:
            c = per_class.setdefault(r.class_name, {"n": 0, "agree": 0, "not_requested": 0,
                                                    "requested": Counter(), "realised": Counter()})
            got = r.realised.get(axis)
            got_s = UNMEASURED if got is None else got
            c["n"] += 1
            c["realised"][got_s] += 1
            want = r.requested.get(axis)
            if want is None:
                c["not_requested"] += 1
                continue
            c["requested"][want] += 1
            confusion[want][got_s] += 1
            asked += 1
            hit = int(want == got)
            c["agree"] += hit
            agree += hit
        order = list((values or {}).get(axis, []))
        seen = sorted({v for c in per_class.values() for v in (*c["requested"], *c["realised"])} - set(order))
        order += seen
        out[axis] = {
            "values": order,
            "agreement": round(agree / asked, 6) if asked else None,
            "requested": asked, "agree": agree,
            "per_class": {cls: {"n": c["n"], "agree": c["agree"], "not_requested": c["not_requested"],
                                "agreement": round(c["agree"] / (c["n"] - c["not_requested"]), 6)
                                if c["n"] > c["not_requested"] else None,
                                "requested_counts": {v: int(c["requested"].get(v, 0)) for v in order},
                                "realised_counts": {v: int(c["realised"].get(v, 0)) for v in order}}
                          for cls, c in sorted(per_class.items())},
            "confusion": {w: {v: int(confusion[w][v]) for v in order if confusion[w][v]}
                          for w in order if w in confusion},
        }
    return out


def _prompt_embeddings(scorer: Any, classes: Sequence[str], axis: str, values: Sequence[str]
                       ) -> dict[str, np.ndarray]:
    return {cls: scorer.embed_texts([scorer.class_prompts([cls], {axis: v})[0] for v in values]) for cls in classes}


def _zero_shot(scorer: Any, dataset: Dataset, prompt_emb: Mapping[str, Mapping[str, np.ndarray]],
               axes: Mapping[str, Sequence[str]], batch_size: int = 256) -> dict[str, dict[str, Counter[str]]]:
    """Per class, per axis of ``prompt_emb``: counts of the attribute value CLIP sees in each image."""
    counts: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    batch: list = []

    def flush() -> None:
        if not batch:
            return
        emb = scorer.embed_images([s.pil() for s in batch])
        for i, s in enumerate(batch):
            cls = s.provenance["class_name"]
            for axis, by_class in prompt_emb.items():
                counts[cls][axis][axes[axis][int(np.argmax(by_class[cls] @ emb[i]))]] += 1
        batch.clear()

    for s in dataset:
        batch.append(s)
        if len(batch) == batch_size:
            flush()
    flush()
    return counts


def _axes_to_audit(ds: Dataset, target: Mapping[str, Any], axes: Mapping[str, Sequence[str]] | None
                   ) -> dict[str, list[str]]:
    if axes is None:
        axes = {a: list(v) for a, v in target.items()} or dict(ds.meta.get("attributes") or {})
    if not axes:  # fall back to what the provenance records
        seen: dict[str, set[str]] = defaultdict(set)
        for rec in ds.records():
            for a, v in requested_attributes(rec).items():
                seen[a].add(v)
        axes = {a: sorted(v) for a, v in seen.items()}
    if not axes:
        raise FactoryError(f"{ds.path}: no attribute axes to audit (give a plan with attributes, or a dataset "
                           "whose provenance records attributes)")
    return {str(a): [str(v) for v in vs] for a, vs in axes.items()}


def audit(dataset: Path | str, *, plan: Path | str | None = None, scorer: Any = None, mode: Mode = "auto",
          axes: Mapping[str, Sequence[str]] | None = None, reference: Path | str | None = None,
          levels: Levels | None = None) -> dict[str, Any]:
    """Measure each attribute axis per class against the target: the plan's target distribution
    when a plan is given, else uniform over the axis's values.

    ``mode``: ``provenance`` counts the recorded attributes (ground truth for real data, the request for
    synthetic data); ``pixels`` measures every axis from the pixels; ``clip`` by CLIP zero-shot, falling
    back to pixels for a measurable axis the scorer has no words for; ``auto``: provenance for real data,
    else pixels for measurable axes and CLIP for the others. Style axes need ``levels`` or a real
    ``reference`` dataset (the real train split) to fit them on. For synthetic data the requested values
    are shown beside the realised ones (``requested``, ``agreement``, ``confusion`` per axis)."""
    if mode not in MODES:
        raise FactoryError(f"audit mode must be one of {', '.join(MODES)}; got {mode!r}")
    ds = Dataset(dataset)
    target: dict[str, dict[str, float]] = {}
    if plan is not None:
        target = {a: dict(v) for a, v in read_plan(plan).header["target"]["attributes"].items()}
    axes = _axes_to_audit(ds, target, axes)
    sources = Counter(rec.get("source") for rec in ds.records())
    real = set(sources) == {"real"}
    measured_by: dict[str, str] = {}
    notes: list[str] = []
    if mode == "provenance" or (mode == "auto" and real):
        measured_by = {a: "provenance" for a in axes}
    elif mode == "pixels":
        measured_by = {a: "pixels" for a in axes}
    else:
        clip_axes = list(axes) if mode == "clip" else [a for a in axes if a not in MEASURED_AXES]
        measured_by = {a: "pixels" for a in axes if a not in clip_axes}
        prompt_emb = {}
        for axis in clip_axes:
            if scorer is None:
                raise FactoryError(f"{ds.path}: attribute {axis!r} cannot be measured from pixels; give a scorer "
                                   "(--scorer) to measure it by CLIP, or --mode provenance to count what was asked for")
            try:
                prompt_emb[axis] = _prompt_embeddings(scorer, ds.classes, axis, axes[axis])
                measured_by[axis] = "clip"
            except FactoryError as exc:
                if axis not in MEASURED_AXES:
                    raise FactoryError(f"{ds.path}: the scorer cannot measure {axis!r} ({exc})") from None
                measured_by[axis] = "pixels"
                notes.append(f"{axis}: measured from pixels, the scorer cannot ({exc})")
    pixel_axes = [a for a in axes if measured_by[a] == "pixels"]
    if pixel_axes and levels is None and any(a in STYLE_AXES for a in pixel_axes):
        if reference is None:
            raise FactoryError(f"{ds.path}: measuring {[a for a in pixel_axes if a in STYLE_AXES]} needs style "
                               "levels: give --reference (the real train split they are fit on)")
        levels = reference_levels(reference, [a for a in STYLE_AXES if a in pixel_axes])
    rows = realised_attributes(ds, pixel_axes, levels)
    counts: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for r in rows:
        for axis in axes:
            value = r.realised.get(axis) if measured_by[axis] == "pixels" else (
                r.requested.get(axis) if measured_by[axis] == "provenance" else None)
            if measured_by[axis] == "pixels" and value is None:
                value = UNMEASURED
            if value is not None:
                counts[r.class_name][axis][value] += 1
    clip_axes = [a for a in axes if measured_by[a] == "clip"]
    if clip_axes:
        zs = _zero_shot(scorer, ds, {a: prompt_emb[a] for a in clip_axes}, axes)
        for cls, by_axis in zs.items():
            for axis, c in by_axis.items():
                counts[cls][axis].update(c)
    used = set(measured_by.values())
    result: dict[str, Any] = {"dataset": str(ds.path), "mode": used.pop() if len(used) == 1 else "mixed",
                              "requested_mode": mode, "measured_by": measured_by, "notes": notes,
                              "axes": {}, "samples": sum(sources.values())}
    if levels is not None:
        result["levels"] = levels.to_dict()
    requested = {}
    if not real:
        requested = realised_report(rows, pixel_axes, axes)
    for axis, values in axes.items():
        values = values + [v for v in sorted({v for c in counts.values() for v in c.get(axis, {})}) if v not in values]
        tgt = target.get(axis) or {v: 1.0 / len(axes[axis]) for v in axes[axis]}
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
        row = {"measured_by": measured_by[axis], "values": list(values), "target": tgt, "per_class": per_class,
               "overall": overall, "tv_overall": round(total_variation(overall, tgt), 4),
               "tv_mean_per_class": round(float(np.mean([r["tv"] for r in per_class.values()])), 4)
               if per_class else None}
        if axis in requested:
            rq = requested[axis]
            req_total: Counter[str] = Counter()
            for cls, pc in rq["per_class"].items():
                req_total.update(pc["requested_counts"])
                if cls in per_class:
                    per_class[cls].update(requested_counts=pc["requested_counts"], agreement=pc["agreement"])
            req_overall = _normalise(req_total, values)
            row.update(requested_overall=req_overall, tv_overall_requested=round(total_variation(req_overall, tgt), 4),
                       agreement=rq["agreement"], confusion=rq["confusion"])
        result["axes"][axis] = row
    return result


def format_audit(result: Mapping[str, Any]) -> str:
    lines = [f"audit of {result['dataset']} ({result['samples']} samples; attributes from {result['mode']})"]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    for axis, a in result["axes"].items():
        values = a["values"]
        width = max([9] + [len(c) for c in a["per_class"]])
        cols = [max(6, len(v)) for v in values]
        lines.append("")
        lines.append(f"{axis}: measured by {a.get('measured_by', result['mode'])}"
                     + ("; rows: realised share, (requested share), agreement" if "agreement" in a else ""))
        lines.append("  ".join([f"{axis:<{width}}"] + [f"{v:>{w}}" for v, w in zip(values, cols)] + ["    TV"]
                               + (["  agree"] if "agreement" in a else [])))
        for cls, r in a["per_class"].items():
            agree = r.get("agreement")
            lines.append("  ".join([f"{cls:<{width}}"] + [f"{r['distribution'][v]:>{w}.1%}" for v, w in zip(values, cols)]
                                   + [f"{r['tv']:>6.3f}"] + ([f"{agree:>7.1%}" if agree is not None else "      -"]
                                                              if "agreement" in a else [])))
            if "requested_counts" in r:
                n = sum(r["requested_counts"].values()) or 1
                lines.append("  ".join([f"{'':<{width}}"] + [f"({r['requested_counts'].get(v, 0) / n:.0%})".rjust(w)
                                                              for v, w in zip(values, cols)]))
        lines.append("  ".join([f"{'all':<{width}}"] + [f"{a['overall'][v]:>{w}.1%}" for v, w in zip(values, cols)]
                               + [f"{a['tv_overall']:>6.3f}"]
                               + ([f"{a['agreement']:>7.1%}" if a["agreement"] is not None else "      -"]
                                  if "agreement" in a else [])))
        if "requested_overall" in a:
            lines.append("  ".join([f"{'requested':<{width}}"] + [f"{a['requested_overall'][v]:>{w}.1%}"
                                                                  for v, w in zip(values, cols)]
                                   + [f"{a['tv_overall_requested']:>6.3f}"]))
        lines.append("  ".join([f"{'target':<{width}}"] + [f"{a['target'].get(v, 0):>{w}.1%}" for v, w in zip(values, cols)]))
        mean = a["tv_mean_per_class"]
        lines.append(f"total-variation distance to target: overall {a['tv_overall']:.3f}, "
                     f"mean per class {mean:.3f}" if mean is not None else
                     f"total-variation distance to target: overall {a['tv_overall']:.3f}")
        if "confusion" in a:
            lines.append(f"requested -> realised ({a['agreement']:.1%} agree):" if a["agreement"] is not None
                         else "requested -> realised:")
            for want, got in a["confusion"].items():
                lines.append(f"  {want:<{width}} -> " + ", ".join(f"{v} {n}" for v, n in got.items()))
    return "\n".join(lines)
