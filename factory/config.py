"""The one place where ``params.yaml`` becomes typed, frozen config objects.

Unknown keys and bad values fail here, with the parameter's dotted name and what is allowed:
``params.yaml: split.test_fraction: Input should be less than 1 (got 1.5)``.
Library code never reads ``params.yaml``; stages load a section here and pass it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory.core.errors import FactoryError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(Section):
    seed: int = 0


class IngestParams(Section):
    source: str = "sklearn:digits"
    shard_size: int = Field(1000, ge=1)


class SplitParams(Section):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    shard_size: int = Field(1000, ge=1)


class AttributeParams(Section):
    values: list[str] = Field(min_length=1)
    weights: list[float] | None = None  # None: uniform


class PlanParams(Section):
    dataset: str = "data/real/train"  # the real dataset whose classes the plan uses
    classes: Literal["all"] | list[str] = "all"
    images_per_class: int = Field(100, gt=0)
    images_per_prompt: int = Field(4, gt=0)
    templates: list[str] = Field(default_factory=lambda: ["a photo of the digit {class_name}"], min_length=1)
    attributes: dict[str, list[str] | AttributeParams] = Field(default_factory=dict)
    oversample: float = Field(1.0, ge=1.0)


class RayParams(Section):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    cpus_per_task: float = Field(1.0, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)


class GenerateParams(Section):
    backend: Literal["embedded", "diffusers"] = "embedded"
    model: str = "models/generator"
    guidance_scale: float = Field(2.0, ge=0)
    steps: int = Field(20, ge=1)
    scheduler: Literal["ddim", "dpm", "euler", "ddpm", "pndm"] = "ddim"
    negative_prompt: str | None = None
    height: int | None = Field(None, ge=8)
    width: int | None = Field(None, ge=8)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    batch_size: int = Field(64, ge=1)
    shard_size: int = Field(512, ge=1)
    executor: Literal["local", "ray"] = "local"
    ray: RayParams = RayParams()
    parents: list[dict[str, Any]] | None = None  # diffusers: what the pipeline was trained on, if known


class CurateParams(Section):
    scorer_backend: Literal["embedded", "open_clip"] = "embedded"
    scorer_model: str = "models/clip"  # a folder (embedded) or an open_clip architecture name
    scorer_checkpoint: str | None = None  # open_clip: a local weights file
    min_score: float | None = None  # null: calibrated on data/real/train
    min_margin: float | None = None
    percentile: float = Field(5.0, ge=0, lt=100)
    hash: Literal["phash", "dhash", "whash"] = "phash"
    hash_size: int = Field(8, ge=2, le=32)
    max_distance: int | None = Field(None, ge=0)
    semantic_dedup: bool = False
    semantic_threshold: float = Field(0.95, ge=-1, le=1)
    drop_memorized: bool = False
    rebalance: bool = True


class SweepParams(Section):
    guidance_scales: list[int | float] = Field(default_factory=list)  # extra generate runs of the same plan

    def datasets(self) -> dict[str, str]:
        """name -> folder of each sweep output, named as dvc.yaml's ``w${item}`` renders them."""
        return {f"w{g}": f"data/synthetic/guidance/w{g}" for g in self.guidance_scales}

    @field_validator("guidance_scales")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(g < 0 for g in v):
            raise ValueError("guidance scales must be >= 0")
        return v


class ContrastiveParams(Section):
    pools: list[str] = Field(default_factory=list)
    methods: list[Literal["simclr", "stablerep", "stablerep_plus"]] = Field(
        default_factory=lambda: ["simclr", "stablerep", "stablerep_plus"])
    train: dict[str, Any] = Field(default_factory=dict)  # validated by ContrastiveConfig


