"""Curation: decide, sample by sample, what enters a curated synthetic dataset, and say why.

Three steps, each a reason a sample can be left out:

1. **semantic mismatch** (CLIP): the image's score against its own prompt (``clip``) and its margin
   (own-class prompt minus the best other class, ``clip_margin``). Thresholds are calibrated on REAL
   images by default, the val split in the pipeline (a low percentile of their scores and margins), each
   real image scored exactly as a sample is: against the plan's template(s) filled with its class and its
   attributes (:class:`CaptionForm`); or set explicitly. The report says which share of real val and
   real test images the thresholds would reject (``calibration``).
2. **near-duplicates and leaks** (:mod:`factory.curate.dedup`): one sample per near-duplicate cluster is kept;
   every sample that nearly copies a real TEST image is dropped (a leak); matches with the real TRAIN
   split (memorisation) are reported, and dropped only when asked.
3. **rebalancing**: survivors are subsampled to the plan's exact target quota per class x attribute
   cell (the plan may be oversized with ``plan.oversample``); cells that fell short are reported.

Kept samples get ``scores`` and ``decision`` in their provenance; the others go to a rejected dataset
with the same fields and their reason. Counts per class and reason go to the report.

The decision and its evidence (contract; the fields of ``evidence`` per reason are in
:mod:`factory.curate.evidence`)::

    "decision": {"kept": false, "reason": "<reason>", "min_score": ..., "min_margin": ...,
                 "evidence": {...}}

A kept sample has no ``evidence``, unless it was found memorised (``"memorized": true``): then the evidence of
its closest real TRAIN match. The report (``reports/curate.json``, schema ``factory.curate/1``) also lists
``pairs``: every match that left a sample out (leak, near-duplicate, memorised), sorted by key; and, when the
thresholds were calibrated, the real val scores they come from in ``calibration.scores``: ``clip`` (each image's
score against its best caption for each template, image by image in the dataset's order:
``calibration.captions.per_image`` values per image) and ``clip_margin`` (one per image), rounded to 4 decimals.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from factory.config import CurateConfig, FilterConfig
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes
from factory.core.outputs import claim_output_file
from factory.core.sample import Sample, sample_attributes, with_updates
from factory.core.shards import Dataset, DatasetWriter, check_output_dir
from factory.curate.dedup import find_duplicates
from factory.curate.evidence import closest_matches, pair_rows, score_evidence
from factory.curate.hashing import Progress
from factory.curate.scorers.base import Scorer, class_prompts, class_words, margins
from factory.data.attributes import STYLE_LEVELS
from factory.data.classnames import ClassInfo, class_infos, display_names
from factory.generate.plans import Plan, fill_template, read_plan

log = logging.getLogger(__name__)

REASONS = ("low_clip_score", "low_clip_margin", "leak", "near_duplicate", "memorized", "over_quota")


@dataclass
class Thresholds:
    min_score: float
    min_margin: float
    calibrated_on: str | None = None
    percentile: float | None = None
    real: dict[str, Any] = field(default_factory=dict)


def _own_text(scorer: Scorer, sample: Sample) -> str:
    """The text an image is scored against: its own prompt, in the scorer's words (Scorer.prompt_text)."""
    prompt = sample.provenance.get("prompt") or {}
    attrs = sample.provenance.get("attributes") or prompt.get("attributes") or None
    return scorer.prompt_text(sample.provenance["class_name"], prompt.get("text"), attrs)


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_samples(scorer: Scorer, dataset: Dataset, batch_size: int = 256, progress: Progress | None = None
                  ) -> Iterator[tuple[Sample, float, float]]:
    """(sample, clip, clip_margin) for every sample, streaming batch by batch; ``progress`` wraps the
    samples as in :func:`~factory.curate.dedup.find_duplicates` (iterable, description, total)."""
    text_emb = scorer.embed_texts(class_prompts(scorer, dataset.classes,
                                                names=display_names(dataset.classes, dataset.meta)))
    samples: Iterable[Sample] = (dataset if progress is None
                                 else progress(dataset, f"score {dataset.path.name}", len(dataset)))
    for batch in _batches(samples, batch_size):
        images = [s.pil() for s in batch]
        img = scorer.embed_images(images)
        own = np.sum(img * scorer.embed_texts([_own_text(scorer, s) for s in batch]), axis=1)
        marg = margins(img @ text_emb.T, [s.label for s in batch])
        for s, c, m in zip(batch, own.tolist(), marg.tolist()):
            yield s, float(c), float(m)


