"""Training the embedded generator (see :mod:`factory.generate.backends.embedded` for the model and its folder).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from factory import __version__
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, replace_dir
from factory.core.images import _image_mode, to_model_pixels
from factory.core.shards import Dataset
from factory.generate.backends.embedded import CONFIG_NAME, MODEL_SCHEMA, WEIGHTS_NAME, ConditionalUNet

log = logging.getLogger(__name__)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# Reported as the final loss: the mean over the last steps (one step's loss is very noisy).
FINAL_LOSS_WINDOW = 50


@dataclass(frozen=True)
class EmbeddedTrainConfig:
    """How to build and train the embedded generator. Defaults: the recipe in EMBEDDED-MODELS.md."""

    image_size: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    mid_attention: bool = True
    steps: int = 750
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    label_dropout: float = 0.1
    ema_max_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    seed: int = 0
    max_seconds: float | None = None  # stop early after this much training time (None: no cap)

    def __post_init__(self) -> None:
        def fail(name: str, msg: str) -> None:
            raise FactoryError(f"train_generator.{name} {msg}; got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        boc = self.block_out_channels
        if isinstance(boc, (list, tuple)):
            object.__setattr__(self, "block_out_channels", tuple(boc))
            boc = self.block_out_channels
        else:
            fail("block_out_channels", "must be a list of positive integers")
        if not boc or not all(is_int(c) and c > 0 for c in boc):
            fail("block_out_channels", "must be a non-empty list of positive integers")
        if not is_int(self.norm_num_groups) or self.norm_num_groups < 1:
            fail("norm_num_groups", "must be an integer >= 1")
        if any(c % self.norm_num_groups for c in boc):
            raise FactoryError(f"train_generator.block_out_channels must all be divisible by norm_num_groups "
                               f"({self.norm_num_groups}); got {list(boc)}")
        mult = 2 ** (len(boc) - 1)
        if not is_int(self.image_size) or self.image_size < mult or self.image_size % mult:
            fail("image_size", f"must be a positive multiple of {mult} (2 ** (len(block_out_channels) - 1))")
        if not isinstance(self.mid_attention, bool):
            fail("mid_attention", "must be true or false")
        for name in ("layers_per_block", "steps", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "must be an integer >= 1")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            fail("warmup_steps", "must be an integer >= 0")
        if not is_num(self.lr) or not self.lr > 0 or not math.isfinite(self.lr):
            fail("lr", "must be a number > 0")
        if not is_num(self.weight_decay) or not self.weight_decay >= 0:
            fail("weight_decay", "must be a number >= 0")
        if not is_num(self.label_dropout) or not 0.0 <= self.label_dropout < 1.0:
            fail("label_dropout", "must be in [0, 1)")
        if not is_num(self.ema_max_decay) or not 0.0 <= self.ema_max_decay < 1.0:
            fail("ema_max_decay", "must be in [0, 1)")
        if not is_int(self.num_train_timesteps) or self.num_train_timesteps < 2:
            fail("num_train_timesteps", "must be an integer >= 2")
        if self.beta_schedule not in BETA_SCHEDULES:
            fail("beta_schedule", f"must be one of {', '.join(BETA_SCHEDULES)}")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            fail("seed", "must be an integer in [0, 2**63)")
        if self.max_seconds is not None and (not is_num(self.max_seconds) or not self.max_seconds > 0):
            fail("max_seconds", "must be a number > 0 or null")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmbeddedTrainConfig":
        """Build from a mapping (e.g. a ``params.yaml`` section); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FactoryError(f"train_generator: unknown key(s) {', '.join(unknown)}; "
                               f"allowed: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    mode = _image_mode({im.mode for im in ims})
    axes = sorted({k for a in raw_attrs for k in a})
    vocab = {ax: sorted({a[ax] for a in raw_attrs if ax in a}) for ax in axes}
    index = {ax: {v: i for i, v in enumerate(vals)} for ax, vals in vocab.items()}
    attr_idx = np.array([[index[ax].get(a.get(ax), len(vocab[ax])) if ax in a else len(vocab[ax])
                          for ax in axes] for a in raw_attrs], dtype=np.int64).reshape(len(ims), len(axes))
    pixels = np.stack([to_model_pixels(im, mode, image_size) for im in ims])  # N, H, W, C
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    return TrainingData(images, torch.tensor(labels, dtype=torch.long), torch.from_numpy(attr_idx), mode, vocab,
                        max_generation)


def _train_scheduler(cfg: EmbeddedTrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type="epsilon")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FactoryError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CONFIG_NAME).is_file():
        raise FactoryError(f"{out_dir}: exists, is not empty and is not a generator folder; refusing to overwrite it")


def train_generator(dataset: Dataset | str | Path, cfg: EmbeddedTrainConfig, out_dir: Path | str,
                    progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train the embedded generator on ``dataset`` and save it to ``out_dir``.

    ``progress(step, total, loss)`` is called after every optimisation step (e.g. to drive a bar).
    The result is deterministic for a given seed, dataset, machine and torch build, unless
    ``cfg.max_seconds`` stops training early. ``out_dir`` is replaced as a whole, atomically.
    Returns a summary: steps, seconds, final_loss, parameters (and more).
    """
    if not isinstance(dataset, Dataset):
        dataset = Dataset(dataset)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    data = load_training_data(dataset, cfg.image_size)
    channels = data.images.shape[1]
    attr_axes = list(data.attributes)
    attr_sizes = [len(data.attributes[a]) for a in attr_axes]
    n_classes = len(dataset.classes)
    unet_cfg = unet_kwargs(cfg, channels)
    log.info("training the embedded generator on %d images (%s, %dx%d), classes %d, attributes %s",
             len(data.labels), data.mode, cfg.image_size, cfg.image_size, n_classes, data.attributes or "none")

    # Initialise the weights from cfg.seed without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
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
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    stopped_early = False
    for step in range(1, cfg.steps + 1):
        # 1. the next batch, from consecutive random permutations of the data (epochs)
        while len(order) < cfg.batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
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
        lr = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # 5. EMA of the weights: decay min(max_decay, (1 + t) / (10 + t)), t = updates so far
        decay = min(cfg.ema_max_decay, step / (9 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, cfg.steps, losses[-1])
        if cfg.max_seconds is not None and time.perf_counter() - start >= cfg.max_seconds and step < cfg.steps:
            log.warning("train_generator: stopping after %d of %d steps (max_seconds=%s)",
                        step, cfg.steps, cfg.max_seconds)
            stopped_early = True
            break
    seconds = time.perf_counter() - start
    final_loss = float(np.mean(losses[-FINAL_LOSS_WINDOW:]))
    summary = {
        "steps": step,
        "stopped_early": stopped_early,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(step, 1), 4),
        # CPU time of all threads: on a shared machine, wall time / cpu time shows the contention
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
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
        "train_seconds": summary["seconds"],
        "final_loss": summary["final_loss"],
        "summary": summary,
        "factory_version": __version__,
    }
    save_model(ema, config, out_dir)
    log.info("saved the embedded generator to %s: %d steps in %.0f s, final loss %.4f",
             out_dir, step, seconds, final_loss)
    return summary


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def save_model(model: ConditionalUNet, config: dict[str, Any], out_dir: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into a staging folder, then move it to ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        # One metadata key only: safetensors writes metadata from a hash map, so the order of several
        # keys (and with it the file's bytes and weights_sha256) would change from run to run.
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        atomic_write_bytes(staging / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True).encode() + b"\n")
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
