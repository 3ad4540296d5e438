"""Stream a pool's samples from the shards for training, every batch a mix of the pool's sources and classes.

:class:`PoolStream` is a ``torch.utils.data.IterableDataset``. Every sample is read through the factory's
checked tar reader (:func:`factory.core.integrity.iter_tar_samples`); nothing is copied: the pool names the
datasets and keys, and members of samples the pool did not draw are skipped before their bytes are read.

Shards are usually sorted (an ingested split holds its classes in turn; a pool's components are whole
datasets, real then synthetic), so reading them in turn would give batches of one source and a few classes.
Two ways to mix, chosen by the pool's size:

- **in memory** (the drawn samples take at most ``memory_bytes`` in their shards, by the index; the default
  pools take a few MB): the first pass reads the samples' raw members once, then each epoch serves a
  seeded permutation of all of them, decoding per item (or keeping the decoded tensors with ``cache``).
  Every batch is a uniform draw from the pool: sources and classes in proportion from the first batch.
- **streamed** (larger pools; webdataset pipeline stages): each component's shard order is shuffled and
  :data:`OPEN_SHARDS` of its shards are read at once, their samples interleaved at random; the components'
  streams are interleaved at random in proportion to their sizes; then a shuffle buffer (``shuffle_buffer``
  samples, filled before the first one leaves) mixes further. Sources are in proportion in every batch;
  classes as far as the open shards and the buffer reach.

``shuffle_buffer`` of 0 or 1 reads the pool in order (components in turn, each in dataset order).

Workers: in memory, worker ``i`` of ``n`` serves every n-th item of the permutation. Streamed, a component
with at least two shards per worker has its shards split between the workers (``wds.split_by_worker``'s
rule); with fewer, every worker reads its shards and decodes every n-th selected sample, so no worker sits
idle.

Order is a pure function of ``seed`` and the epoch (:meth:`PoolStream.set_epoch`) (and, streamed, of the
worker id).

A pool's datasets may live at fsspec URLs (``s3://bucket/prefix/dataset``, see :mod:`factory.core.remote`):
their shards are streamed through fsspec into the same checked tar reader, one shard at a time.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from factory.core.errors import DatasetError, FactoryError
from factory.core.images import image_to_tensor
from factory.core.integrity import iter_tar_samples, parse_record
from factory.core.sample import decode_image
from factory.core.shards import Dataset, open_shard_url
from factory.data.pools import read_pool

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
# pools whose drawn samples take at most this much of their shards are read once and permuted in memory
MEMORY_BYTES = 256 << 20
OPEN_SHARDS = 8  # streamed: shards of one component read at once, their samples interleaved at random
Transform = Callable[[torch.Tensor], torch.Tensor]
Item = tuple[torch.Tensor, int, "dict[str, Any] | None"]


def standard_augmentation(*, seed: int = 0, degrees: float = 10.0, translate: float = 0.1,
                          scale: tuple[float, float] = (0.9, 1.1)) -> Transform:
    """A per-sample transform for ``PoolStream(transform=...)``: small random rotation, shift and zoom
    (:func:`factory.data.augment.augment` on one image); no flips, no colour change. Training loops that can
    augment whole batches should do that instead (``factory.train.classifier`` does): it is much faster."""
    from factory.data.augment import augment

    gen = torch.Generator().manual_seed(seed)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return augment(x[None], gen, scale=scale, degrees=degrees, translate=translate, brightness=0.0,
                       contrast=0.0, noise=0.0)[0]

    return transform


class _Component:
    """One component of a pool: its dataset's shard urls, the keys drawn, and their estimated bytes."""

    def __init__(self, comp: Mapping[str, Any]) -> None:
        ds = Dataset(comp["dataset"]["path"])
        self.urls = ds.urls()
        self.keys = frozenset(comp["keys"])
        shard_bytes = sum(int(s.get("bytes", 0)) for s in ds.shards)
        self.bytes = shard_bytes * len(self.keys) // max(1, len(ds))


