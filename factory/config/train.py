"""Configs of the train phase: the embedded generator and scorer, the classifier, the contrastive encoders.

Numbers keep the type they are given (an ``lr: 1`` stays the int 1), because these configs are written
into model folders and metrics as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from factory.config.base import (
    SEED_LIMIT,
    Bool,
    Int,
    Section,
    Seed,
    as_number,
    field_error,
    number,
    template_fields,
    template_problem,
)

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
BETA_SCHEDULES = get_args(BetaSchedule)


class EmbeddedTrainConfig(Section):
    """How to build and train the embedded generator (``train_generator``). Defaults: the recipe in
    EMBEDDED-MODELS.md."""

    where: ClassVar[str] = "train_generator"

    image_size: Int = Field(16, ge=1)  # a multiple of 2 ** (len(block_out_channels) - 1)
    block_out_channels: tuple[Int, ...] = Field((32, 64, 64), min_length=1)
    layers_per_block: Int = Field(1, ge=1)
    norm_num_groups: Int = Field(8, ge=1)
    mid_attention: Bool = True
    steps: Int = Field(750, ge=1)
    batch_size: Int = Field(128, ge=1)
    lr: number(gt=0) = 1e-3
    weight_decay: number(ge=0) = 0.0
    warmup_steps: Int = Field(100, ge=0)
    label_dropout: number(ge=0, lt=1) = 0.1
    ema_max_decay: number(ge=0, lt=1) = 0.999
    num_train_timesteps: Int = Field(1000, ge=2)
    beta_schedule: BetaSchedule = "squaredcos_cap_v2"
    seed: Seed = 0
    max_seconds: number(gt=0) | None = None  # stop early after this much training time (None: no cap)

    @field_validator("block_out_channels")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not all(c > 0 for c in v):
            raise ValueError("must be a non-empty list of positive integers")
        return v

    @model_validator(mode="after")
    def _check(self) -> "EmbeddedTrainConfig":
        boc = self.block_out_channels
        if any(c % self.norm_num_groups for c in boc):
            raise field_error("block_out_channels", f"must all be divisible by norm_num_groups "
                                                    f"({self.norm_num_groups})", list(boc))
        mult = 2 ** (len(boc) - 1)
        if self.image_size < mult or self.image_size % mult:
            raise field_error("image_size", f"must be a positive multiple of {mult} "
                                            "(2 ** (len(block_out_channels) - 1))", self.image_size)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["block_out_channels"] = list(self.block_out_channels)
        return d


# Caption templates of the embedded scorer. Fields: {word} (the class's caption word, e.g. "three"),
# {class_name} (the class name as stored, e.g. "3") and, in attribute templates only, {attributes} (the
# sample's attribute values in axis order, e.g. "red"). The first template is the class prompt used for
# zero-shot scoring.
DEFAULT_TEMPLATES = (
    "a photo of the digit {word}",
    "a handwritten {class_name}",
    "a handwritten digit {word}",
    "the number {word}",
    "an image of the digit {class_name}",
    "a drawing of a {word}",
    "a {word}",
    "a blurry photo of the number {class_name}",
)


DEFAULT_ATTRIBUTE_TEMPLATES = (
    "a {attributes} digit {word}",
    "a photo of the {attributes} digit {word}",
    "a {attributes} handwritten {class_name}",
    "the {attributes} number {word}",
)


CLASS_WORD_MODES = ("auto", "names", "numbers")
LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES = get_args(LrSchedule)
Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS = get_args(Interpolation)
_TEMPLATE_FIELDS = {"templates": ({"word", "class_name"}, None),
                    "attribute_templates": ({"word", "class_name", "attributes"}, "attributes")}


class ClipTrainConfig(Section):
    """How to build and train the embedded scorer (``train_clip``).

    Defaults: the recipe in EMBEDDED-MODELS.md (mlp_ratio 2 gives its 0.7M parameters) plus two things
    measured on the digits (bench/clip.py, seeds 0-2, 300 steps): 30 warm-up steps and a random shift of up
    to 1 pixel took zero-shot top-1 on the real test split from 96.9-97.8% to 98.3-99.4%. Cosine decay
    scored the same at 300 steps but hurts short runs (training first sits on a plateau at
    ln(batch_size), where both towers map everything to one direction; a decayed learning rate leaves it
    later), so it is off by default.

    ``class_words`` says which word stands for each class in the captions: ``"auto"`` (number words
    "zero".."twenty" when every class name is such a number, else the class names), ``"names"``,
    ``"numbers"`` (fails unless every class is a number 0..20) or a mapping class name -> word (kept as
    sorted ``(class, word)`` pairs).
    """

    where: ClassVar[str] = "train_clip"

    image_size: Int = Field(16, ge=1)
    patch_size: Int = Field(4, ge=1)
    vision_width: Int = Field(128, ge=1)
    vision_layers: Int = Field(3, ge=1)
    vision_head_width: Int = Field(32, ge=1)
    embed_dim: Int = Field(64, ge=1)
    text_width: Int = Field(128, ge=1)
    text_layers: Int = Field(2, ge=1)
    text_heads: Int = Field(4, ge=1)
    context_length: Int = Field(16, ge=3)
    mlp_ratio: number(gt=0) = 2.0
    steps: Int = Field(300, ge=1)
    batch_size: Int = Field(256, ge=2)  # a contrastive loss needs negatives
    lr: number(gt=0) = 1e-3
    weight_decay: number(ge=0) = 0.1
    # Warm-up matters: at a constant 1e-3 from step 1 the loss can sit at ln(batch_size) (every
    # embedding the same) for a long while, or for good (seen with shift=1 and no warm-up).
    warmup_steps: Int = Field(30, ge=0)
    lr_schedule: LrSchedule = "constant"  # after warm-up: constant, or cosine decay to 0 at the last step
    max_logit_scale: number(gt=1) = 100.0
    shift: Int = Field(1, ge=0)  # augmentation: random translation by up to this many pixels (at image_size), 0: off
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    attribute_templates: tuple[str, ...] = DEFAULT_ATTRIBUTE_TEMPLATES
    attribute_caption_prob: number(ge=0, le=1) = 0.5
    class_words: str | tuple[tuple[str, str], ...] = "auto"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: Interpolation = "bilinear"
    seed: Seed = 0
    max_seconds: number(gt=0) | None = None  # stop early after this much training time (None: no cap)
    # torch intra-op threads while training (None: torch's default, one per core). On 2 cores with one of
    # them busy with another job, a step took 3.8 s with 2 threads, 0.6 s with 1 thread and 0.55 s with 2
    # threads and OMP_WAIT_POLICY=PASSIVE (OpenMP's default spin-waiting fights the other job for the core).
    # The weights' last bits may depend on it: determinism holds for the same value.
    threads: Int | None = Field(None, ge=1)

    @field_validator("templates", "attribute_templates")
    @classmethod
    def _templates(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        allowed, required = _TEMPLATE_FIELDS[info.field_name]
        if info.field_name == "templates" and not value:
            raise ValueError("must hold at least one template")
        for t in value:
            if not t.strip():
                raise ValueError("must be a list of non-empty strings")
            problem = template_problem(t, set(allowed))
            if problem:
                raise ValueError(problem)
            used = template_fields(t)
            if required and required not in used:
                raise ValueError(f"template {t!r} must contain {{{required}}}")
        return value

    @field_validator("class_words", mode="before")
    @classmethod
    def _class_words(cls, cw: Any) -> Any:
        modes = f"must be one of {', '.join(CLASS_WORD_MODES)} or a mapping class -> word"
        if isinstance(cw, str):
            if cw not in CLASS_WORD_MODES:
                raise ValueError(modes)
            return cw
        if isinstance(cw, Mapping):
            if not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in cw.items()):
                raise ValueError("must map class names to non-empty words (strings)")
            return tuple(sorted(cw.items()))
        if isinstance(cw, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in cw):  # normalised
            return cw
        raise ValueError(modes)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _three_numbers(cls, v: Any, info: ValidationInfo) -> tuple[float, ...]:
        try:
            if not isinstance(v, (list, tuple)) or len(v) != 3:
                raise ValueError
            out = tuple(float(as_number(x)) for x in v)
        except (ValueError, PydanticCustomError):
            raise ValueError("must be a list of 3 numbers") from None
        if info.field_name == "std" and not all(x > 0 for x in out):
            raise ValueError("must be 3 numbers > 0")
        return out

    @model_validator(mode="after")
    def _check(self) -> "ClipTrainConfig":
        for name, of in (("image_size", "patch_size"), ("vision_width", "vision_head_width"),
                         ("text_width", "text_heads")):
            if getattr(self, name) % getattr(self, of):
                raise field_error(name, f"must be a multiple of {of} ({getattr(self, of)})", getattr(self, name))
        if self.shift >= self.image_size // 2:
            raise field_error("shift", f"must be an integer in [0, {self.image_size // 2})", self.shift)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        for name in ("templates", "attribute_templates", "mean", "std"):
            d[name] = list(d[name])
        if isinstance(self.class_words, tuple):
            d["class_words"] = dict(self.class_words)
        return d

    def arch(self, vocab_size: int) -> dict[str, Any]:
        """The open_clip model config (the JSON registered with ``add_model_config``)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size, "width": self.vision_width,
                           "layers": self.vision_layers, "head_width": self.vision_head_width,
                           "mlp_ratio": float(self.mlp_ratio)},
            "text_cfg": {"context_length": self.context_length, "vocab_size": int(vocab_size),
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers,
                         "mlp_ratio": float(self.mlp_ratio)},
        }

    def preprocess(self) -> dict[str, Any]:
        return {"size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": "shortest"}


