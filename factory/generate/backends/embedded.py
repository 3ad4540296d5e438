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

SIMS negative guidance (Alemohammad et al. 2024, "Self-Improving Diffusion Models with Synthetic Data",
https://arxiv.org/abs/2408.16333): with ``sampler.negative_model`` (an auxiliary model of the same
architecture, classes and attributes, trained on the base model's own samples) and
``sampler.negative_guidance`` ``w > 0``, every step uses ``(1 + w) * eps_base - w * eps_aux``, each term
classifier-free guided with ``guidance_scale``: sampling is pushed away from what the self-consumed model
has drifted to.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from factory.core.errors import FactoryError
from factory.core.files import file_sha256
from factory.core.modelfolder import ModelFolder, TrainedModel
from factory.generate.backends.base import GenRequest, SamplerConfig

log = logging.getLogger(__name__)


MODEL_SCHEMA = "factory.embedded-generator/1"


WEIGHTS_NAME = "model.safetensors"


CONFIG_NAME = "config.json"


MODEL_FOLDER = ModelFolder(
    kind="embedded generator", schema=MODEL_SCHEMA, weights=WEIGHTS_NAME, config=CONFIG_NAME,
    keys=("unet", "classes", "attributes", "channels", "image_size", "train_scheduler"),
    # One metadata key only: safetensors writes metadata from a hash map, so the order of several
    # keys (and with it the file's bytes and weights_sha256) would change from run to run.
    metadata={"format": "pt"}, short="generator", hint="train it first: train_generator")


EMBEDDED_SCHEDULERS = ("ddim", "dpm")


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


class EmbeddedGenerator(TrainedModel):
    """A trained embedded generator, loaded for sampling (implements ``generators.base.Generator``)."""

    backend = "embedded"

    def __init__(self, model_dir: Path | str, config: dict[str, Any], model: ConditionalUNet,
                 weights_sha256: str, sampler: SamplerConfig, negative: "EmbeddedGenerator | None" = None) -> None:
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
        self.negative = negative  # SIMS: the auxiliary model, loaded with the same device (None: w == 0)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: Path | str, sampler: SamplerConfig | None = None) -> "EmbeddedGenerator":
        """Load a folder written by :func:`train_generator`. Missing files raise FactoryError."""
        sampler = sampler or SamplerConfig()
        config = MODEL_FOLDER.read(model_dir)
        cls._check_sampler_static(sampler)
        model, sha = _read_network(model_dir, config)
        negative = None
        if sampler.negative_model and sampler.negative_guidance > 0:  # w == 0: plain sampling, no aux model
            negative = cls._load_negative(sampler, config)
        return cls(model_dir, config, model, sha, sampler, negative)

    @classmethod
    def _load_negative(cls, sampler: SamplerConfig, base: dict[str, Any]) -> "EmbeddedGenerator":
        """The SIMS auxiliary model ``sampler.negative_model``, refused unless it is interchangeable with the
        base model: same classes, attribute vocabulary, image size, channels and UNet config."""
        folder = sampler.negative_model
        config = MODEL_FOLDER.read(folder)
        differ = [k for k in ("classes", "attributes", "image_size", "channels", "unet") if config[k] != base[k]]
        if differ:
            raise FactoryError(f"{folder}: negative_model must match the base generator; its "
                               f"{', '.join(differ)} differ")
        model, sha = _read_network(folder, config)
        plain = sampler.model_copy(update={"negative_model": None, "negative_guidance": 0.0})
        return cls(folder, config, model, sha, plain)

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

    def _model_config(self) -> dict[str, Any]:  # classes, attributes, parents (TrainedModel)
        return self.config

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
            "negative_guidance": self._negative_record(),
            "height": self.image_size,
            "width": self.image_size,
            "dtype": "float32",
            "channels": self.channels,
            "image_mode": self.image_mode,
            "batch_size": s.batch_size,
            "device": self.device.type,
            "conditioning": ["class", *self._axes],
        }

    def _negative_record(self) -> dict[str, Any] | None:
        """Provenance ``negative_guidance``: None without SIMS, else the method, ``w`` and the auxiliary model."""
        if self.negative is None:
            return None
        return {"method": "sims", "w": float(self.sampler.negative_guidance), "model": str(self.sampler.negative_model),
                "weights_sha256": self.negative.weights_sha256}

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

        Guidance ``s``: ``eps = eps_u + s * (eps_c - eps_u)`` from one forward pass over the stacked
        unconditional and conditional inputs. ``s == 1`` runs the conditional half only and ``s == 0``
        the unconditional half only (same result up to rounding, half the work). With SIMS (``w =
        negative_guidance > 0``) the auxiliary model is guided the same way in its own forward pass and
        ``eps = (1 + w) * eps_base - w * eps_aux``.
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

    def _conditioning(self, labels: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """The embeddings of one forward pass with guidance ``s``: ``s == 0`` is unconditional; ``s == 1``
        plain conditional sampling, so the unconditional half is skipped (eps_u + 1 * (eps_c - eps_u) ==
        eps_c); otherwise ``[null; cond]``, one pass giving both halves."""
        s = float(self.sampler.guidance_scale)
        cond = self.model.embed(labels.to(self.device), attrs.to(self.device))
        null = self._null.expand(len(labels), -1)
        return null if s == 0.0 else (torch.cat([null, cond]) if s != 1.0 else cond)

    def _guided_eps(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Classifier-free guided noise prediction, one batched forward over the inputs of :meth:`_conditioning`."""
        s = float(self.sampler.guidance_scale)
        guided = s not in (0.0, 1.0)
        inp = torch.cat([x, x]) if guided else x
        eps = self.model.unet(inp, t, class_labels=emb, return_dict=False)[0]
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + s * (eps_c - eps_u)
        return eps

    @torch.inference_mode()
    def _sample(self, labels: torch.Tensor, attrs: torch.Tensor, seeds: Sequence[int]) -> np.ndarray:
        """Denoise one micro-batch; returns uint8 pixels (B, H, W, C)."""
        dev = self.device
        sched = self.scheduler
        aux = self.negative
        w = float(self.sampler.negative_guidance)
        # 1. conditioning, per model (each has its own embedding tables)
        emb = self._conditioning(labels, attrs)
        aux_emb = aux._conditioning(labels, attrs) if aux is not None else None
        # 2. initial noise: one CPU generator per image
        x = self.initial_noise(seeds).to(dev)
        sched.set_timesteps(self.sampler.steps, device=dev)  # also resets multistep solver state
        x = x * sched.init_noise_sigma
        # 3. the denoising loop; SIMS: extrapolate away from the auxiliary model's prediction
        for t in sched.timesteps:
            eps = self._guided_eps(x, t, emb)
            if aux is not None:
                eps = (1.0 + w) * eps - w * aux._guided_eps(x, t, aux_emb)
            x = sched.step(eps, t, x, return_dict=False)[0]
        # 4. to uint8 pixels
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def _png(self, pixels: np.ndarray) -> bytes:
        im = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if self.channels == 1 else pixels))  # L or RGB
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=9)
        return buf.getvalue()


def _read_network(model_dir: Path | str, config: dict[str, Any]) -> tuple[ConditionalUNet, str]:
    """The network of the folder ``model_dir`` (whose config is ``config``) and the sha256 of its weights file."""
    sha = file_sha256(Path(model_dir) / WEIGHTS_NAME)
    state = MODEL_FOLDER.load_weights(model_dir)
    axes = list(config["attributes"])
    model = ConditionalUNet(config["unet"], len(config["classes"]), [len(config["attributes"][a]) for a in axes])
    MODEL_FOLDER.load_into(model, model_dir, state)
    return model, sha


def load_generator(model_dir: Path | str, sampler: SamplerConfig | None = None) -> EmbeddedGenerator:
    return EmbeddedGenerator.load(model_dir, sampler)