@dataclass(frozen=True)
class CaptionForm:
    """How the samples' captions are written, so real images are scored against captions of the same
    form: each of ``templates`` filled as a plan fills it (``template.format(class_name=..., **attributes)``)
    with the image's class and its attributes on ``axes``, then put in the scorer's words
    (:meth:`Scorer.prompt_text`, exactly as :func:`_own_text` does for a sample). No templates: the
    scorer's class prompt (with the attributes on ``axes``).

    An axis a real image does not carry (a prompt-only attribute such as a photo's background: nothing
    measures it on real data) is filled with each of its ``values`` and the image keeps its best caption
    (its score is the max over them): the caption that describes it, as a sample's own prompt describes
    the sample. A style axis that split measures on real images (:data:`STYLE_LEVELS`) is never guessed:
    real data without it is an error, as is an axis without values."""

    templates: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()
    source: str = "class prompt"  # plan | dataset | class prompt
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()  # axis -> its values (for axes real data lacks)

    @classmethod
    def of_plan(cls, plan: Plan) -> "CaptionForm":
        target = plan.header["target"]["attributes"]
        return cls(tuple(plan.header["templates"]), tuple(target), "plan",
                   tuple((a, tuple(v)) for a, v in target.items()))

    @classmethod
    def of_dataset(cls, dataset: Dataset) -> "CaptionForm":
        """The templates and attribute axes the samples' own prompts were made with (their provenance)."""
        templates: dict[str, None] = {}
        axes: dict[str, dict[str, None]] = {}
        for rec in dataset.records():
            prompt = rec.get("prompt") or {}
            if isinstance(prompt.get("template"), str):
                templates.setdefault(prompt["template"])
            for a, v in (prompt.get("attributes") or {}).items():
                axes.setdefault(str(a), {}).setdefault(str(v))
        values = tuple((a, tuple(v)) for a, v in axes.items())
        return (cls(tuple(templates), tuple(axes), "dataset", values) if templates
                else cls(axes=tuple(axes), values=values))

    def variants(self, scorer: Scorer, sample: Sample, info: ClassInfo | None = None) -> list[list[str]]:
        """Per template, the captions a real ``sample`` is scored against (several when it lacks an axis: one
        per value; it keeps the best), filled as a plan fills them with the class's words (``info``, from the
        real dataset's class names; None: the id is the name)."""
        have = sample_attributes(sample.provenance)
        known = dict(self.values)
        missing = [a for a in self.axes if a not in have]
        unknowable = [a for a in missing if not known.get(a) or a in STYLE_LEVELS]  # measurable: must be measured
        if unknowable:
            raise FactoryError(f"calibration: real sample {sample.key!r} has no {unknowable[0]!r} attribute, which "
                               f"the samples' captions name; give real data that carries it (e.g. split.style)")
        attrs = {a: have[a] for a in self.axes if a in have}
        class_name = sample.provenance["class_name"]
        info = info or ClassInfo(class_name, class_name)
        word = class_words(scorer, [class_name], [info.name])[0]
        if not self.templates:
            return [[scorer.prompt_text(word, None, a or None) for a in _fillings(attrs, missing, known)]]
        out = []
        for t in self.templates:
            used = [a for a in missing if "{" + a + "}" in t]
            texts = []
            for a in _fillings(attrs, used, known):
                try:
                    text = fill_template(t, info, {**{m: known[m][0] for m in missing}, **a}, 0, sample.key)
                except FactoryError as exc:
                    raise FactoryError(f"calibration: template {t!r} cannot be filled for real sample "
                                       f"{sample.key!r} ({exc})") from None
                texts.append(scorer.prompt_text(class_name, text, a or None))
            out.append(texts)
        return out

    def texts(self, scorer: Scorer, sample: Sample, info: ClassInfo | None = None) -> list[str]:
        """One caption per template for a real ``sample`` that carries every axis (see :meth:`variants`)."""
        return [v[0] for v in self.variants(scorer, sample, info)]

    def describe(self) -> dict[str, Any]:
        return {"from": self.source, "templates": list(self.templates), "attributes": list(self.axes)}


