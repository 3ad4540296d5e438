"""Dataset directories of webdataset shards (contract ``factory.dataset/1``).

Writing streams: samples go into ``shard-NNNNNN.tar`` files of a fixed size, each written under
a hidden temporary name and renamed only when complete. A whole dataset is assembled in a
hidden staging directory next to its destination and moved into place with its ``index.json``
last, so a crash at any moment leaves either the previous state or the complete new dataset.
Reading streams too, one shard at a time, through the checked tar iterator of
:mod:`factory.core.integrity` (webdataset and ``datasets`` read the same shards). A dataset may also be
read from an fsspec URL (``s3://bucket/prefix/dataset``, :mod:`factory.core.remote`); writing is local only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import webdataset as wds

from factory import __version__
from factory.core.errors import DatasetError, FactoryError
from factory.core.files import (
    _fsync_dir,
    atomic_write_bytes,
    dumps_json,
    file_sha256,
    kill_point,
    remove_quietly,
    writing,
)
from factory.core.integrity import (  # noqa: F401  (DATASET_SCHEMA, INDEX_NAME: re-exported)
    DATASET_SCHEMA,
    INDEX_NAME,
    check_record,
    check_sample,
    iter_tar_samples,
    open_regular,
    parse_label,
    parse_record,
    read_index,
    shard_file_problem,
)
from factory.core.outputs import OutputDir, PathLike, claim_output_dir, dataset_problem
from factory.core.remote import RemotePath, dataset_location, is_url, read_remote_index
from factory.core.sample import IMAGE_EXTS, Sample, build_epoch, validate_record
from factory.core.secrets import check_no_secret

log = logging.getLogger(__name__)


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


def write_shard(path: Path, samples: Iterable[Sample], where: PathLike | None = None) -> ShardInfo:
    """Write one shard atomically; returns its size, hash and sample count. An ``OSError`` (disk full,
    I/O error) raises FactoryError naming ``where`` (default: the shard's folder) and the shard."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with writing(f"{where if where is not None else path.parent}: shard {path.name}"):
            with open(tmp, "wb") as f:
                # encoder=False: every member is already bytes; mtime fixed for reproducible tars.
                writer = wds.TarWriter(f, encoder=False, mtime=build_epoch())
                try:
                    for sample in samples:
                        writer.write(encode_sample(sample))
                        n += 1
                except BaseException:  # close while f is open: else tarfile flushes into a closed file at exit
                    _discard_tar(writer, tmp)
                    raise
                writer.close()
                f.flush()
                os.fsync(f.fileno())
            info = ShardInfo(path.name, n, file_sha256(tmp), tmp.stat().st_size)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        return info
    except BaseException:
        remove_quietly(tmp)
        raise


def _discard_tar(writer: "wds.TarWriter", tmp: Path) -> None:
    """Close the tar stream of a shard that failed. A second error from closing the doomed temporary file
    (the disk is still full) is only logged: the first error is the one being reported."""
    try:
        writer.close()
    except OSError as exc:
        log.debug("closing %s after an error: %s", tmp, exc)


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


def write_index(out_dir: Path, index: Mapping[str, Any], where: PathLike | None = None) -> None:
    atomic_write_bytes(Path(out_dir) / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n",
                       where=where)


def publish(output: OutputDir, index: Mapping[str, Any]) -> None:
    """Write ``index.json`` into the complete staging folder of ``output``, then move it into place,
    replacing what was there. Until the final rename the output keeps its previous content; on a
    failure the staging folder is removed and the lock released."""
    try:
        write_index(output.staging, index, where=f"{output.shown}: {INDEX_NAME}")
        with writing(output.staging):
            for tmp in output.staging.glob(".*.tmp-*"):  # leftovers of killed shard writers
                tmp.unlink()
        kill_point("index")
    except BaseException:
        output.abort()
        raise
    output.publish()


def check_output_dir(out_dir: PathLike, overwrite: bool = False, *, inputs: Iterable[PathLike | None] = (),
                     others: Iterable[PathLike | None] = ()) -> Path:
    """Refuse, before any work is done, a dataset output that is not ours to replace or overlaps an
    input or another output (see :mod:`factory.core.outputs`); returns it resolved."""
    return claim_output_dir(out_dir, inputs=inputs, overwrite=overwrite, others=others,
                            replaceable=dataset_problem)


class DatasetWriter:
    """Stream samples into a new dataset directory, ``shard_size`` samples per shard.

    Use as a context manager. Nothing appears at ``out_dir`` until :meth:`close` succeeds; an
    exception inside the ``with`` block removes the staging directory and leaves ``out_dir`` as
    it was. From construction to :meth:`close` or :meth:`abort` the writer holds ``out_dir``'s lock;
    ``inputs`` and ``others`` are checked as in :func:`check_output_dir`.
    """

    def __init__(self, out_dir: Path | str, name: str, classes: Sequence[str],
                 shard_size: int = DEFAULT_SHARD_SIZE, meta: Mapping[str, Any] | None = None,
                 overwrite: bool = False, *, inputs: Iterable[PathLike | None] = (),
                 others: Iterable[PathLike | None] = ()) -> None:
        if shard_size < 1:
            raise FactoryError(f"shard size must be >= 1; got {shard_size}")
        if not classes:
            raise FactoryError("a dataset needs at least one class")
        if len(set(classes)) != len(classes):
            raise FactoryError("class names must be unique")
        check_no_secret({"name": name, "classes": list(classes), "meta": dict(meta or {})}, f"{out_dir} index")
        self._keys: set[str] = set()  # keys only: memory stays small
        self.out_dir = Path(out_dir)
        self.name = name
        self.classes = list(classes)
        self.shard_size = shard_size
        self.meta = dict(meta or {})
        self.counts: Counter[str] = Counter()
        self.shards: list[ShardInfo] = []
        self._buffer: list[Sample] = []
        self.output = OutputDir(self.out_dir, inputs=inputs, overwrite=overwrite, others=others,
                                replaceable=dataset_problem)
        self.staging = self.output.staging
        self._closed = False

    def write(self, sample: Sample) -> None:
        if not 0 <= sample.label < len(self.classes):
            raise FactoryError(f"sample {sample.key!r}: label {sample.label} outside 0..{len(self.classes) - 1}")
        expected = self.classes[sample.label]
        if sample.provenance.get("class_name") != expected:
            raise FactoryError(f"sample {sample.key!r}: class_name {sample.provenance.get('class_name')!r} "
                               f"does not match label {sample.label} ({expected!r})")
        validate_record(sample.provenance)
        if sample.key in self._keys:
            raise FactoryError(f"sample {sample.key!r}: a second sample with this key; keys must be unique")
        self._keys.add(sample.key)
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
        info = write_shard(self.staging / shard_name(len(self.shards)), self._buffer, self.out_dir)
        self.shards.append(info)
        self._buffer = []
        kill_point(f"shard:{len(self.shards) - 1}")

    def close(self) -> dict[str, Any]:
        try:
            self._flush()
            index = make_index(self.name, self.classes, self.shards, self.counts, self.meta)
        except BaseException:
            self.abort()
            raise
        publish(self.output, index)  # aborts by itself on a failure
        self._closed = True
        log.info("wrote %s: %d samples in %d shards", self.out_dir, index["samples"], len(self.shards))
        return index

    def abort(self) -> None:
        """Give the output up: remove the staging folder, keep what was at ``out_dir``, release the lock."""
        self.output.abort()
        self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def decode_members(key: str, members: Mapping[str, bytes], where: str) -> Sample:
    """Build a Sample from one sample's members (``png``/``jpg``/``webp``, ``cls``, ``json``); a member
    missing or unparsable is a DatasetError naming ``where`` and the key."""
    at = f"{where}: sample {key!r}"
    exts = [e for e in IMAGE_EXTS if e in members]
    if len(exts) != 1:
        raise DatasetError(f"{at} has no single image member ({', '.join(sorted(members))})")
    if "cls" not in members or "json" not in members:
        raise DatasetError(f"{at} lacks a .cls or .json member")
    label = parse_label(members["cls"], at)
    record = parse_record(members["json"], at)
    return Sample(key=key, image=members[exts[0]], label=label, provenance=record, ext=exts[0])


def _open_shard(path: Path | RemotePath, where: str) -> BinaryIO:
    try:
        if isinstance(path, RemotePath):
            return path.open_stream(where)
        return open_regular(path, where)
    except FileNotFoundError:
        raise DatasetError(f"{where}: shard listed in {INDEX_NAME} is missing") from None
    except OSError as exc:
        raise DatasetError(f"{where}: unreadable ({exc.strerror or exc})") from None


def open_shard_url(url: str, where: str) -> BinaryIO:
    """A shard named by ``Dataset.urls()`` opened for the tar iterator: a local file as
    :func:`~factory.core.integrity.open_regular` opens it (a missing one raises FileNotFoundError), a URL
    streamed through fsspec."""
    if is_url(url):
        return RemotePath(url).open_stream(where)
    return open_regular(Path(url), where)


def iter_shard_file(path: Path | RemotePath | str, where: str | None = None) -> Iterator[Sample]:
    """The samples of one shard, in order, through the checked tar iterator
    (:func:`~factory.core.integrity.iter_tar_samples`); errors name ``where`` (default: the shard's name)."""
    path = dataset_location(path)
    where = where or path.name
    with _open_shard(path, where) as stream:
        for key, members in iter_tar_samples(stream, where):
            yield decode_members(key, members, where)


class Dataset:
    """A dataset directory opened for reading; its ``index.json`` is validated strictly on opening.

    Iterating streams samples shard by shard, with the cheap checks (safe tar reading, records valid and
    consistent with the index); :meth:`iter_checked` adds every check of ``factory verify`` and is what
    every copy of samples into a new dataset reads through.

    ``path`` may be an fsspec URL (``"s3://bucket/prefix/dataset"``, a ``str``): ``self.path`` is then a
    :class:`~factory.core.remote.RemotePath` and shards are streamed from the store (read-only).
    """

    def __init__(self, path: Path | RemotePath | str) -> None:
        location = dataset_location(path)
        if isinstance(location, RemotePath):
            self.path: Path | RemotePath = location
            index, raw = read_remote_index(location)
            self.index: dict[str, Any] = index
            self.index_sha256 = hashlib.sha256(raw).hexdigest()
            return
        self.path = location
        if not self.path.exists():
            hint = " (this command reads local folders; URLs are for verify, inspect, show, grid, pools)" \
                if re.match(r"[a-z0-9]+:/[^/]", str(path)) else ""  # Path("s3://b/d") is "s3:/b/d"
            raise DatasetError(f"{self.path}: no such dataset directory{hint}")
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: not a directory")
        index_path = self.path / INDEX_NAME
        if not index_path.is_file():
            raise DatasetError(f"{self.path}: not a factory dataset (no {INDEX_NAME})")
        index, raw = read_index(index_path)
        self.index = index
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
        classes = self.classes
        for p in self.shard_paths():
            for s in iter_shard_file(p, str(p)):
                check_record(s, classes, f"{p}: sample {s.key!r}")
                yield s

    def iter_checked(self, *, skip_bad: bool = False,
                     on_bad: Callable[[str], None] | None = None) -> Iterator[Sample]:
        """The samples, each fully checked (see ``factory verify``): a shard is read only once its size
        and sha256 match the index; each sample passes :func:`~factory.core.integrity.check_sample`;
        keys are unique across shards; per-shard and per-class counts match the index.

        The first problem raises ``DatasetError("<dataset>/<shard>: ...")``; with ``skip_bad`` a bad
        shard or sample is left out instead and ``on_bad`` gets one line ("<shard>: why") for it. A tar
        that breaks half-way loses the rest of its shard; what was yielded before stays valid.
        """
        def bad(msg: str) -> None:  # msg: "<shard>: why"
            if not skip_bad:
                raise DatasetError(f"{self.path}{os.sep}{msg}")
            log.info("%s: skipping %s", self.path, msg)
            if on_bad is not None:
                on_bad(msg)

        classes = self.classes
        first_shard: dict[str, str] = {}
        counts: Counter[str] = Counter()
        clean = True
        for entry in self.shards:
            name = entry["name"]
            stream, problem = self._open_checked(entry)
            if stream is None:
                clean = False
                bad(problem or name)
                continue
            read = 0
            with stream:
                groups = iter_tar_samples(stream, name)
                while True:
                    try:
                        key, members = next(groups)
                    except StopIteration:
                        break
                    except DatasetError as exc:
                        clean = False
                        bad(f"{exc} (rest of the shard unread)")
                        read = -1
                        break
                    read += 1
                    where = f"{name}: sample {key!r}"
                    try:
                        s = decode_members(key, members, name)
                        check_sample(s, classes, where)
                        if key in first_shard:
                            raise DatasetError(f"{where} is also in {first_shard[key]}")
                    except DatasetError as exc:
                        clean = False
                        bad(str(exc))
                        continue
                    first_shard[key] = name
                    counts[classes[s.label]] += 1
                    yield s
            if read >= 0 and read != entry["samples"]:
                clean = False
                bad(f"{name}: {read} samples, index says {entry['samples']}")
        expected = self.index.get("counts")
        if clean and expected is not None:
            wrong = [f"{c!r}: index {expected.get(c, 0)}, shards {counts[c]}"
                     for c in classes if expected.get(c, 0) != counts[c]]
            if wrong:
                bad(f"{INDEX_NAME}: counts differ from the shards ({'; '.join(wrong[:3])}"
                    f"{'; ...' if len(wrong) > 3 else ''})")

    def _open_checked(self, entry: dict[str, Any]) -> tuple[BinaryIO | None, str | None]:
        """The shard of ``entry`` opened once its size and sha256 match the index, or ``(None, "<shard>:
        why")``. A remote shard is downloaded once into a spool and hashed on the way."""
        name = entry["name"]
        if isinstance(self.path, RemotePath):
            stream, problem = (self.path / name).fetch_checked(entry, name)
            return stream, None if problem is None else f"{name}: {problem}"
        problem = shard_file_problem(self.path / name, entry)
        if problem is not None:
            return None, f"{name}: {problem}"
        try:
            return _open_shard(self.path / name, name), None
        except DatasetError as exc:  # removed or made unreadable since it was hashed
            return None, str(exc)

    def records(self) -> Iterator[dict[str, Any]]:
        """Only the provenance records (cheap: images are not decoded)."""
        for s in self:
            yield s.provenance

    def find(self, key: str) -> Sample:
        for s in self:
            if s.key == key:
                return s
        raise FactoryError(f"{self.path}: no sample with key {key!r}")


def open_dataset(path: Path | RemotePath | str) -> Dataset:
    return Dataset(path)
