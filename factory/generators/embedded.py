"""The embedded generator: a small class- and attribute-conditional diffusion model (CPU, no downloads).

The network is a diffusers :class:`~diffusers.UNet2DModel` with ``class_embed_type="identity"``: the
UNet adds whatever vector it is given as ``class_labels`` to its time embedding. A thin wrapper
(:class:`ConditionalUNet`) owns one ``nn.Embedding`` for the class and one per attribute axis (e.g.
``color``); each table has one extra row, the *null* token, and the conditioning vector is the sum of
the rows picked. Classifier-free guidance (Ho & Salimans, https://arxiv.org/abs/2207.12598) needs
a model that also knows the unconditional distribution, so during training the class *and* the
attributes are replaced by null together with probability ``label_dropout``; on top of that each
attribute alone is dropped with the same probability, so "class only" conditioning is learned too.

Files of a trained model folder:

- ``model.safetensors``: the EMA weights of the wrapper (UNet plus embedding tables);
- ``config.json``: everything needed to rebuild it (UNet arguments, classes, attribute vocabulary,
  channels, image size, the training noise schedule) plus the training config, the datasets it was
  trained on (``parents``), the training time and the final loss.

Sampling (:class:`EmbeddedGenerator`) is deterministic per request: one CPU ``torch.Generator`` seeded
with the request's seed draws that image's initial noise, and the network always runs on micro-batches
of exactly ``sampler.batch_size`` requests (a short last batch is padded with copies), so the PNG bytes
of a request do not depend on which other requests were generated with it. See :meth:`generate`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from factory import __version__
from factory.errors import FactoryError
from factory.generators.base import GenRequest, SamplerConfig
from factory.shards import Dataset, atomic_write_bytes, replace_dir

log = logging.getLogger(__name__)

MODEL_SCHEMA = "factory.embedded-generator/1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
EMBEDDED_SCHEDULERS = ("ddim", "dpm")
COLOUR_MODES = ("RGB", "RGBA", "CMYK", "P")
# Reported as the final loss: the mean over the last steps (one step's loss is very noisy).
FINAL_LOSS_WINDOW = 50


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


class ConditionalUNet(nn.Module):
    """A UNet2DModel plus the embedding tables of the class and of each attribute axis.

    Every table has one extra last row: the null token used for label dropout and for the
    unconditional half of classifier-free guidance.
    """

    def __init__(self, unet_config: dict[str, Any], n_classes: int, attr_sizes: Sequence[int]) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**unet_config)
        dim = self.unet.config.time_embedding_dim or self.unet.config.block_out_channels[0] * 4
        self.n_classes = int(n_classes)
        self.attr_sizes = [int(n) for n in attr_sizes]
        self.class_emb = nn.Embedding(self.n_classes + 1, dim)
        self.attr_embs = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.attr_sizes)

    @property
    def null_class(self) -> int:
        return self.n_classes

    def null_attrs(self) -> torch.Tensor:
        """The null index of each attribute axis, shape ``(n_axes,)``."""
        return torch.tensor(self.attr_sizes, dtype=torch.long)

    def embed(self, labels: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """The conditioning vectors for ``labels`` ``(B,)`` and attribute indices ``attrs`` ``(B, n_axes)``."""
        emb = self.class_emb(labels)
        for i, table in enumerate(self.attr_embs):
            emb = emb + table(attrs[:, i])
        return emb

    def null_embedding(self) -> torch.Tensor:
        """The unconditional vector, shape ``(1, dim)``."""
        return self.embed(torch.tensor([self.null_class]), self.null_attrs()[None, :])

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=cond, return_dict=False)[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _image_mode(modes: set[str]) -> str:
    """"RGB" when any image is in a colour mode, else "L" (grayscale)."""
    return "RGB" if modes & set(COLOUR_MODES) else "L"


def to_model_pixels(im: Image.Image, mode: str, size: int) -> np.ndarray:
    """An image as the model sees it: ``mode`` ("L" or "RGB"), ``size`` x ``size``, uint8 HWC.

    Non-square images are centre-cropped to a square first (``ImageOps.fit``); resizing is bilinear
    (PIL's bilinear filter is antialiased when shrinking; for the 8x8 digits it upsamples to 16x16).
    """
    if im.mode != mode:
        im = im.convert(mode)  # RGBA -> RGB drops alpha; P -> RGB applies the palette
    if im.size != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


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


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def _make_scheduler(name: str, train_config: dict[str, Any]):
    """The sampling scheduler, deterministic: DDIM (eta 0, trailing spacing) or DPM-Solver++ (2nd order).

    Both keep the predicted clean image in range: DDIM clips it to [-1, 1] (``clip_sample`` of the
    training schedule); DPM-Solver++ has no such clip, and with trailing spacing its first step (t=999,
    where the cosine schedule leaves almost no signal) blows the prediction up: 94% recognition
    instead of 99.5% at guidance 2 on the digits. Dynamic thresholding with ``sample_max_value=1``
    (per image, so batch-invariant) restores it.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(train_config, timestep_spacing="trailing")
    if name == "dpm":
        return DPMSolverMultistepScheduler.from_config(
            train_config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
            thresholding=True, sample_max_value=1.0)
    raise FactoryError(f"sampler.scheduler must be one of {', '.join(EMBEDDED_SCHEDULERS)} for the embedded "
                       f"backend; got {name!r}")


class EmbeddedGenerator:
    """A trained embedded generator, loaded for sampling (implements ``generators.base.Generator``)."""

    backend = "embedded"

    def __init__(self, model_dir: Path | str, config: dict[str, Any], model: ConditionalUNet,
                 weights_sha256: str, sampler: SamplerConfig) -> None:
        self.model_dir = model_dir
        self.config = config
        self.model = model.eval().requires_grad_(False)
        self.weights_sha256 = weights_sha256
        self.sampler = sampler
        self.image_size = int(config["image_size"])
        self.channels = int(config["channels"])
        self.image_mode = "RGB" if self.channels == 3 else "L"
        self._check_sampler(sampler)
        # "auto" means CPU here: the model is tiny, and CPU keeps the bytes the same on every machine
        # (with the same torch build); ask for "cuda" explicitly to sample on a GPU.
        try:
            self.device = torch.device("cpu" if sampler.device == "auto" else sampler.device)
        except RuntimeError:
            raise FactoryError(f"sampler.device must be auto, cpu or cuda[:N]; got {sampler.device!r}") from None
        self.model.to(self.device)
        self.scheduler = _make_scheduler(sampler.scheduler, config["train_scheduler"])
        self._class_index = set(range(len(self.classes)))
        self._attr_index = {ax: {v: i for i, v in enumerate(vals)} for ax, vals in self.attributes.items()}
        self._axes = list(self.attributes)
        with torch.inference_mode():
            self._null = self.model.null_embedding().to(self.device)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: Path | str, sampler: SamplerConfig | None = None) -> "EmbeddedGenerator":
        """Load a folder written by :func:`train_generator`. Missing files raise FactoryError."""
        from safetensors.torch import load_file

        sampler = sampler or SamplerConfig()
        path = Path(model_dir)
        if not path.is_dir():
            raise FactoryError(f"{path}: no such generator folder (train it first: train_generator)")
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FactoryError(f"{p}: missing; {path} is not a complete embedded generator folder")
        try:
            config = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FactoryError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(config, dict) or config.get("schema") != MODEL_SCHEMA:
            raise FactoryError(f"{cfg_path}: schema is not {MODEL_SCHEMA!r}")
        cls._check_sampler_static(sampler)
        raw = w_path.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        try:
            state = load_file(str(w_path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise FactoryError(f"{w_path}: unreadable weights ({exc})") from None
        axes = list(config["attributes"])
        model = ConditionalUNet(config["unet"], len(config["classes"]), [len(config["attributes"][a]) for a in axes])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FactoryError(f"{w_path}: weights do not match {cfg_path} ({str(exc).splitlines()[0]})") from None
        return cls(model_dir, config, model, sha, sampler)

    @staticmethod
    def _check_sampler_static(sampler: SamplerConfig) -> None:
        if sampler.scheduler not in EMBEDDED_SCHEDULERS:
            raise FactoryError(f"sampler.scheduler must be one of {', '.join(EMBEDDED_SCHEDULERS)} for the "
                               f"embedded backend; got {sampler.scheduler!r}")
        if sampler.dtype not in ("auto", "float32"):
            raise FactoryError(f"sampler.dtype must be auto or float32 for the embedded backend; got {sampler.dtype!r}")
        if sampler.negative_prompt:
            raise FactoryError("sampler.negative_prompt is not supported by the embedded backend (it has no text "
                               "encoder); leave it empty")

    def _check_sampler(self, sampler: SamplerConfig) -> None:
        self._check_sampler_static(sampler)
        for name in ("height", "width"):
            v = getattr(sampler, name)
            if v is not None and v != self.image_size:
                raise FactoryError(f"sampler.{name} must be {self.image_size} (the embedded model's size) or "
                                   f"null; got {v}")

    # -- properties ------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def attributes(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.config["attributes"].items()}

    @property
    def parents(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self.config.get("parents", [])]

    @property
    def generation(self) -> int:
        """1 for a model trained on real data; k + 1 for one trained on generation-k samples."""
        return int(self.config.get("generation", 1))

    @property
    def unet(self):
        return self.model.unet

    def describe(self) -> dict[str, Any]:
        """The provenance ``generator`` record. ``batch_size`` is part of it: the network always runs
        on micro-batches of that size, and it is the setting that makes the bytes reproducible."""
        s = self.sampler
        return {
            "backend": self.backend,
            "model": str(self.model_dir),
            "weights_sha256": self.weights_sha256,
            "scheduler": s.scheduler,
            "steps": s.steps,
            "guidance_scale": float(s.guidance_scale),
            "negative_guidance": None,
            "height": self.image_size,
            "width": self.image_size,
            "dtype": "float32",
            "channels": self.channels,
            "image_mode": self.image_mode,
            "batch_size": s.batch_size,
            "device": self.device.type,
            "conditioning": ["class", *self._axes],
        }

    # -- sampling --------------------------------------------------------------------------------

    def encode_requests(self, requests: Sequence[GenRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and attribute indices of ``requests`` (attributes the request leaves out: null).
        Unknown labels, axes or values raise FactoryError naming the request key."""
        labels = np.empty(len(requests), dtype=np.int64)
        attrs = np.empty((len(requests), len(self._axes)), dtype=np.int64)
        for i, r in enumerate(requests):
            int_label = isinstance(r.label, (int, np.integer)) and not isinstance(r.label, bool)
            if not int_label or r.label not in self._class_index:
                raise FactoryError(f"request {r.key!r}: unknown class label {r.label!r}; the model knows "
                                   f"0..{len(self.classes) - 1} ({', '.join(self.classes)})")
            if not isinstance(r.seed, (int, np.integer)) or isinstance(r.seed, bool) or not 0 <= r.seed < 2**64:
                raise FactoryError(f"request {r.key!r}: seed must be an integer in [0, 2**64); got {r.seed!r}")
            labels[i] = r.label
            given = {k: v for k, v in (r.attributes or {}).items() if v is not None}  # None: not given
            for ax in given:
                if ax not in self._attr_index:
                    known = ", ".join(self._axes) or "none"
                    raise FactoryError(f"request {r.key!r}: unknown attribute {ax!r}; the model was trained "
                                       f"with attributes: {known}")
            for j, ax in enumerate(self._axes):
                if ax in given:
                    v = str(given[ax])
                    if v not in self._attr_index[ax]:
                        raise FactoryError(f"request {r.key!r}: unknown value {v!r} for attribute {ax!r}; "
                                           f"choose one of {', '.join(self.attributes[ax])}")
                    attrs[i, j] = self._attr_index[ax][v]
                else:
                    attrs[i, j] = len(self.attributes[ax])  # null: condition on the class only
        return torch.from_numpy(labels), torch.from_numpy(attrs)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """One CPU ``torch.Generator`` per image, seeded with its request's seed."""
        shape = (self.channels, self.image_size, self.image_size)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def generate(self, requests: Sequence[GenRequest]) -> list[bytes]:
        """PNG bytes, one per request, in request order.

        Batch invariance: the bytes of a request do not depend on the other requests. Every network
        call gets a batch of exactly ``sampler.batch_size`` images (the last micro-batch is padded
        with copies of its first request), because CPU kernels choose their blocking from the batch
        shape and small batches give last-bit differences that can flip a uint8 rounding. At a fixed
        shape the position of an image in the batch does not change its result (checked by the tests).
        The bytes therefore depend on ``sampler.batch_size``, which :meth:`describe` records.

        Guidance ``w``: ``eps = eps_u + w * (eps_c - eps_u)`` from one forward pass over the stacked
        unconditional and conditional inputs. ``w == 1`` runs the conditional half only and ``w == 0``
        the unconditional half only (same result up to rounding, half the work).
        """
        requests = list(requests)
        if not requests:
            return []
        labels, attrs = self.encode_requests(requests)
        seeds = [int(r.seed) for r in requests]
        bs = self.sampler.batch_size
        out: list[bytes] = []
        for start in range(0, len(requests), bs):
            n = min(bs, len(requests) - start)
            pad = [start] * (bs - n)  # copies of the micro-batch's first request
            rows = list(range(start, start + n)) + pad
            pixels = self._sample(labels[rows], attrs[rows], [seeds[i] for i in rows])
            out.extend(self._png(p) for p in pixels[:n])
        return out

    @torch.inference_mode()
    def _sample(self, labels: torch.Tensor, attrs: torch.Tensor, seeds: Sequence[int]) -> np.ndarray:
        """Denoise one micro-batch; returns uint8 pixels (B, H, W, C)."""
        w = float(self.sampler.guidance_scale)
        b = len(seeds)
        dev = self.device
        unet = self.model.unet
        sched = self.scheduler
        # 1. conditioning: w == 0 is unconditional; w == 1 is plain conditional sampling, so the
        #    unconditional half is skipped (eps_u + 1 * (eps_c - eps_u) == eps_c); otherwise one
        #    forward pass over [null; cond] gives both halves.
        cond = self.model.embed(labels.to(dev), attrs.to(dev))
        null = self._null.expand(b, -1)
        guided = w not in (0.0, 1.0)
        emb = null if w == 0.0 else (torch.cat([null, cond]) if guided else cond)
        # 2. initial noise: one CPU generator per image
        x = self.initial_noise(seeds).to(dev)
        sched.set_timesteps(self.sampler.steps, device=dev)  # also resets multistep solver state
        x = x * sched.init_noise_sigma
        # 3. the denoising loop
        for t in sched.timesteps:
            inp = torch.cat([x, x]) if guided else x
            eps = unet(inp, t, class_labels=emb, return_dict=False)[0]
            if guided:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + w * (eps_c - eps_u)
            x = sched.step(eps, t, x, return_dict=False)[0]
        # 4. to uint8 pixels
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def _png(self, pixels: np.ndarray) -> bytes:
        im = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if self.channels == 1 else pixels))  # L or RGB
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=9)
        return buf.getvalue()


def load_generator(model_dir: Path | str, sampler: SamplerConfig | None = None) -> EmbeddedGenerator:
    return EmbeddedGenerator.load(model_dir, sampler)
