"""A sample and its provenance record (contract ``factory.sample/1``).

This module is the one place where provenance records are built and validated. Every writer
calls :func:`validate_record` before a sample enters a shard, so a dataset never holds a record
that breaks the contract documented in the README.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image

from factory import __version__
from factory.core.errors import FactoryError
from factory.core.limits import check_pixels
from factory.core.secrets import check_no_secret

SAMPLE_SCHEMA = "factory.sample/1"
IMAGE_EXTS = ("png", "jpg", "webp")
KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # the contract's keys (use fullmatch): no dots, no slashes
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")  # anchored, for .match()
_FORMAT_TO_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}

# Tar members and the ``created`` field use one fixed timestamp so that the same input gives
# byte-identical shards (reproducible-builds.org: SOURCE_DATE_EPOCH overrides it).
DEFAULT_EPOCH = 946684800  # 2000-01-01T00:00:00Z
MAX_EPOCH = 8**11 - 1  # the largest mtime of a ustar header (11 octal digits; year 2242)

GENERATOR_FIELDS = (
    "backend", "model", "weights_sha256", "scheduler", "steps", "guidance_scale",
    "negative_guidance", "height", "width", "dtype",
)
PROMPT_FIELDS = ("text", "template", "attributes")


def build_epoch() -> int:
    """The timestamp stamped on shards and records: ``SOURCE_DATE_EPOCH`` or a fixed default."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return DEFAULT_EPOCH
    try:
        epoch = int(raw)
    except ValueError:
        epoch = -1
    if not 0 <= epoch <= MAX_EPOCH:
        raise FactoryError(f"SOURCE_DATE_EPOCH must be an integer in [0, {MAX_EPOCH}] (seconds since 1970); "
                           f"got {raw[:40]!r}")
    return epoch


