"""Train a classifier on a pool, test it on REAL data: top-1 and per-class accuracy.

Trained on a synthetic-only pool, the top-1 on the real test split is the Classification Accuracy
Score (CAS; Ravuri & Vinyals 2019, used by Azizi et al. 2023 for ImageNet). Trained on real-only and
on mixes, it says whether synthetic data helps a real task.

Architectures: ``cnn`` (the small CNN of :mod:`factory.train.reference`, the default for 16x16 digits) and
torchvision ResNets (``resnet18``, ``resnet34``, ``resnet50``) adapted to small inputs the usual way
(CIFAR-style stem: 3x3 stride-1 first convolution, no max-pool). Training streams the pool through
:class:`factory.data.loader.PoolStream` (every batch a mix of the pool's sources and classes) and augments
each batch (:mod:`factory.data.augment`); every ``eval_every`` steps the loss and real-test accuracy can be
logged to a dvclive ``Live``.

Seeds: :func:`train_classifier_seeds` trains one classifier per training seed (``classifier.seeds``, offsets
from ``classifier.seed``) on the same pool draw (only the initialisation, the batch order and the
augmentation change) and reports the mean with a Student-t 95% interval (:mod:`factory.core.stats`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from factory.config import ClassifierConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.core.stats import mean_ci95, seed_summary
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
    """Top-1 and per-class accuracy of ``model`` on tensors ``x``/``y``, and the confusion matrix (counts:
    ``confusion[true][predicted]``)."""
    pred = predict(model, x)
    per_class = {}
    for c, name in enumerate(classes):
        m = y == c
        per_class[name] = round(float((pred[m] == c).float().mean()), 6) if bool(m.any()) else None
    n = len(classes)
    confusion = torch.bincount(y.long() * n + pred.long(), minlength=n * n).reshape(n, n)
    return {"top1": round(float((pred == y).float().mean()), 6), "per_class": per_class, "n_test": int(len(y)),
            "confusion": confusion.tolist()}


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
            live.log_param(f"classifier.{k}", list(v) if isinstance(v, tuple) else v)
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
        "confusion": result["confusion"],
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


OnModel = Callable[[int, nn.Module, Mapping[str, Any]], Mapping[str, float]]


def train_classifier_seeds(pool: Mapping[str, Any] | str | Path, test: Dataset | str | Path, cfg: ClassifierConfig,
                           seeds: Sequence[int] | None = None, *, live: Any = None,
                           progress: Progress | None = None, on_model: OnModel | None = None) -> dict[str, Any]:
    """One classifier per training seed on ``pool`` (the same draw for all), each tested on the real ``test``
    split; the metrics summarised over the seeds. JSON-ready.

    ``seeds``: the training seeds (default ``cfg.training_seeds()``: ``cfg.seed`` plus each of ``cfg.seeds``).
    Returned: ``seeds``; ``top1_mean``, ``top1_ci95`` (``[lo, hi]``, Student-t over the seeds, ``None`` for
    one seed) and ``top1_per_seed``; ``top1`` equal to ``top1_mean`` (what the report and the plots read);
    ``per_class`` (mean over the seeds) and ``per_class_ci95``; ``confusion`` (``[true][predicted]`` counts on
    the test split, summed over the seeds; ``confusion_note`` says so); ``history`` (per evaluation step, the mean
    loss and top-1 and the top-1 of each seed); the pool's and the run's facts as :func:`train_classifier`
    gives them; ``seconds`` and ``images_per_second`` over all seeds (wall-clock fields: the stage writes
    them to the timings file, not the metrics).

    ``on_model(seed, model, metrics)``: more per-seed numbers from each trained model (e.g. the accuracy on a
    part of the test split), a mapping ``name -> value``; each name is summarised like top-1, as
    ``<name>_mean``, ``<name>_ci95`` and ``<name>_per_seed`` (within [0, 1]; ``None`` values make the
    summary ``None``). ``live``: gets the parameters and, after the last seed, one step per evaluation
    with ``train/loss`` and ``test/top1`` (the means over seeds) and ``seed<s>/train/loss``,
    ``seed<s>/test/top1`` for each seed ``s``.
    """
    pool = read_pool(pool) if isinstance(pool, (str, Path)) else dict(pool)
    seeds = [int(s) for s in (cfg.training_seeds() if seeds is None else seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise FactoryError(f"pool {pool['name']}: training seeds must be distinct and at least one; got {seeds}")
    if cfg.mode == "auto":
        cfg = cfg.model_copy(update={"mode": detect_mode(pool)})
    runs, extras = [], []
    for s in seeds:
        model, m = train_classifier(pool, test, cfg.model_copy(update={"seed": s}), progress=progress)
        extras.append(dict(on_model(s, model, m)) if on_model is not None else {})
        runs.append(m)
        log.info("pool %s seed %d: real-test top-1 %.4f", pool["name"], s, m["top1"])
    summary = summarise_seeds(runs, seeds, extras)
    if live is not None:
        _log_seeds(live, cfg, seeds, summary["history"], runs)
    return summary


def _mean_or_none(values: Sequence[float | None]) -> tuple[float | None, list[float] | None]:
    if any(v is None for v in values):
        return None, None
    mean, ci = mean_ci95(values, bounds=(0.0, 1.0))
    return round(mean, 6), None if ci is None else [round(ci[0], 6), round(ci[1], 6)]


def summarise_seeds(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int],
                    extras: Sequence[Mapping[str, float | None]] | None = None) -> dict[str, Any]:
    """The summary of :func:`train_classifier_seeds` from each seed's :func:`train_classifier` metrics."""
    first = runs[0]
    out: dict[str, Any] = {"pool": first["pool"], "seeds": list(seeds)}
    out.update(seed_summary("top1", [r["top1"] for r in runs], seeds))
    out["top1"] = out["top1_mean"]
    per_class, per_class_ci = {}, {}
    for c in first["per_class"]:
        per_class[c], per_class_ci[c] = _mean_or_none([r["per_class"][c] for r in runs])
    out.update(per_class=per_class, per_class_ci95=per_class_ci)
    if all("confusion" in r for r in runs):
        out["confusion"] = [[sum(cells) for cells in zip(*rows)] for rows in zip(*(r["confusion"] for r in runs))]
        out["confusion_note"] = (f"rows: true class, columns: predicted class (the order of the pool's classes); "
                                 f"counts on the real test split summed over the {len(runs)} training seeds")
    for name in dict.fromkeys(k for e in (extras or []) for k in e):
        values = [e.get(name) for e in extras]
        if any(v is None for v in values):
            out.update({f"{name}_mean": None, f"{name}_ci95": None, f"{name}_per_seed": values})
        else:
            out.update(seed_summary(name, values, seeds))
    for key in ("n_train", "n_test", "synthetic_fraction", "test", "arch", "mode", "steps"):
        out[key] = first[key]
    out["epochs"] = round(sum(r["epochs"] for r in runs) / len(runs), 2)
    history = []
    for rows in zip(*(r["history"] for r in runs)):
        history.append({"step": rows[0]["step"], "epoch": rows[0]["epoch"],
                        "train_loss": round(sum(h["train_loss"] for h in rows) / len(rows), 6),
                        "test_top1": round(sum(h["test_top1"] for h in rows) / len(rows), 6),
                        "test_top1_per_seed": [h["test_top1"] for h in rows]})
    out["history"] = history
    seconds = sum(r["seconds"] for r in runs)
    seen = sum(r["images_per_second"] * r["seconds"] for r in runs)
    out["seconds"] = round(seconds, 1)
    out["images_per_second"] = round(seen / seconds, 1) if seconds > 0 else None
    return out


def _log_seeds(live: Any, cfg: ClassifierConfig, seeds: Sequence[int], history: Sequence[Mapping[str, Any]],
               runs: Sequence[Mapping[str, Any]]) -> None:
    for k, v in cfg.to_dict().items():
        live.log_param(f"classifier.{k}", list(v) if isinstance(v, tuple) else v)
    live.log_param("classifier.training_seeds", list(seeds))
    for i, row in enumerate(history):
        live.log_metric("train/loss", row["train_loss"])
        live.log_metric("test/top1", row["test_top1"])
        for s, r in zip(seeds, runs):
            live.log_metric(f"seed{s}/train/loss", r["history"][i]["train_loss"])
            live.log_metric(f"seed{s}/test/top1", r["history"][i]["test_top1"])
        live.next_step()