class PoolStream(IterableDataset):
    """The samples of a pool as ``(image, label)`` or, with ``with_meta``, ``(image, label, meta)``
    where meta holds ``key``, ``group`` and ``text`` (the prompt, "" for real samples).

    ``memory_bytes``: the largest pool (its drawn samples' share of the shard bytes) mixed in memory; larger
    ones are streamed. ``cache``: keep decoded (un-augmented) tensors in the main process and serve them in
    later epochs (small pools, many epochs)."""

    def __init__(self, pool: Mapping[str, Any] | str | Path, *, image_size: int = 16, mode: str = "L",
                 shuffle_buffer: int = 1000, transform: Transform | None = None, seed: int = 0,
                 with_meta: bool = False, cache: bool = False, memory_bytes: int = MEMORY_BYTES) -> None:
        super().__init__()
        self.pool = read_pool(pool) if isinstance(pool, (str, Path)) else dict(pool)
        if mode not in ("L", "RGB"):
            raise FactoryError(f"loader mode must be L or RGB; got {mode!r}")
        if shuffle_buffer < 0:
            raise FactoryError(f"loader shuffle_buffer must be >= 0; got {shuffle_buffer}")
        if memory_bytes < 0:
            raise FactoryError(f"loader memory_bytes must be >= 0; got {memory_bytes}")
        self.image_size, self.mode, self.transform = image_size, mode, transform
        self.shuffle_buffer, self.seed, self.with_meta, self.cache = shuffle_buffer, seed, with_meta, cache
        self.epoch = 0
        self.classes: list[str] = list(self.pool["classes"])
        self._components = [_Component(c) for c in self.pool["components"]]
        self.urls = list(dict.fromkeys(u for c in self._components for u in c.urls))
        self.estimated_bytes = sum(c.bytes for c in self._components)
        self.in_memory = shuffle_buffer > 1 and self.estimated_bytes <= memory_bytes
        self._raw: list[dict[str, Any]] | None = None  # in memory: the drawn samples' members, pool order
        self._decoded: dict[int, Item] = {}  # cache, in memory: position -> decoded item
        self._cached: list[Item] | None = None  # cache, streamed: a complete pass

    def __len__(self) -> int:
        return int(self.pool["samples"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def preload(self) -> None:
        """In memory: read the drawn samples' members now (before workers fork, so they share them)."""
        if self.in_memory and self._raw is None:
            self._raw = [s for i in range(len(self._components))
                         for s in self._read(i, self._components[i].urls)]

    def _read(self, i: int, urls: list[str]) -> Iterator[dict[str, Any]]:
        """Component ``i``'s drawn samples in ``urls`` through the factory's checked tar reader (no huge member
        is ever read, a broken tar is one DatasetError naming the shard), as webdataset sample dicts."""
        keys = self._components[i].keys

        def wanted(fname: str) -> bool:  # members of samples not drawn are skipped before their bytes are read
            key, _, ext = fname.partition(".")
            return key in keys and (self.with_meta or ext != "json")

        for url in urls:
            with open_shard_url(url, url) as stream:  # a missing shard: FileNotFoundError naming it
                for key, members in iter_tar_samples(stream, url, wanted):
                    if key in keys:
                        yield {"__key__": key, "__url__": url, **members}

    def _decode(self, sample: Mapping[str, Any]) -> Item:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise FactoryError(f"{sample['__url__']}: sample {sample['__key__']!r} has no image member")
        try:
            im = decode_image(sample[ext])  # within the pixel limit; any failure is a FactoryError
        except FactoryError as exc:
            raise DatasetError(f"{sample['__url__']}: sample {sample['__key__']!r}: {exc}") from None
        x = image_to_tensor(im, self.mode, self.image_size)
        meta = None
        if self.with_meta:
            rec = parse_record(sample["json"], f"{sample['__url__']}: sample {sample['__key__']!r}")
            meta = {"key": rec["key"], "group": rec.get("group") or rec["key"],
                    "text": (rec.get("prompt") or {}).get("text", "")}
        return x, int(sample["cls"]), meta

    def _emit(self, item: Item) -> Any:
        x, y, meta = item
        if self.transform is not None:
            x = self.transform(x)
        return (x, y) if meta is None else (x, y, meta)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        main = info is None
        if self.in_memory:
            items = self._from_memory(wid, nw, keep=self.cache and main)
        elif self.cache and main and self._cached is not None:
            items = self._from_cache()
        elif self.cache and main:
            items = self._filling(self._stream(wid, nw))
        else:
            items = self._stream(wid, nw)
        return (self._emit(item) for item in items)

    def _from_memory(self, wid: int, nw: int, keep: bool) -> Iterator[Item]:
        self.preload()
        order = list(range(len(self._raw)))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        for i in order[wid::nw]:
            item = self._decoded.get(i)
            if item is None:
                item = self._decode(self._raw[i])
                if keep:
                    self._decoded[i] = item
            yield item

    def _from_cache(self) -> Iterator[Item]:
        order = list(range(len(self._cached)))
        if self.shuffle_buffer > 1:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        for i in order:
            yield self._cached[i]

    def _filling(self, items: Iterator[Item]) -> Iterator[Item]:
        kept = []
        for item in items:
            kept.append(item)
            yield item
        self._cached = kept  # only a complete pass is kept

    def _component_stream(self, i: int, wid: int, nw: int, shuffle: bool) -> Iterator[dict[str, Any]]:
        """Component ``i``'s samples for worker ``wid`` of ``nw``: in order, or (``shuffle``) its shards in a
        seeded order, :data:`OPEN_SHARDS` of them read at once."""
        urls = list(self._components[i].urls)
        rng = random.Random(f"{self.seed}:{self.epoch}:{i}")  # the same in every worker
        if shuffle:
            rng.shuffle(urls)
        split = nw > 1 and len(urls) >= 2 * nw
        if split:
            urls = urls[wid::nw]  # wds.split_by_worker's rule, per component
        samples = self._merged(i, urls, rng) if shuffle else self._read(i, urls)
        return samples if split or nw == 1 else (s for j, s in enumerate(samples) if j % nw == wid)

    def _merged(self, i: int, urls: list[str], rng: random.Random) -> Iterator[dict[str, Any]]:
        """Up to :data:`OPEN_SHARDS` of ``urls`` open at once, each next sample from one of them at random:
        shards sorted by class give several classes at a time."""
        pending, reading = list(urls), []
        while pending or reading:
            while pending and len(reading) < OPEN_SHARDS:
                reading.append(self._read(i, [pending.pop(0)]))
            j = rng.randrange(len(reading))
            sample = next(reading[j], None)
            if sample is None:
                reading.pop(j)
                continue
            yield sample

    def _interleave(self, wid: int, nw: int) -> Iterator[dict[str, Any]]:
        """The components' streams, merged at random in proportion to what each has left to give."""
        rng = random.Random(f"{self.seed}:{self.epoch}:{wid}:mix")
        streams = {i: self._component_stream(i, wid, nw, shuffle=True) for i in range(len(self._components))}
        left = {i: len(c.keys) / nw for i, c in enumerate(self._components)}  # expected share of this worker
        while streams:
            live = list(streams)
            weights = [max(left[i], 0.0) for i in live]
            i = rng.choices(live, weights=weights)[0] if sum(weights) > 0 else rng.choice(live)
            sample = next(streams[i], None)
            if sample is None:
                del streams[i]
                continue
            left[i] -= 1
            yield sample

    def _stream(self, wid: int, nw: int) -> Iterator[Item]:
        if self.shuffle_buffer <= 1:  # in order: components in turn, each in dataset order
            source: Any = (s for i in range(len(self._components))
                           for s in self._component_stream(i, wid, nw, shuffle=False))
            return iter(wds.DataPipeline(lambda: source, wds.map(self._decode)))
        rng = random.Random(f"{self.seed}:{self.epoch}:{wid}")
        return iter(wds.DataPipeline(lambda: self._interleave(wid, nw),
                                     wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
                                     wds.map(self._decode)))


def make_loader(stream: PoolStream, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``stream`` (batches of stacked tensors). A pool mixed in memory is read here, once,
    before the workers start, so they share it."""
    if num_workers > 0:
        stream.preload()
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, persistent_workers=False)


def load_pool_tensors(pool: Mapping[str, Any] | str | Path, *, image_size: int = 16, mode: str = "L"
                      ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str], list[str]]:
    """A small pool in memory, in pool order: images ``(N, C, H, W)``, labels, groups, texts, keys."""
    stream = PoolStream(pool, image_size=image_size, mode=mode, shuffle_buffer=0, with_meta=True)
    xs, ys, groups, texts, keys = [], [], [], [], []
    for x, y, meta in stream:
        xs.append(x)
        ys.append(y)
        groups.append(meta["group"])
        texts.append(meta["text"])
        keys.append(meta["key"])
    if not xs:
        raise FactoryError(f"pool {stream.pool['name']}: no samples")
    return torch.stack(xs), torch.tensor(ys), groups, texts, keys
