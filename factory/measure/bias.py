"""The bias benchmark: does colour-balanced synthetic data undo a spurious colour-class correlation?

Colored-MNIST style (Arjovsky et al. 2019; Nam et al. 2020). The real TRAIN pool comes from
``sklearn:digits-colored`` with colour tied to class at a high rate (``bias=0.95``: 95% of the threes
are blue). The real VAL and TEST splits hold other digits (train, val and test are disjoint images),
coloured independently of class. A classifier that learned "blue means three" fails on digits of another
colour; the benchmark reports its accuracy on a whole randomised split, on the colour-consistent images
(colour = the class's majority colour in the biased train split) and on the colour-flipped ones, and
the gap, on val (where every design choice is made) and on test (reported, never chosen on).

The remedy under test: a generator conditioned on class and colour, trained on the biased split,
asked by a balanced plan for every class x colour cell in equal numbers (including the cells that
are rare in the real data), mixed into the training pool. The control: the same generator asked by a
plan whose class x colour cells follow the biased train split's own counts (:func:`control_plan`),
the same number of images: biased real plus biased synthetic is as large as biased real plus balanced
synthetic, so what balance does is separated from what more images do. Every pool is trained with
several classifier seeds; each number is a mean with a Student-t 95% interval and the per-seed values.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch

from factory.config import ClassifierConfig, PlanConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset, DatasetWriter, check_output_dir
from factory.core.stats import seed_summary
from factory.data.ingest import source_paths, stratified_test_keys
from factory.data.sources import open_source
from factory.generate.plans import Plan, build_plan, cells
from factory.measure.metrics import realised_balance
from factory.train.classifier import train_classifier
from factory.train.reference import load_split, predict

log = logging.getLogger(__name__)

SPLIT_METRICS = ("top1", "consistent_top1", "flipped_top1", "gap")


def bias_split_keys(labels: Mapping[str, int], *, val_fraction: float, test_fraction: float, seed: int
                    ) -> tuple[set[str], set[str]]:
    """The held-out keys: ``test`` (stratified, ``test_fraction`` of each class) and ``val`` (stratified,
    ``val_fraction`` of each class, drawn from the keys left after test); disjoint by construction."""
    if not (0 < val_fraction and val_fraction + test_fraction < 1):
        raise FactoryError(f"bias splits: val_fraction {val_fraction} + test_fraction {test_fraction} must be "
                           "positive and below 1")
    test = stratified_test_keys(labels.items(), test_fraction, seed)
    rest = [(k, y) for k, y in labels.items() if k not in test]
    val = stratified_test_keys(rest, val_fraction / (1 - test_fraction), seed + 1)
    return val, test


def make_bias_splits(train_source: str, test_source: str, train_out: Path | str, val_out: Path | str,
                     test_out: Path | str, *, val_fraction: float, test_fraction: float, seed: int,
                     shard_size: int = 1000, overwrite: bool = False) -> dict[str, int]:
    """Biased train split from ``train_source``; the held-out val and test keys taken from ``test_source``.

    Both sources must yield the same keys and labels (the same digits, coloured differently); a digit is
    in one split only, so no val or test image is a re-coloured copy of a train image or of each other.
    """
    outs = {"train": Path(train_out), "val": Path(val_out), "test": Path(test_out)}
    inputs = [*source_paths(train_source), *source_paths(test_source)]
    for name, out in outs.items():
        check_output_dir(out, overwrite, inputs=inputs, others=[o for n, o in outs.items() if n != name])
    tr, te = open_source(train_source), open_source(test_source)
    if tr.classes != te.classes:
        raise FactoryError(f"{test_source}: classes {te.classes} differ from {train_source}'s {tr.classes}")
    labels = {s.key: s.label for s in open_source(train_source)}
    val_keys, test_keys = bias_split_keys(labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    lineage = {"train_source": train_source, "test_source": test_source, "val_fraction": val_fraction,
               "test_fraction": test_fraction, "seed": seed}
    with DatasetWriter(outs["train"], f"{tr.name}-biased-train", tr.classes, shard_size,
                       tr.meta | lineage | {"split": "train"}, overwrite, inputs=inputs) as w:
        for s in tr:
            if s.key not in test_keys and s.key not in val_keys:
                w.write(s)
        counts = {"train": w.close()["samples"]}
    for split, keys in (("val", val_keys), ("test", test_keys)):
        seen = set()
        with DatasetWriter(outs[split], f"{te.name}-randomised-{split}", te.classes, shard_size,
                           te.meta | lineage | {"split": split}, overwrite, inputs=inputs) as w:
            for s in te:
                if s.key in keys:
                    if labels.get(s.key) != s.label:
                        raise FactoryError(f"{test_source}: sample {s.key!r} has label {s.label}, but "
                                           f"{train_source} gives it {labels.get(s.key)}; the two sources "
                                           "must be the same images")
                    seen.add(s.key)
                    w.write(s)
            counts[split] = w.close()["samples"]
        if seen != keys:
            raise FactoryError(f"{test_source}: {len(keys - seen)} held-out {split} keys are missing from it")
    return counts


def control_plan(cfg: PlanConfig, train: Dataset | str | Path) -> Plan:
    """``cfg``'s plan with each class's images split over the attribute cells in proportion to the real
    ``train`` split's counts of that class in each cell (read from provenance: ground truth for real
    data): a synthetic set with the biased split's class x attribute distribution and the same size as
    ``cfg``'s own (balanced) plan."""
    train = train if isinstance(train, Dataset) else Dataset(train)
    if not cfg.attributes:
        raise FactoryError("the control plan needs plan attributes (the axes whose joint counts it copies)")
    axes = [a.name for a in cfg.attributes]
    cell_list = [attrs for attrs, _ in cells(cfg.attributes)]
    counts: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for rec in train.records():
        attrs = rec.get("attributes") or {}
        counts[rec["class_name"]][tuple(str(attrs.get(a)) for a in axes)] += 1
    chosen = list(cfg.classes) if cfg.classes is not None else train.classes
    missing = [c for c in chosen if not sum(counts[c].values())]
    if missing:
        raise FactoryError(f"{train.path}: class(es) {missing} have no samples with attributes {axes}")
    weights = {c: [float(counts[c][tuple(attrs[a] for a in axes)]) for attrs in cell_list] for c in chosen}
    empty = [c for c, w in weights.items() if not sum(w)]
    if empty:
        raise FactoryError(f"{train.path}: class(es) {empty} have no samples in any cell of the plan's attributes")
    return build_plan(cfg, train.classes, cell_weights=weights)


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


