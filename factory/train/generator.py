"""Training the embedded generator (see :mod:`factory.generate.backends.embedded` for the model and its folder).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from factory import __version__
from factory.config import EmbeddedTrainConfig
from factory.core.errors import FactoryError
from factory.core.images import colour_mode, images_to_tensor
from factory.core.shards import Dataset
from factory.core.timings import split_timings
from factory.generate.backends.embedded import MODEL_FOLDER, MODEL_SCHEMA, ConditionalUNet
from factory.train.loop import (
    Loop,
    Progress,
    count_parameters,
    ema_update,
    optimize,
    permutation_batches,
    seeded,
    warmup_lr,
)

log = logging.getLogger(__name__)


# Reported as the final loss: the mean over the last steps (one step's loss is very noisy).
FINAL_LOSS_WINDOW = 50


def unet_kwargs(cfg: EmbeddedTrainConfig, channels: int) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments for ``cfg``: plain ResNet down/up blocks, attention only in the
    mid block (at the coarsest resolution, where it is cheap), and an identity class embedding that
    takes the conditioning vector built by :class:`ConditionalUNet`."""
    n = len(cfg.block_out_channels)
    return {
        "sample_size": cfg.image_size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": list(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "down_block_types": ["DownBlock2D"] * n,
        "up_block_types": ["UpBlock2D"] * n,
        "add_attention": cfg.mid_attention,
        "norm_num_groups": cfg.norm_num_groups,
        "class_embed_type": "identity",
    }


@dataclass
class TrainingData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) long
    attrs: torch.Tensor  # (N, n_axes) long; the null index where a sample lacks an axis
    mode: str
    attributes: dict[str, list[str]]  # axis -> sorted values
    max_generation: int = 0  # the highest provenance "generation" among the samples (0: all real)


def load_training_data(dataset: Dataset, image_size: int) -> TrainingData:
    """All images of ``dataset`` in memory as one tensor.

    The embedded model is meant for small real sets (the digits: 1,437 images of 16x16, 1.5 MB);
    diffusion training draws random batches, so the set is held in memory rather than streamed.
    """
    n_classes = len(dataset.classes)
    ims: list[Image.Image] = []
    labels: list[int] = []
    raw_attrs: list[dict[str, str]] = []
    max_generation = 0
    for s in dataset:
        if not 0 <= s.label < n_classes:
            raise FactoryError(f"{dataset.path}: sample {s.key!r} has label {s.label} outside 0..{n_classes - 1}")
        ims.append(s.pil())
        labels.append(int(s.label))
        attrs = s.provenance.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise FactoryError(f"{dataset.path}: sample {s.key!r} has attributes that are not a mapping")
        raw_attrs.append({str(k): str(v) for k, v in attrs.items()})
        gen = s.provenance.get("generation", 0)
        max_generation = max(max_generation, gen if isinstance(gen, int) else 0)
    if not ims:
        raise FactoryError(f"{dataset.path}: the dataset is empty; nothing to train on")
    mode = colour_mode(ims)
    axes = sorted({k for a in raw_attrs for k in a})
    vocab = {ax: sorted({a[ax] for a in raw_attrs if ax in a}) for ax in axes}
    index = {ax: {v: i for i, v in enumerate(vals)} for ax, vals in vocab.items()}
    attr_idx = np.array([[index[ax].get(a.get(ax), len(vocab[ax])) if ax in a else len(vocab[ax])
                          for ax in axes] for a in raw_attrs], dtype=np.int64).reshape(len(ims), len(axes))
    images = images_to_tensor(ims, mode, image_size)  # N, C, H, W in [-1, 1]
    return TrainingData(images, torch.tensor(labels, dtype=torch.long), torch.from_numpy(attr_idx), mode, vocab,
                        max_generation)


def _train_scheduler(cfg: EmbeddedTrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type="epsilon")