class EvaluateParams(Section):
    reference: str = "data/real/test"  # the real dataset every synthetic one is compared with
    train: str = "data/real/train"     # what the recognition classifier is trained on
    encoder: Literal["clip", "inception"] = "clip"
    encoder_path: str = "models/clip"  # embedded scorer folder, or Inception weights file
    k: int = Field(5, ge=1)
    reference_epochs: int = Field(10, ge=1)
    datasets: dict[str, str] = Field(default_factory=dict)  # name -> synthetic dataset folder
    cas: list[str] = Field(default_factory=list)       # datasets to train the classifier on alone (CAS)
    guidance: list[str] = Field(default_factory=list)  # datasets that make the guidance trade-off plot


class BiasParams(Section):
    source: str = "sklearn:digits-colored?bias=0.95&seed=0"   # the biased real data
    test_source: str = "sklearn:digits-colored?bias=0.1&seed=1"  # same digits, colour independent of class
    test_fraction: float = Field(0.2, gt=0, lt=1)
    shard_size: int = Field(1000, ge=1)
    plan: PlanParams = PlanParams(dataset="data/bias/real/train")
    train_generator: dict[str, Any] = Field(default_factory=dict)
    generate: GenerateParams = GenerateParams(model="models/bias/generator")
    pools: dict[str, Any] = Field(default_factory=dict)


class ReportParams(Section):
    fraction_pools: list[str] = Field(default_factory=list)  # pools of one size: accuracy vs synthetic share


class Params(Section):
    base: BaseParams = BaseParams()
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    plan: PlanParams = PlanParams()
    train_generator: dict[str, Any] = Field(default_factory=dict)  # validated by train_generator_config
    generate: GenerateParams = GenerateParams()
    train_clip: dict[str, Any] = Field(default_factory=dict)  # validated by train_clip_config
    curate: CurateParams = CurateParams()
    sweep: SweepParams = SweepParams()
    pools: dict[str, Any] = Field(default_factory=dict)  # validated by pools_config
    classifier: dict[str, Any] = Field(default_factory=dict)  # validated by classifier_config
    contrastive: ContrastiveParams = ContrastiveParams()
    evaluate: EvaluateParams = EvaluateParams()
    bias: BiasParams = BiasParams()
    report: ReportParams = ReportParams()

    def study(self, name: str | None) -> "Params":
        """These params with a study's sections (e.g. ``bias``) in place of plan/train_generator/generate.

        A study is a second, smaller pipeline (the bias benchmark) that reuses the main stages'
        scripts: ``python stages/plan.py --study bias`` reads ``bias.plan`` where the main run reads ``plan``.
        """
        if name is None:
            return self
        if name != "bias":
            raise FactoryError(f"unknown study {name!r}; known: bias")
        b = self.bias
        return self.model_copy(update={"plan": b.plan, "train_generator": b.train_generator,
                                       "generate": b.generate, "pools": b.pools})


def study_path(path: str, study: str | None) -> str:
    """``data/x`` -> ``data/<study>/x`` (and ``models/``, ``metrics/``, ``reports/`` alike)."""
    if study is None:
        return path
    top, _, rest = path.partition("/")
    return f"{top}/{study}/{rest}"


def pools_config(params: Params):
    """``pools`` + ``base.seed`` -> :class:`factory.data.pools.PoolsConfig`."""
    from factory.data.pools import PoolsConfig

    return PoolsConfig.from_params(params.pools, params.base.seed)


def classifier_config(params: Params):
    """``classifier`` (seed defaults to ``base.seed``) -> ClassifierConfig."""
    from factory.train.classifier import ClassifierConfig

    section = dict(params.classifier)
    section.setdefault("seed", params.base.seed)
    return ClassifierConfig.from_dict(section)


def plan_config(params: Params):
    """``plan`` + ``base.seed`` -> :class:`factory.generate.plans.PlanConfig`."""
    from factory.generate.plans import AttributeAxis, PlanConfig

    p = params.plan
    axes = []
    for name, spec in p.attributes.items():
        if isinstance(spec, list):
            axes.append(AttributeAxis.make(name, spec))
        else:
            axes.append(AttributeAxis.make(name, spec.values, spec.weights))
    return PlanConfig(images_per_class=p.images_per_class, images_per_prompt=p.images_per_prompt,
                      templates=tuple(p.templates), attributes=tuple(axes),
                      classes=None if p.classes == "all" else tuple(p.classes), oversample=p.oversample,
                      seed=params.base.seed)


