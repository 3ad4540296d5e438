"""Configs of the measure phase: the guidance sweep, contrastive runs, evaluation, the bias study, the report."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from factory.config.base import Float, Int, Num, Section, Seed, field_error
from factory.config.data import PoolsConfig
from factory.config.generate import GenerateConfig, PlanConfig
from factory.config.train import ClassifierConfig, ContrastiveConfig, EmbeddedTrainConfig, Method, group_problem


class SweepParams(Section):
    where: ClassVar[str] = "sweep"

    guidance_scales: list[Num] = Field(default_factory=list)  # extra generate runs of the same plan

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
    """``contrastive``: which pools, which methods on each, the training seeds, and the training config
    every method shares. ``methods`` is one list for every pool or ``{pool: [methods]}`` naming every
    pool of ``pools``; each method is trained once per seed of ``seeds``."""

    where: ClassVar[str] = "contrastive"

    pools: list[str] = Field(default_factory=list)
    methods: list[Method] | dict[str, list[Method]] = Field(
        default_factory=lambda: ["simclr", "stablerep", "stablerep_plus"])
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    train: ContrastiveConfig = ContrastiveConfig()

    def methods_for(self, pool: str) -> list[str]:
        """The methods trained on ``pool`` (none for a pool ``methods`` does not name)."""
        return list(self.methods) if isinstance(self.methods, list) else list(self.methods.get(pool, []))

    @model_validator(mode="after")
    def _every_method_fits(self) -> "ContrastiveParams":
        if len(set(self.seeds)) != len(self.seeds):
            raise field_error("seeds", "must not repeat a seed", self.seeds)
        if isinstance(self.methods, dict):
            missing = [p for p in self.pools if p not in self.methods]
            if missing:
                raise field_error("methods", f"names no methods for pool(s) {', '.join(missing)}; give each "
                                  f"pool of contrastive.pools a list", sorted(self.methods))
        t = self.train
        every = self.methods if isinstance(self.methods, list) else [m for ms in self.methods.values() for m in ms]
        for method in dict.fromkeys(every):
            problem = group_problem(method, t.batch_size, t.images_per_group)
            if problem:
                raise field_error(f"train.{problem[0]}", f"{problem[1]}, for method {method}",
                                  getattr(t, problem[0]))
        return self


class EvaluationConfig(Section):
    """``evaluate``: synthetic datasets against the real test split.

    Within params.yaml the guidance sweep's outputs join ``datasets``, ``cas`` and ``guidance`` by
    themselves, and ``classifier`` is the ``classifier`` section (see :class:`factory.config.Params`).
    """

    where: ClassVar[str] = "evaluate"

    reference: str = "data/real/test"  # the real dataset every synthetic one is compared with
    train: str = "data/real/train"     # what the reference CNN (recognition, default feature space) learns from
    floor: str = "data/real/val"       # held-out real data disjoint from reference: the real-vs-real floor
    encoder: Literal["clip", "inception"] = "clip"  # a second, labelled feature space beside the reference CNN's
    encoder_path: str = "models/clip"  # embedded scorer folder, or Inception weights file (or open_clip name:)
    encoder_checkpoint: str | None = None  # clip: an open_clip weights file; encoder_path is then its architecture
    inception_path: str = ""           # Inception v3 weights file: a third view when the file is on disk
    k: Int = Field(5, ge=1)
    n: Int | None = Field(None, ge=2)  # samples per side of every comparison; None: the smallest set (at most 2000)
    draws: Int = Field(5, ge=1)        # seeded draws of n per set; metrics are their means
    bootstrap: Int = Field(200, ge=0)  # bootstrap resamples in all (over the draws) for the 95% intervals; 0: none
    reference_epochs: Int = Field(10, ge=1)
    datasets: dict[str, str] = Field(default_factory=dict)  # name -> synthetic dataset folder
    cas: tuple[str, ...] = ()        # datasets to train the classifier on alone (CAS)
    guidance: tuple[str, ...] = ()   # datasets that make the guidance trade-off plot
    classifier: ClassifierConfig = ClassifierConfig()
    seed: Seed = 0

    @model_validator(mode="after")
    def _known_datasets(self) -> "EvaluationConfig":
        for name in ("cas", "guidance"):
            unknown = [n for n in getattr(self, name) if n not in self.datasets]
            if unknown:
                raise field_error(name, f"{unknown} are not in evaluate.datasets or the sweep "
                                        f"({sorted(self.datasets)})")
        return self


class BiasParams(Section):
    """``bias``: the bias benchmark, a second small pipeline (see :meth:`factory.config.Params.study`)."""

    where: ClassVar[str] = "bias"

    source: str = "sklearn:digits-colored?bias=0.95&seed=0"   # the biased real data
    test_source: str = "sklearn:digits-colored?bias=0.1&seed=1"  # same digits, colour independent of class
    test_fraction: Float = Field(0.2, gt=0, lt=1)
    val_fraction: Float = Field(0.15, gt=0, lt=1)  # held-out val digits (colour random): every design choice
    shard_size: Int = Field(1000, ge=1)
    plan: PlanConfig = PlanConfig(dataset="data/bias/real/train")
    train_generator: EmbeddedTrainConfig = EmbeddedTrainConfig()
    generate: GenerateConfig = GenerateConfig(model="models/bias/generator")
    pools: PoolsConfig = PoolsConfig()

    @model_validator(mode="after")
    def _check_fractions(self) -> "BiasParams":
        if self.val_fraction + self.test_fraction >= 1:
            raise field_error("val_fraction", f"val_fraction + test_fraction must be below 1 (test_fraction is "
                                              f"{self.test_fraction})", self.val_fraction)
        return self


DEFAULT_HEADLINE = {"real": "classifier/real:top1", "cas": "classifier/synthetic:top1",
                    "mixed": "classifier/real_synthetic:top1", "fd": "evaluate/curated:fd",
                    "recognition": "evaluate/curated:recognition", "kept": "curate:kept"}


class ReportParams(Section):
    where: ClassVar[str] = "report"

    fraction_pools: list[str] = Field(default_factory=list)  # pools of one size: accuracy vs synthetic share
    baselines: dict[str, str] = Field(default_factory=dict)  # pool -> the pool it is compared with (within noise?)
    # metrics/headline.json, the only DVC metrics file (what dvc exp show compares): name -> "<summary file>:<key>"
    headline: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_HEADLINE))

    @field_validator("headline")
    @classmethod
    def _check_headline(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            file, _, key = ref.rpartition(":")
            if not file or not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"headline {name!r}: {ref!r} is not '<summary file>:<key>' "
                                 f"(e.g. 'classifier/real:top1', 'evaluate/curated:fd')")
        return v
