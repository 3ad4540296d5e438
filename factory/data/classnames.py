"""Human class names: what a class id (a folder name such as the WordNet id ``n01440764``) is called.

A dataset's classes are ids (folder names, stable); prompts and captions need names. ``factory ingest
--class-names`` records, in the index's ``meta.class_names``, for each class id: ``name``, ``synonyms``,
``definition`` and ``hypernym`` (the split keeps the meta, so every split has them). Plans fill templates
from them (``{class_name}``, ``{synonym}``, ``{definition}``, ``{hypernym}``), curation captions with them.

Sources (:func:`load_class_names`):

- ``imagenet``: the bundled ImageNet-1k map (``imagenet_classes.json``, WordNet 3.0 facts, written by
  ``scripts/imagenet_classes.py``; its licence travels inside the file);
- a JSON file: ``{"classes": [{"id", "name", "synonyms", "definition", "hypernym"}, ...]}``, a list of
  such objects, or a mapping id -> name or id -> object;
- a TSV file: a header line naming the columns (``id`` and ``name`` required; ``synonyms``, separated by
  ``;`` or ``,``; ``definition``; ``hypernym``), then one class per line.

Ingest without ``--class-names`` attaches the bundled map when every class is a WordNet id it knows, so an
ImageNet-style folder gets names with no flag; ``--class-names none`` keeps the ids as names.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from factory.core.errors import FactoryError

BUNDLED = {"imagenet": Path(__file__).with_name("imagenet_classes.json")}
WNID_RE = re.compile(r"n\d{8}")
FIELDS = ("id", "name", "synonyms", "definition", "hypernym")


@dataclass(frozen=True)
class ClassInfo:
    """What one class is called: ``name`` (prompts use it), other words for it, what it is and its parent."""

    id: str
    name: str
    synonyms: tuple[str, ...] = ()
    definition: str = ""
    hypernym: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["synonyms"] = list(self.synonyms)
        out.pop("extra")
        return out

    @property
    def words(self) -> tuple[str, ...]:
        """The name and its synonyms (what ``{synonym}`` draws from)."""
        return (self.name, *[s for s in self.synonyms if s != self.name])


def _info(obj: Any, where: str, key: str | None = None) -> ClassInfo:
    if isinstance(obj, str):
        obj = {"name": obj}
    if not isinstance(obj, Mapping):
        raise FactoryError(f"{where}: a class must be a name or an object with id and name (got {obj!r:.60})")
    cid = obj.get("id", key)
    name = obj.get("name")
    if not isinstance(cid, str) or not cid or not isinstance(name, str) or not name.strip():
        raise FactoryError(f"{where}: every class needs a non-empty id and name (got {dict(obj)!r:.80})")
    syn = obj.get("synonyms") or ()
    if isinstance(syn, str):
        syn = [s for s in re.split(r"[;,]", syn)]
    if not isinstance(syn, (list, tuple)) or not all(isinstance(s, str) for s in syn):
        raise FactoryError(f"{where}: synonyms of {cid!r} must be a list of strings")
    for k in ("definition", "hypernym"):
        if obj.get(k) is not None and not isinstance(obj.get(k), str):
            raise FactoryError(f"{where}: {k} of {cid!r} must be a string")
    return ClassInfo(cid, name.strip(), tuple(s.strip() for s in syn if s.strip()),
                     (obj.get("definition") or "").strip(), (obj.get("hypernym") or "").strip())


def _from_json(path: Path) -> list[ClassInfo]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FactoryError(f"{path}: not a JSON class-name file ({str(exc)[:80]})") from None
    if isinstance(doc, Mapping) and isinstance(doc.get("classes"), list):
        doc = doc["classes"]
    if isinstance(doc, list):
        return [_info(o, str(path)) for o in doc]
    if isinstance(doc, Mapping):
        return [_info(o, str(path), key=str(k)) for k, o in doc.items()]
    raise FactoryError(f"{path}: a class-name JSON file is a list of classes, {{'classes': [...]}} or id -> name")


def _from_tsv(path: Path) -> list[ClassInfo]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise FactoryError(f"{path}: not UTF-8 text") from None
    rows = list(csv.reader(lines, delimiter="\t"))
    if not rows or not {"id", "name"} <= set(rows[0]):
        raise FactoryError(f"{path}: a class-name TSV file starts with a header naming its columns (id and name "
                           f"required; synonyms, definition, hypernym optional); got {rows[0] if rows else []}")
    header = rows[0]
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) > len(header):
            raise FactoryError(f"{path}:{n}: {len(row)} columns, the header has {len(header)}")
        out.append(_info({k: v for k, v in zip(header, row) if k in FIELDS}, f"{path}:{n}"))
    return out


@cache
def _bundled(name: str) -> tuple[ClassInfo, ...]:
    return tuple(_from_json(BUNDLED[name]))


def load_class_names(spec: str | Path) -> dict[str, ClassInfo]:
    """Class id -> :class:`ClassInfo` from ``spec``: ``imagenet`` (bundled) or a JSON or TSV file."""
    if str(spec) in BUNDLED:
        infos: Sequence[ClassInfo] = _bundled(str(spec))
    else:
        path = Path(spec)
        if not path.is_file():
            raise FactoryError(f"--class-names {spec}: no such file (a JSON or TSV file, or one of: "
                               f"{', '.join(BUNDLED)})")
        infos = _from_tsv(path) if path.suffix.lower() in (".tsv", ".txt") else _from_json(path)
    out: dict[str, ClassInfo] = {}
    for info in infos:
        if info.id in out:
            raise FactoryError(f"{spec}: class id {info.id!r} appears twice")
        out[info.id] = info
    if not out:
        raise FactoryError(f"{spec}: no classes")
    return out


def names_for(classes: Sequence[str], spec: str | Path | None) -> dict[str, ClassInfo] | None:
    """The names to record for a dataset's ``classes``: from ``spec`` (every class must be there), None with
    ``spec`` ``none``; with no ``spec``, the bundled ImageNet map when every class is a WordNet id it has."""
    if spec is not None and str(spec) == "none":
        return None
    if spec is None:
        if not classes or not all(WNID_RE.fullmatch(c) for c in classes):
            return None
        known = {i.id: i for i in _bundled("imagenet")}
        if not all(c in known for c in classes):
            return None
        return {c: known[c] for c in classes}
    table = load_class_names(spec)
    missing = [c for c in classes if c not in table]
    if missing:
        raise FactoryError(f"--class-names {spec}: no name for {len(missing)} class(es) of the data (first: "
                           f"{missing[0]!r}); the file must name every class folder")
    return {c: table[c] for c in classes}


def names_meta(names: Mapping[str, ClassInfo]) -> dict[str, dict[str, Any]]:
    """What the index's ``meta.class_names`` holds: id -> {name, synonyms, definition, hypernym}."""
    return {cid: {k: v for k, v in info.to_json().items() if k != "id"} for cid, info in names.items()}


def class_infos(classes: Sequence[str], meta: Mapping[str, Any] | None) -> list[ClassInfo]:
    """Every class of a dataset as :class:`ClassInfo`, from its index ``meta`` (``class_names``: id -> object
    or id -> name); a class without a recorded name is called by its id."""
    recorded = (meta or {}).get("class_names") or {}
    out = []
    for c in classes:
        obj = recorded.get(c)
        if isinstance(obj, str):  # a name only (a synthetic set's index: its plan's names)
            obj = {"name": obj}
        out.append(_info({**obj, "id": c}, "class_names") if isinstance(obj, Mapping) else ClassInfo(c, c))
    return out


def display_names(classes: Sequence[str], meta: Mapping[str, Any] | None) -> list[str]:
    """The name of every class (its id where none is recorded), in label order."""
    return [i.name for i in class_infos(classes, meta)]
