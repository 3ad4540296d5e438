"""Real-data sources for ``factory ingest``: each yields :class:`Sample` objects in a fixed order.

Source specs:

- ``sklearn:digits``: scikit-learn's 1,797 real 8x8 handwritten digits (8-bit grayscale PNG).
- ``sklearn:digits-colored[?bias=0.9&seed=0]``: the digits tinted with a foreground colour from a fixed
  palette; colour agrees with the class's own colour at rate ``bias`` (Colored-MNIST construction).
- ``hf:<name-or-local-path>[:<split>]``: a Hugging Face dataset (offline: a local path or the HF cache; a
  name in neither fails at once); a factory export (``factory export-hf``) comes back sample for sample.
- a dataset directory (has ``index.json``): re-shard it, keeping keys and provenance.
- an ImageFolder directory (``<class>/<file>``): original encoded bytes kept unchanged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.limits import MEMBER_BYTES_ENV, max_member_bytes
from factory.core.sample import Sample, real_sample, sanitize_key
from factory.core.secrets import check_no_secret
from factory.core.shards import INDEX_NAME, Dataset
from factory.data.hf import hf_source
from factory.data.sourcebase import Source, _check_image

log = logging.getLogger(__name__)

# A fixed palette for the coloured digits (name, RGB). Class c's "own" colour is PALETTE[c % 10].
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 25, 75)), ("green", (60, 180, 75)), ("yellow", (255, 225, 25)),
    ("blue", (0, 130, 200)), ("orange", (245, 130, 48)), ("purple", (145, 30, 180)),
    ("cyan", (70, 240, 240)), ("magenta", (240, 50, 230)), ("lime", (210, 245, 60)),
    ("pink", (250, 190, 212)),
)


def _png_gray(pixels: np.ndarray) -> tuple[bytes, Image.Image]:
    im = Image.fromarray(pixels.astype(np.uint8), mode="L")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue(), im


def _digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # Values are 0..16 (counts of set pixels in 4x4 blocks); scale to the full 8-bit range.
    pixels = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return pixels, d.target.astype(int)


def _digits_count(src: Source) -> int:
    return len(_digits_pixels()[1])


def digits_source() -> Source:
    def it(src: Source) -> Iterator[Sample]:
        pixels, targets = _digits_pixels()
        for i, (px, y) in enumerate(zip(pixels, targets)):
            data, im = _png_gray(px)
            yield real_sample(f"digits-{i:05d}", data, int(y), str(y),
                              {"dataset": "sklearn:digits", "index": i}, image=im)

    return Source("digits", [str(i) for i in range(10)], "sklearn:digits", it,
                  meta={"source": "sklearn:digits"}, _count=_digits_count)


def colored_digits_source(bias: float = 0.9, seed: int = 0) -> Source:
    """Digits with a coloured foreground; colour == the class's own colour with probability ``bias``,
    otherwise uniform over the other colours. Colour is recorded in provenance ``attributes``."""
    if not 0.0 <= bias <= 1.0:
        raise FactoryError(f"sklearn:digits-colored bias must be in [0, 1]; got {bias}")
    spec = f"sklearn:digits-colored?bias={bias:g}&seed={seed}"

    def it(src: Source) -> Iterator[Sample]:
        pixels, targets = _digits_pixels()
        rng = np.random.default_rng(seed)
        for i, (px, y) in enumerate(zip(pixels, targets)):
            own = int(y) % len(PALETTE)
            if rng.random() < bias:
                c = own
            else:
                others = [k for k in range(len(PALETTE)) if k != own]
                c = int(others[rng.integers(len(others))])
            color_name, rgb = PALETTE[c]
            alpha = px.astype(np.float32)[..., None] / 255.0
            rgb_px = np.rint(alpha * np.array(rgb, np.float32)).astype(np.uint8)
            im = Image.fromarray(rgb_px, mode="RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=9)
            yield real_sample(f"cdigits-{i:05d}", buf.getvalue(), int(y), str(y),
                              {"dataset": spec, "index": i}, attributes={"color": color_name}, image=im)

    return Source("digits-colored", [str(i) for i in range(10)], spec, it,
                  meta={"source": spec, "bias": bias, "seed": seed,
                        "attributes": {"color": [n for n, _ in PALETTE]}}, _count=_digits_count)


def imagefolder_key(rel: str) -> str:
    """The plain key of the file at ``rel`` (``<class>/<sub>/<name>.<ext>``, POSIX) of an ImageFolder:
    its path without the extension, ``/`` as ``_``, other characters outside ``[A-Za-z0-9_-]`` as ``_``
    (``n01440764/n01440764_10026.JPEG`` -> ``n01440764_n01440764_10026``)."""
    return sanitize_key(rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel)


def imagefolder_keys(rels: list[str]) -> list[str]:
    """Unique keys for the files ``rels`` of one ImageFolder, by a rule that depends on each file's own path
    and on the files it collides with, never on order.

    A file keeps its plain key (:func:`imagefolder_key`) when that key spells its path exactly (only ``/``
    became ``_``) and no other file has the same plain key. Otherwise (a lossy name such as ``猫/1.JPEG``, or
    ``a/b_x.JPEG`` beside ``a_b/x.JPEG``) the key is the plain key, ``-`` and the first 10 hex digits of the
    sha256 of the relative POSIX path. The record's ``origin.path`` holds that path, so every key maps back
    to its file.
    """
    plain = [imagefolder_key(r) for r in rels]
    stems = [r.rsplit(".", 1)[0] if "." in r.rsplit("/", 1)[-1] else r for r in rels]
    shared = {k for k, n in Counter(plain).items() if n > 1}
    keys = [k if k not in shared and k == stem.replace("/", "_")
            else f"{k}-{hashlib.sha256(rel.encode()).hexdigest()[:10]}"
            for k, stem, rel in zip(plain, stems, rels)]
    first: dict[str, str] = {}
    for key, rel in zip(keys, rels):
        if key in first:  # a 10-digit hash suffix that spells another file's key: never seen, still checked
            raise FactoryError(f"{first[key]} and {rel}: both would get the sample key {key!r}; rename one")
        first[key] = rel
    return keys


def _list_files(root: Path, classes: list[str], src: Source) -> list[tuple[int, str, Path]]:
    """``(label, class, file)`` of every image file under each class folder, sorted as paths. A folder
    that cannot be listed is an error naming it, or a counted skip with ``--skip-bad`` (``os.walk``
    reports it; ``Path.rglob`` would leave it out silently)."""
    def unreadable(exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else root
        msg = f"{where}: cannot list folder ({exc.strerror or exc})"
        if not src.skip_bad:
            raise FactoryError(msg)
        log.warning("skipping %s", msg)
        src.skipped.append(f"{where} (unreadable folder)")

    found = []
    for label, cls in enumerate(classes):
        files = []
        for folder, dirs, names in os.walk(root / cls, onerror=unreadable):
            dirs.sort()
            files += [Path(folder) / n for n in names if not n.startswith(".")]
        found += [(label, cls, f) for f in sorted(files)]  # FIFOs and broken links too: refused below
    return found


def imagefolder_source(root: Path) -> Source:
    """An ImageFolder (``<class>/<file>``, files in subfolders too): original encoded bytes kept unchanged;
    keys by :func:`imagefolder_keys`; class names are the folder names."""
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise FactoryError(f"{root}: cannot list folder ({exc.strerror or exc})") from None
    if not classes:
        raise FactoryError(f"{root}: no class folders (expected ImageFolder layout <class>/<file>)")
    for cls in classes:
        check_no_secret(cls, f"{root / cls}: class folder name")

    listed: list[list[tuple[int, str, Path]]] = []  # the files, listed once (for the total, then read)

    def files(src: Source) -> list[tuple[int, str, Path]]:
        if not listed:
            listed.append(_list_files(root, classes, src))
        return listed[0]

    def it(src: Source) -> Iterator[Sample]:
        found = files(src)
        rels = [f.relative_to(root).as_posix() for _, _, f in found]
        limit = max_member_bytes()
        for (label, cls, f), rel, key in zip(found, rels, imagefolder_keys(rels)):
            if not f.is_file():  # a FIFO would block the read; a broken link has nothing to read
                src.bad(str(f), FactoryError("not a regular file (a FIFO, device, socket or broken link)"))
                continue
            try:
                size = f.stat().st_size
                if size > limit:
                    src.bad(str(f), FactoryError(f"{size:,} bytes, over the limit of {limit:,} bytes (raise "
                                                 f"{MEMBER_BYTES_ENV} to allow it)"))
                    continue
                data = f.read_bytes()
            except OSError as exc:
                src.bad(str(f), exc, "cannot read")
                continue
            try:
                im = _check_image(data)
            except (FactoryError, ValueError) as exc:
                src.bad(str(f), exc)
                continue
            yield real_sample(key, data, label, cls, {"dataset": str(root), "path": rel}, image=im)

    return Source(root.name, classes, str(root), it, meta={"source": str(root.resolve())},
                  _count=lambda src: len(files(src)))


def reshard_source(path: Path) -> Source:
    ds = Dataset(path)

    def it(src: Source) -> Iterator[Sample]:
        # every sample decoded and re-hashed against its record; --skip-bad leaves bad ones out
        yield from ds.iter_checked(skip_bad=src.skip_bad, on_bad=src.skipped.append)

    meta = ds.meta
    meta["resharded_from"] = ds.ref()
    return Source(ds.name, ds.classes, str(path), it, meta=meta, _count=lambda src: len(ds))


def open_source(spec: str, skip_bad: bool = False, *, image_column: str | None = None,
                label_column: str | None = None) -> Source:
    """Resolve a source spec (see module docstring) or raise FactoryError naming what is wrong.
    ``image_column``/``label_column`` choose the columns of an ``hf:`` source (any other refuses them)."""
    if (image_column is not None or label_column is not None) and not spec.startswith("hf:"):
        option = "--image-column" if image_column is not None else "--label-column"
        raise FactoryError(f"{option} applies to hf: sources only; {spec!r} is not one")
    if spec.startswith("sklearn:"):
        what, _, query = spec[len("sklearn:"):].partition("?")
        opts = dict(parse_qsl(query))
        if what == "digits" and not opts:
            src = digits_source()
        elif what == "digits-colored":
            unknown = set(opts) - {"bias", "seed"}
            if unknown:
                raise FactoryError(f"{spec}: unknown option(s) {sorted(unknown)}; allowed: bias, seed")
            try:
                src = colored_digits_source(float(opts.get("bias", 0.9)), int(opts.get("seed", 0)))
            except ValueError as exc:
                raise FactoryError(f"{spec}: {exc}") from None
        else:
            raise FactoryError(f"unknown sklearn source {spec!r}; choose sklearn:digits or sklearn:digits-colored")
    elif spec.startswith("hf:"):
        src = hf_source(spec, image_column, label_column)
    else:
        path = Path(spec)
        if ":" in spec.split("/")[0] and not path.exists():
            scheme = spec.split(":", 1)[0]
            raise FactoryError(f"unknown source scheme {scheme!r} in {spec!r}; use sklearn:, hf: or a folder path")
        if not path.exists():
            raise FactoryError(f"{spec}: no such file or folder")
        if not path.is_dir():
            raise FactoryError(f"{spec}: not a folder (expected ImageFolder layout or a dataset directory)")
        src = reshard_source(path) if (path / INDEX_NAME).exists() else imagefolder_source(path)
    src.skip_bad = skip_bad
    return src
