"""Dataset directories of webdataset shards (contract ``factory.dataset/1``).

Writing streams: samples go into ``shard-NNNNNN.tar`` files of a fixed size, each written under
a hidden temporary name and renamed only when complete. A whole dataset is assembled in a
hidden staging directory next to its destination and moved into place with its ``index.json``
last, so a crash at any moment leaves either the previous state or the complete new dataset.
Reading streams too: one shard at a time, through webdataset's own tar iterators.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import webdataset as wds

from factory import __version__
from factory.core.errors import DatasetError, FactoryError
from factory.core.files import (
    _fsync_dir,
    atomic_write_bytes,
    dumps_json,
    file_sha256,
    parse_json,
    replace_dir,
    staging_dir,
)
from factory.core.sample import IMAGE_EXTS, Sample, build_epoch, validate_record

log = logging.getLogger(__name__)


DATASET_SCHEMA = "factory.dataset/1"


INDEX_NAME = "index.json"


DEFAULT_SHARD_SIZE = 1000


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    sha256: str
    bytes: int


def encode_sample(sample: Sample) -> dict[str, Any]:
    if sample.ext not in IMAGE_EXTS:
        raise FactoryError(f"sample {sample.key!r}: image extension must be one of {IMAGE_EXTS}")
    return {
        "__key__": sample.key,
        sample.ext: sample.image,
        "cls": str(int(sample.label)).encode(),
        "json": dumps_json(sample.provenance),
    }


def write_shard(path: Path, samples: Iterable[Sample]) -> ShardInfo:
    """Write one shard atomically; returns its size, hash and sample count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with open(tmp, "wb") as f:
            # encoder=False: every member is already bytes; mtime fixed for reproducible tars.
            writer = wds.TarWriter(f, encoder=False, mtime=build_epoch())
            for sample in samples:
                writer.write(encode_sample(sample))
                n += 1
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        info = ShardInfo(path.name, n, file_sha256(tmp), tmp.stat().st_size)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return info
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_index(name: str, classes: Sequence[str], shards: Sequence[ShardInfo],
               counts: Mapping[str, int] | None = None,
               meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    index: dict[str, Any] = {
        "schema": DATASET_SCHEMA,
        "name": name,
        "classes": list(classes),
        "samples": sum(s.samples for s in shards),
        "shards": [asdict(s) for s in shards],
        "factory_version": __version__,
    }
    if counts is not None:
        index["counts"] = {c: int(counts.get(c, 0)) for c in classes}
    if meta:
        index["meta"] = dict(meta)
    return index


def write_index(out_dir: Path, index: Mapping[str, Any]) -> None:
    atomic_write_bytes(Path(out_dir) / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")


def publish(staging: Path, out_dir: Path, index: Mapping[str, Any]) -> None:
    """Write ``index.json`` into the complete ``staging`` folder, then move it to ``out_dir``,
    replacing what was there. Until the final rename, ``out_dir`` keeps its previous content."""
    write_index(staging, index)
    for tmp in staging.glob(".*.tmp-*"):  # leftovers of killed shard writers
        tmp.unlink()
    replace_dir(staging, out_dir)


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace something that is not ours to replace (before any work is done)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FactoryError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FactoryError(f"{out_dir}: already exists and is not empty (pass --overwrite to replace it)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INDEX_NAME).exists():
        raise FactoryError(f"{out_dir}: is not a factory dataset; refusing to overwrite it")


class DatasetWriter:
    """Stream samples into a new dataset directory, ``shard_size`` samples per shard.

    Use as a context manager. Nothing appears at ``out_dir`` until :meth:`close` succeeds; an
    exception inside the ``with`` block removes the staging directory and leaves ``out_dir`` as
    it was.
    """

    def __init__(self, out_dir: Path | str, name: str, classes: Sequence[str],
                 shard_size: int = DEFAULT_SHARD_SIZE, meta: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> None:
        if shard_size < 1:
            raise FactoryError(f"shard size must be >= 1; got {shard_size}")
        if not classes:
            raise FactoryError("a dataset needs at least one class")
        if len(set(classes)) != len(classes):
            raise FactoryError("class names must be unique")
        self.out_dir = Path(out_dir)
        check_output_dir(self.out_dir, overwrite)
        self.name = name
        self.classes = list(classes)
        self.shard_size = shard_size
        self.meta = dict(meta or {})
        self.counts: Counter[str] = Counter()
        self.shards: list[ShardInfo] = []
        self._buffer: list[Sample] = []
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.staging = staging_dir(self.out_dir)
        if self.staging.exists():  # left by a crashed run: never a final output
            shutil.rmtree(self.staging)
        self.staging.mkdir()
        self._closed = False

    def write(self, sample: Sample) -> None:
        if not 0 <= sample.label < len(self.classes):
            raise FactoryError(f"sample {sample.key!r}: label {sample.label} outside 0..{len(self.classes) - 1}")
        expected = self.classes[sample.label]
        if sample.provenance.get("class_name") != expected:
            raise FactoryError(f"sample {sample.key!r}: class_name {sample.provenance.get('class_name')!r} "
                               f"does not match label {sample.label} ({expected!r})")
        validate_record(sample.provenance)
        self._buffer.append(sample)
        self.counts[expected] += 1
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def write_all(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self.write(s)

    def _flush(self) -> None:
        if not self._buffer:
            return
        info = write_shard(self.staging / shard_name(len(self.shards)), self._buffer)
        self.shards.append(info)
        self._buffer = []

    def close(self) -> dict[str, Any]:
        self._flush()
        index = make_index(self.name, self.classes, self.shards, self.counts, self.meta)
        publish(self.staging, self.out_dir, index)
        self._closed = True
        log.info("wrote %s: %d samples in %d shards", self.out_dir, index["samples"], len(self.shards))
        return index

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def decode_members(key: str, members: Mapping[str, bytes], where: str) -> Sample:
    """Build a Sample from a webdataset sample dict (``png``/``jpg``/``webp``, ``cls``, ``json``)."""
    exts = [e for e in IMAGE_EXTS if e in members]
    if len(exts) != 1:
        raise DatasetError(f"{where}: sample {key!r} has no single image member ({sorted(members)})")
    if "cls" not in members or "json" not in members:
        raise DatasetError(f"{where}: sample {key!r} lacks a .cls or .json member")
    try:
        label = int(members["cls"].decode().strip())
        record = json.loads(members["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: sample {key!r} has a bad .cls or .json member ({exc})") from None
    return Sample(key=key, image=members[exts[0]], label=label, provenance=record, ext=exts[0])


def iter_shard_file(path: Path) -> Iterator[Sample]:
    """The samples of one shard, in order, via webdataset's tar iterators."""
    path = Path(path)
    with open(path, "rb") as stream:
        files = ({**f, "__url__": str(path)}
                 for f in wds.tariterators.tar_file_iterator(stream, handler=wds.reraise_exception))
        for raw in wds.tariterators.group_by_keys(files, handler=wds.reraise_exception):
            key = raw.pop("__key__")
            raw.pop("__url__", None)
            yield decode_members(key, raw, path.name)


class Dataset:
    """A dataset directory opened for reading. Iterating streams samples shard by shard."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"{self.path}: no such dataset directory")
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: not a directory")
        index_path = self.path / INDEX_NAME
        if not index_path.is_file():
            raise DatasetError(f"{self.path}: not a factory dataset (no {INDEX_NAME})")
        raw = index_path.read_bytes()
        index = parse_json(raw, index_path, error=DatasetError)
        if not isinstance(index, dict) or index.get("schema") != DATASET_SCHEMA:
            raise DatasetError(f"{index_path}: schema is not {DATASET_SCHEMA!r}")
        for field_name in ("name", "classes", "samples", "shards"):
            if field_name not in index:
                raise DatasetError(f"{index_path}: missing field {field_name!r}")
        self.index: dict[str, Any] = index
        self.index_sha256 = hashlib.sha256(raw).hexdigest()

    @property
    def name(self) -> str:
        return self.index["name"]

    @property
    def classes(self) -> list[str]:
        return list(self.index["classes"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.index["shards"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.index.get("meta", {}))

    def __len__(self) -> int:
        return int(self.index["samples"])

    def ref(self) -> dict[str, Any]:
        """How other records point at this dataset: its name, path and index hash."""
        return {"id": self.name, "path": str(self.path), "index_sha256": self.index_sha256}

    def shard_paths(self) -> list[Path]:
        return [self.path / s["name"] for s in self.shards]

    def urls(self) -> list[str]:
        """Shard paths as strings, for ``webdataset.WebDataset`` or ``datasets.load_dataset``."""
        return [str(p) for p in self.shard_paths()]

    def __iter__(self) -> Iterator[Sample]:
        for p in self.shard_paths():
            if not p.is_file():
                raise DatasetError(f"{self.path}: shard {p.name} listed in {INDEX_NAME} is missing")
            yield from iter_shard_file(p)

    def records(self) -> Iterator[dict[str, Any]]:
        """Only the provenance records (cheap: images are not decoded)."""
        for s in self:
            yield s.provenance

    def find(self, key: str) -> Sample:
        for s in self:
            if s.key == key:
                return s
        raise FactoryError(f"{self.path}: no sample with key {key!r}")


def open_dataset(path: Path | str) -> Dataset:
    return Dataset(path)
