"""Export a factory dataset or pool as a Hugging Face dataset folder: what ``datasets.load_dataset(OUT_DIR)``
loads offline and ``huggingface-cli upload`` pushes as it is.

```
<out>/
  README.md                               dataset card: the Hub's YAML header + a body built from the data
  croissant.json                          MLCommons Croissant 1.0 with the RAI fields, validated by mlcroissant
  data/train-00000-of-00002.parquet       rows of :mod:`factory.share.columns`; row groups of 100 rows
  data/train-00001-of-00002.parquet
```

- Rows stream shard by shard from the checked reader (every image re-hashed against its record, as every copy
  of samples is); a pool exports the samples it drew, component by component, in dataset order.
- The Parquet schema carries the ``datasets`` features in its ``huggingface`` metadata, and the card's YAML
  holds them too, so ``load_dataset`` gives an ``Image`` and a ``ClassLabel`` (names: the class ids; the human
  names are the ``class_name`` column, the card's class table and Croissant's ``classes`` record set).
- A shard closes once its rows hold ``max_shard_bytes`` of image and record bytes (default 500 MB, as
  ``push_to_hub``) or ``shard_rows`` rows; names are ``<split>-NNNNN-of-NNNNN.parquet``.
- Atomic and exclusive like every factory output: assembled in ``.<out>.partial`` beside it and swapped in
  whole (:class:`factory.core.outputs.OutputDir`); an existing folder is replaced (with ``overwrite``) only if
  it is one of our exports. The same input gives the same bytes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, remove_quietly, staging_dir, writing
from factory.core.outputs import OutputDir, output_lock, resolved, staging_problem
from factory.core.sample import Sample, sanitize_key
from factory.core.secrets import check_no_secret
from factory.core.shards import Dataset
from factory.data.classnames import display_names
from factory.data.pools import read_pool
from factory.share.card import MARK, ExportStats, build_card, find_pipeline_root, gather_results
from factory.share.columns import RowContext, features, row
from factory.share.croissant import CROISSANT_NAME, build_croissant, write_croissant

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 500 * 1000 * 1000
ROW_GROUP = 100  # rows per Parquet row group: what ``datasets`` uses for image data (random access stays cheap)
CARD_NAME = "README.md"
PARQUET_RE = re.compile(r"[A-Za-z0-9_]+-\d{5}-of-\d{5}\.parquet")
SPLIT_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_TEMP = re.compile(r"\..+\.(part|tmp-\d+)")


@dataclass
class ExportSummary:
    out_dir: Path
    samples: int
    files: list[str]
    classes: dict[str, int]
    sources: dict[str, int]
    bytes: int
    results: list[str] = field(default_factory=list)  # what the card found of the pipeline's results


@dataclass
class _Part:
    dataset: Dataset
    keys: frozenset[str] | None  # None: the whole dataset


def _open(src: Path) -> tuple[str, list[str], list[_Part], int]:
    """Name, classes, parts and sample count of a dataset folder or a pool file."""
    if src.is_dir():
        ds = Dataset(src)
        return ds.name, ds.classes, [_Part(ds, None)], len(ds)
    if src.is_file():
        pool = read_pool(src)  # checks that every dataset it names is unchanged
        parts = [_Part(Dataset(c["dataset"]["path"]), frozenset(c["keys"])) for c in pool["components"]]
        return str(pool["name"]), list(pool["classes"]), parts, int(pool["samples"])
    raise FactoryError(f"{src}: no such dataset folder or pool file")


def _samples(parts: list[_Part]) -> Iterator[tuple[Sample, str]]:
    """Every exported sample with its dataset's id, each fully checked; keys unique across the parts."""
    seen: set[str] = set()
    for part in parts:
        for s in part.dataset.iter_checked():
            if part.keys is not None and s.key not in part.keys:
                continue
            if s.key in seen:
                raise FactoryError(f"{part.dataset.path}: sample {s.key!r} is also in an earlier component of the "
                                   f"pool; keys must be unique in an export")
            seen.add(s.key)
            yield s, part.dataset.name


