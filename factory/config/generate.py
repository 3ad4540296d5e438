"""Configs of the generate phase: the prompt plan (``plan``) and sampling (``generate``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from factory.config.base import Bool, Float, Int, Section, Seed, field_error, template_problem
from factory.core.errors import FactoryError

Scheduler = Literal["ddim", "dpm", "euler", "ddpm", "pndm"]
Backend = Literal["embedded", "diffusers"]
Executor = Literal["local", "ray"]
SCHEDULERS, BACKENDS, EXECUTORS = get_args(Scheduler), get_args(Backend), get_args(Executor)
MAX_IMAGES_PER_CLASS = 1_000_000  # a plan holds its rows in memory
MAX_SIDE = 8192  # pixels of a generated image's side


class AttributeAxis(Section):
    """One attribute of the plan (e.g. colour) with its values and their target weights."""

    where: ClassVar[str] = "plan.attributes"

    name: str
    values: tuple[str, ...]
    weights: tuple[Float, ...]  # normalised to sum to 1 (by make)

    @model_validator(mode="after")
    def _check(self) -> "AttributeAxis":
        problem = axis_problem(self.values, self.weights)
        if problem:
            raise field_error(self.name, problem)
        return self

    @classmethod
    def make(cls, name: str, values: Sequence[Any], weights: Sequence[float] | None = None) -> "AttributeAxis":
        """An axis from values and (unnormalised) weights; no weights: uniform."""
        values = [str(v) for v in values]
        weights = [1.0] * len(values) if weights is None else list(weights)
        problem = axis_problem(values, weights)
        if problem:
            raise FactoryError(f"{cls.where}.{name}: {problem}")
        total = float(sum(weights))
        return cls(name=name, values=tuple(values), weights=tuple(float(w) / total for w in weights))


def axis_problem(values: Sequence[str], weights: Sequence[float]) -> str | None:
    if not values:
        return "needs at least one value"
    if len(set(values)) != len(values):
        return f"values must be unique (got {list(values)})"
    if len(weights) != len(values):
        return f"{len(weights)} weights for {len(values)} values"
    if not all(math.isfinite(w) for w in weights):
        return f"weights must be finite numbers (got {list(weights)})"
    if any(w < 0 for w in weights) or sum(weights) <= 0 or not math.isfinite(sum(weights)):
        return f"weights must be >= 0 with a positive sum (got {list(weights)})"
    return None


# The class's words a plan template may use besides its attribute axes (factory.generate.plans.fill_template)
CLASS_FIELDS = ("class_name", "class_id", "synonym", "definition", "hypernym")


class PlanConfig(Section):
    """What to make (``plan``). ``classes`` None (``all`` in params.yaml) means every class of the real dataset.

    ``attributes`` in params.yaml: ``{name: [values]}`` or ``{name: {values: [...], weights: [...]}}``.
    """

    where: ClassVar[str] = "plan"

    dataset: str = "data/real/train"  # the real dataset whose classes the plan uses
    classes: tuple[str, ...] | None = None
    images_per_class: Int = Field(100, gt=0, le=MAX_IMAGES_PER_CLASS)
    images_per_prompt: Int = Field(4, gt=0, le=MAX_IMAGES_PER_CLASS)
    templates: tuple[str, ...] = Field(("a photo of the digit {class_name}",), min_length=1)
    attributes: tuple[AttributeAxis, ...] = ()
    oversample: Float = Field(1.0, ge=1.0, le=100.0)  # make this many times the target, so curation can subsample to it
    # what the images must not show (diffusers backend; generate.negative_prompt, when set, takes precedence)
    negative_prompt: str | None = None
    seed: Seed = 0

    @field_validator("classes", mode="before")
    @classmethod
    def _all(cls, v: Any) -> Any:
        return None if v == "all" else v

    @field_validator("attributes", mode="before")
    @classmethod
    def _axes(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        axes = []
        for name, spec in v.items():
            weights = None
            if isinstance(spec, Mapping):
                unknown = sorted(set(spec) - {"values", "weights"})
                if unknown or "values" not in spec:
                    raise field_error(str(name), "must be a list of values or {values: [...], weights: [...]}",
                                      dict(spec))
                spec, weights = spec["values"], spec.get("weights")
                if weights is not None and (not isinstance(weights, (list, tuple)) or not all(
                        isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
                    raise field_error(f"{name}.weights", "must be a list of numbers", weights)
            if not isinstance(spec, (list, tuple)) or not all(isinstance(s, str) for s in spec):
                raise field_error(str(name), "must be a list of strings", spec)
            problem = axis_problem(spec, [1.0] * len(spec) if weights is None else weights)
            if problem:
                raise field_error(str(name), problem)
            axes.append(AttributeAxis.make(str(name), spec, weights))
        return tuple(axes)

    @model_validator(mode="after")
    def _check(self) -> "PlanConfig":
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise field_error("attributes", "axis names must be unique", names)
        clash = sorted(set(names) & set(CLASS_FIELDS))
        if clash:
            raise field_error("attributes", f"axis names may not be template class fields {list(CLASS_FIELDS)}",
                              clash)
        allowed = {*CLASS_FIELDS, *names}
        for t in self.templates:
            problem = template_problem(t, allowed)
            if problem:
                raise field_error("templates", problem)
        return self


class SamplerConfig(Section):
    """How to sample. Recorded in every synthetic sample's provenance (``generator``)."""

    where: ClassVar[str] = "generate"

    guidance_scale: Float = Field(2.0, ge=0)
    steps: Int = Field(20, ge=1)
    scheduler: Scheduler = "ddim"
    negative_prompt: str | None = None
    height: Int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)  # None: the model's native size
    width: Int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    batch_size: Int = Field(64, ge=1)
    # SIMS negative guidance (Alemohammad et al. 2024, https://arxiv.org/abs/2408.16333), embedded backend:
    # eps = (1 + w) * eps_base - w * eps_aux, with eps_aux from an auxiliary generator (a folder) trained
    # on the base model's own samples; w = 0 is plain sampling.
    negative_model: str | None = None
    negative_guidance: Float = Field(0.0, ge=0)
    # diffusers backend on CUDA: torch.compile the UNet (mode "reduce-overhead", CUDA graphs). The first batch
    # pays the compilation (a minute or more for SD 1.5); refused on the CPU and by the embedded backend.
    compile: Bool = False

    @model_validator(mode="after")
    def _check_negative(self) -> "SamplerConfig":
        if self.negative_guidance > 0 and not self.negative_model:
            raise field_error("negative_guidance", "needs negative_model (an auxiliary embedded generator folder)",
                              self.negative_guidance)
        return self


