"""Datasets at fsspec URLs (``s3://bucket/prefix/dataset``): read-only, streamed shard by shard.

A dataset location is either a local :class:`~pathlib.Path` (the fast path, untouched by this module) or a
:class:`RemotePath`: a URL with a scheme (``s3://``, ``gs://``, ``hf://``, ``memory://``, chained
``simplecache::s3://``) opened through fsspec. :func:`dataset_location` tells them apart: only a ``str``
that starts with ``<scheme>://`` is a URL, so a ``Path`` is always local.

What the readers get from a remote dataset:

- ``index.json``: one small read, at most :func:`~factory.core.limits.max_member_bytes` bytes.
- cheap reads (``inspect``, ``show``, ``grid``, the loader): each shard streamed into the checked tar
  iterator through fsspec's read-ahead buffer (:data:`BLOCK_BYTES`); nothing is written to disk.
- checked reads (``verify``, ``Dataset.iter_checked``): each shard is downloaded once into a spool
  (memory up to :data:`SPOOL_BYTES`, a temporary file beyond), hashed on the way, and read only when its
  size and sha256 match the index: a shard with a bad hash yields no sample, as locally. One shard at a
  time, never the whole dataset.

Configuration is fsspec's and the storage library's own: for S3 (``s3fs``, botocore) the endpoint comes from
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``, or fsspec's ``FSSPEC_S3_ENDPOINT_URL``), credentials from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` or ``~/.aws``; ``FSSPEC_S3_ANON=true``
reads a public bucket. Every failure is one ``DatasetError`` line naming the URL.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from factory.core.errors import DatasetError, FactoryError
from factory.core.integrity import INDEX_NAME, load_json, validate_index
from factory.core.limits import MEMBER_BYTES_ENV, max_member_bytes

__all__ = ["RemotePath", "is_url", "dataset_location", "read_remote_index", "BLOCK_BYTES", "SPOOL_BYTES"]

# <scheme>://, or fsspec's chained form <scheme>::<scheme>://; a Windows drive ("C:\") has no "//"
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*(::[A-Za-z][A-Za-z0-9+.\-]*)*://")
BLOCK_BYTES = 8 << 20  # read-ahead of a streamed shard
SPOOL_BYTES = 64 << 20  # a checked shard stays in memory up to this size, then spills to a temporary file
_CHUNK = 1 << 20

_HINTS = {
    "NoCredentialsError": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or FSSPEC_S3_ANON=true",
    "EndpointConnectionError": "is the endpoint right? set AWS_ENDPOINT_URL for an S3-compatible store",
}


def is_url(location: Any) -> bool:
    """True for a ``str`` that starts with ``<scheme>://`` (a ``Path`` is always local)."""
    return isinstance(location, str) and _URL_RE.match(location) is not None


def dataset_location(location: "str | Path | RemotePath") -> "Path | RemotePath":
    """A URL as a :class:`RemotePath`, anything else as a local ``Path``."""
    if isinstance(location, RemotePath):
        return location
    return RemotePath(location) if is_url(location) else Path(location)


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    detail = " ".join(str(exc).split())[:160]
    text = f"{name}: {detail}" if detail else name
    hint = _HINTS.get(name)
    return f"{text}; {hint}" if hint else text