class _ParquetShards:
    """Rows into ``<split>-NNNNN-of-NNNNN.parquet`` files of at most ``max_bytes`` (or ``max_rows`` rows),
    written as hidden ``.part`` files and named when the count is known."""

    def __init__(self, folder: Path, split: str, schema: Any, max_bytes: int, max_rows: int | None) -> None:
        self.folder, self.split, self.schema = folder, split, schema
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self.parts: list[Path] = []
        self._writer: Any = None
        self._path: Path | None = None
        self._rows: list[dict[str, Any]] = []
        self._bytes = self._n = 0
        self.arrow_bytes = self.file_bytes = 0  # in memory (what datasets calls num_bytes) and on disk

    def add(self, r: dict[str, Any], size: int) -> None:
        if self._writer is not None and (self._bytes + size > self.max_bytes or
                                         (self.max_rows is not None and self._n >= self.max_rows)):
            self._close_part()
        if self._writer is None:
            import pyarrow.parquet as pq

            self._path = self.folder / f".{self.split}-{len(self.parts):05d}.parquet.part"
            with writing(self._path):
                self.folder.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self._path, self.schema, compression="snappy")
        self._rows.append(r)
        self._bytes += size
        self._n += 1
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            table = pa.Table.from_pylist(self._rows, schema=self.schema)
            self.arrow_bytes += table.nbytes
            with writing(self._path or self.folder):
                self._writer.write_table(table)
            self._rows = []

    def _close_part(self) -> None:
        self._flush()
        with writing(self._path or self.folder):
            self._writer.close()
        self.parts.append(self._path)  # type: ignore[arg-type]
        self._writer, self._path, self._bytes, self._n = None, None, 0, 0

    def close(self) -> list[str]:
        if self._writer is not None:
            self._close_part()
        names = [f"{self.split}-{i:05d}-of-{len(self.parts):05d}.parquet" for i in range(len(self.parts))]
        with writing(self.folder):
            for part, name in zip(self.parts, names):
                self.file_bytes += part.stat().st_size
                os.replace(part, self.folder / name)
        return [f"data/{n}" for n in names]

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:  # the error being raised is the one to report
                log.debug("closing %s after an error: %s", self._path, exc)


def export_problem(folder: Path) -> str | None:
    """What keeps the existing folder ``folder`` from being replaced as a factory export, or None: ours hold
    our card (``README.md`` with our mark), ``croissant.json`` and ``data/`` of Parquet shards, nothing else."""
    try:
        names = {p.name for p in folder.iterdir() if not _TEMP.fullmatch(p.name)}
        card = (folder / CARD_NAME).read_bytes() if (folder / CARD_NAME).is_file() else b""
        data = folder / "data"
        shards = [p for p in data.iterdir() if not _TEMP.fullmatch(p.name)] if data.is_dir() else []
    except OSError as exc:
        return f"is not a factory Hugging Face export (cannot read it: {exc.strerror or exc})"
    if MARK.encode() not in card:
        return f"is not a factory Hugging Face export (no {CARD_NAME} written by factory export-hf)"
    extra = sorted(names - {CARD_NAME, CROISSANT_NAME, "data"}) + sorted(
        f"data/{p.name}" for p in shards if not (PARQUET_RE.fullmatch(p.name) and p.is_file() and not p.is_symlink()))
    if extra:
        return f"holds more than a factory Hugging Face export (it also holds {', '.join(extra[:3])})"
    return None


def _clear_stale_staging(out_dir: Path) -> None:
    """Remove an export's staging folder that a killed export left (the generic writers' check would refuse
    its card and ``data/`` folder), under the output's lock; anything else there is left for
    :class:`OutputDir` to refuse."""
    staging = staging_dir(resolved(out_dir))
    if not os.path.lexists(staging) or staging_problem(staging) is None:
        return
    if export_problem(staging) is not None and not _partial_export(staging):
        return
    with output_lock(out_dir):
        if os.path.lexists(staging) and (export_problem(staging) is None or _partial_export(staging)):
            log.info("removing %s, left by an interrupted export", staging)
            remove_quietly(staging)


def _partial_export(staging: Path) -> bool:
    """Whether ``staging`` holds only what an export writes before its card: ``data/`` with shards."""
    try:
        top = [p for p in staging.iterdir() if not _TEMP.fullmatch(p.name)]
        return [p.name for p in top] == ["data"] and top[0].is_dir() and not top[0].is_symlink() and all(
            PARQUET_RE.fullmatch(p.name) or _TEMP.fullmatch(p.name) for p in top[0].iterdir())
    except OSError:
        return False


def _check_options(split: str, license: str, repo_id: str | None, max_shard_bytes: int,
                   shard_rows: int | None) -> None:
    if not SPLIT_RE.fullmatch(split):
        raise FactoryError(f"--split must be letters, digits and '_' starting with a letter; got {split!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", license):
        raise FactoryError(f"--license must be a license id such as apache-2.0, cc-by-4.0, other or unknown; "
                           f"got {license!r}")
    if repo_id is not None and not REPO_RE.fullmatch(repo_id):
        raise FactoryError(f"--repo-id must be <owner>/<name>; got {repo_id!r}")
    if max_shard_bytes < 1 or (shard_rows is not None and shard_rows < 1):
        raise FactoryError("shard size must be at least 1 byte and 1 row")