def train_generator(dataset: Dataset | str | Path, cfg: EmbeddedTrainConfig, out_dir: Path | str,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Train the embedded generator on ``dataset`` and save it to ``out_dir``.

    ``progress(step, total, loss)`` is called after every optimisation step (e.g. to drive a bar).
    The result is deterministic for a given seed, dataset, machine and torch build, unless
    ``cfg.max_seconds`` stops training early. ``out_dir`` is replaced as a whole, atomically.
    Returns a summary: steps, seconds, final_loss, parameters (and more).
    """
    if not isinstance(dataset, Dataset):
        dataset = Dataset(dataset)
    out_dir = Path(out_dir)
    MODEL_FOLDER.check_target(out_dir, [dataset.path])
    data = load_training_data(dataset, cfg.image_size)
    channels = data.images.shape[1]
    attr_axes = list(data.attributes)
    attr_sizes = [len(data.attributes[a]) for a in attr_axes]
    n_classes = len(dataset.classes)
    unet_cfg = unet_kwargs(cfg, channels)
    log.info("training the embedded generator on %d images (%s, %dx%d), classes %d, attributes %s",
             len(data.labels), data.mode, cfg.image_size, cfg.image_size, n_classes, data.attributes or "none")

    # Initialise the weights from cfg.seed without disturbing the caller's global RNG.
    with seeded(cfg.seed):
        model = ConditionalUNet(unet_cfg, n_classes, attr_sizes)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters()]
    ema_params = [p for p in ema.parameters()]
    scheduler = _train_scheduler(cfg)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order, noise, timesteps, label dropout

    n = len(data.labels)
    null_class = torch.tensor(n_classes)
    null_attrs = model.null_attrs()
    batches = permutation_batches(n, cfg.batch_size, gen)
    loop = Loop("train_generator", cfg.steps, max_seconds=cfg.max_seconds, progress=progress, logger=log)
    for step in loop:
        # 1. the next batch, from consecutive random permutations of the data (epochs)
        idx = next(batches)
        x0, labels, attrs = data.images[idx], data.labels[idx], data.attrs[idx]
        b = len(idx)
        # 2. label dropout: class and attributes together, then each attribute on its own
        drop_all = torch.rand(b, generator=gen) < cfg.label_dropout
        drop_attr = (torch.rand(b, len(attr_axes), generator=gen) < cfg.label_dropout) | drop_all[:, None]
        labels = torch.where(drop_all, null_class, labels)
        attrs = torch.where(drop_attr, null_attrs[None, :].expand_as(attrs), attrs)
        # 3. noise the images at random timesteps and predict the noise
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        pred = model(xt, t, model.embed(labels, attrs))
        loss = nn.functional.mse_loss(pred, noise)
        # 4. update: linear warm-up of the learning rate, then constant
        optimize(optimizer, loss, lr=warmup_lr(cfg.lr, step, cfg.warmup_steps, ratio_first=True))
        # 5. EMA of the weights: decay min(max_decay, (1 + t) / (10 + t)), t = updates so far
        ema_update(ema_params, params, step, cfg.ema_max_decay)
        loop.record(loss)
    step, seconds = loop.step, loop.seconds
    final_loss = loop.final_loss(FINAL_LOSS_WINDOW)
    summary = {
        **loop.summary(),
        # CPU time of all threads: on a shared machine, wall time / cpu time shows the contention
        "cpu_seconds": round(loop.cpu_elapsed(), 2),
        "final_loss": round(final_loss, 6),
        "parameters": count_parameters(model),
        "images": n,
        "torch_threads": torch.get_num_threads(),
    }
    config = {
        "schema": MODEL_SCHEMA,
        "unet": unet_cfg,
        "classes": list(dataset.classes),
        "attributes": data.attributes,
        "channels": channels,
        "image_mode": data.mode,
        "image_size": cfg.image_size,
        "resize": "bilinear (PIL, centre crop to square first)",
        "train_scheduler": _jsonable(dict(scheduler.config)),
        "train": cfg.to_dict(),
        "parents": [dataset.ref()],
        "generation": data.max_generation + 1,
        "final_loss": summary["final_loss"],
        "summary": split_timings(summary)[0],  # no wall-clock time: same seed, same bytes
        "factory_version": __version__,
    }
    save_model(ema, config, out_dir)
    log.info("saved the embedded generator to %s: %d steps in %.0f s, final loss %.4f",
             out_dir, step, seconds, final_loss)
    return summary


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` as plain JSON values, in an order that does not depend on the process. diffusers builds a
    scheduler config's ``_use_default_values`` as ``list(set(...))``, whose order changes with each process's
    hash seed (and would make ``config.json`` differ run to run): it and any set come out sorted."""
    def plain(o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            return sorted(o, key=str)
        return list(o) if isinstance(o, tuple) else str(o)

    out = json.loads(json.dumps(d, default=plain))
    if isinstance(out.get("_use_default_values"), list):
        out["_use_default_values"] = sorted(out["_use_default_values"], key=str)
    return out


def save_model(model: ConditionalUNet, config: dict[str, Any], out_dir: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into a staging folder, then move it to ``out_dir``."""
    MODEL_FOLDER.save(out_dir, model, config)