def train_generator_config(params: Params):
    """``train_generator`` (seed defaults to ``base.seed``) -> EmbeddedTrainConfig."""
    from factory.train.generator import EmbeddedTrainConfig

    section = dict(params.train_generator)
    section.setdefault("seed", params.base.seed)
    return EmbeddedTrainConfig.from_dict(section)


def generate_config(params: Params):
    """``generate`` -> :class:`factory.generate.tasks.GenerateConfig`."""
    from factory.generate.backends.base import SamplerConfig
    from factory.generate.tasks import GenerateConfig, GeneratorSpec, RayConfig

    g = params.generate
    sampler = SamplerConfig(guidance_scale=g.guidance_scale, steps=g.steps, scheduler=g.scheduler,
                            negative_prompt=g.negative_prompt, height=g.height, width=g.width, dtype=g.dtype,
                            device=g.device, batch_size=g.batch_size)
    return GenerateConfig(GeneratorSpec(g.backend, g.model, sampler), shard_size=g.shard_size,
                          executor=g.executor, ray=RayConfig(**g.ray.model_dump()),
                          parents=tuple(g.parents) if g.parents is not None else None)


S = TypeVar("S", bound=BaseModel)


def _format(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown parameter {loc!r}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc}: {err['msg']} (got {err.get('input')!r}){more}"


def parse(model: type[S], data: Any, where: str = "params.yaml") -> S:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise FactoryError(_format(exc, where)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FactoryError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return parse(Params, data, str(path))


def train_clip_config(params: Params):
    """``train_clip`` (seed defaults to ``base.seed``) -> ClipTrainConfig."""
    from factory.train.clip import ClipTrainConfig

    section = dict(params.train_clip)
    section.setdefault("seed", params.base.seed)
    return ClipTrainConfig.from_dict(section)


def curate_config(params: Params):
    """``curate`` + ``base.seed`` -> :class:`factory.curate.filter.CurateConfig`."""
    from factory.curate.dedup import DedupConfig
    from factory.curate.filter import CurateConfig, FilterConfig

    c = params.curate
    return CurateConfig(filter=FilterConfig(c.min_score, c.min_margin, c.percentile),
                        dedup=DedupConfig(c.hash, c.hash_size, c.max_distance, c.semantic_threshold),
                        semantic_dedup=c.semantic_dedup, drop_memorized=c.drop_memorized, rebalance=c.rebalance,
                        seed=params.base.seed)


def evaluation_config(params: Params):
    """``evaluate`` + ``sweep`` + ``classifier`` + ``base.seed`` -> :class:`factory.measure.evaluation.EvaluationConfig`.

    The guidance sweep's outputs join ``evaluate.datasets`` (and its CAS and guidance lists) by themselves,
    so ``dvc exp run -S 'sweep.guidance_scales=[1,3,4,6]'`` adds points to the trade-off with no other edit.
    """
    from factory.measure.evaluation import EvaluationConfig

    e = params.evaluate
    sweep = params.sweep.datasets()
    datasets = {**sweep, **e.datasets}
    for field_name in ("cas", "guidance"):
        unknown = [n for n in getattr(e, field_name) if n not in datasets]
        if unknown:
            raise FactoryError(f"params.yaml: evaluate.{field_name}: {unknown} are not in evaluate.datasets "
                               f"or the sweep ({sorted(datasets)})")
    cas = tuple(dict.fromkeys([*sweep, *e.cas]))
    return EvaluationConfig(reference=e.reference, train=e.train, encoder=e.encoder, encoder_path=e.encoder_path,
                            k=e.k, reference_epochs=e.reference_epochs, datasets=datasets, cas=cas,
                            guidance=tuple(dict.fromkeys([*sweep, *e.guidance])),
                            classifier=classifier_config(params), seed=params.base.seed)
