"""Stream a pool's samples from the shards for training: webdataset pipeline, shuffle buffer, workers.

:class:`PoolStream` is a ``torch.utils.data.IterableDataset`` built from webdataset's own pipeline
stages (shard list -> worker split -> tar reader -> key selection -> shuffle buffer -> decode ->
augment); the tar reader is the factory's checked one (:func:`factory.core.integrity.iter_tar_samples`). Nothing is copied: the pool names the datasets and keys, and the stream reads the
datasets' shards, skipping samples the pool did not draw before decoding them.

Workers: with at least two shards per worker, each worker reads its own shards
(``wds.split_by_worker``); with fewer shards (the tiny default has one or two per dataset) every
worker reads every shard and decodes every n-th selected sample, so no worker sits idle.

Order is a pure function of ``seed`` and the epoch (:meth:`PoolStream.set_epoch`): the shard order
and the shuffle buffer's random generator are derived from them (and from the worker id).
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
from factory.core.integrity import iter_tar_samples, open_regular, parse_record
from factory.core.sample import decode_image
from factory.core.shards import Dataset
from factory.data.pools import read_pool

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
Transform = Callable[[torch.Tensor], torch.Tensor]


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


class PoolStream(IterableDataset):
    """The samples of a pool as ``(image, label)`` or, with ``with_meta``, ``(image, label, meta)``
    where meta holds ``key``, ``group`` and ``text`` (the prompt, "" for real samples)."""

    def __init__(self, pool: Mapping[str, Any] | str | Path, *, image_size: int = 16, mode: str = "L",
                 shuffle_buffer: int = 1000, transform: Transform | None = None, seed: int = 0,
                 with_meta: bool = False, cache: bool = False) -> None:
        super().__init__()
        self.pool = read_pool(pool) if isinstance(pool, (str, Path)) else dict(pool)
        if mode not in ("L", "RGB"):
            raise FactoryError(f"loader mode must be L or RGB; got {mode!r}")
        if shuffle_buffer < 0:
            raise FactoryError(f"loader shuffle_buffer must be >= 0; got {shuffle_buffer}")
        self.image_size, self.mode, self.transform = image_size, mode, transform
        self.shuffle_buffer, self.seed, self.with_meta = shuffle_buffer, seed, with_meta
        self.epoch = 0
        # cache: after one full pass in the main process, keep the decoded (un-augmented) tensors and
        # serve later epochs from memory in a seeded permutation (small pools, many epochs)
        self.cache = cache
        self._cached: list[tuple[torch.Tensor, int, dict[str, Any] | None]] | None = None
        self.classes: list[str] = list(self.pool["classes"])
        self._wanted: dict[str, frozenset[str]] = {}
        for comp in self.pool["components"]:
            keys = frozenset(comp["keys"])
            for url in Dataset(comp["dataset"]["path"]).urls():
                self._wanted[url] = keys
        self.urls = list(self._wanted)
        self._any_key = frozenset().union(*self._wanted.values()) if self._wanted else frozenset()

    def __len__(self) -> int:
        return int(self.pool["samples"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _member_wanted(self, fname: str) -> bool:
        """Read a tar member only if some component wants its key (and the provenance only when asked):
        members of samples the pool did not draw are skipped before their bytes are read."""
        key, _, ext = fname.partition(".")
        return key in self._any_key and (self.with_meta or ext != "json")

    def _select(self, sample: Mapping[str, Any]) -> bool:
        return sample["__key__"] in self._wanted[sample["__url__"]]

    def _read_shards(self, shards: Iterator[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        """The pipeline's tar reader: the factory's checked iterator (no huge member is ever read, a
        broken tar is one DatasetError naming the shard), as webdataset sample dicts."""
        for shard in shards:
            url = shard["url"]
            with open_regular(Path(url), url) as stream:  # a missing shard: FileNotFoundError naming it
                for key, members in iter_tar_samples(stream, url, self._member_wanted):
                    yield {"__key__": key, "__url__": url, **members}

    def _decode(self, sample: Mapping[str, Any]) -> tuple[torch.Tensor, int, dict[str, Any] | None]:
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

    def _emit(self, item: tuple[torch.Tensor, int, dict[str, Any] | None]):
        x, y, meta = item
        if self.transform is not None:
            x = self.transform(x)
        return (x, y) if meta is None else (x, y, meta)

    def _from_cache(self) -> Iterator[Any]:
        order = list(range(len(self._cached)))
        if self.shuffle_buffer > 1:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        for i in order:
            yield self._emit(self._cached[i])

    def _filling(self, items: Iterator[Any]) -> Iterator[Any]:
        kept = []
        for item in items:
            kept.append(item)
            yield self._emit(item)
        self._cached = kept  # only a complete pass is kept

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.cache and info is None:
            if self._cached is not None:
                return self._from_cache()
            return self._filling(self._stream(wid, nw))
        return (self._emit(item) for item in self._stream(wid, nw))

    def _stream(self, wid: int, nw: int) -> Iterator[Any]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{wid}")
        urls = list(self.urls)
        if self.shuffle_buffer > 1:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(urls)
        stages: list[Any] = [wds.SimpleShardList(urls)]
        by_shard = len(urls) >= 2 * nw
        if by_shard and nw > 1:
            stages.append(wds.split_by_worker)
        stages += [self._read_shards, wds.select(self._select)]
        if not by_shard and nw > 1:
            stages.append(_every_nth(wid, nw))
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng))
        stages.append(wds.map(self._decode))
        return iter(wds.DataPipeline(*stages))


def _every_nth(wid: int, nw: int):
    def f(src):
        for i, s in enumerate(src):
            if i % nw == wid:
                yield s
    return f


def make_loader(stream: PoolStream, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``stream`` (batches of stacked tensors; workers persist across epochs)."""
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers,
                      persistent_workers=False)


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