def attribute_values(dataset: Dataset | str | Path, axis: str) -> list[str]:
    """The values of attribute ``axis`` that occur in ``dataset``'s provenance, sorted."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    return sorted({str(v) for rec in ds.records() if (v := (rec.get("attributes") or {}).get(axis)) is not None})


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


def summarise(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-seed :func:`split_accuracy` rows of one pool on one split -> each metric's mean, 95% interval and
    per-seed values (:func:`factory.core.stats.seed_summary`), and the split's image counts."""
    out: dict[str, Any] = {"n_consistent": rows[0]["n_consistent"], "n_flipped": rows[0]["n_flipped"]}
    for metric in SPLIT_METRICS:
        values = [r[metric] for r in rows]
        if any(v is None for v in values):
            out.update({f"{metric}_mean": None, f"{metric}_ci95": None, f"{metric}_per_seed": values})
        else:
            out.update(seed_summary(metric, values, seeds, bounds=(-1.0, 1.0) if metric == "gap" else (0.0, 1.0)))
    return out


def bias_benchmark(train: Dataset | str | Path, val: Dataset | str | Path, test: Dataset | str | Path,
                   pools: Mapping[str, str | Path], cfg: ClassifierConfig, seeds: Sequence[int] | None = None,
                   axis: str = "color",
                   synthetic: Mapping[str, str | Path] | None = None, values: Sequence[str] | None = None,
                   live: Callable[[str], ContextManager[Any]] | None = None) -> dict[str, Any]:
    """A classifier trained on each of ``pools`` (name -> pool file) once per seed of ``seeds`` (default
    ``cfg.training_seeds()``: ``classifier.seed`` plus each offset of ``classifier.seeds``), tested on
    the attribute-randomised ``val`` and ``test`` splits: accuracy overall, on the images whose ``axis``
    value is their class's majority value in the biased ``train`` split and on the others, and the gap,
    each as mean, 95% interval and per-seed values. The training curves are on val (``live(name)``: a
    dvclive ``Live`` as a context manager for ``<pool>/seed<k>``, or None). ``synthetic`` (name ->
    dataset): synthetic sets whose realised ``axis`` balance (measured from pixels) is reported beside
    the requested one, over ``values`` (default: the values seen in ``train``). JSON-ready."""
    seeds = [int(s) for s in (cfg.training_seeds() if seeds is None else seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise FactoryError(f"bias benchmark: training seeds must be distinct and at least one; got {seeds}")
    splits = {"val": val if isinstance(val, Dataset) else Dataset(val),
              "test": test if isinstance(test, Dataset) else Dataset(test)}
    own = majority_attribute(train, axis)
    masks = {name: consistency_mask(ds, own, axis) for name, ds in splits.items()}
    results: dict[str, Any] = {
        "axis": axis, "seeds": [int(s) for s in seeds], "chosen_on": "val",
        "train_correlation": round(attribute_correlation(train, axis), 6),
        **{f"{name}_correlation": round(attribute_correlation(ds, axis, train), 6) for name, ds in splits.items()},
        "pools": {}, "synthetic": {}}
    tensors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pool in pools.items():
        per_split: dict[str, list[dict[str, Any]]] = {s: [] for s in splits}
        metrics: dict[str, Any] = {}
        for seed in seeds:
            with live(f"{name}/seed{seed}") if live is not None else contextlib.nullcontext() as lv:
                model, metrics = train_classifier(pool, splits["val"], cfg.replace(seed=int(seed)), live=lv)
            model.eval()
            for split, ds in splits.items():
                if (split, metrics["mode"]) not in tensors:
                    x, y, _, _ = load_split(ds, cfg.image_size, metrics["mode"])
                    tensors[(split, metrics["mode"])] = (x, y)
                x, y = tensors[(split, metrics["mode"])]
                per_split[split].append(split_accuracy(predict(model, x), y, masks[split]))
        row = {"n_train": metrics["n_train"], "synthetic_fraction": metrics["synthetic_fraction"],
               **{split: summarise(rows, seeds) for split, rows in per_split.items()}}
        results["pools"][name] = row
        log.info("bias benchmark %s: val %s, test %s", name, {m: row["val"][f"{m}_mean"] for m in SPLIT_METRICS},
                 {m: row["test"][f"{m}_mean"] for m in SPLIT_METRICS})
    values = list(values) if values is not None else attribute_values(train, axis)
    for name, path in (synthetic or {}).items():
        results["synthetic"][name] = realised_balance(path, [axis], values={axis: values})[axis]
    return results
