"""One dataset's features in several feature spaces, its balance and recognition rate; and one synthetic
dataset against a real one at a matched sample count (:mod:`factory.measure.matched`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.images import images_to_tensor
from factory.core.shards import Dataset
from factory.measure.features import DEFAULT_BATCH_SIZE, FeatureExtractor, _open, extract_views
from factory.measure.matched import DEFAULT_BOOTSTRAP, DEFAULT_DRAWS, compare_matched, matched_size
from factory.measure.metrics import DEFAULT_K, attribute_balance, class_balance
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


@dataclass
class DatasetFeatures:
    """What one streaming pass over a dataset yields."""

    dataset: Dataset
    features: dict[str, np.ndarray]      # view name -> (N, D) float32
    class_names: list[str]               # one per sample
    attributes: list[dict[str, str]]     # one per sample
    recognition: dict[str, Any] | None   # with a classifier: see :class:`_Recognition`

    def __len__(self) -> int:
        return len(self.class_names)

    def summary(self, classes: Sequence[str], attribute_values: Mapping[str, Sequence[str]] | None = None
                ) -> dict[str, Any]:
        """Class balance against ``classes``, attribute balance, and the recognition rate (if measured)."""
        out = {"class_balance": class_balance(self.class_names, classes),
               "attribute_balance": attribute_balance(self.attributes, attribute_values)}
        if self.recognition is not None:
            out["recognition"] = self.recognition
        return out


def dataset_features(dataset: Dataset | str | Path, extractors: Mapping[str, FeatureExtractor], *,
                     classifier: ReferenceCNN | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> DatasetFeatures:
    """Features of ``dataset`` in every view of ``extractors`` (name -> extractor), its class names and
    attributes, and with a ``classifier`` (a :class:`ReferenceCNN` trained on real data) the share of its
    images assigned to their class; one pass. An empty dataset is an error."""
    ds = _open(dataset)
    rec = _Recognition(classifier, ds.classes) if classifier is not None else None
    feats, labels, attrs = extract_views(ds, extractors, batch_size, rec)
    if not len(labels):
        raise FactoryError(f"{ds.path}: the dataset is empty")
    return DatasetFeatures(ds, feats, [ds.classes[y] for y in labels], attrs,
                           rec.result() if rec is not None else None)


def evaluate_dataset(synthetic: Dataset | str | Path, real: Dataset | str | Path, extractor: FeatureExtractor, *,
                     k: int = DEFAULT_K, classifier: ReferenceCNN | None = None,
                     attribute_values: Mapping[str, Sequence[str]] | None = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, n: int | None = None, draws: int = DEFAULT_DRAWS,
                     bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Quality of ``synthetic`` against ``real`` (usually the real TEST split) in ``extractor``'s feature space.

    Returns a JSON-ready dict:

    - ``overall``: FD, KID, precision, recall, density, coverage at ``n`` samples per side (default: the
      smaller dataset), means over ``draws`` seeded draws, with ``<metric>_ci95`` and ``per_draw``
      (:func:`factory.measure.matched.compare_matched`);
    - ``class_balance``: synthetic counts per real class and TV distance from uniform (:func:`class_balance`);
    - ``attribute_balance``: per attribute axis of the synthetic samples (:func:`attribute_balance`;
      ``attribute_values`` names the values an axis should have, e.g. from the prompt plan);
    - ``recognition`` (only with a ``classifier``): share of synthetic images it assigns to their class,
      overall and per class; samples of classes it does not know are left out and counted in ``unknown_class``;
    - ``extractor``, ``k``, ``n``, ``draws``, ``bootstrap``, ``n_synthetic``, ``n_real``, ``synthetic`` and
      ``real`` (dataset refs), ``seconds``.
    """
    start = time.perf_counter()
    views = {"x": extractor}
    syn = dataset_features(synthetic, views, classifier=classifier, batch_size=batch_size)
    ref = dataset_features(real, views, batch_size=batch_size)
    n = matched_size({str(ref.dataset.path): len(ref), str(syn.dataset.path): len(syn)}, n, k=k)
    overall = compare_matched(ref.features["x"], {"synthetic": syn.features["x"]}, n=n, draws=draws,
                              bootstrap=bootstrap, k=k, seed=seed)["synthetic"]
    result: dict[str, Any] = {
        "extractor": extractor.describe(), "k": int(k), "n": n, "draws": draws, "bootstrap": bootstrap,
        "n_synthetic": len(syn), "n_real": len(ref), "synthetic": syn.dataset.ref(), "real": ref.dataset.ref(),
        "overall": overall, **syn.summary(ref.dataset.classes, attribute_values),
    }
    result["seconds"] = round(time.perf_counter() - start, 2)
    log.info("dataset metrics of %s against %s at n=%d: %s", syn.dataset.path, ref.dataset.path, n,
             {m: overall[m] for m in ("fd", "kid", "precision", "recall")})
    return result