def export_hf(src: Path | str, out_dir: Path | str, *, split: str = "train", license: str = "unknown",
              name: str | None = None, repo_id: str | None = None,
              results: Path | str | Literal["auto"] | None = "auto", max_shard_bytes: int = DEFAULT_SHARD_BYTES,
              shard_rows: int | None = None, overwrite: bool = False,
              progress: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None) -> ExportSummary:
    """Export the dataset folder or pool file ``src`` to the Hugging Face dataset folder ``out_dir``.

    ``results``: the pipeline folder whose ``reports/curate.json`` and ``metrics/`` the card reports
    (:func:`factory.share.card.gather_results`); ``"auto"``: the nearest folder above ``src`` holding a
    ``dvc.yaml``; None: none. ``repo_id`` (``owner/name``): where the export will live on the Hub, for the
    card's example and Croissant's ``url``. ``progress(items, desc, total)`` wraps the sample stream.
    """
    src, out_dir = Path(src), Path(out_dir)
    _check_options(split, license, repo_id, max_shard_bytes, shard_rows)
    title, classes, parts, total = _open(src)
    title = name or title
    check_no_secret({"name": title, "repo_id": repo_id}, "export")
    metas = [p.dataset.meta for p in parts]
    names = display_names(classes, next((m for m in metas if m.get("class_names")), None))
    root = find_pipeline_root([src]) if results == "auto" else Path(results) if results is not None else None
    if root is not None and not root.is_dir():
        raise FactoryError(f"--results {root}: no such folder")
    found = gather_results(root, [p.dataset.path for p in parts]) if root is not None else {}
    inputs = [src, *(p.dataset.path for p in parts)]
    _clear_stale_staging(out_dir)
    output = OutputDir(out_dir, inputs=inputs, overwrite=overwrite, replaceable=export_problem)
    shards: _ParquetShards | None = None
    try:
        feats = features(classes)
        stats = ExportStats(classes, names)
        shards = _ParquetShards(output.staging / "data", split, feats.arrow_schema, max_shard_bytes, shard_rows)
        stream: Iterable[tuple[Sample, str]] = _samples(parts)
        if progress is not None:
            stream = progress(stream, "export", total)
        for s, dataset_id in stream:
            r = row(s, RowContext(names[s.label], dataset_id))
            stats.add(s)
            shards.add(r, len(s.image) + len(r["record"]) + 256)
        if not stats.samples:
            raise FactoryError(f"{src}: no samples to export")
        files = shards.close()
        url = f"https://huggingface.co/datasets/{repo_id}" if repo_id else None
        sizes = {"num_bytes": shards.arrow_bytes, "download_size": shards.file_bytes}
        card = build_card(stats, name=title, split=split, license=license, features=feats, metas=metas,
                          results=found, root=root, source=str(src), repo_id=repo_id, sizes=sizes)
        _write_card(output.staging / CARD_NAME, card)
        description = (f"{stats.samples} images of {len(classes)} classes ({stats.sources.get('real', 0)} real, "
                       f"{stats.synthetic} synthetic) exported by the synthetic image dataset factory from {src}; "
                       f"every record carries its provenance.")
        cite = (f"@misc{{{sanitize_key(title)}, title={{{title}}}, note={{Image dataset exported by the synthetic "
                f"image dataset factory}}" + (f", url={{{url}}}" if url else "") + "}")
        doc = build_croissant(stats, name=title, description=description, license=license, url=url, metas=metas,
                              cite_as=cite)
        write_croissant(output.staging, doc)
    except BaseException:
        if shards is not None:
            shards.abort()
        output.abort()
        raise
    output.publish()
    log.info("exported %d samples in %d Parquet files to %s", stats.samples, len(files), out_dir)
    per_class = {c: sum(stats.per_class[(c, s)] for s in stats.sources) for c in classes}
    return ExportSummary(out_dir, stats.samples, files, per_class, dict(stats.sources), stats.bytes,
                         [k for k in ("curate", "classifier", "evaluate") if k in found])


def _write_card(path: Path, card: Any) -> None:
    """Write the card and check it by parsing it back as the Hub does: the same YAML data, the same body."""
    from huggingface_hub import DatasetCard

    text = str(card)
    atomic_write_bytes(path, text.encode())
    back = DatasetCard.load(path)
    if back.data.to_dict() != card.data.to_dict() or back.text != card.text:
        raise FactoryError(f"{CARD_NAME}: the card does not parse back to what was written")
