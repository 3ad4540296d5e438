"""Prompt plans: which images to make, with exact quotas per class x attribute cell.

A plan is a JSONL file. Its first line is a header (``schema`` ``factory.plan/1``, the class list, the
target distribution and the config that built it); every further line is one row, one image:
``key``, ``label``, ``class_name``, ``group``, ``template``, ``attributes``, ``text``, ``seed``.

Templates are filled per group with ``{class_name}`` (the class's name: ``meta.class_names`` of the real
dataset, else its id), ``{class_id}``, ``{synonym}`` (the name or one of its synonyms, drawn per group from
the seed), ``{definition}``, ``{hypernym}`` and the row's attribute values (``{color}``, ``{background}``,
...). Groups cycle through the templates (shifted by cell), so a class gets varied prompts while the
images of one group share one (StableRep's positives). A row's ``class_name`` is the class id (the
header's ``classes``).

Quotas are exact, not sampled: each class's images are allocated to the attribute cells (the product
of the axes' values) by the largest-remainder method on the target weights. Inside a cell, images come
in groups of ``images_per_prompt`` that share one prompt (StableRep's positives). A row's key and seed
depend only on ``base.seed`` and the row's identity (class, cell, group, index in group), so growing a
plan (more classes, more images) leaves existing rows' keys and seeds unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from factory.config import AttributeAxis, PlanConfig
from factory.config.generate import CLASS_FIELDS
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes
from factory.core.quota import largest_remainder
from factory.core.sample import KEY_RE, sanitize_key
from factory.core.secrets import check_no_secret
from factory.data.classnames import ClassInfo

PLAN_SCHEMA = "factory.plan/1"


@dataclass(frozen=True)
class PlanRow:
    key: str
    label: int
    class_name: str
    group: str
    template: str
    attributes: dict[str, str]
    text: str
    seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    header: dict[str, Any]
    rows: list[PlanRow] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.header["classes"])

    def sha256(self) -> str:
        return hashlib.sha256(plan_bytes(self)).hexdigest()




def cells(axes: Sequence[AttributeAxis]) -> list[tuple[dict[str, str], float]]:
    """Every combination of attribute values with its target probability (product of weights)."""
    if not axes:
        return [({}, 1.0)]
    out = []
    for combo in itertools.product(*[list(zip(a.values, a.weights)) for a in axes]):
        attrs = {a.name: v for a, (v, _) in zip(axes, combo)}
        p = 1.0
        for _, w in combo:
            p *= w
        out.append((attrs, p))
    return out


def row_seed(base_seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{base_seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def _cell_id(attrs: Mapping[str, str]) -> str:
    return "-".join(f"{k}_{v}" for k, v in attrs.items())


def fill_template(template: str, info: ClassInfo, attributes: Mapping[str, str], seed: int, group: str) -> str:
    """``template`` with a class's words and a row's attributes (``{synonym}``: one of the class's words, drawn
    from ``seed`` and the group, so every image of a group shares the prompt). An unknown field or a field
    the class lacks (no definition recorded) raises FactoryError."""
    words = info.words
    pick = words[row_seed(seed, f"synonym/{group}") % len(words)]
    values = {"class_name": info.name, "class_id": info.id, "synonym": pick, "definition": info.definition,
              "hypernym": info.hypernym, **attributes}
    try:
        text = template.format(**values)
    except KeyError as exc:
        raise FactoryError(f"plan template {template!r}: unknown field {{{exc.args[0]}}} (fields: "
                           f"{', '.join(CLASS_FIELDS)} and the attribute axes {sorted(attributes)})") from None
    except (IndexError, ValueError) as exc:
        raise FactoryError(f"plan template {template!r}: {exc}") from None
    for name in ("definition", "hypernym"):
        if "{" + name + "}" in template and not values[name]:
            raise FactoryError(f"plan template {template!r}: class {info.id!r} has no {name} recorded (ingest with "
                               "--class-names to record it)")
    return text


def build_plan(cfg: PlanConfig, dataset_classes: Sequence[str],
               cell_weights: Mapping[str, Sequence[float]] | None = None,
               class_infos: Sequence[ClassInfo] | None = None) -> Plan:
    """Expand a PlanConfig against the real dataset's class list into rows.

    ``cell_weights`` (class name -> one weight per attribute cell, in :func:`cells` order) replaces the
    axes' weights class by class: each class keeps its ``images_per_class`` but splits them over the
    cells by its own weights (e.g. a real split's class x colour counts, for a synthetic set with the
    same joint distribution); the header records them under ``target.cell_weights``.

    ``class_infos`` (one per dataset class, :func:`factory.data.classnames.class_infos`): the names the
    templates use; None calls every class by its id."""
    infos = {i.id: i for i in class_infos} if class_infos is not None else {}
    if cfg.classes is None:
        chosen = list(dataset_classes)
    else:
        unknown = [c for c in cfg.classes if c not in dataset_classes]
        if unknown:
            raise FactoryError(f"plan.classes: unknown class(es) {unknown}; the dataset has {list(dataset_classes)}")
        chosen = [c for c in dataset_classes if c in set(cfg.classes)]  # label order
    per_class = int(round(cfg.images_per_class * cfg.oversample))
    cell_list = cells(cfg.attributes)
    quotas = largest_remainder(per_class, [p for _, p in cell_list])
    class_quotas = {c: quotas for c in chosen}
    if cell_weights is not None:
        for c in chosen:
            w = [float(x) for x in cell_weights.get(c, ())]
            if len(w) != len(cell_list) or any(not x >= 0 for x in w) or not sum(w) > 0:
                raise FactoryError(f"plan cell weights of class {c!r}: need {len(cell_list)} weights >= 0 with a "
                                   f"positive sum (one per attribute cell); got {w}")
            class_quotas[c] = largest_remainder(per_class, w)
    rows: list[PlanRow] = []
    seen: set[str] = set()
    for class_name in chosen:
        label = list(dataset_classes).index(class_name)
        for c, ((attrs, _), quota) in enumerate(zip(cell_list, class_quotas[class_name])):
            cell = _cell_id(attrs)
            for j in range((quota + cfg.images_per_prompt - 1) // cfg.images_per_prompt):
                # templates cycle over the groups of a cell, shifted by the cell: a class gets every template
                # even when its cells hold few groups, and growing a cell leaves its earlier groups' prompts
                template = cfg.templates[(j + c) % len(cfg.templates)]
                group = sanitize_key("-".join(filter(None, [class_name, cell, f"g{j:05d}"])))
                text = fill_template(template, infos.get(class_name) or ClassInfo(class_name, class_name), attrs,
                                     cfg.seed, group)
                for i in range(min(cfg.images_per_prompt, quota - j * cfg.images_per_prompt)):
                    key = f"{group}-{i:02d}"
                    if key in seen:
                        raise FactoryError(f"plan: class/attribute names collide after sanitising (key {key!r})")
                    seen.add(key)
                    rows.append(PlanRow(key, label, class_name, group, template, dict(attrs), text,
                                        row_seed(cfg.seed, key)))
    header = {
        "schema": PLAN_SCHEMA,
        "classes": list(dataset_classes),
        "plan_classes": chosen,
        "images_per_class": per_class,
        "target": {
            "images_per_class": cfg.images_per_class,
            "oversample": cfg.oversample,
            "attributes": {a.name: dict(zip(a.values, a.weights)) for a in cfg.attributes},
            "cells": [{"attributes": attrs, "share": p, "per_class": q}
                      for (attrs, p), q in zip(cell_list, largest_remainder(cfg.images_per_class,
                                                                            [p for _, p in cell_list]))],
            **({"cell_weights": {c: [float(x) for x in cell_weights[c]] for c in chosen}}
               if cell_weights is not None else {}),
        },
        "images_per_prompt": cfg.images_per_prompt,
        "templates": list(cfg.templates),
        **({"class_names": named} if (named := {c: infos[c].name for c in chosen
                                                 if c in infos and infos[c].name != c}) else {}),
        **({"negative_prompt": cfg.negative_prompt} if cfg.negative_prompt else {}),
        "seed": cfg.seed,
        "rows": len(rows),
    }
    plan = Plan(header, rows)
    check_no_secret(header, "plan")  # templates, classes, attribute values
    for row in rows:  # a template and a class name together can spell one
        check_no_secret(row.text, f"plan row {row.key}: text")
    return plan


def plan_for(cfg: PlanConfig, dataset: Path | str) -> Plan:
    """:func:`build_plan` against a real dataset: its classes, called by the names its index records."""
    from factory.core.shards import Dataset
    from factory.data.classnames import class_infos

    ds = Dataset(dataset)
    return build_plan(cfg, ds.classes, class_infos=class_infos(ds.classes, ds.meta))


def plan_bytes(plan: Plan) -> bytes:
    lines = [json.dumps(plan.header, sort_keys=True)]
    lines += [json.dumps(r.to_json(), sort_keys=True) for r in plan.rows]
    return ("\n".join(lines) + "\n").encode()


def write_plan(plan: Plan, path: Path | str) -> Path:
    """Write ``plan`` to ``path`` atomically (a file-system error raises FactoryError naming it)."""
    path = Path(path)
    atomic_write_bytes(path, plan_bytes(plan))
    return path


def _row_problem(obj: Any, classes: list[str]) -> str | None:
    """What is wrong with one parsed plan row (None: nothing), checked field by field."""
    if not isinstance(obj, dict):
        return "must be a JSON object"
    names = [f.name for f in fields(PlanRow)]
    if sorted(obj) != sorted(names):
        return f"fields must be {', '.join(names)} (got {', '.join(map(str, obj))})"
    if not isinstance(obj["key"], str) or not KEY_RE.fullmatch(obj["key"]):
        return f"key must be letters, digits, '_' or '-' (got {obj['key']!r})"
    label = obj["label"]
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(classes):
        return f"label must be an integer in [0, {len(classes)}) (got {label!r})"
    if obj["class_name"] != classes[label]:
        return f"class_name {obj['class_name']!r} is not class {label} of the header ({classes[label]!r})"
    for name in ("group", "template", "text"):
        if not isinstance(obj[name], str):
            return f"{name} must be a string (got {obj[name]!r})"
    attrs = obj["attributes"]
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
        return f"attributes must map names to strings (got {attrs!r})"
    seed = obj["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        return f"seed must be an integer in [0, 2**63) (got {seed!r})"
    return None


def _header_problem(header: dict[str, Any]) -> str | None:
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    target = header.get("target")
    cells_ = target.get("cells") if isinstance(target, dict) else None
    for ok, what in ((strings(header.get("classes")), "classes must be a list of strings"),
                     (strings(header.get("plan_classes")) and set(header.get("plan_classes") or ())
                      <= set(header.get("classes") or ()), "plan_classes must be a list of the classes"),
                     (strings(header.get("templates")), "templates must be a list of strings"),
                     (all(count(header.get(k)) for k in ("images_per_class", "images_per_prompt", "rows")),
                      "images_per_class, images_per_prompt and rows must be integers >= 0"),
                     (isinstance(target, dict) and count(target.get("images_per_class"))
                      and isinstance(target.get("oversample"), (int, float))
                      and isinstance(target.get("attributes"), dict), "target must hold images_per_class, "
                      "oversample and attributes"),
                     (isinstance(cells_, list) and all(
                         isinstance(c, dict) and isinstance(c.get("attributes"), dict)
                         and isinstance(c.get("share"), (int, float)) and count(c.get("per_class"))
                         for c in cells_), "target.cells must be a list of {attributes, share, per_class}"),
                     (header.get("negative_prompt") is None or isinstance(header.get("negative_prompt"), str),
                      "negative_prompt must be a string"),
                     (header.get("class_names") is None or (isinstance(header.get("class_names"), dict) and all(
                         isinstance(v, str) for v in header["class_names"].values())),
                      "class_names must map class ids to names")):
        if not ok:
            return what
    return None


def read_plan(path: Path | str) -> Plan:
    """Read and check a plan file: its header, every row (fields, types, labels against the header's
    classes) and that nothing in it looks like a secret; every problem is a FactoryError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"{path}: no such plan file")
    not_plan = f"{path}: not a prompt plan (first line must be a {PLAN_SCHEMA} header)"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FactoryError(f"{not_plan}: not UTF-8 text") from None
    lines = text.split("\n")  # JSON lines: only "\n" ends a line (str.splitlines splits on more)
    if lines and lines[-1] == "":
        lines.pop()
    try:
        header = json.loads(lines[0]) if lines else {}
    except (json.JSONDecodeError, RecursionError):
        header = {}
    if not isinstance(header, dict) or header.get("schema") != PLAN_SCHEMA:
        raise FactoryError(not_plan)
    problem = _header_problem(header)
    if problem:
        raise FactoryError(f"{path}:1: bad plan header ({problem})")
    check_no_secret(header, f"{path}:1")
    classes = header["classes"]
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise FactoryError(f"{path}:{n}: bad plan row (not JSON: {str(exc)[:80]})") from None
        problem = _row_problem(obj, classes)
        if problem:
            raise FactoryError(f"{path}:{n}: bad plan row ({problem})")
        check_no_secret(obj, f"{path}:{n}")
        rows.append(PlanRow(**obj))
    if len(rows) != header["rows"]:
        raise FactoryError(f"{path}: header says {header['rows']} rows, file has {len(rows)}")
    return Plan(header, rows)