@contextmanager
def _remote_errors(where: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Any failure of the storage library as one ``DatasetError("<where>: ...")``; a missing object as
    ``FileNotFoundError`` with ``missing_ok`` (the caller names it). Nothing is dropped: the message carries
    the library's exception type and text."""
    try:
        yield
    except FactoryError:
        raise
    except FileNotFoundError:
        if missing_ok:
            raise
        raise DatasetError(f"{where}: no such file") from None
    except PermissionError as exc:
        raise DatasetError(f"{where}: access denied ({_reason(exc)})") from None
    except ImportError as exc:  # fsspec names the package of a protocol it cannot load (s3fs, gcsfs, ...)
        raise DatasetError(f"{where}: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, ... raise their own types; kept in the line
        raise DatasetError(f"{where}: unreadable ({_reason(exc)})") from None


class _Stream(io.RawIOBase):
    """A remote file for the tar iterator: a storage-library error during ``read`` becomes an ``OSError``,
    which the iterator reports as an unreadable shard naming it."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._f.read(len(buffer))
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - see _remote_errors
            raise OSError(_reason(exc)) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


class RemotePath:
    """A file or folder at an fsspec URL, with the few path operations the readers use (``/``, ``name``,
    ``is_file``, ``is_dir``, ``exists``, ``glob``). Deliberately not ``os.PathLike``: a local file function
    given a URL fails instead of opening a wrong local name."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        if not is_url(url):
            raise FactoryError(f"{url!r} is not a URL (<scheme>://...)")
        scheme_end = url.index("://") + 3
        self.url = url[:scheme_end] + url[scheme_end:].rstrip("/")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str) -> "RemotePath":
        return RemotePath(f"{self.url}/{name}")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def _fs(self) -> tuple[Any, str]:
        """(fsspec filesystem, its path for this URL); the filesystem instance is fsspec's cached one."""
        with _remote_errors(self.url):
            import fsspec

            return fsspec.core.url_to_fs(self.url)

    def info(self) -> dict[str, Any]:
        """fsspec's ``info`` (``type``, ``size``); ``FileNotFoundError`` if nothing is there."""
        fs, path = self._fs()
        with _remote_errors(self.url, missing_ok=True):
            return fs.info(path)

    def exists(self) -> bool:
        try:
            self.info()
        except FileNotFoundError:
            return False
        return True

    def is_file(self) -> bool:
        try:
            return self.info().get("type") == "file"
        except FileNotFoundError:
            return False

    def is_dir(self) -> bool:
        try:
            return self.info().get("type") == "directory"
        except FileNotFoundError:
            return False

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        """The files directly in this folder whose names match ``pattern`` (no ``/`` in it)."""
        if "/" in pattern:
            raise FactoryError(f"{self.url}: glob pattern {pattern!r} must be a plain name pattern")
        fs, path = self._fs()
        with _remote_errors(self.url):
            found = fs.glob(f"{path}/{pattern}")
        for p in sorted(found):
            yield self / p.rstrip("/").rsplit("/", 1)[-1]

    def refresh(self) -> None:
        """Forget fsspec's cached listings of this folder (an object replaced since is seen as it is now)."""
        fs, path = self._fs()
        with _remote_errors(self.url):
            fs.invalidate_cache(path)

    def open_stream(self, where: str | None = None) -> BinaryIO:
        """The file, streamed with :data:`BLOCK_BYTES` of read-ahead; a missing file raises
        ``FileNotFoundError``, anything else ``DatasetError`` naming ``where`` (default: the URL)."""
        fs, path = self._fs()
        with _remote_errors(where or self.url, missing_ok=True):
            f = fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type="readahead")
        return io.BufferedReader(_Stream(f), buffer_size=_CHUNK)  # type: ignore[return-value]

    def read_limited(self) -> bytes:
        """The bytes of a small metadata file (an index), refusing one over ``max_member_bytes``."""
        limit = max_member_bytes()
        too_large = DatasetError(f"{self.url}: larger than the limit of {limit:,} bytes (raise {MEMBER_BYTES_ENV})")
        info = self.info()
        if info.get("type") != "file":
            raise DatasetError(f"{self.url}: not a file")
        if int(info.get("size") or 0) > limit:
            raise too_large
        chunks, n = [], 0
        with self.open_stream() as f:
            while n <= limit and (block := f.read(_CHUNK)):
                chunks.append(block)
                n += len(block)
        if n > limit:
            raise too_large
        return b"".join(chunks)

    def fetch_checked(self, entry: dict[str, Any], where: str) -> tuple[BinaryIO | None, str | None]:
        """The shard downloaded once into a spool and checked against its index entry: ``(stream at 0,
        None)``, or ``(None, why)`` with the reasons :func:`~factory.core.integrity.shard_file_problem` gives
        a local shard (missing, not a regular file, size, sha256 mismatch, unreadable)."""
        expected = int(entry["bytes"])
        try:
            info = self.info()
        except FileNotFoundError:
            return None, "missing"
        except DatasetError as exc:
            return None, str(exc).removeprefix(f"{self.url}: ")
        if info.get("type") != "file":
            return None, "not a regular file"
        size = int(info.get("size") or 0)
        if size != expected:
            return None, f"size {size} bytes, index says {expected}"
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        h, n = hashlib.sha256(), 0
        try:
            with self.open_stream(where) as f:
                while block := f.read(_CHUNK):
                    n += len(block)
                    if n > expected:
                        break  # replaced by a larger object while reading: no need to read the rest
                    h.update(block)
                    spool.write(block)
        except FileNotFoundError:
            spool.close()
            return None, "missing"
        except DatasetError as exc:  # already "<where>: unreadable (...)" or "<where>: access denied (...)"
            spool.close()
            return None, str(exc).removeprefix(f"{where}: ")
        except OSError as exc:  # a failure while reading (see _Stream)
            spool.close()
            return None, f"unreadable ({exc})"
        problem = None
        if n != expected:
            problem = f"size {n}{'+' if n > expected else ''} bytes read, index says {expected}"
        elif (digest := h.hexdigest()) != entry["sha256"]:
            problem = f"sha256 mismatch (index {entry['sha256'][:12]}..., file {digest[:12]}...)"
        if problem is not None:
            spool.close()
            return None, problem
        spool.seek(0)
        return spool, None  # type: ignore[return-value]


def read_remote_index(location: RemotePath) -> tuple[dict[str, Any], bytes]:
    """``index.json`` of the dataset at ``location`` and its raw bytes, read fresh (fsspec's cached listings
    of the folder are dropped first) and validated as a local one is."""
    location.refresh()
    index_url = location / INDEX_NAME
    try:
        raw = index_url.read_limited()
    except FileNotFoundError:
        raise DatasetError(f"{location}: not a factory dataset (no {INDEX_NAME})") from None
    return validate_index(load_json(raw, index_url), index_url), raw
