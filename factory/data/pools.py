"""Training pools: named mixes of real and synthetic datasets, by reference (contract ``factory.pool/1``).

A pool never copies an image. It names the datasets it draws from (with the sha256 of each one's
``index.json``, so a pool cannot silently point at a dataset that changed) and the sample keys it drew
from each, and it is a pure function of its spec and the seed:

    pools:
      real:      [{dataset: data/real/train}]                      # everything
      mix_f25:   [{dataset: data/real/train, count: 750},
                  {dataset: data/synthetic/curated, count: 250}]   # 1,000 images, 25% synthetic
      real10+syn: [{dataset: data/real/train, per_class: 10},
                   {dataset: data/synthetic/curated}]

A component takes all of its dataset, or ``count`` samples, or a ``fraction`` of it, or ``per_class``
samples of every class. ``count`` and ``fraction`` are stratified: each class gets its share of the
draw by largest remainder, so a 25% draw keeps the dataset's class proportions. Which keys a class
gives is drawn with a generator seeded by the pool seed, the pool name and the component's position,
so adding a pool or growing one component never changes another pool's draw.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from factory.config import Component, PoolSpec
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, dumps_json, read_json
from factory.core.quota import largest_remainder
from factory.core.shards import Dataset

POOL_SCHEMA = "factory.pool/1"

# ``progress(records, description, total) -> records``: wraps each dataset's records as they are read
Progress = Callable[[Iterable[dict[str, Any]], str, "int | None"], Iterable[dict[str, Any]]]


def _component_rng(seed: int, pool: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{pool}\0{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _draw(comp: Component, by_class: dict[int, list[str]], rng: np.random.Generator, where: str) -> dict[int, list[str]]:
    """Keys drawn per class label (in dataset order)."""
    labels = sorted(by_class)
    available = [len(by_class[c]) for c in labels]
    total = sum(available)
    if comp.per_class is not None:
        short = [c for c, n in zip(labels, available) if n < comp.per_class]
        if short:
            raise FactoryError(f"{where}: per_class {comp.per_class} but class(es) {short} have fewer samples "
                               f"({min(available)} at least)")
        want = [comp.per_class] * len(labels)
    elif comp.count is not None or comp.fraction is not None:
        n = comp.count if comp.count is not None else int(round(float(comp.fraction) * total))
        if n > total:
            raise FactoryError(f"{where}: count {n} is more than the dataset's {total} samples")
        want = largest_remainder(n, available)
    else:
        want = available
    out = {}
    for c, n, have in zip(labels, want, available):
        if n == have:
            out[c] = list(by_class[c])
        else:
            pick = np.sort(rng.choice(have, size=n, replace=False))
            out[c] = [by_class[c][i] for i in pick]
    return out


def build_pool(spec: PoolSpec, progress: Progress | None = None) -> dict[str, Any]:
    """The pool record: datasets by reference, keys drawn, counts per source and class. ``progress``
    wraps each dataset's records (a bar)."""
    classes: list[str] | None = None
    components, per_class, sources = [], {}, {"real": 0, "synthetic": 0}
    for i, comp in enumerate(spec.components):
        where = f"pool {spec.name}: {comp.dataset}"
        ds = Dataset(comp.dataset)
        if classes is None:
            classes = ds.classes
        elif ds.classes != classes:
            raise FactoryError(f"{where}: classes {ds.classes} differ from the pool's {classes}")
        by_class: dict[int, list[str]] = {}
        source_of: dict[str, str] = {}  # key -> source, in the order the shards hold the keys
        records = ds.records() if progress is None else progress(ds.records(), f"read {ds.path.name}", len(ds))
        for rec in records:
            by_class.setdefault(int(rec["label"]), []).append(rec["key"])
            source_of[rec["key"]] = rec.get("source", "real")
        if not by_class:
            raise FactoryError(f"{where}: the dataset is empty")
        drawn = _draw(comp, by_class, _component_rng(spec.seed, spec.name, i), where)
        drawn_set = {k for ks in drawn.values() for k in ks}
        keys = [k for k in source_of if k in drawn_set]  # dataset order: streaming reads shards in turn
        for c, ks in drawn.items():
            per_class[classes[c]] = per_class.get(classes[c], 0) + len(ks)
        for k in keys:
            sources[source_of[k]] = sources.get(source_of[k], 0) + 1
        components.append({"dataset": ds.ref(), "draw": comp.describe(), "samples": len(keys), "keys": keys})
    size = sum(c["samples"] for c in components)
    return {
        "schema": POOL_SCHEMA,
        "name": spec.name,
        "seed": spec.seed,
        "classes": classes,
        "samples": size,
        "sources": sources,
        "synthetic_fraction": round(sources.get("synthetic", 0) / size, 6) if size else 0.0,
        "per_class": {c: per_class.get(c, 0) for c in classes},
        "components": components,
    }


def dataset_pool(dataset: Path | str, name: str | None = None, seed: int = 0,
                 progress: Progress | None = None) -> dict[str, Any]:
    """A pool of all of ``dataset`` (named ``name``, default the folder's name): to train on one dataset."""
    name = name if name is not None else Path(dataset).resolve().name
    return build_pool(PoolSpec(name=name, components=(Component(dataset=str(dataset)),), seed=seed), progress)


def write_pool(pool: Mapping[str, Any], path: Path | str) -> None:
    atomic_write_bytes(Path(path), dumps_json(dict(pool)))


def read_pool(path: Path | str, *, check: bool = True) -> dict[str, Any]:
    """Load a pool record; with ``check``, fail when a dataset it names is gone or has changed."""
    path = Path(path)
    pool = read_json(path, what="pool file")
    if not isinstance(pool, dict) or pool.get("schema") != POOL_SCHEMA:
        raise FactoryError(f"{path}: schema is not {POOL_SCHEMA!r}")
    if check:
        for comp in pool["components"]:
            ref = comp["dataset"]
            ds = Dataset(ref["path"])
            if ds.index_sha256 != ref["index_sha256"]:
                raise FactoryError(f"{path}: dataset {ref['path']} changed since the pool was drawn "
                                   f"(index sha256 {ds.index_sha256[:12]} != {ref['index_sha256'][:12]}); "
                                   "rebuild the pool")
    return pool
