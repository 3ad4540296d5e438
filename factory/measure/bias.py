"""The bias benchmark: does colour-balanced synthetic data undo a spurious colour-class correlation?

Colored-MNIST style (Arjovsky et al. 2019; Nam et al. 2020). The real TRAIN pool comes from
``sklearn:digits-colored`` with colour tied to class at a high rate (``bias=0.95``: 95% of the threes
are blue). The real TEST split holds the other digits, coloured independently of class. A classifier
that learned "blue means three" fails on test digits of another colour; the benchmark reports its
accuracy on the whole randomised test split, on the colour-consistent test images (colour = the
class's majority colour in the biased train split) and on the colour-flipped ones, and the gap.

The remedy under test: a generator conditioned on class and colour, trained on the biased split,
asked by a balanced plan for every class x colour cell in equal numbers (including the cells that
are rare in the real data), mixed into the training pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import torch

from factory.config import ClassifierConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset, DatasetWriter, check_output_dir
from factory.data.ingest import source_paths, stratified_test_keys
from factory.data.sources import open_source
from factory.train.classifier import train_classifier
from factory.train.reference import load_split, predict

log = logging.getLogger(__name__)


def make_bias_splits(train_source: str, test_source: str, train_out: Path | str, test_out: Path | str, *,
                     test_fraction: float, seed: int, shard_size: int = 1000, overwrite: bool = False
                     ) -> dict[str, int]:
    """Biased train split from ``train_source``; the held-out keys taken from ``test_source``.

    Both sources must yield the same keys and labels (the same digits, coloured differently), so
    no test image is a re-coloured copy of a train image.
    """
    train_out, test_out = Path(train_out), Path(test_out)
    inputs = [*source_paths(train_source), *source_paths(test_source)]
    check_output_dir(train_out, overwrite, inputs=inputs, others=[test_out])
    check_output_dir(test_out, overwrite, inputs=inputs, others=[train_out])
    tr, te = open_source(train_source), open_source(test_source)
    if tr.classes != te.classes:
        raise FactoryError(f"{test_source}: classes {te.classes} differ from {train_source}'s {tr.classes}")
    labels = {s.key: s.label for s in open_source(train_source)}
    test_keys = stratified_test_keys(labels.items(), test_fraction, seed)
    lineage = {"train_source": train_source, "test_source": test_source, "test_fraction": test_fraction,
               "seed": seed}
    with DatasetWriter(train_out, f"{tr.name}-biased-train", tr.classes, shard_size,
                       tr.meta | lineage | {"split": "train"}, overwrite, inputs=inputs) as w:
        for s in tr:
            if s.key not in test_keys:
                w.write(s)
        n_train = w.close()["samples"]
    seen = set()
    with DatasetWriter(test_out, f"{te.name}-randomised-test", te.classes, shard_size,
                       te.meta | lineage | {"split": "test"}, overwrite, inputs=inputs) as w:
        for s in te:
            if s.key in test_keys:
                if labels.get(s.key) != s.label:
                    raise FactoryError(f"{test_source}: sample {s.key!r} has label {s.label}, but "
                                       f"{train_source} gives it {labels.get(s.key)}; the two sources "
                                       "must be the same images")
                seen.add(s.key)
                w.write(s)
        n_test = w.close()["samples"]
    if seen != test_keys:
        raise FactoryError(f"{test_source}: {len(test_keys - seen)} held-out keys are missing from it")
    return {"train": n_train, "test": n_test}


def majority_attribute(dataset: Dataset | str | Path, axis: str) -> dict[str, str]:
    """Each class's most frequent value of attribute ``axis`` (its "own" colour in the biased data)."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    counts: dict[str, Counter] = defaultdict(Counter)
    for rec in ds.records():
        value = (rec.get("attributes") or {}).get(axis)
        if value is None:
            raise FactoryError(f"{ds.path}: sample {rec['key']!r} has no attribute {axis!r}")
        counts[rec["class_name"]][value] += 1
    return {c: sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for c, cnt in counts.items()}


def attribute_correlation(dataset: Dataset | str | Path, axis: str,
                          reference: Dataset | str | Path | None = None) -> float:
    """Share of samples whose ``axis`` value is their class's majority value in ``reference`` (default:
    in ``dataset`` itself). 1.0: fully tied; 1 / (number of values): independent of class."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    own = majority_attribute(reference if reference is not None else ds, axis)
    hits = []
    for rec in ds.records():
        value = (rec.get("attributes") or {}).get(axis)
        if value is None:
            raise FactoryError(f"{ds.path}: sample {rec['key']!r} has no attribute {axis!r}")
        hits.append(value == own.get(rec["class_name"]))
    return sum(hits) / len(hits) if hits else 0.0


def consistency_mask(test: Dataset, own: Mapping[str, str], axis: str) -> torch.Tensor:
    """True where a test sample's attribute equals its class's majority value in the train split."""
    return torch.tensor([(rec.get("attributes") or {}).get(axis) == own.get(rec["class_name"])
                         for rec in test.records()])


def split_accuracy(pred: torch.Tensor, y: torch.Tensor, consistent: torch.Tensor) -> dict[str, Any]:
    """Accuracy overall, on colour-consistent and on colour-flipped images, and the gap between them."""
    def acc(m: torch.Tensor) -> float | None:
        return round(float((pred[m] == y[m]).float().mean()), 6) if bool(m.any()) else None

    cons, flip = acc(consistent), acc(~consistent)
    return {"top1": acc(torch.ones_like(consistent)), "consistent_top1": cons, "flipped_top1": flip,
            "gap": round(cons - flip, 6) if cons is not None and flip is not None else None,
            "n_consistent": int(consistent.sum()), "n_flipped": int((~consistent).sum())}


def bias_benchmark(train: Dataset | str | Path, test: Dataset | str | Path, pools: Mapping[str, str | Path],
                   cfg: ClassifierConfig, axis: str = "color",
                   live: Callable[[str], ContextManager[Any]] | None = None) -> dict[str, Any]:
    """A classifier trained on each of ``pools`` (name -> pool file), tested on the attribute-randomised
    ``test`` split: accuracy overall, on the images whose ``axis`` value is their class's majority value in
    the biased ``train`` split and on the others, and the gap. ``live(name)``: a dvclive ``Live`` (as a
    context manager) for a pool's training curves, or None. JSON-ready."""
    test = test if isinstance(test, Dataset) else Dataset(test)
    consistent = consistency_mask(test, majority_attribute(train, axis), axis)
    results: dict[str, Any] = {"train_correlation": round(attribute_correlation(train, axis), 6),
                               "test_correlation": round(attribute_correlation(test, axis, train), 6), "pools": {}}
    for name, pool in pools.items():
        with live(name) if live is not None else contextlib.nullcontext() as lv:
            model, metrics = train_classifier(pool, test, cfg, live=lv)
        x, y, _, _ = load_split(test, cfg.image_size, metrics["mode"])
        model.eval()
        row = split_accuracy(predict(model, x), y, consistent)
        row.update(n_train=metrics["n_train"], synthetic_fraction=metrics["synthetic_fraction"])
        results["pools"][name] = row
        log.info("bias benchmark %s: %s", name, row)
    return results
