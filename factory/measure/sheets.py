"""Contact sheets of factory datasets: one labelled row per class, a few images each.

The images of a row are chosen deterministically and streamed: for each class the ``per_class`` samples
whose ``sha256(seed:key)`` is smallest, so the same dataset gives the same sheet, the choice does not
favour the first shard, and memory holds only the chosen images. Small images (8x8 digits) are enlarged
with nearest-neighbour (pixels stay pixels), large ones (photos) shrunk to the cell.
"""

from __future__ import annotations

import hashlib
import heapq
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from factory.core.errors import DatasetError, FactoryError
from factory.core.sample import Sample
from factory.core.shards import Dataset
from factory.data.classnames import display_names

PNG_LIMIT = 48_000  # bytes: a strip encoded larger than this (photos) is stored as JPEG instead


@dataclass
class Row:
    """One class's row of a sheet: its display name and the chosen samples (in choice order)."""
    label: int
    name: str
    samples: list[Sample]


def rank(key: str, seed: int = 0) -> str:
    """The order samples are chosen in: a stable hash of the seed and the key."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def choose(samples: Iterable[Sample], per_group: int, seed: int = 0,
           group: Callable[[Sample], Hashable] = lambda s: s.label) -> dict[Hashable, list[Sample]]:
    """For each group (default: the label) the ``per_group`` samples of smallest :func:`rank`, in that
    order (streamed: memory holds only the chosen ones)."""
    heaps: dict[Hashable, list[tuple[str, Sample]]] = {}
    for s in samples:
        heap = heaps.setdefault(group(s), [])
        item = (_neg(rank(s.key, seed)), s)  # a min-heap of reversed ranks: heap[0] is the largest rank kept
        if len(heap) < per_group:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    return {g: [s for _, s in sorted(h, key=lambda t: t[0], reverse=True)] for g, h in heaps.items()}


def _neg(hexdigest: str) -> str:
    """A string that sorts in the reverse order of ``hexdigest`` (heapq is a min-heap)."""
    return hexdigest.translate(str.maketrans("0123456789abcdef", "fedcba9876543210"))


def rows(path: Path | str, per_class: int = 8, seed: int = 0) -> list[Row]:
    """The rows of the contact sheet of the dataset at ``path``: one per class, labelled with its name."""
    if per_class < 1:
        raise FactoryError(f"contact sheet: per_class must be >= 1; got {per_class}")
    ds = Dataset(path)
    names = display_names(ds.classes, ds.meta)
    chosen = choose(ds, per_class, seed)
    return [Row(c, names[c], chosen.get(c, [])) for c in range(len(ds.classes))]


def tile(sample: Sample, cell: int) -> Image.Image:
    """``sample``'s image fitted into a ``cell`` x ``cell`` square (RGB), enlarged by a whole factor with
    nearest-neighbour when small, shrunk with Lanczos when large."""
    try:
        im = sample.pil().convert("RGB")
    except FactoryError as exc:
        raise DatasetError(f"sample {sample.key!r}: {exc}") from None
    if max(im.size) > cell:
        im.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    elif max(im.size) * 2 <= cell:
        k = cell // max(im.size)
        im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    out = Image.new("RGB", (cell, cell), "white")
    out.paste(im, ((cell - im.width) // 2, (cell - im.height) // 2))
    return out


def strip(images: Sequence[Image.Image], cell: int, pad: int = 2) -> Image.Image:
    """Tiles side by side on white (an empty row is one blank cell)."""
    out = Image.new("RGB", (max(1, len(images)) * (cell + pad) + pad, cell + 2 * pad), "white")
    for i, im in enumerate(images):
        out.paste(im, (pad + i * (cell + pad), pad))
    return out


def sheet(labelled: Sequence[tuple[str, Sequence[Image.Image]]], cell: int, title: str | None = None,
          pad: int = 4) -> Image.Image:
    """A whole contact sheet as one image: each row's label on the left, its tiles beside it."""
    font = ImageFont.load_default()
    label_w = min(180, 12 + 7 * max((len(name) for name, _ in labelled), default=1))
    head = 18 if title else 0
    width = label_w + max((len(t) for _, t in labelled), default=1) * (cell + pad) + pad
    out = Image.new("RGB", (width, head + len(labelled) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, 3), title, fill="black", font=font)
    for r, (name, tiles) in enumerate(labelled):
        y = head + pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), name[:24], fill="black", font=font)
        for j, im in enumerate(tiles):
            out.paste(im, (label_w + j * (cell + pad), y))
    return out


def grey_if_grey(im: Image.Image) -> Image.Image:
    """``im`` as one channel when its three are equal (digits): a third of the bytes."""
    if im.mode == "RGB":
        r, g, b = (c.tobytes() for c in im.split())
        if r == g == b:
            return im.convert("L")
    return im


def encode(im: Image.Image) -> tuple[str, bytes]:
    """``(mime type, bytes)``: PNG, or JPEG (quality 85) when the PNG would be larger than ``PNG_LIMIT``."""
    im = grey_if_grey(im)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    if buf.tell() <= PNG_LIMIT:
        return "image/png", buf.getvalue()
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=85)
    return "image/jpeg", buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    grey_if_grey(im).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
