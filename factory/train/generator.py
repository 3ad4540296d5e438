"""Training the embedded generator (see :mod:`factory.generate.backends.embedded` for the model and its folder).

Two ways to get a model folder, on one dataset or on a pool (``factory.pool/1``: several datasets, the
keys drawn from each):

- :func:`train_generator` builds the model from ``cfg`` and trains it from a seeded initialisation;
- :func:`finetune_generator` starts from an existing model folder's (EMA) weights and keeps its
  architecture, classes and attribute vocabulary, as self-consuming loops with fine-tuning need.

Both run the same step body (:func:`_fit`) on the shared scaffold of :mod:`factory.train.loop`.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn

from factory import __version__
from factory.config import EmbeddedTrainConfig
from factory.core.errors import FactoryError
from factory.core.files import file_sha256
from factory.core.images import colour_mode, images_to_tensor
from factory.core.shards import Dataset
from factory.core.timings import split_timings
from factory.data.pools import POOL_SCHEMA, read_pool
from factory.generate.backends.embedded import MODEL_FOLDER, MODEL_SCHEMA, WEIGHTS_NAME, ConditionalUNet
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

# The fields of EmbeddedTrainConfig that fix the network and its noise schedule: a fine-tuned model takes
# them from the model it starts from.
ARCHITECTURE_FIELDS = ("image_size", "block_out_channels", "layers_per_block", "norm_num_groups", "mid_attention",
                       "num_train_timesteps", "beta_schedule")



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


# -- what to train on -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One dataset to train on: all of it (``keys`` None) or only the samples ``keys`` (a pool's draw)."""

    dataset: Dataset
    keys: frozenset[str] | None = None


@dataclass
class TrainingSet:
    """The samples a generator is trained on: one dataset, or a pool's components (datasets and keys).

    ``parents`` are the dataset refs the model records; ``inputs`` the paths no output may overlap;
    ``where`` names the data in messages.
    """

    sources: list[Source]
    classes: list[str]
    parents: list[dict[str, Any]]
    inputs: list[Path] = field(default_factory=list)
    where: str = ""


def training_set(data: Dataset | Mapping[str, Any] | str | Path) -> TrainingSet:
    """``data`` as a :class:`TrainingSet`: a :class:`Dataset`, a dataset folder, a pool record (dict) or a
    pool JSON file. A pool's datasets must still have the index its record names (sha256)."""
    if isinstance(data, TrainingSet):
        return data
    if isinstance(data, Mapping):
        return _pool_set(data, None)
    if not isinstance(data, Dataset) and Path(data).is_file():
        return _pool_set(read_pool(data, check=False), Path(data))
    ds = data if isinstance(data, Dataset) else Dataset(data)
    return TrainingSet([Source(ds)], ds.classes, [ds.ref()], [ds.path], str(ds.path))


def _pool_set(pool: Mapping[str, Any], path: Path | None) -> TrainingSet:
    """A pool's components as sources; each dataset is checked against the index sha256 the pool recorded."""
    where = str(path) if path is not None else f"pool {pool.get('name')!r}"
    if pool.get("schema") != POOL_SCHEMA or not isinstance(pool.get("components"), list) \
            or not isinstance(pool.get("classes"), list):
        raise FactoryError(f"{where}: not a pool record (schema {POOL_SCHEMA!r} with classes and components)")
    sources, parents = [], []
    for comp in pool["components"]:
        ref = comp["dataset"]
        ds = Dataset(ref["path"])
        if ds.index_sha256 != ref["index_sha256"]:
            raise FactoryError(f"{where}: dataset {ref['path']} changed since the pool was drawn (index sha256 "
                               f"{ds.index_sha256[:12]} != {ref['index_sha256'][:12]}); rebuild the pool")
        if ds.classes != list(pool["classes"]):
            raise FactoryError(f"{where}: dataset {ref['path']} has classes {ds.classes}, the pool {pool['classes']}")
        sources.append(Source(ds, frozenset(comp["keys"])))
        if dict(ref) not in parents:
            parents.append(dict(ref))
    if not sources:
        raise FactoryError(f"{where}: the pool has no components; nothing to train on")
    inputs = [s.dataset.path for s in sources] + ([path] if path is not None else [])
    return TrainingSet(sources, list(pool["classes"]), parents, inputs, where)


@dataclass
class TrainingData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) long
    attrs: torch.Tensor  # (N, n_axes) long; the null index where a sample lacks an axis
    mode: str
    attributes: dict[str, list[str]]  # axis -> sorted values
    max_generation: int = 0  # the highest provenance "generation" among the samples (0: all real)