def created_stamp() -> str:
    return _dt.datetime.fromtimestamp(build_epoch(), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sanitize_key(text: str) -> str:
    """Turn any string into a valid sample key: letters, digits, ``_`` and ``-``, no dots."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "sample"


def image_ext(data: bytes) -> str:
    """The member extension for encoded image bytes, from the bytes themselves (not a file name)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception as exc:  # PIL raises many types for garbage input
        raise FactoryError(unreadable(exc)) from None
    if fmt not in _FORMAT_TO_EXT:
        raise FactoryError(f"unsupported image format {fmt!r}; store PNG, JPEG or WebP")
    return _FORMAT_TO_EXT[fmt]


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully (``load``), so truncated files fail here and not later. An image over
    :func:`~factory.core.limits.max_image_pixels` is refused before its pixels are allocated; every
    failure is a FactoryError."""
    try:
        im = Image.open(io.BytesIO(data))
        check_pixels(*im.size)
        im.load()
    except FactoryError:
        raise
    except Exception as exc:  # PIL raises many types for garbage input (OSError, SyntaxError, ...)
        raise FactoryError(unreadable(exc)) from None
    return im


def unreadable(exc: Exception) -> str:
    """Why PIL could not read image bytes, in words that name no in-memory object (PIL's "cannot identify
    image file <_io.BytesIO object at 0x...>" says nothing to a user): the caller names the file or key."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image format PIL knows"
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return f"not a readable image ({detail})"


def phash_hex(image: Image.Image) -> str:
    import imagehash  # imported lazily: it pulls in scipy

    return str(imagehash.phash(image))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Sample:
    """One image with its label and provenance record, as stored in a shard."""

    key: str
    image: bytes
    label: int
    provenance: dict[str, Any] = field(default_factory=dict)
    ext: str = "png"

    def pil(self) -> Image.Image:
        try:
            return decode_image(self.image)
        except FactoryError as exc:
            raise FactoryError(f"sample {self.key!r}: {exc}") from None

    @property
    def class_name(self) -> str:
        return self.provenance.get("class_name", str(self.label))


def _base_record(key: str, data: bytes, label: int, class_name: str, source: str,
                 image: Image.Image | None) -> dict[str, Any]:
    if image is None:
        image = decode_image(data)
    return {
        "schema": SAMPLE_SCHEMA,
        "key": key,
        "label": int(label),
        "class_name": class_name,
        "source": source,
        "sha256": sha256_hex(data),
        "phash": phash_hex(image),
        "created": created_stamp(),
        "factory_version": __version__,
    }


def real_sample(key: str, data: bytes, label: int, class_name: str, origin: Mapping[str, Any],
                attributes: Mapping[str, Any] | None = None,
                image: Image.Image | None = None) -> Sample:
    """A real image: ``origin`` says where it came from (dataset id, path or index)."""
    record = _base_record(key, data, label, class_name, "real", image)
    record["origin"] = dict(origin)
    record["generation"] = 0
    record["parents"] = []
    if attributes:
        record["attributes"] = dict(attributes)
    return Sample(key=key, image=data, label=int(label), provenance=validate_record(record),
                  ext=image_ext(data))


def synthetic_sample(key: str, data: bytes, label: int, class_name: str, *, prompt: Mapping[str, Any],
                     seed: int, generator: Mapping[str, Any], generation: int,
                     parents: list[dict[str, Any]], group: str | None = None,
                     image: Image.Image | None = None) -> Sample:
    """An image made by a model, with everything needed to make it again."""
    record = _base_record(key, data, label, class_name, "synthetic", image)
    record["prompt"] = {k: prompt.get(k) for k in PROMPT_FIELDS}
    record["seed"] = int(seed)
    record["generator"] = dict(generator)
    record["generation"] = int(generation)
    record["parents"] = [dict(p) for p in parents]
    if group is not None:
        record["group"] = group
    attrs = prompt.get("attributes") or {}
    if attrs:
        record["attributes"] = dict(attrs)
    return Sample(key=key, image=data, label=int(label), provenance=validate_record(record),
                  ext=image_ext(data))



def validate_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check a record against ``factory.sample/1``; return it as a plain dict or raise FactoryError."""
    rec = dict(record)
    key = rec.get("key")

    def fail(msg: str) -> None:
        raise FactoryError(f"provenance of {key!r}: {msg}")

    if rec.get("schema") != SAMPLE_SCHEMA:
        fail(f"schema must be {SAMPLE_SCHEMA!r}; got {rec.get('schema')!r}")
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        fail("key must be a non-empty string of letters, digits, '_' or '-' (no dots)")
    for name, typ in (("label", int), ("class_name", str), ("sha256", str), ("phash", str),
                      ("created", str), ("factory_version", str), ("generation", int)):
        if not isinstance(rec.get(name), typ) or isinstance(rec.get(name), bool):
            fail(f"{name} must be {typ.__name__}; got {rec.get(name)!r}")
    if rec["label"] < 0:
        fail(f"label must be >= 0; got {rec['label']}")
    if not re.fullmatch(r"[0-9a-f]{64}", rec["sha256"]):
        fail("sha256 must be 64 lowercase hex digits")
    if not re.fullmatch(r"[0-9a-f]+", rec["phash"]):
        fail("phash must be hex")
    if not isinstance(rec.get("parents"), list):
        fail("parents must be a list")
    source = rec.get("source")
    if source == "real":
        if not isinstance(rec.get("origin"), dict) or "dataset" not in rec["origin"]:
            fail("real samples need origin {dataset, path or index}")
        if rec["generation"] != 0:
            fail("real samples have generation 0")
    elif source == "synthetic":
        if not isinstance(rec.get("prompt"), dict) or "text" not in rec["prompt"]:
            fail("synthetic samples need prompt {text, template, attributes}")
        if not isinstance(rec.get("seed"), int):
            fail("synthetic samples need an integer seed")
        gen = rec.get("generator")
        if not isinstance(gen, dict) or any(k not in gen for k in GENERATOR_FIELDS):
            fail(f"synthetic samples need generator with {', '.join(GENERATOR_FIELDS)}")
        if rec["generation"] < 1:
            fail("synthetic samples have generation >= 1")
    else:
        fail(f"source must be 'real' or 'synthetic'; got {source!r}")
    check_no_secret(rec, f"provenance of {key!r}")
    return rec


def with_updates(sample: Sample, **fields: Any) -> Sample:
    """A copy of ``sample`` whose provenance has ``fields`` added (e.g. scores after curation)."""
    record = copy.deepcopy(sample.provenance)
    record.update(fields)
    return Sample(key=sample.key, image=sample.image, label=sample.label,
                  provenance=validate_record(record), ext=sample.ext)


def sample_attributes(provenance: Mapping[str, Any]) -> dict[str, str]:
    """A sample's attributes: ``attributes`` of its record, else ``prompt.attributes`` (synthetic)."""
    attrs = provenance.get("attributes")
    if attrs is None and isinstance(provenance.get("prompt"), dict):
        attrs = provenance["prompt"].get("attributes")
    if not attrs:
        return {}
    if not isinstance(attrs, dict):
        raise FactoryError(f"sample {provenance.get('key')!r}: attributes must be a mapping")
    return {str(k): str(v) for k, v in attrs.items()}


