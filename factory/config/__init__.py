"""The one place where ``params.yaml`` becomes typed, frozen config objects.

The models here ARE the library's configs: a stage passes ``params.classifier`` (a
:class:`ClassifierConfig`) straight to :func:`factory.train.classifier.train_classifier`. Nothing in
``factory/`` reads ``params.yaml`` itself, and this package imports nothing of the implementation.

:func:`load_params` validates the whole file before any stage runs and lists every error, one per
line, with its dotted name and what is allowed::

    params.yaml: classifier.arch: must be one of cnn, resnet18, resnet34, resnet50 (got 'vgg')
    params.yaml: split.test_fractoin: unknown parameter; allowed: test_fraction, shard_size

A section's ``seed`` defaults to ``base.seed`` when the section does not set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from factory.config.base import SEED_LIMIT, Section, error_lines
from factory.config.curate import (
    DEFAULT_SEMANTIC_THRESHOLD,
    HASHES,
    MAX_HASH_SIZE,
    MIN_HASH_SIZE,
    CurateConfig,
    DedupConfig,
    FilterConfig,
    default_max_distance,
)
from factory.config.data import BaseParams, Component, IngestParams, PoolsConfig, PoolSpec, SplitParams
from factory.config.generate import (
    BACKENDS,
    EXECUTORS,
    SCHEDULERS,
    AttributeAxis,
    GenerateConfig,
    GeneratorSpec,
    PlanConfig,
    RandomModelsParams,
    RayConfig,
    SamplerConfig,
)
from factory.config.loop import MAX_GENERATIONS, POLICIES, LoopParams, LoopRun
from factory.config.measure import BiasParams, ContrastiveParams, EvaluationConfig, ReportParams, SweepParams
from factory.config.train import (
    ARCHS,
    BETA_SCHEDULES,
    CLASS_WORD_MODES,
    DEFAULT_ATTRIBUTE_TEMPLATES,
    DEFAULT_TEMPLATES,
    INTERPOLATIONS,
    LR_SCHEDULES,
    METHODS,
    ClassifierConfig,
    ClipTrainConfig,
    ContrastiveConfig,
    EmbeddedTrainConfig,
)
from factory.core.errors import FactoryError
from factory.core.secrets import secret_problems

__all__ = [
    "ARCHS", "BACKENDS", "BETA_SCHEDULES", "CLASS_WORD_MODES", "DEFAULT_ATTRIBUTE_TEMPLATES",
    "DEFAULT_SEMANTIC_THRESHOLD", "DEFAULT_TEMPLATES", "EXECUTORS", "HASHES", "INTERPOLATIONS", "LR_SCHEDULES",
    "MAX_GENERATIONS", "MAX_HASH_SIZE", "METHODS", "POLICIES", "LoopParams", "LoopRun", "MIN_HASH_SIZE", "SCHEDULERS",
    "AttributeAxis", "BaseParams", "BiasParams", "ClassifierConfig", "ClipTrainConfig", "Component",
    "ContrastiveConfig", "ContrastiveParams", "CurateConfig", "DedupConfig", "EmbeddedTrainConfig",
    "EvaluationConfig", "FilterConfig", "GenerateConfig", "GeneratorSpec", "IngestParams", "Params", "PlanConfig",
    "PoolSpec", "PoolsConfig", "RandomModelsParams", "RayConfig", "ReportParams", "SamplerConfig", "Section", "SplitParams",
    "SweepParams", "default_max_distance", "load_params", "load_section", "read_params_file", "validate_params",
]

_MISSING = object()

# the sections whose seed defaults to base.seed
SEEDED = ("random_models", "plan", "train_generator", "train_clip", "curate", "pools", "classifier", "contrastive.train",
          "evaluate", "bias.plan", "bias.train_generator", "bias.pools", "loop")


def _set_default(value: Any, model: type[BaseModel], parts: list[str], key: str, default: Any) -> Any:
    """``value`` (a raw mapping or a model) with ``key`` set to ``default`` at ``parts`` where not given.

    A missing section starts from the field's default (``bias.plan`` has its own), anything else that is
    not a mapping or a model is left alone for validation to report.
    """
    if not parts:
        if isinstance(value, Mapping):
            return value if key in value else {**value, key: default}
        if isinstance(value, BaseModel) and key not in value.model_fields_set:
            return value.model_copy(update={key: default})
        return value
    head, field = parts[0], model.model_fields[parts[0]]
    sub = field.annotation
    if isinstance(value, Mapping):
        inner = value.get(head, _MISSING)
        if inner is _MISSING:
            inner = field.get_default(call_default_factory=True)
        return {**value, head: _set_default(inner, sub, parts[1:], key, default)}
    if isinstance(value, BaseModel):
        inner = getattr(value, head)
        new = _set_default(inner, sub, parts[1:], key, default)
        return value if new is inner else value.model_copy(update={head: new})
    return value


def _valid_or_none(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None  # its own field reports the errors, once


class Params(Section):
    """All of ``params.yaml``, one typed section per stage."""

    where: ClassVar[str] = ""

    base: BaseParams = BaseParams()
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    plan: PlanConfig = PlanConfig()
    train_generator: EmbeddedTrainConfig = EmbeddedTrainConfig()
    generate: GenerateConfig = GenerateConfig()
    train_clip: ClipTrainConfig = ClipTrainConfig()
    curate: CurateConfig = CurateConfig()
    sweep: SweepParams = SweepParams()
    pools: PoolsConfig = PoolsConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    contrastive: ContrastiveParams = ContrastiveParams()
    evaluate: EvaluationConfig = EvaluationConfig()
    bias: BiasParams = BiasParams()
    report: ReportParams = ReportParams()
    loop: LoopParams = LoopParams()
    random_models: RandomModelsParams = RandomModelsParams()

    @model_validator(mode="before")
    @classmethod
    def _from_other_sections(cls, data: Any) -> Any:
        """Sections' seeds default to ``base.seed``; the guidance sweep's outputs join ``evaluate.datasets``
        (and its ``cas`` and ``guidance``), so ``dvc exp run -S 'sweep.guidance_scales=[1,3,4,6]'`` adds
        points to the trade-off with no other edit; ``evaluate.classifier`` is the ``classifier`` section."""
        if not isinstance(data, Mapping):
            return data
        data = {"evaluate": {}, **data}  # a missing evaluate section still gets the sweep and the classifier
        base = data.get("base", {})
        seed = base.seed if isinstance(base, BaseParams) else base.get("seed", 0) if isinstance(base, Mapping) else None
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT:
            for path in SEEDED:
                data = _set_default(data, cls, path.split("."), "seed", seed)
        ev = data.get("evaluate", {})
        if not isinstance(ev, Mapping):
            return data
        sweep = _valid_or_none(SweepParams, data.get("sweep", {}))
        names = sweep.datasets() if sweep is not None else {}
        ev = dict(ev)
        if isinstance(ev.get("datasets", {}), Mapping):
            ev["datasets"] = {**names, **ev.get("datasets", {})}
        for key in ("cas", "guidance"):
            if isinstance(ev.get(key, []), (list, tuple)):
                ev[key] = list(dict.fromkeys([*names, *ev.get(key, [])]))
        if "classifier" not in ev:
            classifier = _valid_or_none(ClassifierConfig, data.get("classifier", {}))
            if classifier is not None:
                ev["classifier"] = classifier
        return {**data, "evaluate": ev}

    def study(self, name: str | None) -> "Params":
        """These params with a study's sections (e.g. ``bias``) in place of plan/train_generator/generate/pools.

        A study is a second, smaller pipeline (the bias benchmark) that reuses the main stages'
        scripts: ``python stages/plan.py --study bias`` reads ``bias.plan`` where the main run reads ``plan``.
        """
        if name is None:
            return self
        if name != "bias":
            raise FactoryError(f"unknown study {name!r}; known: bias")
        b = self.bias
        return self.model_copy(update={"plan": b.plan, "train_generator": b.train_generator,
                                       "generate": b.generate, "pools": b.pools})


class _AliasFound(Exception):
    def __init__(self, line: int, what: str, kind: str) -> None:
        super().__init__(line, what, kind)
        self.line, self.what, self.kind = line, what, kind


MAX_YAML_ALIASES = 32  # plenty for hand-written params, far too few for an exponential "billion laughs"


class _ParamsLoader(yaml.SafeLoader):
    """A safe loader that bounds what anchors and aliases can do: an alias inside the node it names
    (``a: &a [*a]``, a recursive structure) is refused, and so are more than :data:`MAX_YAML_ALIASES`
    aliases (nested aliases multiply: "billion laughs" hangs every reader of the result). Plain anchors
    and a few aliases, as ``yaml.dump`` writes for a repeated object, are fine."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        open_anchors = self.__dict__.setdefault("_open_anchors", [])
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise _AliasFound(event.start_mark.line + 1, f"*{event.anchor}",
                                  "is inside the node it names (a recursive structure)")
            self.__dict__["_aliases"] = self.__dict__.get("_aliases", 0) + 1
            if self.__dict__["_aliases"] > MAX_YAML_ALIASES:
                raise _AliasFound(event.start_mark.line + 1, f"*{event.anchor}",
                                  f"is more than {MAX_YAML_ALIASES} aliases in one file")
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            open_anchors.pop()


