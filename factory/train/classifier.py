"""Train a classifier on a pool, test it on REAL data: top-1 and per-class accuracy.

Trained on a synthetic-only pool, the top-1 on the real test split is the Classification Accuracy
Score (CAS; Ravuri & Vinyals 2019, used by Azizi et al. 2023 for ImageNet). Trained on real-only and
on mixes, it says whether synthetic data helps a real task.

Architectures: ``cnn`` (the small CNN of :mod:`factory.train.reference`, the default for 16x16 digits) and
torchvision ResNets (``resnet18``, ``resnet34``, ``resnet50``) adapted to small inputs the usual way
(CIFAR-style stem: 3x3 stride-1 first convolution, no max-pool). Training streams the pool through
:class:`factory.data.loader.PoolStream` and augments each batch (:mod:`factory.data.augment`); every epoch's loss and real-test
accuracy can be logged to a dvclive ``Live``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from factory.config import ClassifierConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.augment import augment
from factory.data.loader import PoolStream, make_loader
from factory.data.pools import read_pool
from factory.train.loop import Loop, Progress, one_cycle, optimize
from factory.train.reference import ReferenceCNN, load_split, predict

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 1 << 30
# the standard augmentation: small rotation, shift and zoom; no flips (digits are not symmetric) and no
# photometric change (colour can be the label, as in the bias benchmark)
AUGMENT = {"scale": (0.9, 1.1), "degrees": 10.0, "translate": 0.1, "brightness": 0.0, "contrast": 0.0, "noise": 0.0}


def build_classifier(arch: str, in_channels: int, n_classes: int, image_size: int = 16, width: int = 32) -> nn.Module:
    if arch == "cnn":
        return ReferenceCNN(in_channels, n_classes, image_size, width)
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=n_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def detect_mode(pool: Mapping[str, Any]) -> str:
    """"RGB" when the pool's first image is colour, else "L"."""
    first = next(iter(PoolStream(pool, shuffle_buffer=0, with_meta=True, mode="RGB")), None)
    if first is None:
        raise FactoryError(f"pool {pool['name']}: no samples")
    x = first[0]
    return "L" if torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) else "RGB"


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1 and per-class accuracy of ``model`` on tensors ``x``/``y``."""
    pred = predict(model, x)
    per_class = {}
    for c, name in enumerate(classes):
        m = y == c
        per_class[name] = round(float((pred[m] == c).float().mean()), 6) if bool(m.any()) else None
    return {"top1": round(float((pred == y).float().mean()), 6), "per_class": per_class, "n_test": int(len(y))}


def train_classifier(pool: Mapping[str, Any] | str | Path, test: Dataset | str | Path, cfg: ClassifierConfig,
                     *, live: Any = None, progress: Progress | None = None
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """Train on ``pool``; evaluate on the real ``test`` dataset. Returns the model and its metrics.

    ``live``: a ``dvclive.Live`` (or anything with ``log_metric``/``log_param``/``next_step``) that gets
    ``train/loss`` and ``test/top1`` every ``eval_every`` steps.
    """
    pool = read_pool(pool) if isinstance(pool, (str, Path)) else dict(pool)
    test = test if isinstance(test, Dataset) else Dataset(test)
    if test.classes != pool["classes"]:
        raise FactoryError(f"{test.path}: classes {test.classes} differ from pool {pool['name']}'s {pool['classes']}")
    mode = detect_mode(pool) if cfg.mode == "auto" else cfg.mode
    torch.manual_seed(cfg.seed)
    channels = 1 if mode == "L" else 3
    fits = int(pool["samples"]) * channels * cfg.image_size ** 2 * 4 <= CACHE_LIMIT_BYTES
    stream = PoolStream(pool, image_size=cfg.image_size, mode=mode, shuffle_buffer=cfg.shuffle_buffer,
                        seed=cfg.seed, cache=cfg.cache and fits and cfg.num_workers == 0)
    gen = torch.Generator().manual_seed(cfg.seed)  # the augmentation's draws
    loader = make_loader(stream, cfg.batch_size, cfg.num_workers)
    x_test, y_test, _, _ = load_split(test, cfg.image_size, mode)
    classes = pool["classes"]
    model = build_classifier(cfg.arch, 1 if mode == "L" else 3, len(classes), cfg.image_size, cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = one_cycle(opt, cfg.lr, cfg.steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if live is not None:
        for k, v in cfg.to_dict().items():
            live.log_param(f"classifier.{k}", v)
    loop, history, result = Loop("train_classifier", cfg.steps, progress=progress, logger=log), [], {}
    step, epoch, seen, running, running_n = 0, 0, 0, 0.0, 0
    while step < cfg.steps:
        stream.set_epoch(epoch)
        epoch += 1
        model.train()
        got = 0
        for xb, yb in loader:
            if cfg.augment:  # batched: one affine_grid call per batch, each image its own warp
                xb = augment(xb, gen, **AUGMENT)
            loss = loss_fn(model(xb), yb)
            optimize(opt, loss, scheduler=sched)
            step += 1
            got += len(yb)
            running += loss.item() * len(yb)
            running_n += len(yb)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                model.eval()
                result = evaluate(model, x_test, y_test, classes)
                model.train()
                row = {"step": step, "epoch": epoch, "train_loss": round(running / running_n, 6),
                       "test_top1": result["top1"]}
                history.append(row)
                if live is not None:
                    live.log_metric("train/loss", row["train_loss"])
                    live.log_metric("test/top1", row["test_top1"])
                    live.next_step()
                log.info("pool %s step %d/%d: loss %.4f, real-test top-1 %.4f", pool["name"], step, cfg.steps,
                         row["train_loss"], row["test_top1"])
                running, running_n = 0.0, 0
            loop.record(loss, step)
            if step >= cfg.steps:
                break
        if got == 0:
            raise FactoryError(f"pool {pool['name']}: the loader gave no samples")
        seen += got
    seconds = loop.elapsed()
    metrics = {
        "pool": pool["name"],
        "top1": result["top1"],
        "per_class": result["per_class"],
        "n_train": int(pool["samples"]),
        "n_test": result["n_test"],
        "synthetic_fraction": pool.get("synthetic_fraction", 0.0),
        "test": test.ref(),
        "arch": cfg.arch,
        "mode": mode,
        "steps": cfg.steps,
        "epochs": round(seen / max(1, int(pool["samples"])), 2),
        "seconds": round(seconds, 1),
        "images_per_second": round(seen / seconds, 1),
        "history": history,
    }
    return model, metrics
