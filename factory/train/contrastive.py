"""Contrastive image encoders (SimCLR, StableRep, StableRep+) and a linear probe on real data.

The question this module answers: is a pool of synthetic images a good source for *self-supervised*
representation learning? An encoder is trained on in-memory image tensors (``(N, C, H, W)`` in [-1, 1],
as :func:`factory.recognition.images_to_tensor` makes them) with one of three objectives, then frozen
and scored by a logistic-regression probe trained and tested on real labelled images.

- ``simclr``: two augmented views of each image are positives, every other view a negative
  (NT-Xent; Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
  https://arxiv.org/abs/2002.05709).
- ``stablerep``: images generated from the same prompt (a *group*) are positives of one another; a batch
  holds whole groups and each image is augmented once (multi-positive contrastive loss; Tian et al. 2023,
  "StableRep: Synthetic Images from Text-to-Image Models Make Strong Visual Representation Learners",
  https://arxiv.org/abs/2306.00984).
- ``stablerep_plus``: StableRep plus a CLIP-style image-text term against the prompts (StableRep+ in the
  same paper), with a tiny bag-of-words text encoder; the text tower is a training signal only and is
  not returned.

Everything is CPU-sized: the default data are 1-3k images of 16x16, the encoder about 70k parameters.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from factory.config import METHODS as METHODS  # re-exported: the methods are the config's
from factory.config import ContrastiveConfig
from factory.core.errors import FactoryError
from factory.core.modelfolder import ModelFolder
from factory.data.augment import augment
from factory.train.loop import Loop, Progress, count_parameters, optimize, seeded, torch_threads, warmup_lr

log = logging.getLogger(__name__)


ENCODER_SCHEMA = "factory.contrastive-encoder/1"


WEIGHTS_NAME = "encoder.safetensors"


CONFIG_NAME = "encoder.json"


ENCODER_FOLDER = ModelFolder(kind="contrastive encoder", schema=ENCODER_SCHEMA, weights=WEIGHTS_NAME,
                             config=CONFIG_NAME, keys=("in_channels", "width", "embed_dim", "image_size"))


FINAL_LOSS_WINDOW = 10


MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on the image-text logit scale


INIT_LOGIT_SCALE = 1 / 0.07  # CLIP's initial logit scale (temperature 0.07)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ContrastiveEncoder(nn.Module):
    """ReferenceCNN's two conv-conv-pool stages (with batch norm), global average pooling to a
    ``2 * width`` feature vector, and SimCLR's two-layer MLP projection head to ``embed_dim``.

    :meth:`features` is the representation a probe reads; :meth:`forward` the L2-normalised projection
    the contrastive loss sees (SimCLR found the layer before the head the better representation).
    """

    def __init__(self, in_channels: int, width: int = 32, embed_dim: int = 64, image_size: int = 16) -> None:
        super().__init__()
        self.in_channels, self.width, self.embed_dim, self.image_size = in_channels, width, embed_dim, image_size
        w = width
        self.backbone = nn.Sequential(
            *_conv(in_channels, w), *_conv(w, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = 2 * w
        self.head = nn.Sequential(
            nn.Linear(2 * w, 2 * w, bias=False), nn.BatchNorm1d(2 * w), nn.ReLU(inplace=True),
            nn.Linear(2 * w, embed_dim),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=-1)


class BagOfWordsEncoder(nn.Module):
    """StableRep+'s text tower, CPU-sized: the mean of learned word embeddings, then a linear map to
    ``embed_dim``, L2-normalised. Words are the lowercase, whitespace-split tokens of the training
    texts; id 0 stands for a word not in the vocabulary (and for an empty text). Carries CLIP's
    learnable log logit scale (initialised to log(1/0.07), clamped to log(100) by the trainer)."""

    def __init__(self, vocab: Sequence[str], embed_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i + 1 for i, w in enumerate(self.vocab)}
        self.embed = nn.EmbeddingBag(len(self.vocab) + 1, width, mode="mean")
        self.proj = nn.Linear(width, embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(INIT_LOGIT_SCALE)))

    @staticmethod
    def words(text: str) -> list[str]:
        return text.lower().split()

    @classmethod
    def build(cls, texts: Sequence[str], embed_dim: int = 64, width: int = 64) -> "BagOfWordsEncoder":
        return cls(sorted({w for t in texts for w in cls.words(t)}), embed_dim, width)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` -> (flat word ids, bag offsets), EmbeddingBag's input."""
        ids: list[int] = []
        offsets: list[int] = []
        for t in texts:
            offsets.append(len(ids))
            ids.extend([self.index.get(w, 0) for w in self.words(t)] or [0])
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = self.tokenize(texts)
        return F.normalize(self.proj(self.embed(ids, offsets)), dim=-1)


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020, eq. 1): for the ``2B`` views ``[z1; z2]`` (L2-normalised, ``(B, D)``
    each), view ``i``'s positive is the other view of its image and its negatives are the other
    ``2B - 2`` views; the loss is the cross-entropy of softmax(cosine similarity / temperature) over all
    views but itself, averaged over the ``2B`` views."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise FactoryError(f"simclr_loss: z1 and z2 must both be (B, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = torch.cat([z1, z2])
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)


