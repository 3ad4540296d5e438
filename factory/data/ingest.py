"""Bring real data in: ingest a source into a dataset directory, and split a dataset into train, val
and test (with style levels fit on train)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from factory.core.errors import FactoryError
from factory.core.sample import Sample, sample_attributes, with_updates
from factory.core.shards import DEFAULT_SHARD_SIZE, Dataset, DatasetWriter, check_output_dir
from factory.data.attributes import STYLE_LEVELS, Levels, style_values
from factory.data.classnames import names_for, names_meta
from factory.data.sources import open_source

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    out_dir: Path
    samples: int
    shards: int
    classes: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # class id -> name, where names were recorded


def ingest(spec: str, out_dir: Path | str, *, shard_size: int = DEFAULT_SHARD_SIZE, name: str | None = None,
           skip_bad: bool = False, overwrite: bool = False, class_names: str | Path | None = None,
           progress: Callable[[Iterable[Sample], int | None], Iterable[Sample]] | None = None,
           image_column: str | None = None, label_column: str | None = None) -> IngestSummary:
    """Stream the source ``spec`` into a new dataset at ``out_dir``.

    A bad image raises FactoryError naming the file (nothing is left at ``out_dir``), unless
    ``skip_bad`` is set, in which case it is skipped and listed in the summary.

    ``class_names``: what the class ids are called (:func:`factory.data.classnames.names_for`: a file,
    ``imagenet``, ``none``; None: the bundled ImageNet names when every class is a WordNet id), recorded in
    the index's ``meta.class_names``. The ids stay the classes (labels, folder names).

    ``image_column``/``label_column``: which columns of an ``hf:`` source hold the image and the label
    (:func:`factory.data.hf.hf_source`); other sources refuse them.

    ``progress(samples, total)`` wraps the samples read; ``total`` is the number of files or rows the source
    reads (:meth:`~factory.data.sourcebase.Source.total`), None where it is not known beforehand.
    """
    out_dir = Path(out_dir)
    inputs = source_paths(spec)
    check_output_dir(out_dir, overwrite, inputs=inputs)
    source = open_source(spec, skip_bad=skip_bad, image_column=image_column, label_column=label_column)
    names = names_for(source.classes, class_names)  # a bad file fails here, before anything is written
    meta = dict(source.meta)
    if names:
        meta["class_names"] = names_meta(names)
    samples: Iterable[Sample] = source
    if progress is not None:
        samples = progress(samples, source.total())
    with DatasetWriter(out_dir, name or source.name, source.classes, shard_size=shard_size,
                       meta=meta, overwrite=overwrite, inputs=inputs) as writer:
        writer.write_all(samples)
        if not writer.counts:
            raise FactoryError(f"{spec}: no images found")
        index = writer.close()
    return IngestSummary(out_dir, index["samples"], len(index["shards"]), index["counts"], source.skipped,
                         {c: i.name for c, i in (names or {}).items()})


def source_paths(spec: str) -> list[Path]:
    """The local files or folders a source spec reads (an ImageFolder, a dataset, a local HF dataset),
    which its output must keep apart from; none for ``sklearn:``."""
    if spec.startswith("sklearn:"):
        return []
    body = spec[len("hf:"):] if spec.startswith("hf:") else spec
    candidates = [body, body.rsplit(":", 1)[0]] if body else []
    return [Path(c) for c in candidates if c and Path(c).exists()]


def _stratified_draw(by_class: dict[int, list[str]], fraction: float, entropy: Callable[[int], list[int]],
                     keep_single: bool = False) -> set[str]:
    """Per class, ``round(n * fraction)`` of its sorted keys, drawn with ``default_rng(entropy(label))``;
    at least one key on each side of the draw for a class of two or more; with ``keep_single`` the one
    key of a class of one is never drawn."""
    chosen: set[str] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        rng = np.random.default_rng(entropy(label))
        n = int(round(len(keys) * fraction))
        if len(keys) >= 2:  # keep at least one sample of each class on both sides
            n = min(max(n, 1), len(keys) - 1)
        elif keep_single:
            n = 0
        for i in rng.permutation(len(keys))[:n]:
            chosen.add(keys[int(i)])
    return chosen


def _by_class(labelled_keys: Iterable[tuple[str, int]]) -> dict[int, list[str]]:
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, label in labelled_keys:
        by_class[label].append(key)
    return by_class


def _check_fraction(what: str, fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise FactoryError(f"{what} fraction must be between 0 and 1 (exclusive); got {fraction}")


def stratified_test_keys(labelled_keys: Iterable[tuple[str, int]], test_fraction: float, seed: int) -> set[str]:
    """Choose the test keys: per class, ``round(n * test_fraction)`` keys drawn with a seeded RNG
    (``default_rng([seed, label])``) from the sorted keys of that class. Deterministic; independent of
    input order."""
    _check_fraction("test", test_fraction)
    return _stratified_draw(_by_class(labelled_keys), test_fraction, lambda label: [seed, label])


VAL_STREAM = 0x76616C  # "val": the val draw's RNG stream, apart from the test draw's


def stratified_val_keys(labelled_keys: Iterable[tuple[str, int]], val_fraction: float, seed: int) -> set[str]:
    """Choose the val keys among the train part's ``labelled_keys``: per class, ``round(n * val_fraction)``
    keys drawn with ``default_rng([seed, label, VAL_STREAM])`` (a stream apart from the test draw's); a class
    with a single train key keeps it in train. Deterministic; independent of input order."""
    _check_fraction("val", val_fraction)
    return _stratified_draw(_by_class(labelled_keys), val_fraction, lambda label: [seed, label, VAL_STREAM],
                            keep_single=True)


def fit_split_levels(values: Mapping[str, Mapping[str, float]], class_of: Mapping[str, str],
                     train_keys: Iterable[str], style: Sequence[str]) -> Levels:
    """The style :class:`~factory.data.attributes.Levels` of a split: per-class tertiles of the TRAIN
    keys' measured values only (val and test never move the edges)."""
    keys = sorted(train_keys)
    return Levels.fit([values[k] for k in keys], tuple(style), [class_of[k] for k in keys])


def with_style(sample: Sample, levels: Levels, values: Mapping[str, float]) -> Sample:
    """``sample`` with its style levels merged into its record's ``attributes`` (the levels win over
    same-named attributes already there; others, e.g. ``color``, are kept)."""
    attrs = {**sample_attributes(sample.provenance), **levels.levels(values, sample.class_name)}
    return with_updates(sample, attributes=attrs)


def split(dataset: Path | str, train_out: Path | str, test_out: Path | str | None, *, test_fraction: float,
          seed: int, val_out: Path | str | None = None, val_fraction: float = 0.2,
          style: Sequence[str] = (), shard_size: int | None = None, overwrite: bool = False) -> dict[str, int]:
    """Deterministic stratified split of ``dataset`` into train and test, and, with ``val_out``, a val
    split carved from the train part. ``test_out`` None: the data has a real test set of its own (ingested
    apart), so nothing is drawn for test and ``test_fraction`` is not used.

    The test draw is the same with or without val: ``test_fraction`` of each class of the whole set
    (:func:`stratified_test_keys`). Val is ``val_fraction`` of each class of the rest, on its own RNG stream
    (:func:`stratified_val_keys`). With ``style`` (axes of :data:`~factory.data.attributes.STYLE_LEVELS`),
    per-class tertile levels are fit on the TRAIN split alone and written into every sample's
    ``attributes`` in all splits; the edges go to each split's index meta (``style_levels``).
    """
    ds = Dataset(dataset)
    outs = {"train": Path(train_out)}
    if test_out is not None:
        outs["test"] = Path(test_out)
    if val_out is not None:
        outs["val"] = Path(val_out)
    for name, out in outs.items():
        check_output_dir(out, overwrite, inputs=[ds.path], others=[o for n, o in outs.items() if n != name])
    style = tuple(style)
    if style:
        unknown = [a for a in style if a not in STYLE_LEVELS]
        if unknown:
            raise FactoryError(f"split style axes {unknown} are not measured; choose from {list(STYLE_LEVELS)}")
    # 1. keys and labels (and, with style, the measured style values) in one streaming pass
    labels: dict[str, int] = {}
    values: dict[str, dict[str, float]] = {}
    for s in ds:
        labels[s.key] = s.label
        if style:
            values[s.key] = style_values(s.pil())
    test_keys = stratified_test_keys(labels.items(), test_fraction, seed) if test_out is not None else set()
    val_keys: set[str] = set()
    if val_out is not None:
        val_keys = stratified_val_keys(((k, y) for k, y in labels.items() if k not in test_keys), val_fraction, seed)
    lineage: dict[str, Any] = {"split_of": ds.ref(), "test_fraction": test_fraction if test_out is not None else 0,
                               "seed": seed}
    if val_out is not None:
        lineage["val_fraction"] = val_fraction
    meta = ds.meta
    levels: Levels | None = None
    if style:
        train_keys = [k for k in labels if k not in test_keys and k not in val_keys]
        levels = fit_split_levels(values, {k: ds.classes[y] for k, y in labels.items()}, train_keys, style)
        meta = meta | {"attributes": {**(meta.get("attributes") or {}), **{a: list(STYLE_LEVELS[a]) for a in style}},
                       "style_levels": {"fit_on": "train", "axes": list(style), "edges": levels.to_dict()}}
    size = shard_size or (max(s["samples"] for s in ds.shards) if ds.shards else DEFAULT_SHARD_SIZE)

    def part(key: str) -> str:
        return "test" if key in test_keys else "val" if key in val_keys else "train"

    writers: dict[str, DatasetWriter] = {}
    try:
        for name, out in outs.items():
            writers[name] = DatasetWriter(out, f"{ds.name}-{name}", ds.classes, size, meta | lineage | {"split": name},
                                          overwrite, inputs=[ds.path], others=[o for n, o in outs.items() if n != name])
        for s in ds.iter_checked():  # every sample decoded and re-hashed before it is copied
            writers[part(s.key)].write(s if levels is None else with_style(s, levels, values[s.key]))
        counts = {name: int(w.close()["samples"]) for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return counts
