"""A reference classifier trained on REAL images, and the recognition rate of generated images.

The recognition rate of a class is the share of images generated for that class that a small CNN
trained only on real data assigns to that class: a cheap fidelity check for a class-conditional
generator (the classifier never sees a synthetic image, so it cannot be fooled by training on
them). The CNN sees images exactly as the embedded generator does: same mode (grayscale unless the
data is colour), same size, same bilinear resize, pixels scaled to [-1, 1].
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from factory.core.errors import FactoryError
from factory.core.images import images_to_tensor
from factory.core.modelfolder import ModelFolder
from factory.core.shards import Dataset
from factory.train.loop import count_parameters, one_cycle, optimize, seeded
from factory.train.reference import ReferenceCNN, _shift, load_split, predict

log = logging.getLogger(__name__)


CLASSIFIER_SCHEMA = "factory.reference-classifier/1"


WEIGHTS_NAME = "classifier.safetensors"


CONFIG_NAME = "classifier.json"


CLASSIFIER_FOLDER = ModelFolder(kind="reference classifier", schema=CLASSIFIER_SCHEMA, weights=WEIGHTS_NAME,
                                config=CONFIG_NAME, keys=("in_channels", "n_classes", "image_size", "width", "classes"))


def accuracy(model: ReferenceCNN, dataset: Dataset | str | Path) -> float:
    """Top-1 accuracy of ``model`` on a dataset (e.g. the real test split)."""
    x, y, _, _ = load_split(dataset, model.image_size, model.mode)
    return float((predict(model, x) == y).float().mean())


def train_reference_classifier(dataset: Dataset | str | Path, image_size: int = 16, *, epochs: int = 20,
                               batch_size: int = 64, lr: float = 2e-3, max_shift: int = 2, seed: int = 0,
                               test: Dataset | str | Path | None = None) -> tuple[ReferenceCNN, dict[str, Any]]:
    """Train the reference CNN on ``dataset`` (real images) with random shifts of up to ``max_shift``
    pixels; AdamW with a cosine learning rate. Deterministic for a seed. If ``test`` is given, its
    accuracy is in the returned info (``test_accuracy``)."""
    for name, v, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("image_size", image_size, 4)):
        if not isinstance(v, int) or v < lo:
            raise FactoryError(f"reference classifier {name} must be an integer >= {lo}; got {v!r}")
    x, y, mode, classes = load_split(dataset, image_size)
    with seeded(seed):
        model = ReferenceCNN(x.shape[1], len(classes), image_size)
    model.classes = list(classes)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(x) // batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = one_cycle(opt, lr, total)
    start = time.perf_counter()
    model.train()
    loss = torch.tensor(0.0)
    with seeded(seed + 1):  # dropout draws from the global RNG: keep it seeded and private
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                xb = _shift(x[idx], max_shift, gen)
                loss = nn.functional.cross_entropy(model(xb), y[idx])
                optimize(opt, loss, scheduler=sched)
    model.eval()
    info: dict[str, Any] = {
        "images": len(x), "mode": mode, "image_size": image_size, "classes": list(classes),
        "epochs": epochs, "steps": total, "seconds": round(time.perf_counter() - start, 2),
        "final_loss": round(float(loss.detach()), 5),
        "train_accuracy": round(float((predict(model, x) == y).float().mean()), 5),
        "parameters": count_parameters(model),
    }
    if test is not None:
        info["test_accuracy"] = round(accuracy(model, test), 5)
    log.info("reference classifier: %s", info)
    return model, info


def recognition(model: ReferenceCNN, images: Sequence[Image.Image], labels: Sequence[int],
                classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The share of ``images`` that ``model`` assigns to their intended ``labels``, overall and per
    class (keyed by class name; a class with no images is left out)."""
    if len(images) != len(labels):
        raise FactoryError(f"recognition: {len(images)} images but {len(labels)} labels")
    classes = list(classes) if classes is not None else list(model.classes)
    if len(classes) != model.n_classes:
        raise FactoryError(f"recognition: the classifier knows {model.n_classes} classes; got {len(classes)} names")
    y = torch.tensor([int(v) for v in labels], dtype=torch.long)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
        raise FactoryError(f"recognition: labels must be in 0..{len(classes) - 1}")
    pred = predict(model, images_to_tensor(images, model.mode, model.image_size))
    hit = (pred == y)
    per_class, counts = {}, {}
    for c, name in enumerate(classes):
        m = y == c
        if int(m.sum()):
            per_class[name] = round(float(hit[m].float().mean()), 5)
            counts[name] = int(m.sum())
    return {
        "overall": round(float(hit.float().mean()), 5) if len(y) else float("nan"),
        "per_class": per_class,
        "counts": counts,
        "n": int(len(y)),
    }


def save_reference_classifier(model: ReferenceCNN, info: dict[str, Any], out_dir: Path | str) -> None:
    """The folder ``out_dir``: weights and a json config (replaced whole, atomically; a folder that is not a
    reference classifier is never replaced)."""
    cfg = {"schema": CLASSIFIER_SCHEMA, "in_channels": model.in_channels, "n_classes": model.n_classes,
           "image_size": model.image_size, "width": model.width, "classes": model.classes, "info": info}
    CLASSIFIER_FOLDER.save(out_dir, model, cfg)


def load_reference_classifier(model_dir: Path | str) -> tuple[ReferenceCNN, dict[str, Any]]:
    cfg = CLASSIFIER_FOLDER.read(model_dir)
    model = ReferenceCNN(cfg["in_channels"], cfg["n_classes"], cfg["image_size"], cfg["width"])
    CLASSIFIER_FOLDER.load_into(model, model_dir)
    model.classes = list(cfg["classes"])
    return model.eval(), dict(cfg.get("info", {}))
