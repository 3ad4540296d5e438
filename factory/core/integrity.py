"""Reading untrusted datasets safely: the one tar iterator, the strict ``index.json`` check, and the
checks of a sample against its record.

Every reader goes through :func:`iter_tar_samples`. It streams a shard with :mod:`tarfile` and refuses,
before reading a byte of data, any member that is not a regular file, whose name has a directory part
or no extension, or whose header declares more than :func:`max_member_bytes`. Every failure, of the tar,
of the JSON or of an image, is a :class:`DatasetError` whose one-line message starts with the shard (or
index) and names the sample key. Samples are grouped as webdataset groups them: consecutive members with
the same key (the name up to its first dot) form one sample.

Two levels of checks: :func:`check_record` is cheap (no image decoding) and runs on every read;
:func:`check_sample` adds the image checks (sha256, format, pixel limit, full decode) and runs on every
copy (``Dataset.iter_checked``) and in ``factory verify``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterator, Sequence

from PIL import Image

from factory.core.errors import DatasetError, FactoryError
from factory.core.limits import MEMBER_BYTES_ENV, check_pixels, max_image_pixels, max_member_bytes
from factory.core.sample import _FORMAT_TO_EXT, _KEY_RE, IMAGE_EXTS, Sample, phash_hex, sha256_hex, validate_record

__all__ = [
    "DATASET_SCHEMA", "INDEX_NAME", "max_member_bytes", "max_image_pixels", "read_index", "validate_index",
    "is_shard_name", "load_json", "iter_tar_samples", "parse_label", "parse_record", "check_record", "check_image",
    "check_sample", "shard_file_problem",
]

DATASET_SCHEMA = "factory.dataset/1"
INDEX_NAME = "index.json"
MEMBER_EXTS = (*IMAGE_EXTS, "cls", "json")
MAX_RECORD_BYTES = 4 << 20  # a provenance record is a few KB
MAX_LABEL_BYTES = 32
MAX_JSON_DEPTH = 64
_SHARD_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}\.tar")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------- JSON and index.json


def _too_deep(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def load_json(raw: bytes, where: str | Path) -> Any:
    """Parse UTF-8 JSON from an untrusted file: any failure (bad bytes, syntax, numbers with thousands
    of digits, nesting deeper than :data:`MAX_JSON_DEPTH`) is ``DatasetError("<where>: ...")``."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise DatasetError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, and int() of a number with over 4300 digits
        raise DatasetError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if _too_deep(obj, MAX_JSON_DEPTH):
        raise DatasetError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    return obj