Arch = Literal["cnn", "resnet18", "resnet34", "resnet50"]
ARCHS = get_args(Arch)


class ClassifierConfig(Section):
    """``classifier``: the classifier trained on each pool and tested on real data."""

    where: ClassVar[str] = "classifier"

    arch: Arch = "cnn"
    width: Int = Field(32, gt=0)               # cnn only
    steps: Int = Field(400, gt=0)              # optimiser steps, whatever the pool's size (fair across pool sizes)
    batch_size: Int = Field(64, gt=0)
    lr: number(gt=0) = 2e-3
    weight_decay: number(ge=0) = 1e-4
    label_smoothing: number(ge=0, lt=1) = 0.0
    augment: Bool = True
    image_size: Int = Field(16, gt=0)
    mode: Literal["auto", "L", "RGB"] = "auto"  # auto (L unless the images are colour) | L | RGB
    shuffle_buffer: Int = Field(2000, ge=0)  # 0 or 1: pool order; else mixed (a pool over 256 MB: this buffer)
    num_workers: Int = Field(0, ge=0)
    cache: Bool = True            # keep decoded images in memory after the first epoch (if under 1 GiB)
    eval_every: Int = Field(100, gt=0)  # steps between real-test evaluations (the last step always)
    seed: Seed = 0
    # training seeds, as offsets from ``seed`` (itself base.seed by default): one classifier per seed on the
    # same pool draw (init, order and augmentation change); a result is their mean with a 95% interval
    seeds: tuple[Seed, ...] = (0, 1, 2)

    @model_validator(mode="after")
    def _check(self) -> "ClassifierConfig":
        if self.arch == "cnn" and self.image_size % 4:
            raise field_error("image_size", "must be a multiple of 4 for the cnn", self.image_size)
        if not self.seeds:
            raise field_error("seeds", "must hold at least one seed", [])
        if len(set(self.seeds)) != len(self.seeds):
            raise field_error("seeds", "must be distinct", list(self.seeds))
        if self.seed + max(self.seeds) >= SEED_LIMIT:
            raise field_error("seeds", f"seed + offset must be < {SEED_LIMIT} (seed is {self.seed})", list(self.seeds))
        return self

    def training_seeds(self) -> list[int]:
        """The seeds the classifiers are trained with: ``seed + offset`` for each of ``seeds``."""
        return [self.seed + k for k in self.seeds]