def _fillings(attrs: dict[str, str], missing: Sequence[str], known: Mapping[str, Sequence[str]]
              ) -> list[dict[str, str]]:
    """``attrs`` with every combination of values of the ``missing`` axes."""
    out = [dict(attrs)]
    for axis in missing:
        out = [{**a, axis: v} for a in out for v in known[axis]]
    return out


def real_scores(scorer: Scorer, real: Dataset, form: CaptionForm = CaptionForm(), batch_size: int = 256
                ) -> tuple[np.ndarray, np.ndarray]:
    """Score REAL images exactly as samples are scored: ``(N, T)`` cosines of each image with its caption
    for each of the form's T templates, and ``(N,)`` margins (own class prompt minus the best other)."""
    infos = class_infos(real.classes, real.meta)
    text_emb = scorer.embed_texts(class_prompts(scorer, real.classes, names=[i.name for i in infos]))
    cache: dict[str, np.ndarray] = {}
    own_all, marg_all = [], []
    for batch in _batches(real, batch_size):
        img = scorer.embed_images([s.pil() for s in batch])
        texts = [form.variants(scorer, s, infos[s.label]) for s in batch]
        new = sorted({t for per in texts for ts in per for t in ts} - cache.keys())
        if new:
            cache.update(zip(new, scorer.embed_texts(new)))
        own_all.append(np.array([[max(float(img[i] @ cache[t]) for t in ts) for ts in per]
                                 for i, per in enumerate(texts)]))
        marg_all.append(margins(img @ text_emb.T, [s.label for s in batch]))
    if not own_all:
        raise FactoryError(f"{real.path}: no real images to calibrate on")
    return np.concatenate(own_all), np.concatenate(marg_all)


def reject_share(own: np.ndarray, marg: np.ndarray, min_score: float, min_margin: float) -> float:
    """The share of (image, caption) pairs the thresholds would reject (an image per template)."""
    return float(np.mean(_rejected(own, marg, min_score, min_margin)))


def _rejected(own: np.ndarray, marg: np.ndarray, min_score: float, min_margin: float) -> np.ndarray:
    return (own < min_score) | (marg[:, None] < min_margin)


