"""Contrastive image encoders (SimCLR, StableRep, StableRep+, and two controls) and what they train on.

The question this module answers: is a pool of synthetic images a good source for *self-supervised*
representation learning? An encoder is trained on in-memory image tensors (``(N, C, H, W)`` in [-1, 1],
as :func:`factory.recognition.images_to_tensor` makes them) with one of these objectives, then frozen
and scored by a logistic-regression probe trained and tested on real labelled images
(:mod:`factory.measure.probes`).

- ``simclr``: two augmented views of each image are positives, every other view a negative
  (NT-Xent; Chen et al. 2020, https://arxiv.org/abs/2002.05709).
- ``stablerep``: images generated from the same prompt are positives of one another (multi-positive
  contrastive loss; Tian et al. 2023, "StableRep", https://arxiv.org/abs/2306.00984). A batch holds whole
  prompt groups (see :mod:`factory.train.groups`); an image alone in its group (the real images of a
  mixed pool) enters as two augmented views of itself, so real images are trained on, not dropped.
- ``stablerep_plus``: StableRep plus an image-text term against the prompts (StableRep+ in the same
  paper). One caption id, the prompt group, serves both terms: images of a group are positives of one
  another and of their group's caption; another group is a negative in both terms even when its text is
  the same string. The image-image term reads the SSL head (:attr:`ContrastiveEncoder.head`), the
  image-text term a separate linear image projection (:class:`ImageTextHead`), as in the reference.
- ``supcon`` (control, label-supervised): SimCLR's batches, with every image of the same *class* a
  positive (Khosla et al. 2020, https://arxiv.org/abs/2004.11362): what labels buy, an upper reference.
- ``random_groups`` (control): StableRep on the same images dealt into random groups of the prompt
  groups' sizes: what is left of StableRep when the prompt identity is taken away.

Where this differs from the reference implementation (google-research/syn-rep-learn, ``StableRep/``):

- The reference draws ``n_img`` (6 of 10, or 2 of 2) images of every caption of a batch and, with
  ``--num_crop``, several crops of each; the batch size counts captions. Here a batch is filled with whole
  groups up to ``batch_size`` views, at most ``images_per_group`` images of a group, one view each, and a
  single-image group gives two views of its image (the reference has no single-image captions).
- The reference's caption labels are the caption's index in the batch (``label = arange(batch)``), so a
  repeated caption text elsewhere in the batch is a negative; here the label is the plan's group id, the
  same thing for a plan whose groups are its prompts.
- The reference's text tower is CLIP's 12-layer transformer on BPE tokens; here a bag-of-words encoder
  (mean of word embeddings, linear map). Its input is the caption as generated, which names the class
  and the style (e.g. "a thin, left-slanted handwritten 3"): the image-text term therefore carries the
  class label, as the reference's captions carry object names. StableRep+ is label-informed; compare it
  with ``supcon``, not only with SimCLR.
- The reference's SSL head is a 3-layer MLP (4096 wide, 256 out) with synchronised batch norm applied
  per view; here SimCLR's 2-layer MLP on the CNN's features, one batch norm over the batch. Its
  image-text projection is linear (the reference's default ``--vl-projection linear``); its weights
  ``w1 = w2 = 1`` (``text_weight`` here), temperature 0.1 and CLIP's learnable logit scale are the same.
- The reference trains ViTs for 15-35 epochs on millions of captions; here a 70k-parameter CNN for a few
  hundred steps on thousands of 16x16 images: the ranking of methods, not their absolute numbers, is the
  result.

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
from factory.train.groups import Batch, GroupBatches, caption_targets, group_ids, random_units, units_of
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


class ImageTextHead(nn.Module):
    """StableRep+'s image side of the image-text term: a linear projection of the encoder's features
    (the reference's default ``--vl-projection linear``), apart from the SSL head the image-image term
    reads, L2-normalised."""

    def __init__(self, feature_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(feature_dim, embed_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(features), dim=-1)


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
    g = group_ids(groups, n, "multi_positive_loss").to(z.device)
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


GROUPED = ("stablerep", "stablerep_plus", "random_groups")  # batches of whole groups (factory.train.groups)


def stablerep_plus_losses(encoder: ContrastiveEncoder, image_text: ImageTextHead, text_encoder: BagOfWordsEncoder,
                          x: torch.Tensor, batch: Batch, captions: Sequence[str], temperature: float,
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """StableRep+'s two terms on the views ``x`` of ``batch``: the multi-positive image-image loss on
    the SSL head (positives: the views of one unit) and the image-text loss on the separate image-text
    head against the units' captions, by unit id (:func:`factory.train.groups.caption_targets`); the
    second is None when no unit of the batch has a caption."""
    features = encoder.features(x)
    image_loss = multi_positive_loss(F.normalize(encoder.head(features), dim=-1), batch.unit, temperature)
    texts, views, text_index = caption_targets(batch, captions)
    if not texts:
        return image_loss, None
    text_loss = clip_loss(image_text(features[views]), text_encoder(texts), text_encoder.log_logit_scale.exp(),
                          text_index)
    return image_loss, text_loss


def _prompt_units(groups: Sequence[Any] | torch.Tensor | None, n: int, method: str) -> list[torch.Tensor]:
    if groups is None:
        raise FactoryError(f"train_contrastive: method {method} needs a group label per image")
    units = units_of(groups, n)
    if not any(len(u) > 1 for u in units):
        raise FactoryError(f"train_contrastive: method {method}: every group has a single image; StableRep "
                           f"needs groups with several images (e.g. a synthetic pool made with "
                           f"images_per_prompt > 1)")
    return units


def train_contrastive(images: torch.Tensor, groups: Sequence[int | str] | torch.Tensor | None,
                      texts: Sequence[str] | None, cfg: ContrastiveConfig,
                      progress: Progress | None = None, *, labels: Sequence[int] | torch.Tensor | None = None,
                      synthetic: Sequence[bool] | torch.Tensor | None = None,
                      ) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    """Train a :class:`ContrastiveEncoder` on ``images`` ``(N, C, H, W)`` in [-1, 1] with ``cfg.method``.

    ``groups`` (one label per image, the prompt group; used by stablerep, stablerep_plus and
    random_groups) says which images are positives; ``texts`` (one per image, its prompt; "" for an image
    without one, e.g. a real image) are StableRep+'s captions; ``labels`` (class per image) are SupCon's
    positives; ``synthetic`` (a flag per image, optional) gives ``synthetic_share``, the share of
    synthetic images among the images drawn into batches. ``progress(step, steps, loss)`` is called
    after each step. Deterministic for ``cfg.seed`` (and a thread count); the caller's global RNG is left
    as it was. Returns the encoder in eval mode and a JSON-able summary.
    """
    _check_images(images, cfg)
    n = len(images)
    images = images.detach().float().cpu().contiguous()
    method = cfg.method
    flags = None if synthetic is None else torch.as_tensor(
        synthetic.tolist() if isinstance(synthetic, torch.Tensor) else list(synthetic), dtype=torch.bool)
    if flags is not None and len(flags) != n:
        raise FactoryError(f"train_contrastive: {n} images but {len(flags)} synthetic flags")

    # 1. who is a positive of whom: prompt groups, classes (SupCon) or each image's two views (SimCLR)
    units = _prompt_units(groups, n, method) if method in GROUPED else []
    y = None
    if method == "supcon":
        if labels is None:
            raise FactoryError("train_contrastive: method supcon needs a class label per image")
        y = group_ids(labels.tolist() if isinstance(labels, torch.Tensor) else labels, n, "train_contrastive")
        if len(torch.unique(y)) < 2:
            raise FactoryError("train_contrastive: method supcon needs at least 2 classes")
    if method == "stablerep_plus":
        if texts is None:
            raise FactoryError("train_contrastive: method stablerep_plus needs a text (prompt) per image")
        texts = list(texts)
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise FactoryError(f"train_contrastive: texts must be {n} strings, one per image; got {len(texts)}")
        if not any(texts):
            raise FactoryError("train_contrastive: method stablerep_plus needs captions; every text is empty")

    with torch_threads(cfg.threads):
        # 2. the models, initialised from the seed without disturbing the caller's global RNG
        text_encoder: BagOfWordsEncoder | None = None
        with seeded(cfg.seed):
            encoder = ContrastiveEncoder(images.shape[1], cfg.width, cfg.embed_dim, cfg.image_size)
            if method == "stablerep_plus":
                text_encoder = BagOfWordsEncoder.build([t for t in texts if t], cfg.embed_dim)
                image_text = ImageTextHead(encoder.feature_dim, cfg.embed_dim)
        params = list(encoder.parameters())
        if text_encoder is not None:
            params += list(text_encoder.parameters()) + list(image_text.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)  # random groups, batches and augmentations
        if method == "random_groups":
            units = random_units(units, gen)
        batches = GroupBatches(units, cfg.images_per_group, cfg.batch_size, gen, flags) if units else None
        captions = [texts[int(u[0])] for u in units] if text_encoder is not None else []
        drawn = drawn_synthetic = 0  # SimCLR / SupCon batches
        encoder.train()
        loop = Loop("train_contrastive", cfg.steps, progress=progress, logger=log)
        for step in loop:
            if batches is not None:
                # 3a. whole groups, one view per image (two for an image alone in its group)
                batch = batches.draw()
                x = augment(images[batch.images], gen, noise=cfg.noise)
                if text_encoder is not None:
                    loss, text_loss = stablerep_plus_losses(encoder, image_text, text_encoder, x, batch, captions,
                                                            cfg.temperature)
                    if text_loss is not None:
                        loss = loss + cfg.text_weight * text_loss
                else:
                    loss = multi_positive_loss(encoder(x), batch.unit, cfg.temperature)
            else:
                # 3b. random images, two views each: positives are the other view (SimCLR) or the class
                idx = torch.randperm(n, generator=gen)[:cfg.batch_size]
                drawn += len(idx)
                drawn_synthetic += int(flags[idx].sum()) if flags is not None else 0
                x = images[idx]
                z = encoder(torch.cat([augment(x, gen, noise=cfg.noise), augment(x, gen, noise=cfg.noise)]))
                loss = (simclr_loss(z[:len(x)], z[len(x):], cfg.temperature) if y is None
                        else multi_positive_loss(z, y[idx].repeat(2), cfg.temperature))
            # 3c. the update, with a linear warm-up
            optimize(optimizer, loss, lr=warmup_lr(cfg.lr, step, cfg.warmup_steps))
            if text_encoder is not None:  # 3d. CLIP clamps the logit scale at 100
                with torch.no_grad():
                    text_encoder.log_logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
            loop.record(loss)
        seconds = loop.seconds
    encoder.eval()
    if batches is not None:
        share = batches.synthetic_share if flags is not None else None
    else:
        share = drawn_synthetic / drawn if flags is not None and drawn else None
    info: dict[str, Any] = {
        "method": method,
        "steps": cfg.steps,
        "images": n,
        "groups": len(units) if units else None,
        "single_image_groups": sum(len(u) == 1 for u in units) if units else None,  # two views each
        "pool_synthetic_share": round(float(flags.float().mean()), 6) if flags is not None else None,
        "synthetic_share": round(share, 6) if share is not None else None,  # of the images drawn into batches
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
        info["text_parameters"] = count_parameters(text_encoder) + count_parameters(image_text)
        info["vocab_size"] = len(text_encoder.vocab)
        info["logit_scale"] = round(float(text_encoder.log_logit_scale.detach().exp()), 4)
    log.info("contrastive encoder (%s): %d steps in %.1f s, loss %.4f -> %.4f", method, cfg.steps, seconds,
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