# simclr, supcon: random images, two views each; the others: batches of whole groups (factory.train.groups)
Method = Literal["simclr", "stablerep", "stablerep_plus", "supcon", "random_groups"]
METHODS = get_args(Method)


def group_problem(method: str, batch_size: int, images_per_group: int) -> tuple[str, str] | None:
    """(field, message) when a batch of whole groups cannot hold positives, else None."""
    if method in ("simclr", "supcon"):
        return None
    if images_per_group < 2:
        return "images_per_group", "must be >= 2 for StableRep (each image needs a positive)"
    if batch_size // images_per_group < 2:
        return "batch_size", f"must hold at least 2 groups of images_per_group ({images_per_group})"
    return None


class ContrastiveConfig(Section):
    """How to build, train and probe a contrastive encoder (``contrastive.train``, plus the method).

    ``images_per_group`` is for the grouped methods (stablerep, stablerep_plus, random_groups): a batch is
    whole groups (prompts) up to ``batch_size`` views, up to ``images_per_group`` images of each, one view
    each, an image alone in its group as two views. SimCLR and SupCon use ``batch_size`` images, two views
    each (``2 * batch_size`` views through the encoder per step).
    The augmentation (:func:`augment`) is on for every method; ``noise`` is its gaussian noise std.
    """

    where: ClassVar[str] = "contrastive.train"

    method: Method = "simclr"
    steps: Int = Field(300, ge=1)
    batch_size: Int = Field(256, ge=2)  # a contrastive loss needs negatives
    images_per_group: Int = Field(4, ge=1)
    lr: number(gt=0) = 1e-3
    weight_decay: number(ge=0) = 1e-4  # AdamW
    warmup_steps: Int = Field(10, ge=0)  # linear warm-up of the learning rate, then constant
    temperature: number(gt=0) = 0.1  # of the image-image losses (SimCLR, StableRep)
    width: Int = Field(32, ge=1)  # backbone channels: width, then 2 * width (the feature size)
    embed_dim: Int = Field(64, ge=1)  # projection (and text) embedding size
    text_weight: number(ge=0) = 1.0  # StableRep+: image-image + text_weight * image-text (reference: w1 = w2 = 1)
    image_size: Int = Field(16, ge=4)
    noise: number(ge=0) = 0.02  # augmentation: gaussian noise std (pixels in [-1, 1]); 0: off
    seed: Seed = 0
    probe_C: number(gt=0) = 1.0  # inverse L2 strength of the logistic-regression probe: linear_probe(..., C=probe_C)
    # torch intra-op threads while training (None: torch's default); see ClipTrainConfig.threads.
    threads: Int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ContrastiveConfig":
        problem = group_problem(self.method, self.batch_size, self.images_per_group)
        if problem:
            raise field_error(problem[0], problem[1], getattr(self, problem[0]))
        return self
