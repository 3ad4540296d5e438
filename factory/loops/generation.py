"""One generation of one loop run: its pool, its generator, its synthetic set, its corrected copy, its metrics.

Outputs of generation k of run ``r`` (a contract; the README documents it):

- ``data/loop/r/gk``: the synthetic dataset the generation's model made (every sample: ``generation: k``,
  ``parents`` = the datasets of its pool with their index hashes);
- ``data/loop/r/gk.pool.json``: the pool its generator was trained on (``factory.pool/1`` plus ``loop``:
  the generation histogram of every component, checked against the run's policy);
- ``data/loop/r/gk.side/``: the plan it sampled (``plan.jsonl``), the corrected copy (``corrected/``, runs
  with a corrector: what the next generation trains on), the auxiliary model and its own samples (SIMS runs:
  ``aux-model/``, ``aux-samples/``);
- ``models/loop/r/gk``: its generator (generation 1: the main generator, copied);
- ``metrics/loop/r/gk.json``: its metrics (:mod:`factory.measure.loops`); ``metrics/loop/r.json`` gathers them.

Where they live and the idle outputs of a generation past ``loop.generations``: :mod:`factory.loops.paths`.

A generation past ``loop.generations`` is inactive: its stage writes a small ``inactive.json`` into each
output instead (DVC needs every declared output), and costs nothing.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from factory.config import ClassifierConfig, EmbeddedTrainConfig, GenerateConfig, LoopParams
from factory.core.files import file_sha256, read_json, write_json
from factory.core.quota import largest_remainder
from factory.core.sample import sanitize_key
from factory.core.shards import Dataset
from factory.data.pools import write_pool
from factory.generate.plans import PLAN_SCHEMA, Plan, PlanRow, row_seed, write_plan
from factory.loops.lineage import generation_pool, real_pool
from factory.loops.paths import GenerationPaths

log = logging.getLogger(__name__)

TEMPLATE = "a handwritten {class_name}"


def loop_plan(classes: list[str], class_counts: Mapping[str, int], n: int, k: int, seed: int,
              prefix: str = "") -> Plan:
    """``n`` rows for generation ``k``, split over classes in real train's proportions (largest remainder),
    conditioned on the class only (the model's own attribute distribution is what a loop studies). A row's
    seed depends on the loop seed, k, its class and index only: every run samples generation k from the same
    noises (paired comparisons across runs)."""
    quotas = largest_remainder(n, [class_counts.get(c, 0) for c in classes])
    rows = []
    for label, (cls, q) in enumerate(zip(classes, quotas)):
        for i in range(q):
            key = f"{prefix}g{k}-{sanitize_key(cls)}-{i:05d}"
            rows.append(PlanRow(key, label, cls, key, TEMPLATE, {}, TEMPLATE.format(class_name=cls),
                                row_seed(seed, f"loop/{key}")))
    chosen = [c for c, q in zip(classes, quotas) if q]
    header = {"schema": PLAN_SCHEMA, "classes": list(classes), "plan_classes": chosen,
              "images_per_class": max(quotas) if quotas else 0,
              "target": {"images_per_class": max(quotas) if quotas else 0, "oversample": 1.0, "attributes": {},
                         "cells": [{"attributes": {}, "share": 1.0, "per_class": max(quotas) if quotas else 0}]},
              "images_per_prompt": 1, "templates": [TEMPLATE], "seed": seed, "rows": len(rows),
              "loop": {"generation": k, "class_quotas": dict(zip(classes, quotas))}}
    return Plan(header, rows)


def class_counts(ds: Dataset) -> dict[str, int]:
    """Samples per class name: the index's counts, or counted from the records when it has none."""
    counts = ds.index.get("counts")
    if isinstance(counts, dict) and sum(counts.values()) == len(ds):
        return {str(c): int(n) for c, n in counts.items()}
    out = {c: 0 for c in ds.classes}
    for rec in ds.records():
        out[ds.classes[int(rec["label"])]] += 1
    return out


def _sample(plan: Plan, plan_path: Path, model: Path, out: Path, lp: LoopParams, name: str,
            negative: tuple[Path, float] | None = None) -> dict[str, Any]:
    """Generate ``plan`` with ``model`` into ``out`` (the loop's sampler; SIMS with ``negative``)."""
    from factory.generate.tasks import generate

    write_plan(plan, plan_path)
    s = lp.sampler
    extra = {} if negative is None else {"negative_model": str(negative[0]), "negative_guidance": float(negative[1])}
    cfg = GenerateConfig(backend="embedded", model=str(model), scheduler=s.scheduler, steps=s.steps,
                         guidance_scale=s.guidance_scale, batch_size=s.batch_size, shard_size=512, name=name,
                         **extra)
    summary = generate(plan_path, out, cfg)
    return {"images": summary.samples, "seconds": round(summary.seconds, 2),
            "images_per_second": round(summary.images_per_second, 1)}


def _train_cfg(lp: LoopParams, base: EmbeddedTrainConfig, k: int, steps: int | None = None) -> EmbeddedTrainConfig:
    """The generator training config of generation ``k`` (its own seed: k and the loop seed)."""
    seed = (lp.seed * 1009 + k) % 2**31
    if lp.init == "scratch" and steps is None:
        return base.replace(steps=lp.train.scratch_steps, seed=seed)
    return base.replace(steps=steps or lp.train.steps, lr=lp.train.lr, warmup_steps=lp.train.warmup_steps,
                        batch_size=lp.train.batch_size, seed=seed)


def copy_model(src: Path, dst: Path) -> None:
    """Generation 1's model folder: the main generator's files, copied (replacing ``dst`` whole)."""
    from factory.generate.backends.embedded import MODEL_FOLDER

    MODEL_FOLDER.read(src)  # a generator folder, or a one-line error
    if dst.exists():
        shutil.rmtree(dst)
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    tmp.rename(dst)


def measure_key(dataset: Path, model: Path) -> str:
    """What a generation's metrics depend on: its model's weights and its samples (key, label, image sha256),
    as one sha256. Two generations with the same key have the same metrics (generation 1 of runs that sample
    the same plan with the same model)."""
    import hashlib

    from factory.generate.backends.embedded import WEIGHTS_NAME

    h = hashlib.sha256(file_sha256(model / WEIGHTS_NAME).encode())
    for rec in Dataset(dataset).records():
        h.update(f"\n{rec['key']}\t{rec['label']}\t{rec['sha256']}".encode())
    return h.hexdigest()


def run_generation(run: str, k: int, entry: Mapping[str, Any], *, root: Path = Path("."),
                   reference: Path, real_test: Path, real_val: Path,
                   measured: dict[str, tuple[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Make generation ``k`` of ``run`` from its schedule ``entry`` (see :mod:`factory.loops.schedule`).

    ``measured``: metrics already computed in this process, by :func:`measure_key` (run, metrics); a
    generation whose key is there takes them (the row says from which run) instead of measuring again."""
    from factory.loops.correct import KMeansCorrector, correct_dataset
    from factory.measure.loops import LoopMeasureConfig, measure_generation
    from factory.train.generator import finetune_generator, train_generator

    start = time.perf_counter()
    lp = LoopParams.model_validate({**entry["loop"], "runs": {run: entry["spec"]}})
    spec = lp.runs[run]
    paths = GenerationPaths(run, k, root)
    real = root / lp.real
    corrected = spec.corrector is not None
    for p in (paths.side, paths.model.parent, paths.metrics.parent, paths.dataset.parent):
        p.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. the pool and the generator
    t = time.perf_counter()
    if k == 1:
        pool = real_pool(run, real, seed=lp.seed)
        copy_model(root / lp.generator, paths.model)
        train = {"init": "main generator", "model": str(lp.generator)}
    else:
        prev = paths.of(k - 1)
        sets = [paths.of(j).training_set(corrected) for j in range(1, k)]
        pool = generation_pool(run, spec.policy, k, real, sets, [root / e for e in lp.extra], seed=lp.seed,
                               allow_unknown=lp.allow_unknown)
        write_pool(pool, paths.pool)
        base = EmbeddedTrainConfig.model_validate(entry["train_generator"])
        cfg = _train_cfg(lp, base, k)
        if lp.init == "finetune":
            summary = finetune_generator(prev.model, paths.pool, cfg, paths.model, ema=lp.train.ema)
        else:
            summary = train_generator(paths.pool, cfg, paths.model)
        train = {"init": lp.init, "from": str(prev.model) if lp.init == "finetune" else None, "steps": cfg.steps,
                 "lr": cfg.lr, "warmup_steps": cfg.warmup_steps,
                 "ema": lp.train.ema if lp.init == "finetune" else None, "final_loss": summary.get("final_loss")}
    write_pool(pool, paths.pool)
    timings["train"] = round(time.perf_counter() - t, 2)

    # 2. the synthetic set (SIMS: an auxiliary model first)
    t = time.perf_counter()
    real_ds = Dataset(real)
    counts = class_counts(real_ds)
    n = round(lp.images_for(run) * len(real_ds))
    plan = loop_plan(real_ds.classes, counts, n, k, lp.seed)
    negative = None
    aux: dict[str, Any] = {}
    if spec.sampler == "sims":
        aux = make_auxiliary(paths.model, paths.side / "aux-samples", paths.side / "aux-model",
                             paths.side / "aux-plan.jsonl", real_ds, k, lp,
                             EmbeddedTrainConfig.model_validate(entry["train_generator"]), lp.sims.steps)
        negative = (paths.side / "aux-model", lp.sims.w)
    sampled = _sample(plan, paths.side / "plan.jsonl", paths.model, paths.dataset, lp, f"loop-{run}-g{k}", negative)
    timings["sample"] = round(time.perf_counter() - t, 2)

    # 3. the corrector (what the next generation trains on)
    correction: dict[str, Any] | None = None
    if corrected:
        t = time.perf_counter()
        size = int(read_json(paths.model / "config.json", what="generator config")["image_size"])
        corrector = KMeansCorrector.fit(real, clusters=lp.corrector.clusters, seed=lp.seed, size=size)
        correction = correct_dataset(corrector, paths.dataset, paths.side / "corrected",
                                     strength=lp.corrector.strength, name=f"loop-{run}-g{k}-corrected")
        timings["correct"] = round(time.perf_counter() - t, 2)

    # 4. the metrics (against real test: final numbers)
    t = time.perf_counter()
    m = lp.measure
    cls = ClassifierConfig.model_validate(entry["classifier"])
    mcfg = LoopMeasureConfig(n=m.n, draws=m.draws, bootstrap=m.bootstrap, k=m.k, seed=lp.seed, cas_steps=m.cas_steps,
                             cas_seeds=tuple(m.cas_seeds), cas_batch_size=cls.batch_size, cas_lr=cls.lr,
                             duplicate_distance=m.duplicate_distance,
                             denoise_timesteps=tuple(m.denoise_timesteps))
    key = measure_key(paths.dataset, paths.model) if measured is not None else None
    shared = measured.get(key) if measured is not None and key is not None else None
    if shared is not None:
        metrics = {**shared[1], "measured_as": {"run": shared[0], "why": "same model weights and samples"}}
    else:
        metrics = measure_generation(paths.dataset, paths.model, reference=reference, real_test=real_test,
                                     real_val=real_val, cfg=mcfg)
        if measured is not None and key is not None:
            measured[key] = (run, metrics)
    timings["measure"] = round(time.perf_counter() - t, 2)
    row = {"run": run, "generation": k, "active": True, "policy": spec.policy, "sampler": spec.sampler,
           "corrector": spec.corrector, "pool": {"samples": pool["samples"], "generations": pool["loop"]["generations"],
                                                 "synthetic_fraction": pool["synthetic_fraction"]},
           "train": train, "sampled": {"images": sampled["images"]},  # no wall-clock rates: the same run, the same bytes
           "sims": ({"w": lp.sims.w, **aux} if aux else None),
           "correction": ({k_: v for k_, v in correction.items() if k_ != "seconds"} if correction else None),
           **{k_: v for k_, v in metrics.items() if k_ != "seconds"}}
    write_json(paths.metrics, row)
    timings["total"] = round(time.perf_counter() - start, 2)
    log.info("loop %s generation %d: %s", run, k, timings)
    return {**row, "timings": timings}


def run_first(entries: Mapping[str, Mapping[str, Any]], *, root: Path = Path("."), reference: Path,
                real_test: Path, real_val: Path) -> dict[str, dict[str, Any]]:
    """Generation 1 of every run (``entries``: run -> its generation-1 schedule entry), in one process: runs
    whose first generation samples the same plan with the same model (the main generator) measure it once."""
    measured: dict[str, tuple[str, dict[str, Any]]] = {}
    return {run: run_generation(run, 1, entry, root=root, reference=reference, real_test=real_test,
                                real_val=real_val, measured=measured) for run, entry in entries.items()}


def make_auxiliary(model: Path, samples: Path, aux_model: Path, plan_path: Path, real_ds: Dataset, k: int,
                   lp: LoopParams, base: EmbeddedTrainConfig, steps: int) -> dict[str, Any]:
    """SIMS's auxiliary model: ``model`` fine-tuned for ``steps`` on ``lp.sims.images`` x |real| of its own
    plain samples (written to ``samples``)."""
    from factory.train.generator import finetune_generator

    counts = class_counts(real_ds)
    n = round(lp.sims.images * len(real_ds))
    plan = loop_plan(real_ds.classes, counts, n, k, lp.seed, prefix="aux-")
    sampled = _sample(plan, plan_path, model, samples, lp, f"aux-g{k}")
    cfg = _train_cfg(lp, base, k, steps=steps)
    summary = finetune_generator(model, samples, cfg.replace(seed=(cfg.seed + 7919) % 2**31), aux_model,
                                 ema=lp.train.ema)
    return {"aux_images": sampled["images"], "aux_steps": steps, "aux_final_loss": summary.get("final_loss")}