def _selected(source: Source):
    """The samples of ``source`` in dataset order (only its keys, if it has them); a key the dataset lacks
    raises FactoryError."""
    found = 0
    for s in source.dataset:
        if source.keys is None or s.key in source.keys:
            found += 1
            yield s
    if source.keys is not None and found < len(source.keys):
        raise FactoryError(f"{source.dataset.path}: {len(source.keys) - found} of the pool's keys are not in "
                           "the dataset; rebuild the pool")


def load_training_data(data: Dataset | TrainingSet, image_size: int, *, attributes: dict[str, list[str]] | None = None,
                       mode: str | None = None) -> TrainingData:
    """All images of ``data`` (a dataset or a :class:`TrainingSet`) in memory as one tensor.

    The embedded model is meant for small real sets (the digits: 1,437 images of 16x16, 1.5 MB);
    diffusion training draws random batches, so the set is held in memory rather than streamed.

    ``attributes``: a fixed vocabulary (axis -> values, a model's when fine-tuning): values outside it get
    the axis's null index and other axes are ignored; None builds it from the samples. ``mode``: the
    model's ("L" or "RGB"); None takes the data's. Colour data for a grey model raises FactoryError.
    """
    tset = training_set(data)
    n_classes = len(tset.classes)
    ims: list[Image.Image] = []
    labels: list[int] = []
    raw_attrs: list[dict[str, str]] = []
    max_generation = 0
    for source in tset.sources:
        where = source.dataset.path
        for s in _selected(source):
            if not 0 <= s.label < n_classes:
                raise FactoryError(f"{where}: sample {s.key!r} has label {s.label} outside 0..{n_classes - 1}")
            ims.append(s.pil())
            labels.append(int(s.label))
            attrs = s.provenance.get("attributes") or {}
            if not isinstance(attrs, dict):
                raise FactoryError(f"{where}: sample {s.key!r} has attributes that are not a mapping")
            raw_attrs.append({str(k): str(v) for k, v in attrs.items()})
            gen = s.provenance.get("generation", 0)
            max_generation = max(max_generation, gen if isinstance(gen, int) else 0)
    if not ims:
        what = "the dataset is" if len(tset.sources) == 1 and tset.sources[0].keys is None else "the pool draws"
        raise FactoryError(f"{tset.where}: {what} empty; nothing to train on")
    data_mode = colour_mode(ims)
    if mode == "L" and data_mode == "RGB":
        raise FactoryError(f"{tset.where}: colour images for a grayscale (L) model; train a new model instead")
    mode = mode or data_mode
    if attributes is None:
        axes = sorted({k for a in raw_attrs for k in a})
        vocab = {ax: sorted({a[ax] for a in raw_attrs if ax in a}) for ax in axes}
    else:
        axes, vocab = list(attributes), {ax: list(vals) for ax, vals in attributes.items()}
    index = {ax: {v: i for i, v in enumerate(vals)} for ax, vals in vocab.items()}
    attr_idx = np.array([[index[ax].get(a.get(ax), len(vocab[ax])) if ax in a else len(vocab[ax])
                          for ax in axes] for a in raw_attrs], dtype=np.int64).reshape(len(ims), len(axes))
    images = images_to_tensor(ims, mode, image_size)  # N, C, H, W in [-1, 1]
    return TrainingData(images, torch.tensor(labels, dtype=torch.long), torch.from_numpy(attr_idx), mode, vocab,
                        max_generation)


# -- training ---------------------------------------------------------------------------------------


def _train_scheduler(cfg: EmbeddedTrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type="epsilon")