def _group_ids(groups: Sequence[Any] | torch.Tensor, n: int, where: str) -> torch.Tensor:
    """Group labels of any hashable kind -> ``(n,)`` long tensor of ids (equal labels, equal ids)."""
    if isinstance(groups, torch.Tensor):
        if groups.ndim != 1 or groups.is_floating_point() or groups.is_complex():
            raise FactoryError(f"{where}: groups must be a 1-D integer tensor; "
                               f"got {groups.dtype} of shape {tuple(groups.shape)}")
        g = groups.long()
    else:
        ids: dict[Any, int] = {}
        g = torch.tensor([ids.setdefault(v, len(ids)) for v in groups], dtype=torch.long)
    if len(g) != n:
        raise FactoryError(f"{where}: {n} embeddings/images but {len(g)} group labels")
    return g


def multi_positive_loss(z: torch.Tensor, groups: Sequence[Any] | torch.Tensor,
                        temperature: float = 0.1) -> torch.Tensor:
    """StableRep's multi-positive contrastive loss (Tian et al. 2023, eq. 2-3).

    For L2-normalised embeddings ``z`` ``(N, D)`` and a group label per row, the logits are
    ``z z^T / temperature`` with the diagonal left out of the softmax (a sample is not its own
    candidate); the target of row ``i`` spreads evenly over the other members of its group,
    ``p_ij = 1[g_i = g_j, i != j] / sum_k 1[g_i = g_k, i != k]``; the loss is the cross-entropy
    ``-sum_j p_ij log softmax_j(logits_i)`` averaged over the rows that have a positive (a row alone in
    its group still serves as a negative for the others). With groups ``[0..B-1, 0..B-1]`` over the
    ``2B`` views of B images this is exactly :func:`simclr_loss`.

    Raises :class:`FactoryError` if no row has a positive (every group has one member).
    """
    if z.ndim != 2:
        raise FactoryError(f"multi_positive_loss: z must be (N, D); got {tuple(z.shape)}")
    n = z.shape[0]
    g = _group_ids(groups, n, "multi_positive_loss").to(z.device)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (g[:, None] == g[None, :]) & ~eye
    n_pos = positive.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        raise FactoryError("multi_positive_loss: no sample has a positive (every group has one member); "
                           "StableRep needs groups with several images")
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_p = F.log_softmax(logits, dim=1).masked_fill(eye, 0.0)  # 0 * -inf would be nan
    target = positive.to(z.dtype) / n_pos.clamp(min=1).to(z.dtype)[:, None]
    per_row = -(target * log_p).sum(1)
    return per_row[has_pos].mean()


