"""Generation: a prompt plan + a generator backend -> a synthetic dataset, shard task by shard task.

The plan is cut into fixed slices (``shard_size`` rows each); each slice is one task that writes one
shard. Tasks write into a hidden staging folder next to the output (``.<name>.partial``) under their
final shard names, atomically, and a finished shard is never redone: a run killed at any moment and
started again picks up the missing shards and produces exactly the dataset an uninterrupted run would.
The staging folder carries a fingerprint of the work (plan hash, generator description, shard size);
work from a different fingerprint is discarded, never mixed in. When every task is done the index is
written and the folder is moved into place. The output is claimed first (:mod:`factory.core.outputs`): it
must be new or a factory dataset, apart from the plan and the generator's folder, and its lock is held
from the claim to the publish, so two runs never share a staging folder. A run that fails keeps its
finished shards in the staging folder for the next run (temporary files are removed).

Executors: ``local`` runs tasks in this process; ``ray`` runs the same tasks as Ray tasks (a local Ray
instance, or a cluster given by ``address``), each loading the generator once per worker.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from factory import __version__
from factory.config import GenerateConfig, GeneratorSpec, SamplerConfig
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, file_sha256, read_json, remove_quietly, writing
from factory.core.outputs import OutputDir, claim_output_file, dataset_problem
from factory.core.sample import synthetic_sample
from factory.core.shards import (
    ShardInfo,
    check_output_dir,
    make_index,
    publish,
    shard_name,
    write_shard,
)
from factory.generate.backends.base import Generator, GenRequest
from factory.generate.plans import Plan, PlanRow, read_plan

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


def load_generator(spec: GeneratorSpec) -> Generator:
    if spec.backend == "embedded":
        from factory.generate.backends.embedded import EmbeddedGenerator

        return EmbeddedGenerator.load(spec.model, spec.sampler)
    from factory.generate.backends.diffusers import DiffusersGenerator

    return DiffusersGenerator.load(spec.model, spec.sampler)


_CACHE: dict[GeneratorSpec, Generator] = {}


def cached_generator(spec: GeneratorSpec) -> Generator:
    """One loaded generator per spec and process (Ray workers reuse theirs across tasks)."""
    if spec not in _CACHE:
        _CACHE.clear()
        _CACHE[spec] = load_generator(spec)
    return _CACHE[spec]


@dataclass(frozen=True)
class ShardTask:
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_tasks(n_rows: int, shard_size: int) -> list[ShardTask]:
    return [ShardTask(i, start, min(start + shard_size, n_rows))
            for i, start in enumerate(range(0, n_rows, shard_size))]


def request(row: PlanRow) -> GenRequest:
    return GenRequest(key=row.key, label=row.label, class_name=row.class_name, text=row.text, seed=row.seed,
                      attributes=dict(row.attributes))


def check_plan(plan: Plan, gen: Generator) -> None:
    """Plan/generator mismatches fail before anything is generated."""
    known = gen.classes
    if known is not None:
        for cls in plan.header["plan_classes"]:
            label = plan.classes.index(cls)
            if label >= len(known) or known[label] != cls:
                raise FactoryError(f"plan class {cls!r} (label {label}) is not label {label} of the generator "
                                   f"(it knows {known}); rebuild the plan from the generator's training data")
    axes = gen.attributes
    if axes is not None:
        for axis, values in plan.header["target"]["attributes"].items():
            if axis not in axes:
                raise FactoryError(f"plan attribute {axis!r} is unknown to the generator (it knows {sorted(axes)})")
            missing = [v for v in values if v not in axes[axis]]
            if missing:
                raise FactoryError(f"plan attribute {axis}: value(s) {missing} unknown to the generator "
                                   f"(it knows {axes[axis]})")


def _samples(rows: Sequence[PlanRow], gen: Generator, parents: list[dict[str, Any]],
             on_batch: Callable[[int], None] | None) -> Iterator:
    describe = gen.describe()
    generation = gen.generation
    bs = gen.sampler.batch_size
    for start in range(0, len(rows), bs):
        batch = rows[start:start + bs]
        images = gen.generate([request(r) for r in batch])
        for row, data in zip(batch, images):
            yield synthetic_sample(
                row.key, data, row.label, row.class_name,
                prompt={"text": row.text, "template": row.template, "attributes": row.attributes},
                seed=row.seed, generator=describe, generation=generation, parents=parents, group=row.group)
        if on_batch is not None:
            on_batch(len(batch))


def run_task(task: ShardTask, rows: Sequence[PlanRow], spec: GeneratorSpec, staging: Path,
             parents: list[dict[str, Any]], on_batch: Callable[[int], None] | None = None) -> ShardInfo:
    """Generate one shard into ``staging`` (atomic: it appears under its name only when complete)."""
    gen = cached_generator(spec)
    return write_shard(Path(staging) / task.name, _samples(rows, gen, parents, on_batch))


def _ray_task(task: ShardTask, rows: list[PlanRow], spec: GeneratorSpec, staging: str,
              parents: list[dict[str, Any]]) -> ShardInfo:
    return run_task(task, rows, spec, Path(staging), parents)


@dataclass
class GenerateSummary:
    out_dir: Path
    samples: int
    shards: int
    generated_shards: int
    resumed_shards: int
    seconds: float
    images_per_second: float
    index: dict[str, Any] = field(default_factory=dict)


def _fingerprint(plan: Plan, describe: dict[str, Any], cfg: GenerateConfig,
                 parents: list[dict[str, Any]]) -> dict[str, Any]:
    return {"plan_sha256": plan.sha256(), "generator": describe, "shard_size": cfg.shard_size,
            "name": cfg.name, "parents": parents, "factory_version": __version__}


def _prepare_staging(staging: Path, fingerprint: dict[str, Any]) -> None:
    """Keep the finished shards in ``staging`` if they were made for the same work; else start afresh."""
    run_file = staging / RUN_FILE
    if any(staging.iterdir()):
        try:
            previous = read_json(run_file, what="run file")
        except FactoryError:
            previous = None
        if previous == fingerprint:
            for tmp in staging.glob(".*.tmp-*"):  # left by a killed shard writer
                remove_quietly(tmp)
            return
        log.info("discarding %s: it holds work for different inputs", staging)
        with writing(staging):
            shutil.rmtree(staging)
            staging.mkdir()
    atomic_write_bytes(run_file, json.dumps(fingerprint, sort_keys=True, indent=1).encode())


def _model_paths(spec: GeneratorSpec) -> list[Path]:
    """The generator's local folder or file (and a SIMS auxiliary model's), inputs that no output may overlap."""
    paths = [spec.model, spec.sampler.negative_model]
    return [Path(p) for p in paths if p and Path(p).exists()]


def generate(plan_path: Path | str, out_dir: Path | str, cfg: GenerateConfig,
             progress: Callable[[int, int], Callable[[int], None]] | None = None) -> GenerateSummary:
    """Generate the dataset for ``plan_path`` into ``out_dir`` (resumable; see module docstring).

    ``progress(total, done)`` may return a callback that receives the number of images of each
    finished batch (local executor) or shard (ray).
    """
    out_dir = Path(out_dir)
    inputs = [Path(plan_path), *_model_paths(cfg.generator)]
    check_output_dir(out_dir, True, inputs=inputs)  # before any work
    plan = read_plan(plan_path)
    if not plan.rows:
        raise FactoryError(f"{plan_path}: the plan has no rows")
    if plan.header.get("negative_prompt") and cfg.negative_prompt is None:  # the plan's, unless the config sets one
        cfg = cfg.model_copy(update={"negative_prompt": str(plan.header["negative_prompt"])})
    batch = cfg.batch_size
    if cfg.shard_size % batch and cfg.shard_size > batch:
        log.warning("generate.shard_size %d is not a multiple of batch_size %d: the last micro-batch of "
                    "every shard is padded to a full batch (%.0f%% of the sampling work wasted)",
                    cfg.shard_size, batch, 100 * (batch - cfg.shard_size % batch) / cfg.shard_size)
    gen = cached_generator(cfg.generator)  # loads and validates the model before any work
    check_plan(plan, gen)
    parents = [dict(p) for p in (cfg.parents if cfg.parents is not None else gen.parents)]
    describe = gen.describe()
    output = OutputDir(out_dir, inputs=inputs, overwrite=True, replaceable=dataset_problem, resume=True)
    try:
        return _generate(output, plan, plan_path, cfg, gen, parents, describe, progress)
    except BaseException:
        output.abort()  # keeps the finished shards (resume=True)
        raise


def _generate(output: OutputDir, plan: Plan, plan_path: Path | str, cfg: GenerateConfig, gen: Generator,
              parents: list[dict[str, Any]], describe: dict[str, Any],
              progress: Callable[[int, int], Callable[[int], None]] | None) -> GenerateSummary:
    """The body of :func:`generate`, with the output held: resume, run the missing tasks, publish."""
    out_dir, staging = Path(output.shown), output.staging
    _prepare_staging(staging, _fingerprint(plan, describe, cfg, parents))

    tasks = shard_tasks(len(plan.rows), cfg.shard_size)
    done = [t for t in tasks if (staging / t.name).is_file()]
    todo = [t for t in tasks if not (staging / t.name).is_file()]
    if done:
        log.info("resuming: %d of %d shards already done in %s", len(done), len(tasks), staging)
    todo_images = sum(t.stop - t.start for t in todo)
    tick = progress(len(plan.rows), len(plan.rows) - todo_images) if progress else None
    t0 = time.perf_counter()
    infos: dict[int, ShardInfo] = {}
    if cfg.executor == "local":
        for t in todo:
            infos[t.index] = run_task(t, plan.rows[t.start:t.stop], cfg.generator, staging, parents, tick)
            log.info("%s: %d images (%.1f images/s so far)", t.name, t.stop - t.start,
                     sum(i.samples for i in infos.values()) / (time.perf_counter() - t0))
    else:
        infos.update(_run_ray(todo, plan, cfg, staging, parents, tick))
    seconds = time.perf_counter() - t0
    for t in done:  # finished by an earlier run: its content is final, re-read its hash and size
        p = staging / t.name
        infos[t.index] = ShardInfo(t.name, t.stop - t.start, file_sha256(p), p.stat().st_size)
    shards = [infos[t.index] for t in tasks]
    counts: dict[str, int] = {}
    for row in plan.rows:
        counts[row.class_name] = counts.get(row.class_name, 0) + 1
    meta = {"plan": {"path": str(plan_path), "sha256": plan.sha256(), "rows": len(plan.rows)},
            "generator": describe, "parents": parents, "generation": gen.generation}
    if plan.header.get("class_names"):  # what the class ids are called (curation captions use the names)
        meta["class_names"] = dict(plan.header["class_names"])
    index = make_index(cfg.name, plan.classes, shards, counts, meta)
    with writing(staging / RUN_FILE):
        (staging / RUN_FILE).unlink()
    publish(output, index)
    rate = todo_images / seconds if seconds > 0 and todo_images else 0.0
    log.info("generated %d images in %.1fs (%.1f images/s); %d shards resumed", todo_images, seconds, rate, len(done))
    return GenerateSummary(out_dir, index["samples"], len(shards), len(todo), len(done), seconds, rate, index)


def _run_ray(todo: list[ShardTask], plan: Plan, cfg: GenerateConfig, staging: Path,
             parents: list[dict[str, Any]], tick: Callable[[int], None] | None) -> dict[int, ShardInfo]:
    try:
        import ray
    except ImportError:
        raise ImportError("executor 'ray' needs Ray: pip install 'synthfactory[ray]' (or pip install 'ray[default]')") \
            from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        # Ray's start-up lines ("Started a local Ray instance.", its token-authentication notice) go to the
        # "ray" logger's own stderr handler, across the progress bar: held back while it starts; its warnings
        # and errors after that still show
        ray_log = logging.getLogger("ray")
        level = ray_log.level
        ray_log.setLevel(logging.ERROR)
        try:
            if cfg.ray.address:
                ray.init(address=cfg.ray.address, **kwargs)
            else:
                ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)
        finally:
            ray_log.setLevel(level)
        started = True
    try:
        remote = ray.remote(num_cpus=cfg.ray.cpus_per_task, num_gpus=cfg.ray.gpus_per_task, max_retries=2)(_ray_task)
        pending = {remote.remote(t, plan.rows[t.start:t.stop], cfg.generator, str(staging), parents): t
                   for t in todo}
        out: dict[int, ShardInfo] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                t = pending.pop(ref)
                out[t.index] = ray.get(ref)
                if tick:
                    tick(t.stop - t.start)
        return out
    finally:
        if started:
            ray.shutdown()


@dataclass
class RegenerateResult:
    """Two verdicts: the rebuilt bytes against the record's ``sha256`` (``match``) and the loaded weights
    against the record's ``generator.weights_sha256`` (``weights_match``; False when none is recorded).
    Equal bytes from other weights are luck, not a reproduction: :attr:`ok` needs both. A SIMS sample
    (``negative_guidance`` {method: sims, ...}) was made by two models: ``weights_match`` then also needs
    the auxiliary model's weights to be the recorded ``negative_guidance.weights_sha256`` (the
    ``*_negative_weights_sha256`` fields; None without SIMS)."""

    key: str
    match: bool
    expected_sha256: str
    actual_sha256: str
    weights_match: bool
    out: Path
    expected_weights_sha256: str | None = None
    actual_weights_sha256: str | None = None
    expected_negative_weights_sha256: str | None = None
    actual_negative_weights_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.match and self.weights_match


def _negative_settings(g: dict[str, Any], negative_model: str | None) -> dict[str, Any]:
    """The sampler settings of a record's ``negative_guidance``: a string is a diffusers negative prompt; a
    dict {method: sims, w, model, ...} SIMS with the auxiliary model at ``negative_model`` (default: the
    recorded path); null none."""
    ng = g.get("negative_guidance")
    if isinstance(ng, dict):
        if ng.get("method") != "sims":
            raise FactoryError(f"generator.negative_guidance: unknown method {ng.get('method')!r}; this factory "
                               "can regenerate sims")
        w, recorded = ng.get("w"), ng.get("model")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not isinstance(recorded, str):
            raise FactoryError("generator.negative_guidance: a sims record needs a number w and a model path; "
                               f"got w={w!r}, model={recorded!r}")
        return {"negative_model": negative_model or recorded, "negative_guidance": float(w)}
    if negative_model is not None:
        raise FactoryError("--negative-model: the sample was made without SIMS negative guidance; leave it out")
    return {"negative_prompt": ng}


def _recorded_sha(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def regenerate(dataset: Path | str, key: str, out: Path | str, model: str | None = None,
               device: str = "auto", negative_model: str | None = None) -> RegenerateResult:
    """Rebuild one sample from its provenance record alone and compare its bytes.

    ``model`` and ``negative_model`` load the generator and (SIMS) its auxiliary model from other folders
    than the recorded ones; the weights verdict then tells whether they hold the recorded weights."""
    from factory.core.sample import sha256_hex
    from factory.core.shards import Dataset

    claim_output_file(out, inputs=[dataset, model, negative_model])  # before any work; recorded models below
    sample = Dataset(dataset).find(key)
    rec = sample.provenance
    if rec.get("source") != "synthetic":
        raise FactoryError(f"{key!r} is a real sample: only synthetic samples can be regenerated")
    g = rec["generator"]
    sampler = SamplerConfig(guidance_scale=float(g["guidance_scale"]), steps=int(g["steps"]),
                            scheduler=g["scheduler"], height=g.get("height"), width=g.get("width"),
                            dtype=g.get("dtype") if g.get("dtype") in ("float32", "float16", "bfloat16") else "auto",
                            device=device, batch_size=int(g.get("batch_size", 1)),
                            **_negative_settings(g, negative_model))
    spec = GeneratorSpec(backend=g["backend"], model=model or g["model"], sampler=sampler)
    claim_output_file(out, inputs=[dataset, *_model_paths(spec)])
    gen = load_generator(spec)
    prompt = rec["prompt"]
    data = gen.generate([GenRequest(key=key, label=rec["label"], class_name=rec["class_name"], text=prompt["text"],
                                    seed=rec["seed"], attributes=dict(prompt.get("attributes") or {}))])[0]
    out = Path(out)
    atomic_write_bytes(out, data)
    actual = sha256_hex(data)
    described = gen.describe()
    recorded, loaded = _recorded_sha(g.get("weights_sha256")), described.get("weights_sha256")
    weights_match = bool(recorded) and loaded == recorded
    neg_recorded = neg_loaded = None
    if isinstance(g.get("negative_guidance"), dict):
        neg_recorded = _recorded_sha(g["negative_guidance"].get("weights_sha256"))
        neg_loaded = (described.get("negative_guidance") or {}).get("weights_sha256")
        weights_match = weights_match and bool(neg_recorded) and neg_loaded == neg_recorded
    return RegenerateResult(key, actual == rec["sha256"], rec["sha256"], actual, weights_match, out,
                            recorded, loaded, neg_recorded, neg_loaded)


def spec_dict(spec: GeneratorSpec) -> dict[str, Any]:
    return {"backend": spec.backend, "model": spec.model, "sampler": spec.sampler.model_dump()}