def share_detail(own: np.ndarray, marg: np.ndarray, min_score: float, min_margin: float,
                 draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Which threshold rejects how much of a real split: the score alone, the margin alone and either (the
    filter's rule), with a 95% bootstrap interval of the latter over images (an image's captions move
    together). Each single threshold should sit near the percentile; "either" between it and twice it."""
    per_image = _rejected(own, marg, min_score, min_margin).mean(axis=1)
    rng = np.random.default_rng(seed)
    boot = per_image[rng.integers(0, len(per_image), size=(draws, len(per_image)))].mean(axis=1)
    return {"n": int(len(per_image)), "score": round(float(np.mean(own < min_score)), 4),
            "margin": round(float(np.mean(marg < min_margin)), 4), "either": round(float(per_image.mean()), 4),
            "either_ci95": [round(float(v), 4) for v in np.percentile(boot, [2.5, 97.5])]}


Scores = tuple[np.ndarray, np.ndarray]  # (N, T) own-caption cosines, (N,) margins: see real_scores


def thresholds_from(scores: Scores, percentile: float, where: str) -> Thresholds:
    """The ``percentile``-th percentile of real images' own-caption scores and of their margins."""
    own, marg = scores
    t_score, t_margin = float(np.percentile(own, percentile)), float(np.percentile(marg, percentile))
    return Thresholds(t_score, t_margin, where, percentile,
                      {"samples": int(len(own)), "captions_per_image": int(own.shape[1]),
                       "clip_mean": round(float(own.mean()), 4), "clip_margin_mean": round(float(marg.mean()), 4),
                       "flagged_rate": round(reject_share(own, marg, t_score, t_margin), 4)})


def calibrate(scorer: Scorer, real: Dataset, percentile: float, batch_size: int = 256,
              form: CaptionForm = CaptionForm()) -> Thresholds:
    """Thresholds from REAL images (the val split) scored as samples are (``form``): the ``percentile``-th
    percentile of their scores against their own captions and of their margins. By construction about
    ``percentile`` % of real images fall below each."""
    return thresholds_from(real_scores(scorer, real, form, batch_size), percentile, str(real.path))


def resolve_thresholds(scorer: Scorer, cfg: FilterConfig, calibrate_on: Path | str | None,
                       form: CaptionForm = CaptionForm(), scores: Scores | None = None) -> Thresholds:
    """``cfg``'s thresholds where set, the rest calibrated on ``calibrate_on`` (its ``scores`` when given:
    :func:`real_scores` of it with ``form``)."""
    if cfg.min_score is not None and cfg.min_margin is not None:
        return Thresholds(cfg.min_score, cfg.min_margin)
    if calibrate_on is None:
        raise FactoryError("thresholds need calibration data: give a real dataset to calibrate on, "
                           "or set both min_score and min_margin")
    if scores is None:
        scores = real_scores(scorer, Dataset(calibrate_on), form, cfg.batch_size)
    t = thresholds_from(scores, cfg.percentile, str(Path(calibrate_on)))
    return Thresholds(cfg.min_score if cfg.min_score is not None else t.min_score,
                      cfg.min_margin if cfg.min_margin is not None else t.min_margin,
                      t.calibrated_on, t.percentile, t.real)


def calibration_report(thresholds: Thresholds, calibrate_on: Path | str, val: Scores, tests: list[Scores],
                       form: CaptionForm) -> dict[str, Any]:
    """What the thresholds do to REAL images: the share of the calibration (val) split and of the test
    split(s) they would reject, every image scored against captions of the samples' form. Both should
    lie near the percentile (between it and twice it: an image fails on its score or on its margin)."""
    splits = {"val": val}
    if tests:
        splits["test"] = (np.concatenate([o for o, _ in tests]), np.concatenate([m for _, m in tests]))
    shares = {k: reject_share(*v, thresholds.min_score, thresholds.min_margin) for k, v in splits.items()}
    detail = {k: share_detail(*v, thresholds.min_score, thresholds.min_margin) for k, v in splits.items()}
    return {"split": str(calibrate_on), "n": int(len(val[0])),
            "percentile": thresholds.percentile if thresholds.calibrated_on else None,
            "captions": form.describe() | {"per_image": int(val[0].shape[1])},
            "scores": {"clip": [round(float(v), 4) for v in val[0].ravel()],  # image by image, per template
                       "clip_margin": [round(float(v), 4) for v in val[1]]},
            "thresholds": {"min_score": thresholds.min_score, "min_margin": thresholds.min_margin},
            "reject_share": {k: round(v, 4) for k, v in shares.items()},
            "reject_share_detail": detail,
            "test_n": int(sum(len(m) for _, m in tests))}


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}/{key}".encode()).digest()


def _cell(attrs: dict[str, Any] | None) -> str:
    return json.dumps(attrs or {}, sort_keys=True)


