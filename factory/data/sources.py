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
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.files import parse_json
from factory.core.limits import MEMBER_BYTES_ENV, max_member_bytes
from factory.core.sample import Sample, decode_image, image_ext, real_sample, sanitize_key, sha256_hex, validate_record
from factory.core.secrets import check_no_secret
from factory.core.shards import INDEX_NAME, Dataset

log = logging.getLogger(__name__)

# A fixed palette for the coloured digits (name, RGB). Class c's "own" colour is PALETTE[c % 10].
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 25, 75)), ("green", (60, 180, 75)), ("yellow", (255, 225, 25)),
    ("blue", (0, 130, 200)), ("orange", (245, 130, 48)), ("purple", (145, 30, 180)),
    ("cyan", (70, 240, 240)), ("magenta", (240, 50, 230)), ("lime", (210, 245, 60)),
    ("pink", (250, 190, 212)),
)


class BadImage(FactoryError):
    """An image that cannot be decoded; ``--skip-bad`` turns it into a counted skip."""


@dataclass
class Source:
    """A named, ordered stream of real samples with a fixed class list."""

    name: str
    classes: list[str]
    spec: str
    _iter: Callable[["Source"], Iterator[Sample]]
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    skip_bad: bool = False

    def __iter__(self) -> Iterator[Sample]:
        return self._iter(self)

    def bad(self, what: str, exc: Exception, reason: str = "unreadable image") -> None:
        """An input that cannot be used: an error naming it, or with ``skip_bad`` a counted skip."""
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        msg = f"{what}: {reason} ({detail})"
        if not self.skip_bad:
            raise BadImage(msg)
        log.warning("skipping %s", msg)
        self.skipped.append(what)


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


def digits_source() -> Source:
    def it(src: Source) -> Iterator[Sample]:
        pixels, targets = _digits_pixels()
        for i, (px, y) in enumerate(zip(pixels, targets)):
            data, im = _png_gray(px)
            yield real_sample(f"digits-{i:05d}", data, int(y), str(y),
                              {"dataset": "sklearn:digits", "index": i}, image=im)

    return Source("digits", [str(i) for i in range(10)], "sklearn:digits", it,
                  meta={"source": "sklearn:digits"})


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
                        "attributes": {"color": [n for n, _ in PALETTE]}})


def _check_image(data: bytes) -> Image.Image:
    im = decode_image(data)
    if im.format not in ("PNG", "JPEG", "WEBP"):
        raise ValueError(f"format {im.format} is not stored as is (PNG, JPEG or WebP only)")
    return im


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

    def it(src: Source) -> Iterator[Sample]:
        found = _list_files(root, classes, src)
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

    return Source(root.name, classes, str(root), it, meta={"source": str(root.resolve())})


def reshard_source(path: Path) -> Source:
    ds = Dataset(path)

    def it(src: Source) -> Iterator[Sample]:
        # every sample decoded and re-hashed against its record; --skip-bad leaves bad ones out
        yield from ds.iter_checked(skip_bad=src.skip_bad, on_bad=src.skipped.append)

    meta = ds.meta
    meta["resharded_from"] = ds.ref()
    return Source(ds.name, ds.classes, str(path), it, meta=meta)


