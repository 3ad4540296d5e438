"""The config of the self-consuming loops (``loop`` in params.yaml; the stages are in ``loop/dvc.yaml``).

A loop run is a policy (which data generation k's generator trains on), a sampler (plain, or SIMS negative
guidance) and an optional corrector (k-means toward real data). Generation 1 is the main pipeline's
generator (trained on real train); every later generation trains on a pool built from provenance.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from factory.config.base import Bool, Float, Int, Section, Seed, field_error, number

Policy = Literal["replace", "accumulate", "accumulate_subsample", "fresh", "real"]
POLICIES = get_args(Policy)
LoopSampler = Literal["plain", "sims"]
Corrector = Literal["kmeans"]
Init = Literal["finetune", "scratch"]

# The most generations ``loop.max_generations`` may declare (each is a stage per run in loop/dvc.yaml).
MAX_GENERATIONS = 50


class LoopRun(Section):
    """One named run: ``policy``, ``sampler`` and ``corrector``."""

    where: ClassVar[str] = "loop.runs"

    policy: Policy
    sampler: LoopSampler = "plain"
    corrector: Corrector | None = None


class LoopTrain(Section):
    """How each generation's generator is trained on its pool: ``finetune`` starts from the previous
    generation's weights for ``steps`` steps; ``scratch`` trains a new model (train_generator's architecture
    and recipe) for ``scratch_steps``."""

    where: ClassVar[str] = "loop.train"

    steps: Int = Field(40, ge=1)
    lr: number(gt=0) = 5e-4
    warmup_steps: Int = Field(0, ge=0)
    batch_size: Int = Field(128, ge=1)
    # restart: the EMA's decay schedule starts afresh (after a short fine-tune it is close to the raw weights);
    # continue: it goes on from the previous model's EMA (decay ~0.98): see finetune_generator
    ema: Literal["restart", "continue"] = "restart"
    scratch_steps: Int = Field(500, ge=1)


class LoopSamplerConfig(Section):
    """How every generation samples (the embedded backend)."""

    where: ClassVar[str] = "loop.sampler"

    scheduler: Literal["ddim", "dpm"] = "dpm"
    steps: Int = Field(6, ge=1)
    guidance_scale: Float = Field(1.0, ge=0)
    batch_size: Int = Field(64, ge=1)


class CorrectorConfig(Section):
    """Gillman et al.'s k-means correction: ``clusters`` per class fit on real train pixels; each sample moves
    ``strength`` of the way to its nearest centroid (1: replaced by it, as in their MNIST code)."""

    where: ClassVar[str] = "loop.corrector"

    clusters: Int = Field(16, ge=1)
    strength: number(ge=0, le=1) = 1.0


class SimsConfig(Section):
    """SIMS: the auxiliary model is generation k's generator fine-tuned for ``steps`` steps on ``images`` x
    |real train| of its own (plain) samples; sampling uses eps = (1 + w) eps_base - w eps_aux."""

    where: ClassVar[str] = "loop.sims"

    w: Float = Field(1.0, ge=0)
    images: number(gt=0, le=10) = 0.5
    steps: Int = Field(30, ge=1)


class SimsStudy(Section):
    """At generation 1: FD and KID against real VAL for every ``w`` at every auxiliary budget ``steps``."""

    where: ClassVar[str] = "loop.sims_study"

    w: list[Float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0], min_length=1)
    steps: list[Int] = Field(default_factory=lambda: [30, 90], min_length=1)
    images: Int | None = Field(None, ge=6)  # samples per w; None: as many as real val


class LoopMeasure(Section):
    """Per-generation metrics (see :mod:`factory.measure.loops`)."""

    where: ClassVar[str] = "loop.measure"

    n: Int | None = Field(None, ge=6)
    draws: Int = Field(3, ge=1)
    bootstrap: Int = Field(100, ge=0)
    k: Int = Field(5, ge=1)
    cas_steps: Int = Field(100, ge=1)
    cas_seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    duplicate_distance: Int = Field(2, ge=0)
    denoise_timesteps: list[Int] = Field(default_factory=lambda: [50, 250, 500, 750], min_length=1)
    reference_epochs: Int = Field(10, ge=1)


class LoopParams(Section):
    """``loop``: the generations, the runs and what they share."""

    where: ClassVar[str] = "loop"

    generations: Int = Field(5, ge=1)
    # loop/dvc.yaml declares a stage per run for generations 1..max_generations (`factory loop stages` writes
    # it); those past ``generations`` do no work, so ``dvc exp run -S loop.generations=8`` extends a loop
    max_generations: Int = Field(8, ge=1, le=MAX_GENERATIONS)
    real: str = "data/real/train"
    generator: str = "models/generator"  # generation 1: the main pipeline's generator
    init: Init = "finetune"
    train: LoopTrain = LoopTrain()
    images: number(gt=0, le=10) = 1.0        # replace/accumulate runs: each generation's set, x |real train|
    fresh_images: number(gt=0, le=10) = 0.5  # fresh runs: lambda, the fresh set, x |real train|
    sampler: LoopSamplerConfig = LoopSamplerConfig()
    corrector: CorrectorConfig = CorrectorConfig()
    sims: SimsConfig = SimsConfig()
    sims_study: SimsStudy = SimsStudy()
    measure: LoopMeasure = LoopMeasure()
    extra: list[str] = Field(default_factory=list)  # more datasets mixed into every pool after generation 1
    allow_unknown: Bool = False  # train on samples of unknown provenance (refused by default)
    seed: Seed = 0
    runs: dict[str, LoopRun] = Field(default_factory=lambda: {
        "replace": LoopRun(policy="replace"),
        "accumulate": LoopRun(policy="accumulate"),
        "accumulate_subsample": LoopRun(policy="accumulate_subsample"),
        "fresh": LoopRun(policy="fresh"),
        "fresh_corrected": LoopRun(policy="fresh", corrector="kmeans"),
        "sims": LoopRun(policy="replace", sampler="sims"),
    })

    @field_validator("runs")
    @classmethod
    def _names(cls, v: dict[str, LoopRun]) -> dict[str, LoopRun]:
        import re

        bad = [name for name in v if not re.fullmatch(r"[a-z][a-z0-9_]*", name)]
        if bad:
            raise ValueError(f"run names must be lowercase letters, digits and '_' (got {', '.join(map(repr, bad))})")
        if not v:
            raise ValueError("name at least one run")
        return v

    @model_validator(mode="after")
    def _check(self) -> "LoopParams":
        if self.generations > self.max_generations:
            raise field_error("generations", f"must be at most loop.max_generations ({self.max_generations}: "
                              "loop/dvc.yaml declares that many stages per run; raise it and run "
                              "`factory loop stages` for more)", self.generations)
        return self

    def images_for(self, run: str) -> float:
        """The size of each synthetic set of ``run``, as a multiple of |real train|."""
        return self.fresh_images if self.runs[run].policy == "fresh" else self.images