MAX_CELL_COLUMNS = 12  # wider plans print one table per attribute axis (its marginal counts) instead


def count_table(plan: Plan) -> str:
    """Counts per class x attribute cell, with the target share of each cell (per class x value of each axis
    when there are more than :data:`MAX_CELL_COLUMNS` cells)."""
    cells = plan.header["target"]["cells"]
    cell_names = [_cell_id(c["attributes"]) or "(all)" for c in cells]
    if len(cell_names) <= MAX_CELL_COLUMNS:
        counts: Counter[tuple[str, str]] = Counter((r.class_name, _cell_id(r.attributes) or "(all)") for r in plan.rows)
        shares = [c["share"] for c in cells]
        lines = _class_table(plan, cell_names, counts, shares, "cell_weights" in plan.header["target"])
    else:
        lines = []
        for axis in plan.header["target"]["attributes"]:
            values = list(plan.header["target"]["attributes"][axis])
            counts = Counter((r.class_name, str(r.attributes.get(axis))) for r in plan.rows)
            shares = [sum(c["share"] for c in cells if c["attributes"].get(axis) == v) for v in values]
            lines += [f"{axis}:"] + _class_table(plan, values, counts, shares, "cell_weights" in plan.header["target"])
    t = plan.header["target"]
    lines.append(f"{len(plan.rows)} rows; {len(plan.header['plan_classes'])} classes x {plan.header['images_per_class']}"
                 f" images (target {t['images_per_class']} x oversample {t['oversample']:g}); "
                 f"{plan.header['images_per_prompt']} images per prompt; {len(plan.header['templates'])} templates")
    return "\n".join(lines)


def _class_table(plan: Plan, columns: Sequence[str], counts: Counter[tuple[str, str]], shares: Sequence[float],
                 own_shares: bool) -> list[str]:
    """Rows per class of ``counts`` over ``columns``, and the target shares (``own_shares``: per-class
    weights, so the rows' own shares are the target)."""
    width = max([len("class")] + [len(c) for c in plan.header["plan_classes"]])
    cols = [max(len(c), 6) for c in columns]
    lines = ["  ".join([f"{'class':<{width}}"] + [f"{c:>{w}}" for c, w in zip(columns, cols)] + [" total"])]
    for cls in plan.header["plan_classes"]:
        row = [counts[(cls, c)] for c in columns]
        lines.append("  ".join([f"{cls:<{width}}"] + [f"{n:>{w}}" for n, w in zip(row, cols)] + [f"{sum(row):>6}"]))
    label = "target"
    if own_shares:
        label, shares = "share", [sum(counts[(c, n)] for c in plan.header["plan_classes"]) / max(len(plan.rows), 1)
                                  for n in columns]
    lines.append("  ".join([f"{label:<{width}}"] + [f"{s:>{w}.1%}" for s, w in zip(shares, cols)] + [""]))
    return lines