# Columns of a Hugging Face export (``factory export-hf``, :mod:`factory.share.columns`): a dataset with a string
# ``record`` column beside ``key`` and ``sha256`` is one, and ingest restores each sample from its record.
IMAGE_COLUMN, LABEL_COLUMN, RECORD_COLUMN = "image", "label", "record"
EXPORT_MARKS = ("key", "sha256", RECORD_COLUMN)
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@contextmanager
def _offline() -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` in offline mode for the block, whatever ``HF_HUB_OFFLINE`` says
    (a cached dataset loads from the cache at once instead of retrying the network for ~25 s first), and
    without ``datasets``' own progress bars (the CLI shows its bar on a terminal only)."""
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.is_progress_bar_enabled()
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved[:2]
        if saved[2]:
            datasets.enable_progress_bars()


def _in_datasets_cache(name: str) -> bool:
    """Whether ``datasets`` prepared ``name`` before (its cache holds ``<owner>___<name>/<config>/<ver>/<hash>``)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE) / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


def _load_hf(name: str, split: str | None, spec: str) -> Any:
    """Load ``name`` offline: a folder (``save_to_disk`` or data files such as an export), a Hub dataset's
    snapshot in the hub cache, or one ``datasets`` prepared before. A name that is none of these fails at
    once, never reaching for the network."""
    import datasets
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    path = Path(name)
    with _offline():
        if path.exists():
            if not path.is_dir():
                raise FactoryError(f"{spec}: {name} is not a folder")
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                return datasets.load_from_disk(str(path))
            # prepared afresh: datasets caches a folder by its name and card, not its files (stale rows otherwise)
            return datasets.load_dataset(str(path), split=split, download_mode="force_redownload")
        if not _REPO_ID.fullmatch(name) or ".." in name:
            raise FactoryError(f"{spec}: no such folder, and {name!r} is not a Hugging Face dataset name")
        try:
            snapshot = snapshot_download(name, repo_type="dataset", local_files_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
            snapshot = None
        if snapshot is not None:
            return datasets.load_dataset(snapshot, split=split)
        if _in_datasets_cache(name):
            return datasets.load_dataset(name, split=split)
    raise FactoryError(f"{spec}: no such folder, and {name!r} is not in the Hugging Face cache "
                       f"({constants.HF_HUB_CACHE}); hf: sources are read offline: download it first "
                       f"(hf download {name} --repo-type dataset) or give its folder")


def _hf_column(dset: Any, wanted: str | None, kind: Any, option: str, spec: str) -> str:
    if wanted is not None:
        if wanted not in dset.features:
            raise FactoryError(f"{spec}: {option} {wanted!r}: no such column (columns: {sorted(dset.features)})")
        return wanted
    found = next((c for c, f in dset.features.items() if isinstance(f, kind)), None)
    if found is None:
        raise FactoryError(f"{spec}: no {kind.__name__} column (features: {sorted(dset.features)}); "
                           f"name one with {option}")
    return found


def _hf_labels(dset: Any, col: str, spec: str) -> tuple[list[str], Callable[[Any], int]]:
    """The class list and the value -> label map of the label column: a ClassLabel's names, or the sorted
    distinct values of an integer or string column."""
    import datasets

    feat = dset.features[col]
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names), int
    dtype = getattr(feat, "dtype", "")
    if not isinstance(feat, datasets.Value) or not dtype.startswith(("int", "uint", "string", "large_string")):
        raise FactoryError(f"{spec}: --label-column {col!r} is {feat}; it must be a ClassLabel, integer or "
                           f"string column")
    values = sorted(v for v in dset.unique(col) if v is not None)
    index = {v: i for i, v in enumerate(values)}
    return [str(v) for v in values], index.__getitem__


def _export_sample(row: dict[str, Any], data: bytes, label: int, classes: list[str], where: str) -> Sample:
    """A sample of a factory export, restored from its ``record`` exactly: the record checked against the
    contract, the image bytes against its sha256, its label and class against the row's."""
    rec = parse_json(row[RECORD_COLUMN] or "", f"{where} record")
    if not isinstance(rec, dict):
        raise FactoryError(f"{where}: record is not a JSON object")
    rec = validate_record(rec)
    if sha256_hex(data) != rec["sha256"]:
        raise FactoryError(f"{where} ({rec['key']}): image bytes do not match the record's sha256")
    if rec["label"] != label or rec["class_name"] != classes[label]:
        raise FactoryError(f"{where} ({rec['key']}): record says label {rec['label']} ({rec['class_name']!r}), "
                           f"the row {label} ({classes[label]!r})")
    return Sample(key=rec["key"], image=data, label=label, provenance=rec, ext=image_ext(data))


def hf_source(spec: str, image_column: str | None = None, label_column: str | None = None) -> Source:
    """``hf:<name-or-path>[:<split>]`` through ``datasets``, offline (a folder or the HF cache; anything
    else fails at once). The image is ``image_column`` (default: the first Image column; original bytes
    kept), the label ``label_column`` (default: the first ClassLabel column; an integer or string column
    gets its sorted distinct values as classes). A factory export (``factory export-hf``: a ``record``
    column) gives back every sample exactly as it was: key, provenance record and image bytes."""
    import datasets

    body = spec[len("hf:"):]
    if not body:
        raise FactoryError("hf: source needs a dataset name or path, e.g. hf:./my_dataset:train")
    name, split = body, None
    if ":" in body:
        head, tail = body.rsplit(":", 1)
        if tail and "/" not in tail and not Path(body).exists():
            name, split = head, tail
    try:
        obj = _load_hf(name, split, spec)
    except FactoryError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, DatasetGenerationError)
        detail = " ".join(str(exc).split())[:300]
        raise FactoryError(f"{spec}: cannot load with datasets ({type(exc).__name__}: {detail})") from None
    if isinstance(obj, datasets.DatasetDict):
        if split is None:
            if len(obj) != 1:
                raise FactoryError(f"{spec}: has splits {sorted(obj)}; name one, e.g. hf:{name}:{sorted(obj)[0]}")
            split = next(iter(obj))
        if split not in obj:
            raise FactoryError(f"{spec}: no split {split!r}; choose one of {sorted(obj)}")
        dset = obj[split]
    else:
        dset = obj
    image_col = _hf_column(dset, image_column, datasets.Image, "--image-column", spec)
    label_col = _hf_column(dset, label_column, datasets.ClassLabel, "--label-column", spec)
    if image_col == label_col:
        raise FactoryError(f"{spec}: the image and the label cannot both be column {image_col!r}")
    classes, to_label = _hf_labels(dset, label_col, spec)
    if not classes:
        raise FactoryError(f"{spec}: label column {label_col!r} has no values")
    check_no_secret(classes, f"{spec}: class names")
    try:  # keep the original bytes (a column of paths or bytes becomes an Image column here)
        dset = dset.cast_column(image_col, datasets.Image(decode=False))
    except Exception as exc:
        raise FactoryError(f"{spec}: --image-column {image_col!r} ({dset.features[image_col]}) is not an image "
                           f"column ({type(exc).__name__})") from None
    exported = all(isinstance(dset.features.get(c), datasets.Value) and dset.features[c].dtype == "string"
                   for c in EXPORT_MARKS)
    ident = f"hf:{name}" + (f":{split}" if split else "")
    stem = sanitize_key(Path(name).name or name)
    part = sanitize_key(split or "data")  # keys are unique by row index
    meta: dict[str, Any] = {"source": ident}
    if exported:
        meta["restored_from"] = "factory export-hf"
        if "class_name" in dset.features:  # the human names the export carried beside the ids
            names = {classes[int(y)]: n for y, n in zip(dset[label_col], dset["class_name"]) if n is not None}
            if any(names.get(c, c) != c for c in classes):
                meta["class_names"] = {c: names.get(c, c) for c in classes}

    def it(src: Source) -> Iterator[Sample]:
        for i, row in enumerate(dset):
            img = row[image_col] or {}
            data = img.get("bytes")
            where = f"{ident} row {i}"
            if data is None and img.get("path"):
                try:
                    data = Path(img["path"]).read_bytes()
                except OSError as exc:
                    src.bad(f"{where} ({img['path']})", exc, "cannot read")
                    continue
            try:
                im = _check_image(data or b"")
            except (FactoryError, ValueError) as exc:
                src.bad(where, exc)
                continue
            value = row[label_col]
            try:
                label = to_label(value)
            except (KeyError, TypeError, ValueError):
                src.bad(where, FactoryError(f"label {value!r} is not one of the classes"), "bad label")
                continue
            if exported:
                try:
                    yield _export_sample(row, data, label, classes, where)
                except FactoryError as exc:
                    src.bad(where, exc, "bad record")
                continue
            yield real_sample(f"{stem}-{part}-{i:08d}", data, label, classes[label],
                              {"dataset": ident, "index": i}, image=im)

    return Source(stem, classes, spec, it, meta=meta)


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
