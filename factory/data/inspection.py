"""Look at datasets without changing them: verify checksums, summarise, find a sample, draw a grid."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from factory.core.errors import DatasetError, FactoryError
from factory.core.files import file_sha256
from factory.core.sample import decode_image, sha256_hex
from factory.core.shards import INDEX_NAME, Dataset, iter_shard_file


@dataclass
class VerifyResult:
    dataset: Path
    problems: list[str] = field(default_factory=list)  # "shard-000001.tar: why"
    samples: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path | str) -> VerifyResult:
    """Re-hash every shard against ``index.json``, check counts and keys, decode every image.

    Read-only. Each problem is one line that starts with the shard's name.
    """
    try:
        ds = Dataset(path)
    except DatasetError as exc:
        return VerifyResult(Path(path), [f"{INDEX_NAME}: {exc}"])
    result = VerifyResult(ds.path, shards=len(ds.shards))
    total = 0
    for entry in ds.shards:
        name = entry.get("name", "?")
        p = ds.path / name
        if not p.is_file():
            result.problems.append(f"{name}: missing")
            continue
        size = p.stat().st_size
        if size != entry.get("bytes"):
            result.problems.append(f"{name}: size {size} bytes, index says {entry.get('bytes')}")
            continue
        digest = file_sha256(p)
        if digest != entry.get("sha256"):
            result.problems.append(f"{name}: sha256 mismatch (index {str(entry.get('sha256'))[:12]}..., "
                                   f"file {digest[:12]}...)")
            continue
        n = 0
        try:
            for s in iter_shard_file(p):
                n += 1
                where = f"{name}: sample {s.key!r}"
                if s.provenance.get("key") != s.key:
                    raise DatasetError(f"{where}: provenance key is {s.provenance.get('key')!r}")
                if s.provenance.get("label") != s.label:
                    raise DatasetError(f"{where}: .cls {s.label} differs from provenance label")
                if not 0 <= s.label < len(ds.classes):
                    raise DatasetError(f"{where}: label {s.label} outside the {len(ds.classes)} classes")
                if s.provenance.get("sha256") not in (None, sha256_hex(s.image)):
                    raise DatasetError(f"{where}: image bytes do not match provenance sha256")
                try:
                    decode_image(s.image)
                except Exception as exc:
                    raise DatasetError(f"{where}: image does not decode ({exc})") from None
        except DatasetError as exc:
            msg = str(exc)
            result.problems.append(msg if msg.startswith(name) else f"{name}: {msg}")
            continue
        except Exception as exc:  # a corrupt tar: tarfile/webdataset raise various types
            result.problems.append(f"{name}: unreadable tar ({type(exc).__name__}: {exc})")
            continue
        if n != entry.get("samples"):
            result.problems.append(f"{name}: {n} samples, index says {entry.get('samples')}")
        total += n
    listed = {e.get("name") for e in ds.shards}
    for extra in sorted(ds.path.glob("shard-*.tar")):
        if extra.name not in listed:
            result.problems.append(f"{extra.name}: not listed in {INDEX_NAME}")
    if not result.problems and total != len(ds):
        result.problems.append(f"{INDEX_NAME}: {total} samples in shards, index says {len(ds)}")
    result.samples = total
    return result


def summarize(path: Path | str) -> dict[str, Any]:
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
        with Image.open(io.BytesIO(s.image)) as im:  # header only, no decode
            sizes[f"{im.width}x{im.height}"] += 1
        for k, v in (rec.get("attributes") or {}).items():
            attributes[k][str(v)] += 1
    return {
        "name": ds.name,
        "path": str(ds.path),
        "samples": n,
        "shards": len(ds.shards),
        "classes": dict(classes),
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
    for c, count in info["classes"].items():
        lines.append(f"  {c:<{width}}  {count}")
    for axis, counts in sorted(info["attributes"].items()):
        lines.append(f"attribute {axis}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def show(path: Path | str, key: str) -> str:
    """The provenance record of one sample, as indented JSON."""
    return json.dumps(Dataset(path).find(key).provenance, indent=2, sort_keys=True)


def grid(path: Path | str, out: Path | str, per_class: int = 8, cell: int = 64) -> Path:
    """A contact sheet: one labelled row per class with its first ``per_class`` images."""
    if per_class < 1:
        raise FactoryError(f"--per-class must be >= 1; got {per_class}")
    ds = Dataset(path)
    rows: dict[int, list[Image.Image]] = {i: [] for i in range(len(ds.classes))}
    remaining = len(ds.classes)
    for s in ds:
        row = rows.get(s.label)
        if row is None or len(row) >= per_class:
            continue
        im = s.pil().convert("RGB")
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
    label_w = min(220, 12 + 7 * max(len(c) for c in ds.classes))
    pad = 4
    sheet = Image.new("RGB", (label_w + per_class * (cell + pad) + pad, len(ds.classes) * (cell + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for label, images in rows.items():
        y = pad + label * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), f"{label}: {ds.classes[label]}"[:30], fill="black", font=font)
        for j, im in enumerate(images):
            x = label_w + pad + j * (cell + pad)
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise FactoryError(f"{out}: grid output must be a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(out)
    return out
