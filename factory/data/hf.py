"""The ``hf:`` ingest source: Hugging Face datasets read offline, and the factory's own exports
(``factory export-hf``) restored sample for sample from their ``record`` column.

``hf:<name-or-local-path>[:<split>]``: a local folder (``save_to_disk`` or a folder of data files, e.g. an
export), a dataset in the hub cache, or one ``datasets`` prepared before; a name in none of them fails at once,
with no network call.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from factory.core.errors import FactoryError
from factory.core.files import parse_json
from factory.core.sample import Sample, image_ext, real_sample, sanitize_key, sha256_hex, validate_record
from factory.core.secrets import check_no_secret
from factory.data.sourcebase import Source, _check_image

log = logging.getLogger(__name__)


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

    return Source(stem, classes, spec, it, meta=meta, _count=lambda src: len(dset))
