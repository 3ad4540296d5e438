"""The scorer for curation: one interface (:class:`Scorer`), two backends.

- ``embedded``: a small CLIP trained by the pipeline on the real train images and captions made from
  templates (:func:`train_clip`). The network is an open_clip ``CLIP`` built by
  ``open_clip.create_model_and_transforms`` from a custom architecture config (a JSON file in the model
  folder, registered with ``open_clip.add_model_config``): a ViT on 16x16 inputs and a 2-layer text
  transformer (about 0.7M parameters with the defaults). Text goes through open_clip's bundled BPE
  ``SimpleTokenizer`` (no download), whose ids are remapped to the few the captions use (see
  :class:`CaptionTokenizer`).
- ``open_clip``: any open_clip architecture name plus a local checkpoint file, loaded with its own
  preprocessing and tokenizer (:class:`OpenClipScorer`). Nothing is downloaded: a missing checkpoint, or a
  tokenizer that would have to come from the Hugging Face Hub and is not in the local cache, is a
  :class:`~factory.errors.FactoryError`.

Both give L2-normalised float32 embeddings, so every score is a cosine in [-1, 1]:
:meth:`Scorer.score` (image i with text i), :meth:`Scorer.class_scores` (N x C), :func:`margins` (own
class minus best other class), and the metrics :func:`zero_shot_accuracy` and :func:`mismatch_auc`.

Files of an embedded scorer folder (written by :func:`train_clip`):

- ``model.safetensors``: the open_clip state dict;
- ``factory-clip-<hash>.json``: the open_clip architecture config (the file registered with
  ``add_model_config``; its name is a hash of its content, so two folders never register different
  architectures under one name);
- ``vocab.json``: the tokenizer's id map (``bpe_ids[i]`` is the BPE id that model id ``i`` stands for) and
  the matching token strings;
- ``scorer.json``: everything else: the preprocessing, classes and their caption words, caption templates,
  attribute values seen, the datasets it was trained on (``parents``), the training config and summary.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import string
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from factory import __version__
from factory.errors import FactoryError
from factory.shards import Dataset, atomic_write_bytes, file_sha256, replace_dir

log = logging.getLogger(__name__)

BACKENDS = ("embedded", "open_clip")
MODEL_SCHEMA = "factory.embedded-scorer/1"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "scorer.json"
MANIFEST_KEYS = ("arch", "arch_file", "preprocess", "classes", "class_words", "templates", "attribute_templates",
                 "attributes")
VOCAB_NAME = "vocab.json"
ARCH_PREFIX = "factory-clip-"
# The HF-hub layout of an open_clip model: a config with ``model_cfg`` and ``preprocess_cfg`` beside the weights.
SIDECAR_NAME = "open_clip_config.json"
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
RESIZE_MODES = ("shortest", "longest", "squash")
CLASS_WORD_MODES = ("auto", "names", "numbers")
LR_SCHEDULES = ("constant", "cosine")
FINAL_LOSS_WINDOW = 20
DEFAULT_BATCH_SIZE = 256

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")

# Caption templates. Fields: {word} (the class's caption word, e.g. "three"), {class_name} (the class name
# as stored, e.g. "3") and, in attribute templates only, {attributes} (the sample's attribute values in
# axis order, e.g. "red"). The first template is the class prompt used for zero-shot scoring.
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
# The production backend's prompts (a generic CLIP prompt; set ``OpenClipScorer.templates`` to change).
OPEN_CLIP_TEMPLATE = "a photo of a {class_name}."
OPEN_CLIP_ATTRIBUTE_TEMPLATE = "a photo of a {attributes} {class_name}."


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


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


def resolve_class_words(class_words: Any, classes: Sequence[str]) -> dict[str, str]:
    """The caption word of every class (see :class:`ClipTrainConfig`)."""
    def number_word(name: str) -> str | None:
        return NUMBER_WORDS[int(name)] if name.isdigit() and int(name) < len(NUMBER_WORDS) else None

    if class_words == "names":
        return {c: c for c in classes}
    if class_words in ("auto", "numbers"):
        words = {c: number_word(c) for c in classes}
        if all(words.values()):
            return {c: str(w) for c, w in words.items()}
        if class_words == "numbers":
            bad = [c for c, w in words.items() if w is None]
            raise FactoryError(f"train_clip.class_words is 'numbers' but class(es) {bad[:5]} are not numbers "
                               f"0..{len(NUMBER_WORDS) - 1}; use 'names' or a mapping")
        return {c: c for c in classes}
    mapping = dict(class_words)
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise FactoryError(f"train_clip.class_words has no word for class(es) {missing[:10]}")
    return {c: mapping[c] for c in classes}


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _bpe():
    """open_clip's bundled BPE tokenizer (vocabulary file inside the package: no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class CaptionTokenizer:
    """open_clip's ``SimpleTokenizer`` with its 49,408 ids remapped to the few the captions use.

    ``bpe_ids`` is the sorted list of BPE ids kept; model id ``i`` stands for ``bpe_ids[i]``. The order is
    kept, so the end-of-text token (the largest BPE id) stays the largest model id: open_clip's text tower
    pools at the argmax of the token ids. Id 0 (open_clip's padding) is always kept, so padding stays 0.
    Texts are laid out as open_clip does: start token, the BPE ids (truncated to ``context_length - 2``),
    end token, zeros. A word outside the vocabulary is an error, never a silent substitution.
    """

    def __init__(self, bpe_ids: Sequence[int], context_length: int) -> None:
        ids = [int(i) for i in bpe_ids]
        if ids != sorted(set(ids)):
            raise FactoryError("tokenizer bpe_ids must be sorted and unique")
        bpe = _bpe()
        for required in (0, bpe.sot_token_id, bpe.eot_token_id):
            if required not in ids:
                raise FactoryError(f"tokenizer bpe_ids must contain id {required} (padding, start and end of text)")
        self.bpe_ids = ids
        self.context_length = int(context_length)
        self._map = {b: i for i, b in enumerate(ids)}
        self.sot = self._map[bpe.sot_token_id]
        self.eot = self._map[bpe.eot_token_id]

    @classmethod
    def build(cls, texts: Iterable[str], context_length: int) -> "CaptionTokenizer":
        """The tokenizer for exactly the BPE ids of ``texts``; a text longer than the context is an error."""
        bpe = _bpe()
        used = {0, bpe.sot_token_id, bpe.eot_token_id}
        for t in texts:
            ids = bpe.encode(t)
            if len(ids) > context_length - 2:
                raise FactoryError(f"caption {t!r} has {len(ids)} tokens; at most context_length - 2 = "
                                   f"{context_length - 2} fit")
            used.update(ids)
        return cls(sorted(used), context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.bpe_ids)

    def encode(self, text: str) -> list[int]:
        bpe = _bpe()
        ids = bpe.encode(text)
        unknown = [i for i in ids if i not in self._map]
        if unknown:
            words = sorted({bpe.decode([i]).strip() for i in unknown})
            raise FactoryError(f"text {text!r}: {', '.join(repr(w) for w in words)} not in the embedded scorer's "
                               f"vocabulary ({self.vocab_size} tokens, from its caption templates)")
        return [self._map[i] for i in ids]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: self.context_length - 2]
            out[row, : len(ids) + 2] = torch.tensor([self.sot, *ids, self.eot])
        return out

    def to_json(self) -> dict[str, Any]:
        bpe = _bpe()
        return {"tokenizer": "open_clip.tokenizer.SimpleTokenizer (bundled bpe_simple_vocab_16e6), ids remapped",
                "context_length": self.context_length, "bpe_ids": self.bpe_ids,
                "tokens": [bpe.decoder[i] for i in self.bpe_ids]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CaptionTokenizer":
        tok = cls(d["bpe_ids"], d["context_length"])
        bpe = _bpe()
        if "tokens" in d and list(d["tokens"]) != [bpe.decoder[i] for i in tok.bpe_ids]:
            raise FactoryError("vocab.json: its tokens do not match open_clip's bundled BPE vocabulary "
                               "(a different open_clip version?)")
        return tok


# --------------------------------------------------------------------------------------------------
# open_clip helpers
# --------------------------------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def arch_name(arch: Mapping[str, Any]) -> str:
    """The registry name of an architecture config: a hash of its content."""
    return ARCH_PREFIX + hashlib.sha256(_canonical(arch)).hexdigest()[:12]


def register_arch(path: Path) -> str:
    """Register an architecture JSON with open_clip (once) and return its name (the file's stem)."""
    import open_clip

    path = Path(path)
    try:
        arch = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FactoryError(f"{path}: unreadable open_clip model config ({exc})") from None
    name = path.stem
    if open_clip.get_model_config(name) != arch:
        open_clip.add_model_config(path)
        if open_clip.get_model_config(name) != arch:
            raise FactoryError(f"{path}: open_clip did not register it as {name!r} (needs embed_dim, vision_cfg "
                               f"and text_cfg)")
    return name


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise FactoryError(f"scorer device must be cpu or cuda[:N]; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FactoryError(f"scorer device {device!r}: CUDA is not available on this machine")
    return dev


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _create(name: str, checkpoint: str | None, device: torch.device, preprocess: Mapping[str, Any]):
    """``open_clip.create_model_and_transforms`` with explicit preprocessing; returns (model, val transform)."""
    import open_clip

    model, _, val = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, device=device,
        image_mean=tuple(preprocess["mean"]) if preprocess.get("mean") else None,
        image_std=tuple(preprocess["std"]) if preprocess.get("std") else None,
        image_interpolation=preprocess.get("interpolation"),
        image_resize_mode=preprocess.get("resize_mode"))
    return model, val


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------


class Scorer(abc.ABC):
    """An open_clip model with its own preprocessing and tokenizer. Subclasses say where they come from.

    Every embedding is L2-normalised float32; every score is a cosine similarity. Images are any PIL
    images: the model's own preprocessing resizes them and converts them to RGB (grayscale is repeated
    to 3 channels). Work is done in batches of ``batch_size``.
    """

    backend: str = ""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[Sequence[str]], torch.Tensor], device: torch.device,
                 weights_sha256: str, embed_dim: int, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.embed_dim = int(embed_dim)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.weights_sha256 = weights_sha256
        if batch_size < 1:
            raise FactoryError(f"scorer batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}))
        return json.loads(json.dumps(cfg, default=list))

    def describe(self) -> dict[str, Any]:
        """What produced the scores (goes into provenance): backend, model, weights_sha256, preprocessing."""
        return {"backend": self.backend, "model": "", "weights_sha256": self.weights_sha256,
                "preprocess": self.preprocess_cfg, "embed_dim": self.embed_dim}

    @abc.abstractmethod
    def class_prompts(self, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
        """One prompt per class, in the scorer's own words (with ``attributes`` when given)."""

    # -- embeddings ------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32, each row of unit length."""
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            feats = self.model.encode_image(batch.to(self.device), normalize=True)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, each row of unit length."""
        if isinstance(texts, str):
            raise FactoryError("embed_texts takes a list of texts, not one string")
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
            feats = self.model.encode_text(tokens.to(self.device), normalize=True)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- scores ----------------------------------------------------------------------------------

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """(N,) cosine of image i with text i."""
        if len(images) != len(texts):
            raise FactoryError(f"score needs one text per image; got {len(images)} images and {len(texts)} texts")
        return np.sum(self.embed_images(images) * self.embed_texts(texts), axis=1, dtype=np.float32)

    def class_scores(self, images: Sequence[Image.Image], class_prompts: Sequence[str]) -> np.ndarray:
        """(N, C) cosine of every image with every class prompt."""
        if not class_prompts:
            raise FactoryError("class_scores needs at least one class prompt")
        return self.embed_images(images) @ self.embed_texts(class_prompts).T


# --------------------------------------------------------------------------------------------------
# Embedded backend
# --------------------------------------------------------------------------------------------------


class EmbeddedScorer(Scorer):
    """A scorer folder written by :func:`train_clip`."""

    backend = "embedded"

    def __init__(self, model_dir: Path, manifest: dict[str, Any], model: torch.nn.Module, preprocess: Callable,
                 tokenizer: CaptionTokenizer, device: torch.device, weights_sha256: str,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        embed_dim = json.loads((Path(model_dir) / manifest["arch_file"]).read_text())["embed_dim"]
        super().__init__(model, preprocess, tokenizer, device, weights_sha256, embed_dim, batch_size)
        self.model_dir = Path(model_dir)
        self.manifest = manifest

    @classmethod
    def load(cls, model_dir: Path | str, device: str | torch.device = "cpu",
             batch_size: int = DEFAULT_BATCH_SIZE) -> "EmbeddedScorer":
        """Load a folder written by :func:`train_clip`. Missing or inconsistent files raise FactoryError."""
        path = Path(model_dir)
        if not path.is_dir():
            raise FactoryError(f"{path}: no such scorer folder (train it first: train_clip)")
        manifest_path, vocab_path, weights_path = path / MANIFEST_NAME, path / VOCAB_NAME, path / WEIGHTS_NAME
        for p in (manifest_path, vocab_path, weights_path):
            if not p.is_file():
                raise FactoryError(f"{p}: missing; {path} is not a complete embedded scorer folder")
        manifest = _read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("schema") != MODEL_SCHEMA:
            raise FactoryError(f"{manifest_path}: schema is not {MODEL_SCHEMA!r}")
        missing = [k for k in MANIFEST_KEYS if k not in manifest]
        if missing:
            raise FactoryError(f"{manifest_path}: missing field(s) {', '.join(missing)}")
        arch_path = path / manifest["arch_file"]
        if not arch_path.is_file():
            raise FactoryError(f"{arch_path}: missing; {path} is not a complete embedded scorer folder")
        name = register_arch(arch_path)
        tokenizer = CaptionTokenizer.from_json(_read_json(vocab_path))
        dev = _device(device)
        try:
            model, preprocess = _create(name, str(weights_path), dev, manifest["preprocess"])
        except Exception as exc:  # open_clip raises RuntimeError/KeyError, safetensors its own error type
            raise FactoryError(f"{weights_path}: could not be loaded into {arch_path.name} ({_first_line(exc)})") from None
        if model.vocab_size != tokenizer.vocab_size:
            raise FactoryError(f"{vocab_path}: {tokenizer.vocab_size} tokens, but the model has {model.vocab_size}")
        return cls(path, manifest, model, preprocess, tokenizer, dev, file_sha256(weights_path), batch_size)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def class_words(self) -> dict[str, str]:
        return dict(self.manifest["class_words"])

    @property
    def templates(self) -> list[str]:
        return list(self.manifest["templates"])

    @property
    def attribute_templates(self) -> list[str]:
        return list(self.manifest["attribute_templates"])

    @property
    def attributes(self) -> dict[str, list[str]]:
        """The attribute values seen in training, per axis."""
        return {k: list(v) for k, v in self.manifest["attributes"].items()}

    @property
    def parents(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self.manifest.get("parents", [])]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": str(self.model_dir), "arch": self.manifest["arch"]}

    def caption(self, class_name: str, attributes: Mapping[str, str] | None = None, template: int = 0) -> str:
        """A caption as in training: ``templates[template]``, or with ``attributes`` the attribute
        template of that index (e.g. "a red digit three")."""
        words = self.class_words
        if class_name not in words:
            raise FactoryError(f"class {class_name!r} is unknown to the embedded scorer {self.model_dir}; "
                               f"it knows {', '.join(self.classes)}")
        if attributes:
            if not self.attribute_templates:
                raise FactoryError(f"the embedded scorer {self.model_dir} has no attribute templates")
            return self.attribute_templates[template].format(
                word=words[class_name], class_name=class_name, attributes=attribute_phrase(attributes))
        return self.templates[template].format(word=words[class_name], class_name=class_name)

    def class_prompts(self, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
        return [self.caption(c, attributes) for c in classes]


def attribute_phrase(attributes: Mapping[str, Any]) -> str:
    """Attribute values in axis-name order, space-separated: {"color": "red"} -> "red"."""
    return " ".join(str(attributes[k]) for k in sorted(attributes))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FactoryError(f"{path}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------------------------------
# Production backend
# --------------------------------------------------------------------------------------------------


class OpenClipScorer(Scorer):
    """Any open_clip architecture with a local checkpoint file.

    Preprocessing is the model's own: ``create_model_and_transforms`` builds the validation transform
    from the architecture's image size and, for mean/std/interpolation/resize mode, from (first match):

    1. ``open_clip_config.json`` beside the checkpoint (the layout of open_clip models on the Hugging Face
       Hub: ``{"model_cfg": ..., "preprocess_cfg": ...}``);
    2. open_clip's pretrained registry for this architecture: the ``tag`` given, or the settings all its
       tags share (when they disagree, ``tag`` must say which one the checkpoint is);
    3. open_clip's defaults (OpenAI mean/std, bicubic, shortest side) when the architecture has no
       pretrained tags (a custom config): logged as a warning and recorded in :meth:`describe`.

    The tokenizer is ``open_clip.get_tokenizer(name)``. For architectures whose text tower uses a
    Hugging Face tokenizer (``hf_tokenizer_name`` in the config) that reads the Hugging Face cache and
    would download when it is missing; offline (``HF_HUB_OFFLINE=1``) a missing tokenizer is a
    FactoryError naming it. Nothing else is ever fetched.
    """

    backend = "open_clip"
    templates = (OPEN_CLIP_TEMPLATE,)
    attribute_templates = (OPEN_CLIP_ATTRIBUTE_TEMPLATE,)

    def __init__(self, name: str, checkpoint: Path, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 device: torch.device, weights_sha256: str, preprocess_source: str, embed_dim: int,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(model, preprocess, tokenizer, device, weights_sha256, embed_dim, batch_size)
        self.name = name
        self.checkpoint = Path(checkpoint)
        self.preprocess_source = preprocess_source

    @classmethod
    def load(cls, name: str, checkpoint: Path | str | None, device: str | torch.device = "cpu",
             tag: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> "OpenClipScorer":
        import open_clip

        if not isinstance(name, str) or not name:
            raise FactoryError("the open_clip backend needs a model (an open_clip architecture name)")
        if name.startswith(("hf-hub:", "local-dir:")):
            raise FactoryError(f"model {name!r}: give an open_clip architecture name and a local checkpoint file, "
                               f"not a hub or folder reference")
        if checkpoint is None or str(checkpoint) == "":
            raise FactoryError(f"model {name!r}: the open_clip backend needs a local checkpoint file (weights are "
                               f"never downloaded)")
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FactoryError(f"{ckpt}: checkpoint file not found (the open_clip backend never downloads weights)")
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise FactoryError(f"model {name!r}: not an open_clip architecture; choose one of open_clip.list_models() "
                               f"or register a config with open_clip.add_model_config")
        dev = _device(device)
        text_cfg = model_cfg.get("text_cfg", {})
        hf_name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
        try:
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # HF raises OSError, ValueError, its own errors...
            which = f"its tokenizer {hf_name}" if hf_name else "its tokenizer"
            raise FactoryError(f"model {name!r}: {which} could not be loaded offline "
                               f"({_first_line(exc)}); put it in the Hugging Face cache (HF_HOME) first") from None
        preprocess_cfg, source = _production_preprocess(name, ckpt, tag)
        try:
            model, val = _create(name, str(ckpt), dev, preprocess_cfg)
        except Exception as exc:  # open_clip raises RuntimeError/KeyError; torch.load its own pickling errors
            hint = f" (its text tower {hf_name!r} must be in the Hugging Face cache)" if hf_name else ""
            raise FactoryError(f"{ckpt}: could not be loaded as open_clip model {name!r}{hint} "
                               f"({_first_line(exc)})") from None
        if source == "open_clip defaults":
            log.warning("open_clip model %s: no preprocessing settings beside %s and no pretrained tag; using "
                        "open_clip's defaults %s", name, ckpt, {k: model.visual.preprocess_cfg.get(k)
                                                               for k in PREPROCESS_KEYS})
        return cls(name, ckpt, model, val, tokenizer, dev, file_sha256(ckpt), source, int(model_cfg["embed_dim"]),
                   batch_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.name, "checkpoint": str(self.checkpoint),
                "preprocess_source": self.preprocess_source}

    def class_prompts(self, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
        if attributes:
            return [self.attribute_templates[0].format(class_name=c, word=c, attributes=attribute_phrase(attributes))
                    for c in classes]
        return [self.templates[0].format(class_name=c, word=c) for c in classes]


def _production_preprocess(name: str, checkpoint: Path, tag: str | None) -> tuple[dict[str, Any], str]:
    """The mean/std/interpolation/resize mode for a checkpoint, and where they came from."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    sidecar = checkpoint.parent / SIDECAR_NAME
    if sidecar.is_file():
        data = _read_json(sidecar)
        pp = data.get("preprocess_cfg") if isinstance(data, dict) else None
        if not isinstance(pp, dict):
            raise FactoryError(f"{sidecar}: has no preprocess_cfg mapping")
        size = pp.get("size")
        model_size = _arch_image_size(name)
        if size is not None and model_size is not None and _pair(size) != _pair(model_size):
            raise FactoryError(f"{sidecar}: preprocess_cfg.size {size} does not match model {name!r} "
                               f"(image_size {model_size})")
        return {k: pp.get(k) for k in PREPROCESS_KEYS}, str(sidecar)
    tags = list_pretrained_tags_by_model(name)
    if tag is not None:
        if tag not in tags:
            raise FactoryError(f"tag {tag!r} is not a pretrained tag of {name!r}; choose one of "
                               f"{', '.join(tags) or '(none)'}")
        cfg = get_pretrained_cfg(name, tag)
        return {k: cfg.get(k) for k in PREPROCESS_KEYS}, f"open_clip pretrained tag {tag}"
    if tags:
        settings = {json.dumps({k: get_pretrained_cfg(name, t).get(k) for k in PREPROCESS_KEYS}, default=list)
                    for t in tags}
        if len(settings) > 1:
            raise FactoryError(f"model {name!r}: its pretrained tags use different preprocessing; say which one "
                               f"{checkpoint.name} is (tag: one of {', '.join(tags)}) or put {SIDECAR_NAME} "
                               f"beside it")
        cfg = get_pretrained_cfg(name, tags[0])
        return {k: cfg.get(k) for k in PREPROCESS_KEYS}, f"open_clip pretrained tags of {name}"
    return {}, "open_clip defaults"


def _arch_image_size(name: str) -> Any:
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    return cfg.get("vision_cfg", {}).get("image_size")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------------------------------
# Loading and prompts
# --------------------------------------------------------------------------------------------------


def load_scorer(backend: str, model: str | Path, checkpoint: str | Path | None = None, device: str = "cpu", *,
                tag: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Scorer:
    """The scorer of ``backend``: ``"embedded"`` (``model``: a folder written by :func:`train_clip`;
    ``checkpoint`` must be None) or ``"open_clip"`` (``model``: an architecture name, ``checkpoint``: a
    local weights file; ``tag``: the pretrained tag it was released as, only to choose its preprocessing)."""
    if backend == "embedded":
        if checkpoint is not None:
            raise FactoryError("scorer checkpoint must be null for the embedded backend (its weights are in the "
                               "model folder)")
        if tag is not None:
            raise FactoryError("scorer tag applies only to the open_clip backend")
        return EmbeddedScorer.load(model, device, batch_size=batch_size)
    if backend == "open_clip":
        return OpenClipScorer.load(str(model), checkpoint, device, tag=tag, batch_size=batch_size)
    raise FactoryError(f"scorer backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def class_prompts(scorer: Scorer, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
    """One prompt per class: for the embedded scorer the first caption template it was trained with
    ("a photo of the digit three"); with ``attributes``, its first attribute template ("a red digit three")."""
    return scorer.class_prompts(list(classes), attributes)


# --------------------------------------------------------------------------------------------------
# Scores and metrics
# --------------------------------------------------------------------------------------------------


def margins(scores: np.ndarray, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Own-class score minus the best other class's score, per row of an (N, C) score matrix."""
    s = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise FactoryError(f"margins needs an (N, C) score matrix with C >= 2; got shape {s.shape}")
    if y.shape != (s.shape[0],):
        raise FactoryError(f"margins needs one label per row; got {y.shape[0] if y.ndim else 0} labels for "
                           f"{s.shape[0]} rows")
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise FactoryError(f"margins: labels must be in 0..{s.shape[1] - 1}")
    rows = np.arange(len(y))
    own = s[rows, y]
    other = s.copy()
    other[rows, y] = -np.inf
    return (own - other.max(axis=1)).astype(np.float32)


def _batches(dataset: Dataset, size: int) -> Iterator[tuple[list[Image.Image], list[int]]]:
    images: list[Image.Image] = []
    labels: list[int] = []
    for s in dataset:
        images.append(s.pil())
        labels.append(int(s.label))
        if len(images) == size:
            yield images, labels
            images, labels = [], []
    if images:
        yield images, labels


def dataset_class_scores(scorer: Scorer, dataset: Dataset | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) cosines of every image of ``dataset`` with its class prompts, and the (N,) labels.
    Streams the dataset batch by batch; the class prompts are embedded once."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    text = scorer.embed_texts(class_prompts(scorer, ds.classes))
    scores = [np.zeros((0, len(ds.classes)), np.float32)]
    labels: list[int] = []
    for ims, ys in _batches(ds, scorer.batch_size):
        scores.append(scorer.embed_images(ims) @ text.T)
        labels.extend(ys)
    return np.concatenate(scores), np.asarray(labels, dtype=np.int64)


def zero_shot_accuracy(scorer: Scorer, dataset: Dataset | str | Path) -> float:
    """Top-1 accuracy of picking the class whose prompt scores highest."""
    scores, labels = dataset_class_scores(scorer, dataset)
    if not len(labels):
        raise FactoryError("zero_shot_accuracy: the dataset is empty")
    return float(np.mean(scores.argmax(axis=1) == labels))


def mismatch_auc(scorer: Scorer, dataset: Dataset | str | Path, seed: int = 0) -> float:
    """ROC-AUC of telling each image's own class prompt from a random other class's prompt
    (one wrong class per image, drawn uniformly with ``numpy.random.default_rng(seed)``)."""
    from sklearn.metrics import roc_auc_score

    scores, labels = dataset_class_scores(scorer, dataset)
    n, c = scores.shape
    if n == 0 or c < 2:
        raise FactoryError("mismatch_auc needs a non-empty dataset with at least 2 classes")
    rng = np.random.default_rng(seed)
    wrong = (labels + rng.integers(1, c, size=n)) % c  # uniform over the other classes
    right_s = scores[np.arange(n), labels]
    wrong_s = scores[np.arange(n), wrong]
    return float(roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[right_s, wrong_s]))


# --------------------------------------------------------------------------------------------------
# Training the embedded scorer
# --------------------------------------------------------------------------------------------------


@dataclass
class CaptionSet:
    """Every caption the training can use, and which of them fit each sample."""

    texts: list[str]
    plain: np.ndarray  # (N, T) caption index per sample and template
    with_attrs: np.ndarray  # (N, A) caption index per sample and attribute template; -1: sample has no attributes
    attributes: dict[str, list[str]]  # axis -> sorted values seen


def sample_attributes(provenance: Mapping[str, Any]) -> dict[str, str]:
    """A sample's attributes: ``attributes`` of its record, else ``prompt.attributes`` (synthetic)."""
    attrs = provenance.get("attributes")
    if attrs is None and isinstance(provenance.get("prompt"), dict):
        attrs = provenance["prompt"].get("attributes")
    if not attrs:
        return {}
    if not isinstance(attrs, dict):
        raise FactoryError(f"sample {provenance.get('key')!r}: attributes must be a mapping")
    return {str(k): str(v) for k, v in attrs.items()}


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