def load_yaml(text: str, where: Path | str) -> Any:
    """``text`` parsed as safe YAML, aliases bounded (:class:`_ParamsLoader`; :class:`FactoryError` naming
    ``where``)."""
    try:
        return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except _AliasFound as exc:
        raise FactoryError(f"{where}:{exc.line}: YAML alias {exc.what} {exc.kind}") from None
    except yaml.YAMLError as exc:
        raise FactoryError(f"{where}: not valid YAML ({exc})".replace("\n", " ")) from None
    except RecursionError:
        raise FactoryError(f"{where}: nested too deeply") from None


def read_params_file(path: Path | str) -> Any:
    """The YAML of ``path``, parsed but not validated (:class:`FactoryError` naming ``path``)."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"{path}: no such params file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise FactoryError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FactoryError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return load_yaml(text, path)


def load_params(path: Path | str = "params.yaml") -> Params:
    """All of ``path``, validated; a :class:`FactoryError` lists every error, one per line.

    Every string in the file (and every key) is also checked for secrets (:mod:`factory.core.secrets`):
    params reach plans, provenance and ``dvc.lock``, so a token there fails the stage before DVC records it.
    """
    return validate_params(read_params_file(path), path)


def validate_params(data: Any, where: Path | str) -> Params:
    """``data`` (parsed params YAML) validated as :func:`load_params` does, its errors prefixed with ``where``."""
    path = where
    try:
        lines = [f"{path}: {line}" for line in secret_problems(data, "")]
        try:
            params = Params.model_validate(data if data is not None else {})
        except ValidationError as exc:
            lines += [f"{path}: {line}" for line in error_lines(exc, Params)]
    except RecursionError:
        raise FactoryError(f"{path}: nested too deeply") from None
    if lines:
        raise FactoryError("\n".join(dict.fromkeys(lines)))
    return params


def _is_whole_file(data: Mapping[str, Any], section: str) -> bool:
    """Whether ``data`` is a whole params file rather than one section's keys: it holds ``section`` itself, or
    only top-level section names that are not all keys of ``section`` (an ``evaluate`` section may hold just
    ``classifier``, a ``contrastive`` one ``pools``)."""
    keys = set(data)
    own = set(Params.model_fields[section].annotation.model_fields)
    return section in keys or (keys <= set(Params.model_fields) and not keys <= own)


def load_section(section: str, path: Path | str | None = None, sets: Mapping[str, Any] | None = None) -> Section:
    """The ``section`` of ``params.yaml``'s shape, for a command that runs one pipeline step.

    ``path`` is a whole params file (``params.yaml`` as it is: its ``section`` is taken, the file validated as
    :func:`load_params` validates it, seeds defaulting to ``base.seed``) or just the section's own keys;
    None: the defaults. ``sets`` (dotted keys within the section, e.g. ``{"ray.num_cpus": 2}``) are set in
    the file's data before it is validated. Errors as :func:`load_params`'s, naming the file and the key::

        my.yaml: generate.stepz: unknown parameter; allowed: guidance_scale, steps, ...
    """
    if section not in Params.model_fields:
        raise FactoryError(f"unknown params section {section!r}")
    data: Any = read_params_file(path) if path is not None else None
    if not (isinstance(data, Mapping) and _is_whole_file(data, section)):
        data = {section: {} if data is None else data}
    data = dict(data)
    for key, value in (sets or {}).items():
        parts = str(key).split(".")
        if not all(parts):
            raise FactoryError(f"--set {key}: not a dotted parameter name (e.g. steps or ray.num_cpus)")
        node, at = data, []
        for head in [section, *parts[:-1]]:
            at.append(head)
            inner = node.get(head)
            if inner is not None and not isinstance(inner, Mapping):
                raise FactoryError(f"--set {key}: {'.'.join(at)} is not a mapping (got {inner!r})")
            node[head] = dict(inner or {})
            node = node[head]
        node[parts[-1]] = value
    where = path if path is not None else "--set" if sets else "defaults"
    return getattr(validate_params(data, where), section)