def is_shard_name(name: Any) -> bool:
    """A plain file name inside the dataset folder: no separator, not hidden, not ``.``/``..``, ``.tar``."""
    return isinstance(name, str) and _SHARD_NAME_RE.fullmatch(name) is not None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate_index(index: Any, where: str | Path) -> dict[str, Any]:
    """Check a parsed ``index.json`` against ``factory.dataset/1``; return it or raise DatasetError.

    Types and values: ``schema``, ``name`` (str), ``classes`` (non-empty list of unique str), ``samples``
    (int >= 0), ``shards`` (list of {name, samples, sha256, bytes}, names plain ``.tar`` file names, each
    listed once, their samples summing to ``samples``), optional ``counts`` ({class: int >= 0}; checked
    against the shards by ``Dataset.iter_checked``) and ``meta`` (dict)."""
    def fail(msg: str) -> None:
        raise DatasetError(f"{where}: {msg}")

    if not isinstance(index, dict):
        fail("not a JSON object")
    if index.get("schema") != DATASET_SCHEMA:
        fail(f"schema is not {DATASET_SCHEMA!r}; got {_short(index.get('schema'))}")
    for field in ("name", "classes", "samples", "shards"):
        if field not in index:
            fail(f"missing field {field!r}")
    if not isinstance(index["name"], str) or not index["name"]:
        fail(f"name must be a non-empty string; got {_short(index['name'])}")
    classes = index["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        fail("classes must be a non-empty list of strings")
    if len(set(classes)) != len(classes):
        dup = next(c for i, c in enumerate(classes) if c in classes[:i])
        fail(f"class {_short(dup)} is listed twice in classes")
    if not _is_count(index["samples"]):
        fail(f"samples must be an integer >= 0; got {_short(index['samples'])}")
    if not isinstance(index["shards"], list):
        fail("shards must be a list")
    seen: set[str] = set()
    for i, entry in enumerate(index["shards"]):
        if not isinstance(entry, dict):
            fail(f"shards[{i}] must be an object {{name, samples, sha256, bytes}}")
        name = entry.get("name")
        if not is_shard_name(name):
            fail(f"shards[{i}].name {_short(name)} is not a plain .tar file name inside the dataset folder")
        if name in seen:
            fail(f"shard {name} is listed twice")
        seen.add(name)
        if not _is_count(entry.get("samples")) or not _is_count(entry.get("bytes")):
            fail(f"shards[{i}] ({name}): samples and bytes must be integers >= 0")
        if not isinstance(entry.get("sha256"), str) or not _SHA256_RE.fullmatch(entry["sha256"]):
            fail(f"shards[{i}] ({name}): sha256 must be 64 lowercase hex digits")
    listed = sum(e["samples"] for e in index["shards"])
    if listed != index["samples"]:
        fail(f"samples is {_short(index['samples'])}, but the shards hold {listed}")
    counts = index.get("counts")
    if counts is not None:
        if not isinstance(counts, dict) or not all(_is_count(v) for v in counts.values()):
            fail("counts must map class names to integers >= 0")
        unknown = sorted(set(counts) - set(classes))
        if unknown:
            fail(f"counts name {_short(unknown[0])}, which is not in classes")
    if "meta" in index and not isinstance(index["meta"], dict):
        fail("meta must be an object")
    return index


def read_index(path: Path) -> tuple[dict[str, Any], bytes]:
    """Read, parse and validate ``index.json`` (at most :func:`max_member_bytes` bytes); the raw bytes
    are returned too, for the index hash."""
    raw = read_limited(path)
    return validate_index(load_json(raw, path), path), raw


def open_regular(path: Path, where: str | Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (a FIFO or device named like a shard would
    block a reader or stream forever); ``O_NONBLOCK`` so that opening a FIFO does not wait for a writer.
    A missing file raises FileNotFoundError; any other refusal is DatasetError naming ``where``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DatasetError(f"{where}: not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_limited(path: Path) -> bytes:
    """The bytes of a small metadata file (an index), refusing one over :func:`max_member_bytes`."""
    limit = max_member_bytes()
    too_large = DatasetError(f"{path}: larger than the limit of {limit:,} bytes (raise {MEMBER_BYTES_ENV})")
    try:
        with open_regular(path, path) as f:
            if os.fstat(f.fileno()).st_size > limit:
                raise too_large
            raw = f.read()  # read(limit + 1) would allocate the whole limit up front
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise too_large
    return raw


# ---------------------------------------------------------------- the tar iterator


class _MemberTooLarge(Exception):
    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(f"member {name!r} declares {size:,} bytes, over the limit of {limit:,} "
                         f"(raise {MEMBER_BYTES_ENV} to allow it)")


class _LimitedTarInfo(tarfile.TarInfo):
    """Checks every header's declared size before tarfile acts on it: tarfile itself reads the data of
    pax and GNU long-name headers whole, so the check must come before :meth:`_proc_member`."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        limit = max_member_bytes()
        if self.size > limit:
            raise _MemberTooLarge(self.name, self.size, limit)
        return super()._proc_member(tar)


def _kind(m: tarfile.TarInfo) -> str:
    for test, kind in ((m.issym, "a symbolic link"), (m.islnk, "a hard link"), (m.isdir, "a directory"),
                       (m.ischr, "a device"), (m.isblk, "a device"), (m.isfifo, "a FIFO"),
                       (m.issparse, "a sparse file")):
        if test():
            return kind
    return f"of tar type {m.type!r}"


def _check_member(m: tarfile.TarInfo, limit: int, where: str) -> str:
    """The member's extension; DatasetError for a member no factory shard holds."""
    name = m.name

    def fail(msg: str) -> None:
        raise DatasetError(f"{where}: member {name!r} {msg}")

    if not m.isreg() or m.issparse():
        fail(f"is {_kind(m)}, not a regular file")
    if "/" in name or "\\" in name:
        fail("has a directory part")
    key, dot, ext = name.partition(".")
    if not dot or not ext:
        fail("has no extension")
    if not _KEY_RE.fullmatch(key):  # fullmatch: "$" alone would let "k\n" through
        fail("has a key that is not letters, digits, '_' or '-'")
    if ext not in MEMBER_EXTS:
        fail(f"has an unexpected extension (expected one of {', '.join(MEMBER_EXTS)})")
    cap = {"json": min(limit, MAX_RECORD_BYTES), "cls": MAX_LABEL_BYTES}.get(ext, limit)
    if m.size > cap:
        fail(f"declares {m.size:,} bytes, over the limit of {cap:,}")
    return ext


def _iter_members(stream: IO[bytes], where: str, wanted: Callable[[str], bool] | None = None
                  ) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, data) of each member, in order; refused members raise before being read, and
    members whose name ``wanted`` rejects are checked but skipped unread."""
    limit = max_member_bytes()
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_LimitedTarInfo) as tar:
            for m in tar:
                ext = _check_member(m, limit, where)
                if wanted is not None and not wanted(m.name):
                    continue
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise DatasetError(f"{where}: member {m.name!r} is truncated")
                yield m.name.partition(".")[0], ext, data
    except DatasetError:
        raise
    except _MemberTooLarge as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DatasetError(f"{where}: unreadable tar ({reason})") from None


def iter_tar_samples(stream: IO[bytes], where: str, wanted: Callable[[str], bool] | None = None
                     ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar stream, grouped like webdataset's ``group_by_keys``.
    A key met again after other keys, or an extension twice in one sample, is an error. ``wanted``
    (a member name -> bool, like webdataset's ``select_files``) skips members without reading them."""
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    for k, ext, data in _iter_members(stream, where, wanted):
        if k != key:
            if key is not None:
                yield key, members
            if k in seen:
                raise DatasetError(f"{where}: sample {k!r} appears twice in the shard")
            seen.add(k)
            key, members = k, {}
        if ext in members:
            raise DatasetError(f"{where}: sample {k!r} has two .{ext} members")
        members[ext] = data
    if key is not None:
        yield key, members


def parse_label(raw: bytes, where: str) -> int:
    try:
        text = raw.decode("ascii").strip()
        if not text.isdigit():
            raise ValueError
        return int(text)
    except (UnicodeDecodeError, ValueError):
        raise DatasetError(f"{where}: .cls member is not a non-negative integer ({_short(raw[:20])})") from None


def parse_record(raw: bytes, where: str) -> dict[str, Any]:
    record = load_json(raw, f"{where}: .json member")
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: .json member is not a JSON object")
    return record


# ---------------------------------------------------------------- sample checks


def check_record(sample: Sample, classes: Sequence[str], where: str) -> None:
    """The cheap checks: the record is ``factory.sample/1``, its key is the member key, its label the
    ``.cls`` label (a valid class index), its ``class_name`` the index's name for that label."""
    try:
        validate_record(sample.provenance)
    except FactoryError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    rec = sample.provenance
    if rec["key"] != sample.key:
        raise DatasetError(f"{where}: record key is {_short(rec['key'])}")
    if rec["label"] != sample.label:
        raise DatasetError(f"{where}: .cls {sample.label} differs from record label {rec['label']}")
    if not 0 <= sample.label < len(classes):
        raise DatasetError(f"{where}: label {sample.label} outside the {len(classes)} classes")
    prompt = rec.get("prompt")
    for name, value in (("attributes", rec.get("attributes")), ("prompt", prompt),
                        ("prompt.attributes", prompt.get("attributes") if isinstance(prompt, dict) else None)):
        if value is not None and not isinstance(value, dict):
            raise DatasetError(f"{where}: record {name} must be an object; got {_short(value)}")
    if rec["class_name"] != classes[sample.label]:
        raise DatasetError(f"{where}: class_name {_short(rec['class_name'])} is not class {sample.label} "
                           f"of the index ({_short(classes[sample.label])})")


def check_image(data: bytes, ext: str, where: str, keep: bool = False) -> Image.Image | None:
    """The bytes are a PNG, JPEG or WebP matching ``ext``, within the pixel limit, complete (a PNG's chunk
    CRCs and end chunk are checked) and decode fully; returns the decoded image with ``keep``."""
    if not data:
        raise DatasetError(f"{where}: image member is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            actual = _FORMAT_TO_EXT.get(im.format or "")
            if actual != ext:
                raise DatasetError(f"{where}: .{ext} member holds {im.format or 'unknown'} bytes")
            check_pixels(*im.size)
            if actual == "png":  # chunk CRCs and the IEND chunk: load() accepts a PNG cut after its pixels
                im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy() if keep else None
    except DatasetError:
        raise
    except FactoryError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{where}: image is over the pixel limit ({exc})") from None
    except Image.UnidentifiedImageError:
        raise DatasetError(f"{where}: image does not decode (not an image format PIL knows)") from None
    except Exception as exc:  # PIL raises many types for garbage input (OSError, SyntaxError, ...)
        raise DatasetError(f"{where}: image does not decode ({str(exc).splitlines()[0][:120]})") from None


def check_sample(sample: Sample, classes: Sequence[str], where: str) -> None:
    """Every check of one sample: :func:`check_record`, the record's sha256 is that of the image bytes,
    and :func:`check_image`."""
    check_record(sample, classes, where)
    if sample.provenance["sha256"] != sha256_hex(sample.image):
        raise DatasetError(f"{where}: image bytes do not match the record's sha256")
    image = check_image(sample.image, sample.ext, where, keep=True)
    if phash_hex(image) != sample.provenance["phash"]:  # dedup trusts the stored hash: it must be the image's
        raise DatasetError(f"{where}: the record's phash is not the image's")


def shard_file_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Why the shard file at ``path`` does not match its index entry (missing, size, sha256), or None."""
    try:
        if not os.path.lexists(path):
            return "missing"
        if not path.is_file():
            return "not a regular file"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"size {size} bytes, index says {entry['bytes']}"
        h = hashlib.sha256()
        with open_regular(path, path.name) as f:
            while block := f.read(1 << 20):
                h.update(block)
    except DatasetError:
        return "not a regular file"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    digest = h.hexdigest()
    if digest != entry["sha256"]:
        return f"sha256 mismatch (index {entry['sha256'][:12]}..., file {digest[:12]}...)"
    return None
