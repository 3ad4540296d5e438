from __future__ import annotations

import json
import logging
import math
import os
import shutil
import string
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from factory import __version__
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, replace_dir
from factory.core.sample import sample_attributes
from factory.core.shards import Dataset
from factory.curate.scorers.base import _create, attribute_phrase
from factory.curate.scorers.embedded import (
    DEFAULT_ATTRIBUTE_TEMPLATES,
    DEFAULT_TEMPLATES,
    MANIFEST_NAME,
    MODEL_SCHEMA,
    VOCAB_NAME,
    WEIGHTS_NAME,
    CaptionTokenizer,
    arch_name,
    register_arch,
    resolve_class_words,
)
from factory.curate.scorers.openclip import INTERPOLATIONS

log = logging.getLogger(__name__)


CLASS_WORD_MODES = ("auto", "names", "numbers")


LR_SCHEDULES = ("constant", "cosine")


FINAL_LOSS_WINDOW = 20


def _template_fields(t: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}


@dataclass(frozen=True)
class ClipTrainConfig:
    """How to build and train the embedded scorer.

    Defaults: the recipe in EMBEDDED-MODELS.md (mlp_ratio 2 gives its 0.7M parameters) plus two things
    measured on the digits (bench/clip.py, seeds 0-2, 300 steps): 30 warm-up steps and a random shift of up
    to 1 pixel took zero-shot top-1 on the real test split from 96.9-97.8% to 98.3-99.4%. Cosine decay
    scored the same at 300 steps but hurts short runs (training first sits on a plateau at
    ln(batch_size), where both towers map everything to one direction; a decayed learning rate leaves it
    later), so it is off by default.

    ``class_words`` says which word stands for each class in the captions: ``"auto"`` (number words
    "zero".."twenty" when every class name is such a number, else the class names), ``"names"``,
    ``"numbers"`` (fails unless every class is a number 0..20) or a mapping class name -> word.
    """

    image_size: int = 16
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 3
    vision_head_width: int = 32
    embed_dim: int = 64
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 16
    mlp_ratio: float = 2.0
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    # Warm-up matters: at a constant 1e-3 from step 1 the loss can sit at ln(batch_size) (every
    # embedding the same) for a long while, or for good (seen with shift=1 and no warm-up).
    warmup_steps: int = 30
    lr_schedule: str = "constant"  # after warm-up: constant, or cosine decay to 0 at the last step
    max_logit_scale: float = 100.0
    shift: int = 1  # augmentation: random translation by up to this many pixels (at image_size), 0: off
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    attribute_templates: tuple[str, ...] = DEFAULT_ATTRIBUTE_TEMPLATES
    attribute_caption_prob: float = 0.5
    class_words: Any = "auto"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    seed: int = 0
    max_seconds: float | None = None  # stop early after this much training time (None: no cap)
    # torch intra-op threads while training (None: torch's default, one per core). On 2 cores with one of
    # them busy with another job, a step took 3.8 s with 2 threads, 0.6 s with 1 thread and 0.55 s with 2
    # threads and OMP_WAIT_POLICY=PASSIVE (OpenMP's default spin-waiting fights the other job for the core).
    # The weights' last bits may depend on it: determinism holds for the same value.
    threads: int | None = None

    def __post_init__(self) -> None:
        def fail(name: str, msg: str) -> None:
            raise FactoryError(f"train_clip.{name} {msg}; got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and math.isfinite(float(v))

        for name in ("image_size", "patch_size", "vision_width", "vision_layers", "vision_head_width",
                     "embed_dim", "text_width", "text_layers", "text_heads", "steps", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be an integer >= 1")
        if self.image_size % self.patch_size:
            fail("image_size", f"must be a multiple of patch_size ({self.patch_size})")
        if self.vision_width % self.vision_head_width:
            fail("vision_width", f"must be a multiple of vision_head_width ({self.vision_head_width})")
        if self.text_width % self.text_heads:
            fail("text_width", f"must be a multiple of text_heads ({self.text_heads})")
        if self.batch_size < 2:
            fail("batch_size", "must be >= 2 (a contrastive loss needs negatives)")
        if not is_int(self.context_length) or self.context_length < 3:
            fail("context_length", "must be an integer >= 3")
        if not is_num(self.mlp_ratio) or not self.mlp_ratio > 0:
            fail("mlp_ratio", "must be a number > 0")
        if not is_num(self.lr) or not self.lr > 0:
            fail("lr", "must be a number > 0")
        if not is_num(self.weight_decay) or not self.weight_decay >= 0:
            fail("weight_decay", "must be a number >= 0")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            fail("warmup_steps", "must be an integer >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            fail("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
        if not is_num(self.max_logit_scale) or not self.max_logit_scale > 1:
            fail("max_logit_scale", "must be a number > 1")
        if not is_int(self.shift) or not 0 <= self.shift < self.image_size // 2:
            fail("shift", f"must be an integer in [0, {self.image_size // 2})")
        if not is_num(self.attribute_caption_prob) or not 0.0 <= self.attribute_caption_prob <= 1.0:
            fail("attribute_caption_prob", "must be in [0, 1]")
        for name, allowed, required in (("templates", {"word", "class_name"}, None),
                                        ("attribute_templates", {"word", "class_name", "attributes"}, "attributes")):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                fail(name, "must be a list of strings")
            object.__setattr__(self, name, tuple(value))
            if name == "templates" and not value:
                fail(name, "must hold at least one template")
            for t in value:
                if not isinstance(t, str) or not t.strip():
                    fail(name, "must be a list of non-empty strings")
                try:
                    used = _template_fields(t)
                except ValueError as exc:
                    raise FactoryError(f"train_clip.{name}: bad template {t!r} ({exc})") from None
                if "" in used or used - allowed:
                    raise FactoryError(f"train_clip.{name}: template {t!r} uses field(s) "
                                       f"{sorted(used - allowed) or ['{}']}; allowed: {sorted(allowed)}")
                if required and required not in used:
                    raise FactoryError(f"train_clip.{name}: template {t!r} must contain {{{required}}}")
        cw = self.class_words
        if isinstance(cw, str):
            if cw not in CLASS_WORD_MODES:
                fail("class_words", f"must be one of {', '.join(CLASS_WORD_MODES)} or a mapping class -> word")
        elif isinstance(cw, Mapping):
            if not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in cw.items()):
                fail("class_words", "must map class names to non-empty words (strings)")
            object.__setattr__(self, "class_words", tuple(sorted(cw.items())))
        elif not (isinstance(cw, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in cw)):  # normalised
            fail("class_words", f"must be one of {', '.join(CLASS_WORD_MODES)} or a mapping class -> word")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(is_num(x) for x in v):
                fail(name, "must be a list of 3 numbers")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if not all(x > 0 for x in self.std):
            fail("std", "must be 3 numbers > 0")
        if self.interpolation not in INTERPOLATIONS:
            fail("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            fail("seed", "must be an integer in [0, 2**63)")
        if self.max_seconds is not None and (not is_num(self.max_seconds) or not self.max_seconds > 0):
            fail("max_seconds", "must be a number > 0 or null")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            fail("threads", "must be an integer >= 1 or null")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClipTrainConfig":
        """Build from a mapping (e.g. a ``params.yaml`` section); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FactoryError(f"train_clip: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
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


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class CaptionSet:
    """Every caption the training can use, and which of them fit each sample."""

    texts: list[str]
    plain: np.ndarray  # (N, T) caption index per sample and template
    with_attrs: np.ndarray  # (N, A) caption index per sample and attribute template; -1: sample has no attributes
    attributes: dict[str, list[str]]  # axis -> sorted values seen




def build_captions(cfg: ClipTrainConfig, classes: Sequence[str], labels: Sequence[int],
                   attrs: Sequence[Mapping[str, str]]) -> tuple[CaptionSet, dict[str, str]]:
    words = resolve_class_words(cfg.class_words, classes)
    texts: list[str] = []
    index: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in index:
            index[text] = len(texts)
            texts.append(text)
        return index[text]

    # Every class's plain captions first, in class x template order (also for classes without samples).
    plain_by_class = [[add(t.format(word=words[c], class_name=c)) for t in cfg.templates] for c in classes]
    n_attr = len(cfg.attribute_templates)
    plain = np.array([plain_by_class[y] for y in labels], dtype=np.int64).reshape(len(labels), len(cfg.templates))
    with_attrs = np.full((len(labels), n_attr), -1, dtype=np.int64)
    for i, (y, a) in enumerate(zip(labels, attrs)):
        if a and n_attr:
            c = classes[y]
            phrase = attribute_phrase(a)
            with_attrs[i] = [add(t.format(word=words[c], class_name=c, attributes=phrase))
                             for t in cfg.attribute_templates]
    axes = sorted({k for a in attrs for k in a})
    values = {ax: sorted({a[ax] for a in attrs if ax in a}) for ax in axes}
    return CaptionSet(texts, plain, with_attrs, values), words


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FactoryError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise FactoryError(f"{out_dir}: exists, is not empty and is not a scorer folder; refusing to overwrite it")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """As open_clip's training: no weight decay on gains, biases, norms, embeddings' 1-d params and the logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def shift_images(padded: torch.Tensor, idx: torch.Tensor, shift: int, size: int,
                 gen: torch.Generator) -> torch.Tensor:
    """Crops of ``size`` x ``size`` at random offsets in 0..2*shift from images padded by ``shift``."""
    off = torch.randint(0, 2 * shift + 1, (len(idx), 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in zip(idx.tolist(), off)])


def learning_rate(cfg: ClipTrainConfig, step: int) -> float:
    """The learning rate of ``step`` (1-based): linear warm-up, then constant or cosine decay to 0."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return cfg.lr


def train_clip(dataset: Dataset | str | Path, cfg: ClipTrainConfig, out_dir: Path | str,
               progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train the embedded scorer on the images of ``dataset`` and captions from templates; save to ``out_dir``.

    Every step draws ``batch_size`` images (consecutive random permutations of the data) and, for each,
    one of its class's captions; a sample with attributes gets an attribute caption ("a red digit three")
    with probability ``attribute_caption_prob``. Loss: ``open_clip.loss.ClipLoss``; AdamW; the logit scale
    is clamped to ``log(max_logit_scale)`` after every step. ``progress(step, total, loss)`` is called
    after every step. Deterministic for a given seed, dataset, machine and torch build (unless
    ``max_seconds`` stops it early). ``out_dir`` is replaced as a whole, atomically. Returns a summary.
    """
    import open_clip

    if not isinstance(dataset, Dataset):
        dataset = Dataset(dataset)
    if not isinstance(cfg, ClipTrainConfig):
        raise FactoryError("train_clip needs a ClipTrainConfig")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    classes = dataset.classes

    # 1. the data: every image (small real sets: held in memory), its label and its attributes
    pil: list[Image.Image] = []
    labels: list[int] = []
    attrs: list[dict[str, str]] = []
    for s in dataset:
        if not 0 <= s.label < len(classes):
            raise FactoryError(f"{dataset.path}: sample {s.key!r} has label {s.label} outside 0..{len(classes) - 1}")
        pil.append(s.pil())
        labels.append(int(s.label))
        attrs.append(sample_attributes(s.provenance))
    if len(pil) < 2:
        raise FactoryError(f"{dataset.path}: {len(pil)} image(s); train_clip needs at least 2")
    captions, words = build_captions(cfg, classes, labels, attrs)
    tokenizer = CaptionTokenizer.build(captions.texts, cfg.context_length)
    arch = cfg.arch(tokenizer.vocab_size)
    preprocess_cfg = cfg.preprocess()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    caller_threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        name = arch_name(arch)
        arch_file = staging / f"{name}.json"
        atomic_write_bytes(arch_file, json.dumps(arch, indent=2, sort_keys=True).encode() + b"\n")
        register_arch(arch_file)

        # 2. the model, initialised from the seed without disturbing the caller's global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model, preprocess = _create(name, None, torch.device("cpu"), preprocess_cfg)
        images = torch.stack([preprocess(im) for im in pil])
        padded = torch.nn.functional.pad(images, (cfg.shift,) * 4, mode="replicate") if cfg.shift else images
        tokens = tokenizer(captions.texts)
        y = torch.tensor(labels)
        plain = torch.from_numpy(captions.plain)
        with_attrs = torch.from_numpy(captions.with_attrs)
        has_attrs = with_attrs[:, 0] >= 0 if with_attrs.shape[1] else torch.zeros(len(y), dtype=torch.bool)
        n_params = count_parameters(model)
        log.info("training the embedded scorer on %d images, %d classes, %d captions, vocabulary %d, %d parameters",
                 len(y), len(classes), len(captions.texts), tokenizer.vocab_size, n_params)

        # 3. the loop
        model.train()
        loss_fn = open_clip.loss.ClipLoss()
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)  # data order and caption choice
        max_log_scale = math.log(cfg.max_logit_scale)
        n = len(y)
        order = torch.empty(0, dtype=torch.long)
        losses: list[float] = []
        start = time.perf_counter()
        step = 0
        stopped_early = False
        for step in range(1, cfg.steps + 1):
            # 3a. the next batch of images, from consecutive random permutations of the data
            while len(order) < min(cfg.batch_size, n):
                order = torch.cat([order, torch.randperm(n, generator=gen)])
            idx, order = order[: min(cfg.batch_size, n)], order[min(cfg.batch_size, n):]
            b = len(idx)
            # 3b. one caption per image: a random plain template, or (with attributes) an attribute template
            cap = plain[idx, torch.randint(0, plain.shape[1], (b,), generator=gen)]
            if with_attrs.shape[1]:
                use_attr = (torch.rand(b, generator=gen) < cfg.attribute_caption_prob) & has_attrs[idx]
                cap_attr = with_attrs[idx, torch.randint(0, with_attrs.shape[1], (b,), generator=gen)]
                cap = torch.where(use_attr, cap_attr, cap)
            # 3c. augmentation: each image shifted by up to cfg.shift pixels (edges replicated)
            x = shift_images(padded, idx, cfg.shift, cfg.image_size, gen) if cfg.shift else images[idx]
            # 3d. contrastive loss over the batch
            image_features, text_features, logit_scale = model(x, tokens[cap])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # 3e. CLIP clamps the temperature: logit scale at most log(100)
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, cfg.steps, losses[-1])
            if cfg.max_seconds is not None and time.perf_counter() - start >= cfg.max_seconds and step < cfg.steps:
                log.warning("train_clip: stopping after %d of %d steps (max_seconds=%s)", step, cfg.steps,
                            cfg.max_seconds)
                stopped_early = True
                break
        seconds = time.perf_counter() - start
        model.eval()

        # 4. save: weights, vocabulary, manifest; then move the folder into place
        summary = {
            "steps": step,
            "stopped_early": stopped_early,
            "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(step, 1), 4),
            "final_loss": round(float(np.mean(losses[-FINAL_LOSS_WINDOW:])), 6),
            "first_loss": round(losses[0], 6),
            "loss_curve": [round(float(np.mean(losses[i:i + 25])), 4) for i in range(0, len(losses), 25)],
            "logit_scale": round(float(model.logit_scale.detach().exp()), 4),
            "parameters": n_params,
            "vocab_size": tokenizer.vocab_size,
            "captions": len(captions.texts),
            "images": n,
            "torch_threads": torch.get_num_threads(),
        }
        manifest = {
            "schema": MODEL_SCHEMA,
            "arch": name,
            "arch_file": arch_file.name,
            "preprocess": preprocess_cfg,
            "classes": list(classes),
            "class_words": words,
            "templates": list(cfg.templates),
            "attribute_templates": list(cfg.attribute_templates),
            "attributes": captions.attributes,
            "parents": [dataset.ref()],
            "train": cfg.to_dict(),
            "summary": summary,
            "factory_version": __version__,
        }
        _save_weights(model, staging / WEIGHTS_NAME)
        atomic_write_bytes(staging / VOCAB_NAME, json.dumps(tokenizer.to_json(), indent=1).encode() + b"\n")
        atomic_write_bytes(staging / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(caller_threads)
    log.info("saved the embedded scorer to %s: %d steps in %.0f s, final loss %.4f", out_dir, step, seconds,
             summary["final_loss"])
    return summary


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # One metadata key only: several would be written in hash-map order and change the file's bytes.
    save_file(state, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates the file private (0600); the other files are 0644