def clip_loss(img_z: torch.Tensor, txt_z: torch.Tensor, logit_scale: float | torch.Tensor,
              text_index: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric image-text InfoNCE (CLIP; Radford et al. 2021) where several images may share a text,
    as in StableRep+ (the texts of a batch are its *distinct* prompts).

    ``img_z`` ``(B, D)`` and ``txt_z`` ``(T, D)`` are L2-normalised; ``text_index`` ``(B,)`` gives the row
    of ``txt_z`` that is image ``i``'s text (None: ``arange(B)``, one text per image, plain CLIP);
    ``logit_scale`` is the multiplier (``exp`` of the learned log scale). Image -> text: cross-entropy of
    each image over the T texts, target its own text. Text -> image: cross-entropy of each text over the
    B images, target spread evenly over the images having that text (the multi-positive form); texts
    with no image in the batch are left out. The loss is the mean of the two directions.
    """
    if img_z.ndim != 2 or txt_z.ndim != 2 or img_z.shape[1] != txt_z.shape[1]:
        raise FactoryError(f"clip_loss: expected (B, D) and (T, D); got {tuple(img_z.shape)} and {tuple(txt_z.shape)}")
    b, t = img_z.shape[0], txt_z.shape[0]
    if text_index is None:
        if b != t:
            raise FactoryError(f"clip_loss: {b} images but {t} texts; pass text_index to share texts")
        text_index = torch.arange(b)
    text_index = text_index.to(img_z.device).long()
    if text_index.shape != (b,) or (b and (int(text_index.min()) < 0 or int(text_index.max()) >= t)):
        raise FactoryError(f"clip_loss: text_index must be ({b},) with values in 0..{t - 1}")
    logits = logit_scale * img_z @ txt_z.T  # (B, T)
    i2t = F.cross_entropy(logits, text_index)
    match = (text_index[None, :] == torch.arange(t, device=img_z.device)[:, None]).to(img_z.dtype)  # (T, B)
    count = match.sum(1)
    used = count > 0
    target = match[used] / count[used, None]
    t2i = -(target * F.log_softmax(logits.T[used], dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def _check_images(images: torch.Tensor, cfg: ContrastiveConfig) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise FactoryError("train_contrastive: images must be a float tensor (N, C, H, W) in [-1, 1]")
    if images.shape[2:] != (cfg.image_size, cfg.image_size):
        raise FactoryError(f"train_contrastive: images are {images.shape[2]}x{images.shape[3]}; "
                           f"contrastive.image_size is {cfg.image_size}")
    if images.shape[1] not in (1, 3):
        raise FactoryError(f"train_contrastive: images must have 1 or 3 channels; got {images.shape[1]}")
    if len(images) < 2:
        raise FactoryError(f"train_contrastive: {len(images)} image(s); a contrastive loss needs at least 2")


def train_contrastive(images: torch.Tensor, groups: Sequence[int | str] | torch.Tensor | None,
                      texts: Sequence[str] | None, cfg: ContrastiveConfig,
                      progress: Progress | None = None,
                      ) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    """Train a :class:`ContrastiveEncoder` on ``images`` ``(N, C, H, W)`` in [-1, 1] with ``cfg.method``.

    ``groups`` (one label per image, e.g. the prompt id; ignored by SimCLR, may be None there) says which
    images are positives for StableRep; ``texts`` (one per image, its prompt) are StableRep+'s captions.
    ``progress(step, steps, loss)`` is called after each step. Deterministic for ``cfg.seed`` (and a
    thread count); the caller's global RNG is left as it was. Returns the encoder in eval mode and a
    JSON-able summary (method, steps, first/final loss, loss curve, seconds, parameters, ...).
    """
    _check_images(images, cfg)
    n = len(images)
    images = images.detach().float().cpu().contiguous()
    stablerep = cfg.method in ("stablerep", "stablerep_plus")

    # 1. the groups and texts StableRep needs
    members: list[torch.Tensor] = []
    text_encoder: BagOfWordsEncoder | None = None
    if stablerep:
        if groups is None:
            raise FactoryError(f"train_contrastive: method {cfg.method} needs a group label per image")
        g = _group_ids(groups, n, "train_contrastive")
        _, inverse, counts = torch.unique(g, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        members = [m for m in torch.split(order, counts.tolist()) if len(m) > 1]
        if not members:
            raise FactoryError(f"train_contrastive: method {cfg.method}: every group has a single image; StableRep "
                               f"needs groups with several images (e.g. a synthetic pool made with "
                               f"images_per_prompt > 1)")
        if len(members) < 2:
            raise FactoryError(f"train_contrastive: method {cfg.method}: only one group has several images; "
                               f"StableRep needs at least 2 (the other groups are its negatives)")
        if len(members) < len(counts):
            log.warning("train_contrastive: %d of %d groups have a single image; StableRep does not use "
                        "those images", len(counts) - len(members), len(counts))
    if cfg.method == "stablerep_plus":
        if texts is None:
            raise FactoryError("train_contrastive: method stablerep_plus needs a text (prompt) per image")
        texts = list(texts)
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise FactoryError(f"train_contrastive: texts must be {n} strings, one per image; got {len(texts)}")

    with torch_threads(cfg.threads):
        # 2. the models, initialised from the seed without disturbing the caller's global RNG
        with seeded(cfg.seed):
            encoder = ContrastiveEncoder(images.shape[1], cfg.width, cfg.embed_dim, cfg.image_size)
            if cfg.method == "stablerep_plus":
                text_encoder = BagOfWordsEncoder.build(texts, cfg.embed_dim)
        params = list(encoder.parameters()) + (list(text_encoder.parameters()) if text_encoder else [])
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)  # batches and augmentations
        groups_per_batch = cfg.batch_size // cfg.images_per_group
        max_log_scale = math.log(MAX_LOGIT_SCALE)
        encoder.train()
        loop = Loop("train_contrastive", cfg.steps, progress=progress, logger=log)
        for step in loop:
            # 3a. the batch: random images (SimCLR) or random whole groups (StableRep)
            if stablerep:
                pick = torch.randperm(len(members), generator=gen)[:groups_per_batch].tolist()
                parts = [members[i][torch.randperm(len(members[i]), generator=gen)[:cfg.images_per_group]]
                         for i in pick]
                idx = torch.cat(parts)
                batch_groups = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor([len(p) for p in parts]))
            else:
                idx = torch.randperm(n, generator=gen)[:cfg.batch_size]
            x = images[idx]
            # 3b. the loss: two views per image (SimCLR) or one view per image and its group's positives
            if cfg.method == "simclr":
                z = encoder(torch.cat([augment(x, gen, noise=cfg.noise), augment(x, gen, noise=cfg.noise)]))
                loss = simclr_loss(z[:len(x)], z[len(x):], cfg.temperature)
            else:
                z = encoder(augment(x, gen, noise=cfg.noise))
                loss = multi_positive_loss(z, batch_groups, cfg.temperature)
                if text_encoder is not None:
                    batch_texts = [texts[i] for i in idx.tolist()]
                    distinct = sorted(set(batch_texts))
                    where = {t: i for i, t in enumerate(distinct)}
                    text_index = torch.tensor([where[t] for t in batch_texts])
                    loss = loss + cfg.text_weight * clip_loss(z, text_encoder(distinct),
                                                              text_encoder.log_logit_scale.exp(), text_index)
            # 3c. the update, with a linear warm-up
            optimize(optimizer, loss, lr=warmup_lr(cfg.lr, step, cfg.warmup_steps))
            if text_encoder is not None:  # 3d. CLIP clamps the logit scale at 100
                with torch.no_grad():
                    text_encoder.log_logit_scale.clamp_(0, max_log_scale)
            loop.record(loss)
        seconds = loop.seconds
    encoder.eval()
    info: dict[str, Any] = {
        "method": cfg.method,
        "steps": cfg.steps,
        "images": n,
        "groups": len(members) if stablerep else None,
        # StableRep: images alone in their group are never in a batch (e.g. the real half of a mixed pool)
        "unused_images": n - sum(len(m) for m in members) if stablerep else 0,
        "in_channels": int(images.shape[1]),
        "first_loss": round(loop.losses[0], 6),
        "final_loss": round(loop.final_loss(FINAL_LOSS_WINDOW), 6),
        "loss_curve": loop.curve(10),
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / cfg.steps, 4),
        "parameters": count_parameters(encoder),
        "config": cfg.to_dict(),
    }
    if text_encoder is not None:
        info["text_parameters"] = count_parameters(text_encoder)
        info["vocab_size"] = len(text_encoder.vocab)
        info["logit_scale"] = round(float(text_encoder.log_logit_scale.detach().exp()), 4)
    log.info("contrastive encoder (%s): %d steps in %.1f s, loss %.4f -> %.4f", cfg.method, cfg.steps, seconds,
             info["first_loss"], info["final_loss"])
    return encoder, info


def save_encoder(encoder: ContrastiveEncoder, info: Mapping[str, Any], out_dir: Path | str) -> None:
    """Weights (safetensors) and a json config with the architecture and ``info`` as the folder ``out_dir``
    (replaced whole, atomically; a folder that is not a contrastive encoder is never replaced)."""
    cfg = {"schema": ENCODER_SCHEMA, "in_channels": encoder.in_channels, "width": encoder.width,
           "embed_dim": encoder.embed_dim, "image_size": encoder.image_size, "info": dict(info)}
    ENCODER_FOLDER.save(out_dir, encoder, cfg)


def load_encoder(model_dir: Path | str) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    """The encoder (eval mode) and info saved by :func:`save_encoder`."""
    cfg = ENCODER_FOLDER.read(model_dir)
    encoder = ContrastiveEncoder(cfg["in_channels"], cfg["width"], cfg["embed_dim"], cfg["image_size"])
    ENCODER_FOLDER.load_into(encoder, model_dir)
    return encoder.eval(), dict(cfg.get("info", {}))
