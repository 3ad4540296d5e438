from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from factory import __version__
from factory.config import ClipTrainConfig
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes
from factory.core.modelfolder import json_bytes
from factory.core.sample import sample_attributes
from factory.core.shards import Dataset
from factory.core.timings import split_timings
from factory.curate.scorers.base import _create, attribute_phrase
from factory.curate.scorers.embedded import (
    MODEL_FOLDER,
    MODEL_SCHEMA,
    VOCAB_NAME,
    CaptionTokenizer,
    arch_name,
    register_arch,
    resolve_class_words,
)
from factory.train.loop import (
    Loop,
    Progress,
    count_parameters,
    optimize,
    permutation_batches,
    seeded,
    torch_threads,
    warmup_lr,
)

log = logging.getLogger(__name__)


FINAL_LOSS_WINDOW = 20


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
    return warmup_lr(cfg.lr, step, cfg.warmup_steps, decay=cfg.lr_schedule, total_steps=cfg.steps)


def train_clip(dataset: Dataset | str | Path, cfg: ClipTrainConfig, out_dir: Path | str,
               progress: Progress | None = None) -> dict[str, Any]:
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
    MODEL_FOLDER.check_target(out_dir, [dataset.path])
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

    with MODEL_FOLDER.staging(out_dir, [dataset.path]) as staging, torch_threads(cfg.threads):
        name = arch_name(arch)
        arch_file = staging / f"{name}.json"
        atomic_write_bytes(arch_file, json_bytes(arch))
        register_arch(arch_file)

        # 2. the model, initialised from the seed without disturbing the caller's global RNG
        with seeded(cfg.seed):
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
        batches = permutation_batches(n, min(cfg.batch_size, n), gen)
        loop = Loop("train_clip", cfg.steps, max_seconds=cfg.max_seconds, progress=progress, logger=log)
        for step in loop:
            # 3a. the next batch of images, from consecutive random permutations of the data
            idx = next(batches)
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
            optimize(optimizer, loss, lr=learning_rate(cfg, step))
            # 3e. CLIP clamps the temperature: logit scale at most log(100)
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)
            loop.record(loss)
        step, seconds = loop.step, loop.seconds
        model.eval()

        # 4. save: weights, vocabulary, manifest; then move the folder into place
        summary = {
            **loop.summary(),
            "final_loss": round(loop.final_loss(FINAL_LOSS_WINDOW), 6),
            "first_loss": round(loop.losses[0], 6),
            "loss_curve": loop.curve(25),
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
            "summary": split_timings(summary)[0],  # no wall-clock time: same seed, same bytes
            "factory_version": __version__,
        }
        MODEL_FOLDER.write_weights(staging, model)
        atomic_write_bytes(staging / VOCAB_NAME, json_bytes(tokenizer.to_json(), indent=1, sort_keys=False))
        MODEL_FOLDER.write_config(staging, manifest)
    log.info("saved the embedded scorer to %s: %d steps in %.0f s, final loss %.4f", out_dir, step, seconds,
             summary["final_loss"])
    return summary