def rebalance(survivors: dict[str, tuple[str, dict[str, Any]]], plan: Plan, seed: int
              ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Keys to drop so that each class x cell holds exactly its target quota (where enough survived),
    chosen by a seeded hash of the key (deterministic, independent of order), each with its evidence
    (``class``, ``cell``, ``quota``, ``survivors``: the cell's count before dropping); plus the shortfalls."""
    target = plan.header["target"]
    by_cell: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, (cls, attrs) in survivors.items():
        by_cell[(cls, _cell(attrs))].append(key)
    drop: dict[str, dict[str, Any]] = {}
    short: list[dict[str, Any]] = []
    for cls in plan.header["plan_classes"]:
        for cell in target["cells"]:
            quota = int(cell["per_class"])
            keys = sorted(by_cell.get((cls, _cell(cell["attributes"])), []), key=lambda k: _rank(seed, k))
            why = {"class": cls, "cell": dict(cell["attributes"]), "quota": quota, "survivors": len(keys)}
            drop.update((k, why) for k in keys[quota:])
            if len(keys) < quota:
                short.append({"class": cls, "attributes": cell["attributes"], "target": quota, "kept": len(keys)})
    return drop, short


@dataclass
class CurateResult:
    report: dict[str, Any]
    kept: int
    rejected: int


def check_outputs(out_dir: Path | str, rejected_dir: Path | str | None, report_path: Path | str | None, *,
                  inputs: Iterable[Path | str | None], overwrite: bool) -> None:
    """Before any work: the kept and rejected datasets and the report must each be claimable (see
    :mod:`factory.core.outputs`), apart from every input and from each other."""
    check_output_dir(out_dir, overwrite, inputs=inputs, others=[rejected_dir, report_path])
    if rejected_dir is not None:
        check_output_dir(rejected_dir, overwrite, inputs=inputs, others=[out_dir, report_path])
    if report_path is not None:
        claim_output_file(report_path, inputs=inputs, others=[out_dir, rejected_dir])


def curate(raw: Path | str, out_dir: Path | str, *, scorer: Scorer, cfg: CurateConfig = CurateConfig(),
           calibrate_on: Path | str | None = None, test: Iterable[Path | str] = (),
           train: Iterable[Path | str] = (), plan: Path | str | None = None,
           rejected_dir: Path | str | None = None, report_path: Path | str | None = None,
           overwrite: bool = False, progress: Progress | None = None) -> CurateResult:
    """Curate ``raw`` into ``out_dir``. ``test``: real held-out splits (matches are leaks, always
    dropped); ``train``: real training splits (matches are memorisation, reported; dropped with
    ``cfg.drop_memorized``); ``plan``: rebalance survivors to its target quotas. ``progress``
    (iterable, description, total) -> iterable wraps the samples scored, hashed and written."""
    ds = Dataset(raw)
    out_dir = Path(out_dir)
    test, train = [Path(p) for p in test], [Path(p) for p in train]
    inputs = [ds.path, calibrate_on, *test, *train, plan,  # and the scorer's files, if it has any
              getattr(scorer, "model_dir", None), getattr(scorer, "checkpoint", None)]
    check_outputs(out_dir, rejected_dir, report_path, inputs=inputs, overwrite=overwrite)
    the_plan = read_plan(plan) if plan is not None else None
    # 0. thresholds from REAL val images scored as the samples are: against captions of their form
    form, val, calibration, bs = CaptionForm(), None, None, cfg.filter.batch_size
    if calibrate_on is not None:
        form = CaptionForm.of_plan(the_plan) if the_plan is not None else CaptionForm.of_dataset(ds)
        val = real_scores(scorer, Dataset(calibrate_on), form, bs)
    thresholds = resolve_thresholds(scorer, cfg.filter, calibrate_on, form, val)
    if calibrate_on is not None and val is not None:
        tests = [real_scores(scorer, Dataset(p), form, bs) for p in test]
        calibration = calibration_report(thresholds, calibrate_on, val, tests, form)
    log.info("thresholds: clip >= %.4f, margin >= %.4f", thresholds.min_score, thresholds.min_margin)

    # 1. semantic mismatch: one streaming pass, small per-key records
    scores: dict[str, tuple[float, float]] = {}
    info: dict[str, tuple[str, dict[str, Any]]] = {}
    reason: dict[str, str] = {}
    evidence: dict[str, dict[str, Any]] = {}  # key -> the evidence of its reason (factory.curate.evidence)
    for s, clip, margin in score_samples(scorer, ds, cfg.filter.batch_size, progress):
        scores[s.key] = (round(clip, 6), round(margin, 6))  # as the record stores them
        info[s.key] = (s.provenance["class_name"], s.provenance.get("attributes") or {})
        if clip < thresholds.min_score:
            reason[s.key] = "low_clip_score"
        elif margin < thresholds.min_margin:
            reason[s.key] = "low_clip_margin"
        if s.key in reason:
            evidence[s.key] = score_evidence(reason[s.key], *scores[s.key], thresholds.min_score, thresholds.min_margin)

    # 2. near-duplicates, leaks, memorisation
    memorized: dict[str, dict[str, Any]] = {}  # key -> its closest real train match
    dedup_summary: dict[str, Any] | None = None
    if cfg.deduplicate:
        against = test + (train if cfg.drop_memorized else [])
        dedup = find_duplicates(ds.path, against=against, report_against=[] if cfg.drop_memorized else train,
                                config=cfg.dedup, embed=scorer.embed_images if cfg.semantic_dedup else None,
                                progress=progress)
        leaks = closest_matches(dedup.pairs, [str(p) for p in test])
        memorized = closest_matches(dedup.pairs, [str(p) for p in train])
        for key, ev in leaks.items():
            reason[key], evidence[key] = "leak", ev  # a leak is always named, whatever else is wrong with it
        for key in dedup.removed:
            if key not in reason:
                near = dedup.reasons.get(key, "").startswith("near-duplicate")
                reason[key] = "near_duplicate" if near else "memorized"
                evidence[key] = dedup.evidence[key] if near else memorized[key]
        dedup_summary = dedup.summary | {"config": {
            "hash": cfg.dedup.hash, "hash_size": cfg.dedup.hash_size, "max_distance": cfg.dedup.distance,
            "semantic_threshold": cfg.dedup.semantic_threshold if cfg.semantic_dedup else None}}

    # 3. rebalance to the plan's exact quotas
    shortfalls: list[dict[str, Any]] = []
    if cfg.rebalance and the_plan is not None:
        survivors = {k: v for k, v in info.items() if k not in reason}
        drop, shortfalls = rebalance(survivors, the_plan, cfg.seed)
        for k, why in drop.items():
            reason[k], evidence[k] = "over_quota", why

    # 4. write kept and rejected samples with their scores and decision
    rule = {"min_score": thresholds.min_score, "min_margin": thresholds.min_margin}
    scorer_desc = scorer.describe()
    meta = {**ds.meta, "curated_from": ds.ref(), "scorer": scorer_desc, "thresholds": rule}

    def annotated(s: Sample) -> Sample:
        clip, margin = scores[s.key]
        r = reason.get(s.key)
        decision: dict[str, Any] = {"kept": r is None, "reason": r, **rule}
        if s.key in memorized:
            decision["memorized"] = True
        if s.key in evidence or (r is None and s.key in memorized):
            decision["evidence"] = evidence.get(s.key) or memorized[s.key]
        return with_updates(s, scores={"clip": clip, "clip_margin": margin}, decision=decision)

    kept_w = DatasetWriter(out_dir, f"{ds.name}-curated", ds.classes, _shard_size(ds), meta, overwrite,
                           inputs=inputs, others=[rejected_dir, report_path])
    try:
        rej_w = (DatasetWriter(rejected_dir, f"{ds.name}-rejected", ds.classes, _shard_size(ds), meta, overwrite,
                               inputs=inputs, others=[out_dir, report_path]) if rejected_dir is not None else None)
    except BaseException:
        kept_w.abort()
        raise
    try:
        checked = ds.iter_checked()  # every sample decoded and re-hashed before being copied
        for s in (checked if progress is None else progress(checked, f"write {out_dir.name}", len(ds))):
            t = annotated(s)
            if s.key not in reason:
                kept_w.write(t)
            elif rej_w is not None:
                rej_w.write(t)
        if rej_w is not None:
            rej_w.close()
        kept_index = kept_w.close()
    except BaseException:
        kept_w.abort()
        if rej_w is not None:
            rej_w.abort()
        raise

    # 5. the report
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    for key, (cls, _) in info.items():
        per_class[cls][reason.get(key, "kept")] += 1
    totals = Counter(reason.get(k, "kept") for k in info)
    clip_all = np.array([v[0] for v in scores.values()])
    report = {
        "schema": "factory.curate/1",
        "dataset": str(ds.path),
        "out": str(out_dir),
        "rejected_out": str(rejected_dir) if rejected_dir is not None else None,
        "samples": len(info),
        "kept": int(kept_index["samples"]),
        "rejected": len(info) - int(kept_index["samples"]),
        "reasons": {r: int(totals.get(r, 0)) for r in ("kept", *REASONS)},
        "per_class": {c: {r: int(n) for r, n in sorted(cnt.items())} for c, cnt in per_class.items()},
        "calibration": calibration,
        "filter": {"thresholds": asdict(thresholds), "flagged_rate":
                   round(sum(1 for r in reason.values() if r.startswith("low_clip")) / max(len(info), 1), 4),
                   "clip_mean": round(float(clip_all.mean()), 4) if len(clip_all) else None},
        "dedup": dedup_summary,
        "leaks": sorted(k for k, r in reason.items() if r == "leak"),
        "pairs": pair_rows(reason, evidence),
        "memorization_rate": round(len(memorized) / max(len(info), 1), 6) if train and cfg.deduplicate else None,
        "rebalance": {"enabled": bool(cfg.rebalance and the_plan is not None), "shortfalls": shortfalls},
        "scorer": scorer_desc,
    }
    if report_path is not None:
        report_path = Path(report_path)
        atomic_write_bytes(report_path, json.dumps(report, indent=2, sort_keys=False).encode() + b"\n")
    return CurateResult(report, report["kept"], report["rejected"])


def _shard_size(ds: Dataset) -> int:
    return max((int(s["samples"]) for s in ds.shards), default=1) or 1
