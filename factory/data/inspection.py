"""Look at datasets without changing them: verify checksums, summarise, find a sample, draw a grid.

Every function here takes a local folder or an fsspec URL (``s3://bucket/prefix/dataset``; see
:mod:`factory.core.remote`)."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from factory.core.errors import DatasetError, FactoryError
from factory.core.files import atomic_write_bytes
from factory.core.integrity import max_image_pixels
from factory.core.outputs import claim_output_file
from factory.core.remote import RemotePath, dataset_location
from factory.core.shards import INDEX_NAME, Dataset
from factory.data.classnames import display_names

MIN_CELL, MAX_CELL = 8, 1024  # grid cell size in pixels


@dataclass
class VerifyResult:
    dataset: Path | RemotePath
    problems: list[str] = field(default_factory=list)  # "shard-000001.tar: why"
    samples: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path | RemotePath | str) -> VerifyResult:
    """Check a dataset folder completely; read-only, and never raises for a broken folder.

    The index: schema and types, shard names plain file names inside the folder, each listed once,
    sample counts that add up, unique classes (:func:`~factory.core.integrity.validate_index`). Every
    shard: its size and sha256 against the index, then every sample (``Dataset.iter_checked``): a safe
    tar, a ``factory.sample/1`` record agreeing with its member key, ``.cls`` label and the index's
    class name, the image's sha256, its format against its extension, its size within the pixel limit,
    a full decode; keys unique across shards; per-shard and per-class counts. Also ``.tar`` files that
    the index does not list. Each problem is one line that starts with the file at fault.
    """
    try:
        ds = Dataset(path)
    except DatasetError as exc:
        return VerifyResult(dataset_location(path), [str(exc)])
    result = VerifyResult(ds.path, shards=len(ds.shards))
    for _ in ds.iter_checked(skip_bad=True, on_bad=result.problems.append):
        result.samples += 1
    listed = {e["name"] for e in ds.shards}
    for extra in sorted(p.name for p in ds.path.glob("*.tar")):
        if extra not in listed:
            result.problems.append(f"{extra}: not listed in {INDEX_NAME}")
    return result


def _image_size(data: bytes, where: str) -> str:
    """``WxH`` from the image header (no decode)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return f"{im.width}x{im.height}"
    except Exception as exc:  # PIL raises many types for garbage input
        raise DatasetError(f"{where}: image header unreadable ({str(exc).splitlines()[0][:120]})") from None


def summarize(path: Path | RemotePath | str) -> dict[str, Any]:
    """What is in a dataset: samples, classes with counts, sources, generations, sizes, bytes."""
    ds = Dataset(path)
    classes: Counter[str] = Counter({c: 0 for c in ds.classes})
    sources: Counter[str] = Counter()
    generations: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    attributes: dict[str, Counter[str]] = defaultdict(Counter)
    image_bytes = 0
    n = 0
    for s in ds:
        n += 1
        classes[ds.classes[s.label] if 0 <= s.label < len(ds.classes) else str(s.label)] += 1
        rec = s.provenance
        sources[str(rec.get("source"))] += 1
        generations[str(rec.get("generation"))] += 1
        formats[s.ext] += 1
        image_bytes += len(s.image)
        sizes[_image_size(s.image, f"{ds.path}: sample {s.key!r}")] += 1
        for k, v in (rec.get("attributes") or {}).items():
            attributes[k][str(v)] += 1
    return {
        "name": ds.name,
        "path": str(ds.path),
        "samples": n,
        "shards": len(ds.shards),
        "classes": dict(classes),
        "class_names": dict(zip(ds.classes, display_names(ds.classes, ds.meta))),  # id -> name (the id if none)
        "sources": dict(sources),
        "generations": dict(generations),
        "image_sizes": dict(sizes),
        "formats": dict(formats),
        "attributes": {k: dict(v) for k, v in attributes.items()},
        "image_bytes": image_bytes,
        "bytes": sum(int(e["bytes"]) for e in ds.shards),
        "index_sha256": ds.index_sha256,
    }


def format_summary(info: dict[str, Any]) -> str:
    lines = [
        f"dataset   {info['name']}  ({info['path']})",
        f"samples   {info['samples']} in {info['shards']} shards, {info['bytes']:,} bytes "
        f"({info['image_bytes']:,} of image data)",
        "sources   " + ", ".join(f"{k}: {v}" for k, v in sorted(info["sources"].items())),
        "generations " + ", ".join(f"{k}: {v}" for k, v in sorted(info["generations"].items())),
        "sizes     " + ", ".join(f"{k}: {v}" for k, v in sorted(info["image_sizes"].items())),
        "formats   " + ", ".join(f"{k}: {v}" for k, v in sorted(info["formats"].items())),
        "classes",
    ]
    width = max((len(c) for c in info["classes"]), default=5)
    names = info.get("class_names") or {}
    for c, count in info["classes"].items():
        name = names.get(c, c)
        lines.append(f"  {c:<{width}}  {count}" + (f"  {name}" if name != c else ""))
    for axis, counts in sorted(info["attributes"].items()):
        lines.append(f"attribute {axis}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def show(path: Path | RemotePath | str, key: str) -> str:
    """The provenance record of one sample, as indented JSON."""
    return json.dumps(Dataset(path).find(key).provenance, indent=2, sort_keys=True)


def grid(path: Path | RemotePath | str, out: Path | str, per_class: int = 8, cell: int = 64) -> Path:
    """A contact sheet: one labelled row per class with its first ``per_class`` images."""
    if per_class < 1:
        raise FactoryError(f"--per-class must be >= 1; got {per_class}")
    if Path(out).suffix.lower() != ".png":
        raise FactoryError(f"{out}: grid output must be a .png file")
    if not MIN_CELL <= cell <= MAX_CELL:
        raise FactoryError(f"--cell must be between {MIN_CELL} and {MAX_CELL} pixels; got {cell}")
    location = dataset_location(path)  # before any work: never inside the dataset it draws (a URL cannot be)
    claim_output_file(out, inputs=[location] if isinstance(location, Path) else [])
    ds = Dataset(path)
    pad = 4
    label_w = min(220, 12 + 7 * max(len(c) for c in ds.classes))
    width, height = label_w + per_class * (cell + pad) + pad, len(ds.classes) * (cell + pad) + pad
    if width * height > max_image_pixels():
        raise FactoryError(f"a grid of {width}x{height} pixels is over the limit of {max_image_pixels():,} "
                           "pixels; lower --per-class or --cell")
    rows: dict[int, list[Image.Image]] = {i: [] for i in range(len(ds.classes))}
    remaining = len(ds.classes)
    for s in ds:
        row = rows.get(s.label)
        if row is None or len(row) >= per_class:
            continue
        try:
            im = s.pil().convert("RGB")
        except FactoryError as exc:
            raise DatasetError(f"{ds.path}: {exc}") from None
        im.thumbnail((cell, cell), Image.Resampling.NEAREST if max(im.size) < cell else Image.Resampling.LANCZOS)
        if max(im.size) < cell:
            scale = cell // max(im.size)
            im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
        row.append(im)
        if len(row) == per_class:
            remaining -= 1
            if remaining == 0:
                break
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for label, images in rows.items():
        y = pad + label * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), f"{label}: {ds.classes[label]}"[:30], fill="black", font=font)
        for j, im in enumerate(images):
            x = label_w + pad + j * (cell + pad)
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
    out = Path(out)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out
