"""One synthetic dataset against a real one: distribution metrics, per-class metrics, balance, recognition.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from factory.core.errors import FactoryError
from factory.core.images import images_to_tensor
from factory.core.shards import Dataset
from factory.measure.features import DEFAULT_BATCH_SIZE, FeatureExtractor, _extract, _open
from factory.measure.metrics import DEFAULT_K, attribute_balance, class_balance, class_metrics
from factory.train.reference import ReferenceCNN, predict

log = logging.getLogger(__name__)


class _Recognition:
    """Accumulates a reference classifier's hits batch by batch (as :func:`factory.recognition.recognition`)."""

    def __init__(self, model: ReferenceCNN, classes: Sequence[str]) -> None:
        self.model = model
        # dataset label -> classifier label (by class name); -1: a class the classifier does not know
        self.to_model = [model.classes.index(c) if c in model.classes else -1 for c in classes]
        self.classes = list(classes)
        self.hits: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.unknown = 0

    def __call__(self, images: list[Image.Image], labels: list[int]) -> None:
        keep = [i for i, y in enumerate(labels) if self.to_model[y] >= 0]
        self.unknown += len(labels) - len(keep)
        if not keep:
            return
        x = images_to_tensor([images[i] for i in keep], self.model.mode, self.model.image_size)
        pred = predict(self.model, x).tolist()
        for i, p in zip(keep, pred):
            name = self.classes[labels[i]]
            self.counts[name] += 1
            self.hits[name] += int(p == self.to_model[labels[i]])

    def result(self) -> dict[str, Any]:
        n = sum(self.counts.values())
        names = [c for c in self.classes if self.counts[c]]
        return {
            "overall": round(sum(self.hits.values()) / n, 5) if n else None,
            "per_class": {c: round(self.hits[c] / self.counts[c], 5) for c in names},
            "counts": {c: self.counts[c] for c in names},
            "n": n,
            "unknown_class": self.unknown,
        }


def evaluate_dataset(synthetic: Dataset | str | Path, real: Dataset | str | Path, extractor: FeatureExtractor, *,
                     k: int = DEFAULT_K, classifier: ReferenceCNN | None = None,
                     attribute_values: Mapping[str, Sequence[str]] | None = None,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Quality of ``synthetic`` against ``real`` (usually the real TEST split) in ``extractor``'s feature space.

    Returns a JSON-ready dict:

    - ``overall``: ``{fd, precision, recall, density, coverage}`` of all synthetic against all real samples;
    - ``per_class``: the same per real class, classes matched by name (see :func:`class_metrics`: a class
      with too few samples has None values and a ``skipped`` reason; ``n_fake`` counts synthetic samples);
    - ``class_balance``: synthetic counts per real class and TV distance from uniform (:func:`class_balance`);
    - ``attribute_balance``: per attribute axis of the synthetic samples (:func:`attribute_balance`;
      ``attribute_values`` names the values an axis should have, e.g. from the prompt plan);
    - ``recognition`` (only with a ``classifier``, a :class:`~factory.recognition.ReferenceCNN` trained on
      real data): share of synthetic images it assigns to their class, overall and per class; samples of
      classes it does not know are left out and counted in ``unknown_class``;
    - ``extractor``, ``k``, ``n_synthetic``, ``n_real``, ``synthetic`` and ``real`` (dataset refs), ``seconds``.
    """
    start = time.perf_counter()
    syn_ds, real_ds = _open(synthetic), _open(real)
    rec = _Recognition(classifier, syn_ds.classes) if classifier is not None else None
    # 1. features: one streaming pass over each dataset (with the classifier's predictions on the synthetic one)
    fake, fake_y, fake_attrs = _extract(syn_ds, extractor, batch_size, rec)
    real_f, real_y, _ = _extract(real_ds, extractor, batch_size)
    for ds, f in ((syn_ds, fake), (real_ds, real_f)):
        if not len(f):
            raise FactoryError(f"{ds.path}: the dataset is empty")
    # 2. classes by name
    fake_names = [syn_ds.classes[y] for y in fake_y]
    real_names = [real_ds.classes[y] for y in real_y]
    # 3. the metrics
    metrics = class_metrics(real_f, real_names, fake, fake_names, k=k, classes=real_ds.classes)
    result: dict[str, Any] = {
        "extractor": extractor.describe(),
        "k": int(k),
        "n_synthetic": int(len(fake)),
        "n_real": int(len(real_f)),
        "synthetic": syn_ds.ref(),
        "real": real_ds.ref(),
        "overall": metrics["overall"],
        "per_class": metrics["per_class"],
        "class_balance": class_balance(fake_names, real_ds.classes),
        "attribute_balance": attribute_balance(fake_attrs, attribute_values),
    }
    if rec is not None:
        result["recognition"] = rec.result()
    result["seconds"] = round(time.perf_counter() - start, 2)
    log.info("dataset metrics of %s against %s: %s", syn_ds.path, real_ds.path, result["overall"])
    return result