class GeneratorSpec(Section):
    """Which generator to load: enough to load it again in another process (Ray workers)."""

    where: ClassVar[str] = "generate"

    backend: Backend
    model: str
    sampler: SamplerConfig = SamplerConfig()


class RayConfig(Section):
    where: ClassVar[str] = "generate.ray"

    address: str | None = None  # None: start a local instance
    num_cpus: Int | None = Field(None, ge=1)  # CPUs of a local instance (None: all)
    cpus_per_task: Float = Field(1.0, gt=0)
    gpus_per_task: Float = Field(0.0, ge=0)


class GenerateConfig(SamplerConfig):
    """``generate``: the sampler's settings (flat, as in params.yaml), which generator, and how to run."""

    backend: Backend = "embedded"
    model: str = "models/generator"  # a folder (or a HF-cache id for diffusers)
    shard_size: Int = Field(512, ge=1)  # plan rows per shard task
    executor: Executor = "local"
    ray: RayConfig = RayConfig()
    name: str = "synthetic"  # the dataset's name in its index
    parents: tuple[dict[str, Any], ...] | None = None  # None: the generator's own (embedded)

    @model_validator(mode="after")
    def _check_compile(self) -> "GenerateConfig":
        if self.compile and self.backend != "diffusers":
            raise field_error("compile", f"is for the diffusers backend only (backend is {self.backend!r}); "
                              "set generate.compile to false", self.compile)
        return self

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(**{k: getattr(self, k) for k in SamplerConfig.model_fields})

    @property
    def generator(self) -> GeneratorSpec:
        return GeneratorSpec(backend=self.backend, model=self.model, sampler=self.sampler)


class RandomModelsParams(Section):
    """``random_models``: the random-weight stand-ins the photo pipeline's ``random_models`` stage builds when
    no weights are on disk: a Stable Diffusion architecture (factory/generate/sd_archs) and an open_clip one
    (factory.curate.scorers.random_clip). Their outputs are labelled as not results wherever they show."""

    where: ClassVar[str] = "random_models"

    generator: str = "photo32"  # tiny | photo32 (32 px) | sd15 (the full-size SD 1.5 layout: GPU only)
    scorer: str = "photo32"     # photo32 | an open_clip architecture name (e.g. ViT-B-32)
    seed: Seed = 0
