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
from factory.core.text import plural
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
        f"samples   {info['samples']} in {plural(info['shards'], 'shard')}, {info['bytes']:,} bytes "
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


CAPTIONS = ("none", "reason", "clip")  # what ``grid`` writes under each cell
CAPTION_MIN_CELL = 96  # pixels: a captioned cell is at least this wide, so "low_clip_margin" fits in it
CAPTION_LINE = 12  # pixels per caption line (PIL's default font, size 10)
CAPTION_BAND = 2 * CAPTION_LINE + 2  # two lines under each cell


def caption_lines(record: dict[str, Any], mode: str) -> list[str]:
    """The caption of a sample in a grid, from its provenance: ``clip``: its CLIP score; ``reason``: a rejected
    sample's reason and its key number (``low_clip_score`` / ``0.41<0.63``, ``leak`` / ``d=2``, ``over_quota``
    / ``quota 8 of 12``: the cell's quota and its survivors), a kept one's CLIP score. Empty where the record
    has none of it."""
    if mode == "none":
        return []
    scores = record.get("scores") or {}
    decision = record.get("decision") or {}
    ev = decision.get("evidence") or {}
    reason = decision.get("reason") if mode == "reason" else None
    clip = scores.get("clip")
    if reason is None:
        return [f"clip {clip:.2f}"] if isinstance(clip, (int, float)) else []
    detail = ""
    if reason in ("low_clip_score", "low_clip_margin"):
        name, limit = ("clip", "min_score") if reason == "low_clip_score" else ("clip_margin", "min_margin")
        value, threshold = ev.get(name, scores.get(name)), ev.get("threshold", decision.get(limit))
        if isinstance(value, (int, float)) and isinstance(threshold, (int, float)):
            detail = f"{value:.2f}<{threshold:.2f}"
    elif "distance" in ev:
        detail = f"d={ev['distance']}" + (f" s={ev['similarity']:.2f}" if ev.get("method") == "semantic" else "")
    elif reason == "over_quota" and "quota" in ev:
        detail = f"quota {ev['quota']} of {ev.get('survivors')}"
    return [str(reason), detail] if detail else [str(reason)]


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut (with "..") to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def grid(path: Path | RemotePath | str, out: Path | str, per_class: int = 8, cell: int = 64,
         caption: str = "none") -> Path:
    """A contact sheet: one row per class, labelled with the class's name, with its first ``per_class`` images.
    ``caption`` (:data:`CAPTIONS`) writes two short lines under each image (:func:`caption_lines`); the cells
    are then at least :data:`CAPTION_MIN_CELL` pixels (small images are enlarged with nearest-neighbour)."""
    if per_class < 1:
        raise FactoryError(f"--per-class must be >= 1; got {per_class}")
    if Path(out).suffix.lower() != ".png":
        raise FactoryError(f"{out}: grid output must be a .png file")
    if not MIN_CELL <= cell <= MAX_CELL:
        raise FactoryError(f"--cell must be between {MIN_CELL} and {MAX_CELL} pixels; got {cell}")
    if caption not in CAPTIONS:
        raise FactoryError(f"--caption must be one of {', '.join(CAPTIONS)}; got {caption!r}")
    location = dataset_location(path)  # before any work: never inside the dataset it draws (a URL cannot be)
    claim_output_file(out, inputs=[location] if isinstance(location, Path) else [])
    ds = Dataset(path)
    pad = 4
    band = CAPTION_BAND if caption != "none" else 0
    if band:
        cell = max(cell, CAPTION_MIN_CELL)
    font = ImageFont.load_default()
    names = display_names(ds.classes, ds.meta)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = min(220, 12 + int(max(measure.textlength(n, font=font) for n in names)))
    row_h = cell + band + pad
    width, height = label_w + per_class * (cell + pad) + pad, len(ds.classes) * row_h + pad
    if width * height > max_image_pixels():
        raise FactoryError(f"a grid of {width}x{height} pixels is over the limit of {max_image_pixels():,} "
                           "pixels; lower --per-class or --cell")
    rows: dict[int, list[tuple[Image.Image, list[str]]]] = {i: [] for i in range(len(ds.classes))}
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
        row.append((im, caption_lines(s.provenance, caption)))
        if len(row) == per_class:
            remaining -= 1
            if remaining == 0:
                break
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for label, images in rows.items():
        y = pad + label * row_h
        draw.text((pad, y + cell // 2 - 6), _fit(draw, names[label], font, label_w - 2 * pad), fill="black",
                  font=font)
        for j, (im, lines) in enumerate(images):
            x = label_w + pad + j * (cell + pad)
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
            for k, line in enumerate(lines[:2]):
                draw.text((x, y + cell + 1 + k * CAPTION_LINE), _fit(draw, line, font, cell), fill="black",
                          font=font)
    out = Path(out)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out
