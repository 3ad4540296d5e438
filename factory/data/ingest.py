"""Bring real data in: ingest a source into a dataset directory, and split a dataset in two."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from factory.core.errors import FactoryError
from factory.core.sample import Sample
from factory.core.shards import DEFAULT_SHARD_SIZE, Dataset, DatasetWriter, check_output_dir
from factory.data.sources import open_source

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    out_dir: Path
    samples: int
    shards: int
    classes: dict[str, int]
    skipped: list[str] = field(default_factory=list)


def ingest(spec: str, out_dir: Path | str, *, shard_size: int = DEFAULT_SHARD_SIZE, name: str | None = None,
           skip_bad: bool = False, overwrite: bool = False,
           progress: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None) -> IngestSummary:
    """Stream the source ``spec`` into a new dataset at ``out_dir``.

    A bad image raises FactoryError naming the file (nothing is left at ``out_dir``), unless
    ``skip_bad`` is set, in which case it is skipped and listed in the summary.
    """
    out_dir = Path(out_dir)
    inputs = source_paths(spec)
    check_output_dir(out_dir, overwrite, inputs=inputs)
    source = open_source(spec, skip_bad=skip_bad)
    samples: Iterable[Sample] = source
    if progress is not None:
        samples = progress(samples)
    with DatasetWriter(out_dir, name or source.name, source.classes, shard_size=shard_size,
                       meta=source.meta, overwrite=overwrite, inputs=inputs) as writer:
        writer.write_all(samples)
        if not writer.counts:
            raise FactoryError(f"{spec}: no images found")
        index = writer.close()
    return IngestSummary(out_dir, index["samples"], len(index["shards"]), index["counts"], source.skipped)


def source_paths(spec: str) -> list[Path]:
    """The local files or folders a source spec reads (an ImageFolder, a dataset, a local HF dataset),
    which its output must keep apart from; none for ``sklearn:``."""
    if spec.startswith("sklearn:"):
        return []
    body = spec[len("hf:"):] if spec.startswith("hf:") else spec
    candidates = [body, body.rsplit(":", 1)[0]] if body else []
    return [Path(c) for c in candidates if c and Path(c).exists()]


def stratified_test_keys(labelled_keys: Iterable[tuple[str, int]], test_fraction: float, seed: int) -> set[str]:
    """Choose the test keys: per class, ``round(n * test_fraction)`` keys drawn with a seeded RNG
    from the sorted keys of that class. Deterministic; independent of input order."""
    if not 0.0 < test_fraction < 1.0:
        raise FactoryError(f"test fraction must be between 0 and 1 (exclusive); got {test_fraction}")
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, label in labelled_keys:
        by_class[label].append(key)
    test: set[str] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        rng = np.random.default_rng([seed, label])
        n_test = int(round(len(keys) * test_fraction))
        if len(keys) >= 2:  # keep at least one sample of each class on both sides
            n_test = min(max(n_test, 1), len(keys) - 1)
        for i in rng.permutation(len(keys))[:n_test]:
            test.add(keys[int(i)])
    return test


def split(dataset: Path | str, train_out: Path | str, test_out: Path | str, *, test_fraction: float,
          seed: int, shard_size: int | None = None, overwrite: bool = False) -> dict[str, int]:
    """Deterministic stratified split of ``dataset`` into two new datasets (two streaming passes)."""
    ds = Dataset(dataset)
    train_out, test_out = Path(train_out), Path(test_out)
    check_output_dir(train_out, overwrite, inputs=[ds.path], others=[test_out])
    check_output_dir(test_out, overwrite, inputs=[ds.path], others=[train_out])
    test_keys = stratified_test_keys(((s.key, s.label) for s in ds), test_fraction, seed)
    size = shard_size or (max(s["samples"] for s in ds.shards) if ds.shards else DEFAULT_SHARD_SIZE)
    lineage = {"split_of": ds.ref(), "test_fraction": test_fraction, "seed": seed}
    meta = ds.meta
    with DatasetWriter(train_out, f"{ds.name}-train", ds.classes, size,
                       meta | lineage | {"split": "train"}, overwrite, inputs=[ds.path]) as train_w, \
         DatasetWriter(test_out, f"{ds.name}-test", ds.classes, size,
                       meta | lineage | {"split": "test"}, overwrite, inputs=[ds.path]) as test_w:
        for s in ds.iter_checked():  # every sample decoded and re-hashed before it is copied
            (test_w if s.key in test_keys else train_w).write(s)
        train_index = train_w.close()
        test_index = test_w.close()
    return {"train": train_index["samples"], "test": test_index["samples"]}
