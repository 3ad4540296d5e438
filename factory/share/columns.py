"""The columns of a Hugging Face export: one schema for real and synthetic samples alike.

Every row holds the image (an ``Image`` feature: the original encoded bytes and ``<key>.<ext>`` as its path),
the label (a ``ClassLabel`` whose names are the dataset's class ids, the ``classes`` of ``index.json``), flat
provenance columns for filtering and viewing, and ``record``: the whole provenance record
(``factory.sample/1``) as canonical JSON, the one column :func:`factory.data.hf.hf_source` restores a
sample from. A column a sample has no value for (a real image's ``seed``, an uncurated one's ``clip_score``)
is null, so real and synthetic samples share one Arrow schema and a pool exports as one table.

The flat columns are conveniences derived from the record: ``record`` is the truth (an integer outside
int64 is null in its flat column and exact in the record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from factory.core.files import dumps_json
from factory.core.sample import Sample, sample_attributes
from factory.data.hf import IMAGE_COLUMN, LABEL_COLUMN, RECORD_COLUMN

INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True)
class RowContext:
    """What a row needs beyond its sample: the class's human name and the dataset it came from."""

    class_name: str
    dataset: str


@dataclass(frozen=True)
class Column:
    """A flat column: its name, Arrow/``datasets`` type (``string``, ``int64``, ``float64``, ``strings``),
    what it holds, and how to read it from a record."""

    name: str
    kind: str
    description: str
    get: Callable[[Mapping[str, Any], RowContext], Any]


def _canonical(value: Any) -> str | None:
    return None if value is None else dumps_json(value).decode()


def _generator(field: str) -> Callable[[Mapping[str, Any], RowContext], Any]:
    return lambda r, _: (r.get("generator") or {}).get(field)


def _negative(r: Mapping[str, Any], _: RowContext) -> str | None:
    ng = (r.get("generator") or {}).get("negative_guidance")
    return ng if ng is None or isinstance(ng, str) else _canonical(ng)


def _prompt(field: str) -> Callable[[Mapping[str, Any], RowContext], Any]:
    return lambda r, _: (r.get("prompt") or {}).get(field)


def _score(field: str) -> Callable[[Mapping[str, Any], RowContext], Any]:
    return lambda r, _: (r.get("scores") or {}).get(field)


COLUMNS: tuple[Column, ...] = (
    Column("key", "string", "sample key, unique in the export (the factory dataset's key)", lambda r, _: r["key"]),
    Column("class_id", "string", "class id: the label's ClassLabel name and the record's class_name",
           lambda r, _: r["class_name"]),
    Column("class_name", "string", "human class name (the dataset's meta.class_names; the id where none)",
           lambda r, c: c.class_name),
    Column("source", "string", "real or synthetic", lambda r, _: r["source"]),
    Column("generation", "int64", "0 real; 1 made by a model trained on real data; k trained on generation k-1",
           lambda r, _: r["generation"]),
    Column("dataset", "string", "id of the factory dataset the sample was exported from", lambda r, c: c.dataset),
    Column("sha256", "string", "sha256 of the image bytes", lambda r, _: r["sha256"]),
    Column("phash", "string", "perceptual hash (imagehash phash, hex)", lambda r, _: r["phash"]),
    Column("origin", "string", "real samples: where the image came from, JSON {dataset, path or index}",
           lambda r, _: _canonical(r.get("origin"))),
    Column("parents", "strings", "ids of the datasets the generator was trained on",
           lambda r, _: [str(p.get("id", p.get("path", ""))) if isinstance(p, dict) else str(p)
                         for p in r.get("parents") or []]),
    Column("seed", "int64", "synthetic: the seed of the image's noise", lambda r, _: r.get("seed")),
    Column("prompt", "string", "synthetic: the prompt text", _prompt("text")),
    Column("prompt_template", "string", "synthetic: the template the prompt was filled from", _prompt("template")),
    Column("attributes", "string", "attributes (requested or measured), JSON object",
           lambda r, _: _canonical(sample_attributes(r)) if sample_attributes(r) else None),
    Column("generator", "string", "synthetic: generator backend", _generator("backend")),
    Column("model", "string", "synthetic: generator model", _generator("model")),
    Column("weights_sha256", "string", "synthetic: sha256 of the generator's weights", _generator("weights_sha256")),
    Column("scheduler", "string", "synthetic: sampler", _generator("scheduler")),
    Column("steps", "int64", "synthetic: sampling steps", _generator("steps")),
    Column("guidance_scale", "float64", "synthetic: classifier-free guidance scale", _generator("guidance_scale")),
    Column("negative_guidance", "string", "synthetic: negative prompt, or JSON of the SIMS settings", _negative),
    Column("clip_score", "float64", "curated: CLIP cosine of the image with its own caption", _score("clip")),
    Column("clip_margin", "float64", "curated: own-class CLIP score minus the best other class's",
           _score("clip_margin")),
)

DESCRIPTIONS = {
    IMAGE_COLUMN: "the image: its original encoded bytes (PNG, JPEG or WebP) and <key>.<ext> as path",
    LABEL_COLUMN: "class label (ClassLabel; names are the class ids)",
    **{c.name: c.description for c in COLUMNS},
    RECORD_COLUMN: "the whole provenance record (factory.sample/1), canonical JSON: restores the sample exactly",
}
COLUMN_NAMES = (IMAGE_COLUMN, LABEL_COLUMN, *(c.name for c in COLUMNS), RECORD_COLUMN)


def _value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "int64":
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if INT64[0] <= value <= INT64[1] else None
    if kind == "float64":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "strings":
        return list(value)
    return str(value)


def features(classes: Sequence[str]):
    """The export's ``datasets.Features``: also what its Parquet schema metadata says, so
    ``load_dataset`` gives an ``Image`` and a ``ClassLabel`` whatever it reads first."""
    import datasets

    kinds = {"string": datasets.Value("string"), "int64": datasets.Value("int64"),
             "float64": datasets.Value("float64"), "strings": datasets.List(datasets.Value("string"))}
    return datasets.Features({
        IMAGE_COLUMN: datasets.Image(),
        LABEL_COLUMN: datasets.ClassLabel(names=list(classes)),
        **{c.name: kinds[c.kind] for c in COLUMNS},
        RECORD_COLUMN: datasets.Value("string"),
    })


def row(sample: Sample, ctx: RowContext) -> dict[str, Any]:
    """One row of the export for ``sample`` (its record already checked)."""
    rec = sample.provenance
    out: dict[str, Any] = {IMAGE_COLUMN: {"bytes": sample.image, "path": f"{sample.key}.{sample.ext}"},
                           LABEL_COLUMN: int(sample.label)}
    for c in COLUMNS:
        out[c.name] = _value(c.kind, c.get(rec, ctx))
    out[RECORD_COLUMN] = dumps_json(rec).decode()
    return out