def _fit(model: ConditionalUNet, data: TrainingData, cfg: EmbeddedTrainConfig, scheduler: Any, name: str,
         progress: Progress | None, ema_offset: int = 0) -> tuple[ConditionalUNet, Loop]:
    """Train ``model`` on ``data`` for ``cfg.steps`` steps; returns its EMA (which starts as a copy of
    ``model``, so a fine-tuned EMA starts from the initial weights) and the loop (steps, losses).

    ``ema_offset``: updates the EMA has already averaged (its decay schedule continues from there; 0 starts
    it afresh, when the decay is ~0.1 at the first update and the EMA follows the raw weights closely)."""
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters()]
    ema_params = [p for p in ema.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order, noise, timesteps, label dropout

    n = len(data.labels)
    n_axes = data.attrs.shape[1]
    null_class = torch.tensor(model.n_classes)
    null_attrs = model.null_attrs()
    batches = permutation_batches(n, cfg.batch_size, gen)
    loop = Loop(name, cfg.steps, max_seconds=cfg.max_seconds, progress=progress, logger=log)
    for step in loop:
        # 1. the next batch, from consecutive random permutations of the data (epochs)
        idx = next(batches)
        x0, labels, attrs = data.images[idx], data.labels[idx], data.attrs[idx]
        b = len(idx)
        # 2. label dropout: class and attributes together, then each attribute on its own
        drop_all = torch.rand(b, generator=gen) < cfg.label_dropout
        drop_attr = (torch.rand(b, n_axes, generator=gen) < cfg.label_dropout) | drop_all[:, None]
        labels = torch.where(drop_all, null_class, labels)
        attrs = torch.where(drop_attr, null_attrs[None, :].expand_as(attrs), attrs)
        # 3. noise the images at random timesteps and predict the noise
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        pred = model(xt, t, model.embed(labels, attrs))
        loss = nn.functional.mse_loss(pred, noise)
        # 4. update: linear warm-up of the learning rate, then constant
        optimize(optimizer, loss, lr=warmup_lr(cfg.lr, step, cfg.warmup_steps, ratio_first=True))
        # 5. EMA of the weights: decay min(max_decay, (1 + t) / (10 + t)), t = updates so far (+ the offset)
        ema_update(ema_params, params, step + ema_offset, cfg.ema_max_decay)
        loop.record(loss)
    return ema, loop


def _summary(loop: Loop, model: ConditionalUNet, n: int) -> dict[str, Any]:
    return {
        **loop.summary(),
        # CPU time of all threads: on a shared machine, wall time / cpu time shows the contention
        "cpu_seconds": round(loop.cpu_elapsed(), 2),
        "final_loss": round(loop.final_loss(FINAL_LOSS_WINDOW), 6),
        "parameters": count_parameters(model),
        "images": n,
        "torch_threads": torch.get_num_threads(),
    }


def _config(*, unet: dict[str, Any], classes: list[str], data: TrainingData, channels: int, image_size: int,
            train_scheduler: dict[str, Any], train: dict[str, Any], parents: list[dict[str, Any]],
            summary: dict[str, Any]) -> dict[str, Any]:
    """The model folder's ``config.json`` (see :mod:`factory.generate.backends.embedded`)."""
    return {
        "schema": MODEL_SCHEMA,
        "unet": unet,
        "classes": list(classes),
        "attributes": data.attributes,
        "channels": channels,
        "image_mode": data.mode,
        "image_size": image_size,
        "resize": "bilinear (PIL, centre crop to square first)",
        "train_scheduler": train_scheduler,
        "train": train,
        "parents": parents,
        "generation": data.max_generation + 1,
        "final_loss": summary["final_loss"],
        "summary": split_timings(summary)[0],  # no wall-clock time: same seed, same bytes
        "factory_version": __version__,
    }


def train_generator(dataset: Dataset | Mapping[str, Any] | str | Path, cfg: EmbeddedTrainConfig,
                    out_dir: Path | str, progress: Progress | None = None) -> dict[str, Any]:
    """Train the embedded generator from scratch on ``dataset`` and save it to ``out_dir``.

    ``dataset``: a :class:`Dataset` or its folder, or a pool (record or JSON file): then the pool's drawn
    samples of every component are the training set and the component datasets are the model's ``parents``.
    ``progress(step, total, loss)`` is called after every optimisation step (e.g. to drive a bar).
    The result is deterministic for a given seed, data, machine and torch build, unless
    ``cfg.max_seconds`` stops training early. ``out_dir`` is replaced as a whole, atomically.
    Returns a summary: steps, seconds, final_loss, parameters (and more).
    """
    tset = training_set(dataset)
    out_dir = Path(out_dir)
    MODEL_FOLDER.check_target(out_dir, tset.inputs)
    data = load_training_data(tset, cfg.image_size)
    channels = data.images.shape[1]
    attr_sizes = [len(data.attributes[a]) for a in data.attributes]
    n_classes = len(tset.classes)
    unet_cfg = unet_kwargs(cfg, channels)
    log.info("training the embedded generator on %d images (%s, %dx%d), classes %d, attributes %s",
             len(data.labels), data.mode, cfg.image_size, cfg.image_size, n_classes, data.attributes or "none")

    # Initialise the weights from cfg.seed without disturbing the caller's global RNG.
    with seeded(cfg.seed):
        model = ConditionalUNet(unet_cfg, n_classes, attr_sizes)
    scheduler = _train_scheduler(cfg)
    ema, loop = _fit(model, data, cfg, scheduler, "train_generator", progress)
    summary = _summary(loop, model, len(data.labels))
    config = _config(unet=unet_cfg, classes=tset.classes, data=data, channels=channels, image_size=cfg.image_size,
                     train_scheduler=_jsonable(dict(scheduler.config)), train=cfg.to_dict(), parents=tset.parents,
                     summary=summary)
    save_model(ema, config, out_dir)
    log.info("saved the embedded generator to %s: %d steps in %.0f s, final loss %.4f",
             out_dir, loop.step, loop.seconds, summary["final_loss"])
    return summary


def ema_steps(config: Mapping[str, Any]) -> int:
    """The updates a model folder's EMA weights average over: ``ema_steps`` as a fine-tune records it, or its
    training steps (a model trained from scratch)."""
    if isinstance(config.get("ema_steps"), int):
        return int(config["ema_steps"])
    steps = (config.get("summary") or {}).get("steps", (config.get("train") or {}).get("steps", 0))
    return int(steps or 0)


def finetune_generator(init_dir: Path | str, data: Dataset | Mapping[str, Any] | str | Path,
                       cfg: EmbeddedTrainConfig, out_dir: Path | str,
                       progress: Progress | None = None, *, ema: str = "restart") -> dict[str, Any]:
    """Fine-tune the embedded generator in ``init_dir`` on ``data`` and save the result to ``out_dir``.

    The model and its EMA start from the weights saved in ``init_dir`` (its EMA weights). Its
    architecture, noise schedule, image size, classes and attribute vocabulary are kept: ``cfg``'s
    architecture fields are ignored, ``data``'s classes must equal the model's, attribute values it does
    not know train as the null token and axes it lacks are ignored. ``cfg`` gives the optimisation: steps,
    lr, batch size, warm-up, label dropout, EMA decay, seed. ``data`` is as for :func:`train_generator`.

    ``ema``: ``restart`` starts the EMA's decay schedule afresh (decay ~0.1 at the first update: after a short
    fine-tune the EMA is close to the raw weights); ``continue`` goes on with the schedule of the model's
    EMA (:func:`ema_steps` updates so far, decay ~0.98 after 500), as if training had not stopped.

    The folder's ``config.json`` records ``parents`` (the datasets of ``data``), ``generation`` (the
    highest generation among the training samples + 1) and ``init`` {``model``: ``init_dir`` as given,
    ``weights_sha256``: of its weights file}. Deterministic for a seed. Returns the summary.
    """
    init = MODEL_FOLDER.read(init_dir)
    init_sha = file_sha256(Path(init_dir) / WEIGHTS_NAME)
    tset = training_set(data)
    if list(tset.classes) != list(init["classes"]):
        raise FactoryError(f"{tset.where}: classes {tset.classes} differ from the classes of the model to fine-tune "
                           f"{init_dir} ({init['classes']})")
    out_dir = Path(out_dir)
    MODEL_FOLDER.check_target(out_dir, [*tset.inputs, Path(init_dir)])
    channels, image_size = int(init["channels"]), int(init["image_size"])
    train_data = load_training_data(tset, image_size, attributes=init["attributes"],
                                    mode="RGB" if channels == 3 else "L")
    attr_sizes = [len(v) for v in init["attributes"].values()]
    with seeded(cfg.seed):  # the random initialisation is overwritten; the caller's global RNG is left alone
        model = ConditionalUNet(init["unet"], len(init["classes"]), attr_sizes)
    MODEL_FOLDER.load_into(model, init_dir)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(init["train_scheduler"])
    if ema not in ("restart", "continue"):
        raise FactoryError(f"ema {ema!r}: restart or continue")
    offset = ema_steps(init) if ema == "continue" else 0
    log.info("fine-tuning the embedded generator %s on %d images for %d steps (EMA: %s)", init_dir,
             len(train_data.labels), cfg.steps, ema if not offset else f"continued after {offset} updates")
    ema_model, loop = _fit(model, train_data, cfg, scheduler, "finetune_generator", progress, offset)
    summary = _summary(loop, model, len(train_data.labels))
    arch = {k: init["train"][k] for k in ARCHITECTURE_FIELDS if k in init.get("train", {})}
    config = _config(unet=init["unet"], classes=init["classes"], data=train_data, channels=channels,
                     image_size=image_size, train_scheduler=init["train_scheduler"], train={**cfg.to_dict(), **arch},
                     parents=tset.parents, summary=summary)
    config["init"] = {"model": str(init_dir), "weights_sha256": init_sha, "ema": ema}
    config["ema_steps"] = offset + loop.step
    save_model(ema_model, config, out_dir)
    log.info("saved the fine-tuned embedded generator to %s: %d steps in %.0f s, final loss %.4f",
             out_dir, loop.step, loop.seconds, summary["final_loss"])
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
