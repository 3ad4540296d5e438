"""Configs of the data phase: ingest, split and the training pools (``pools``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from factory.config.base import Float, Int, Num, Section, Seed, field_error


class BaseParams(Section):
    where: ClassVar[str] = "base"

    seed: Seed = 0  # every random choice in the pipeline derives from this


class IngestParams(Section):
    where: ClassVar[str] = "ingest"

    source: str = "sklearn:digits"
    # a real test set of its own (e.g. a dataset's official test folder): ingested by ``stages/ingest.py --test``;
    # the split stage then draws only val from ``source`` (null: test is drawn from source by split.test_fraction)
    test_source: str | None = None
    # what the class ids are called (factory.data.classnames): imagenet | a TSV/JSON file | none;
    # null: the bundled ImageNet names when every class is a WordNet id
    class_names: str | None = None
    shard_size: Int = Field(1000, ge=1)


StyleAxis = Literal["thickness", "slant"]  # the axes factory.data.attributes measures as levels


class SplitParams(Section):
    """``split``: the real test draw (``test_fraction`` of each class of the whole set), the val draw
    (``val_fraction`` of each class of the rest) and the style levels written into every split's records
    (``style``: axes measured from pixels, quantised by per-class tertiles fit on the train split)."""

    where: ClassVar[str] = "split"

    test_fraction: Float = Field(0.2, gt=0, lt=1)
    val_fraction: Float = Field(0.2, gt=0, lt=1)
    style: tuple[StyleAxis, ...] = ()  # e.g. (thickness, slant) for digits; () for other data
    shard_size: Int = Field(1000, ge=1)

    @field_validator("style")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("axes must be unique")
        return v


class Component(Section):
    """One dataset of a pool and how much of it to draw (at most one of count, fraction, per_class).

    In params.yaml a mapping ``{dataset: PATH, count|fraction|per_class: N}``, or just the path.
    """

    where: ClassVar[str] = "pools.component"

    dataset: str
    count: Int | None = Field(None, gt=0)
    fraction: Num | None = None  # in (0, 1]
    per_class: Int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"dataset": data}
        if isinstance(data, Mapping) and isinstance(data.get("dataset"), (int, float)):
            return {**data, "dataset": str(data["dataset"])}
        return data

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError("must be in (0, 1]")
        return v

    @model_validator(mode="after")
    def _one_amount(self) -> "Component":
        given = [n for n in ("count", "fraction", "per_class") if getattr(self, n) is not None]
        if len(given) > 1:
            raise field_error("", f"give at most one of count, fraction, per_class (got {', '.join(given)})")
        return self

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in (("count", self.count), ("fraction", self.fraction),
                                  ("per_class", self.per_class)) if v is not None} or {"all": True}


def pool_problem(name: str, components: tuple[Component, ...]) -> str | None:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        return f"the pool name {name!r} must be a plain file name (no slashes, no leading dot)"
    if not components:
        return "needs at least one dataset"
    paths = [c.dataset for c in components]
    if len(set(paths)) != len(paths):
        return f"a dataset is listed twice ({paths})"
    return None


class PoolSpec(Section):
    """One named pool: its datasets and the seed of its draw."""

    where: ClassVar[str] = "pools"

    name: str
    components: tuple[Component, ...]
    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> "PoolSpec":
        problem = pool_problem(self.name, self.components)
        if problem:
            raise field_error(self.name, problem)
        return self


class PoolsConfig(Section):
    """The ``pools`` section: pool name -> its components, plus the seed of every draw (``base.seed``).

    Reads like a mapping of the pool names (``name in pools``, ``list(pools)``); :attr:`specs` are the pools.
    ``seed`` (``base.seed`` unless set) is the seed of the draws, so no pool can be named ``seed``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    where: ClassVar[str] = "pools"
    __pydantic_extra__: dict[str, tuple[Component, ...]] = Field(init=False)

    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> "PoolsConfig":
        for name, components in self.pools.items():
            problem = pool_problem(name, components)
            if problem:
                raise field_error(name, problem)
        return self

    @property
    def pools(self) -> dict[str, tuple[Component, ...]]:
        return dict(self.__pydantic_extra__ or {})

    @property
    def specs(self) -> tuple[PoolSpec, ...]:
        return tuple(PoolSpec(name=n, components=c, seed=self.seed) for n, c in self.pools.items())

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.pools)

    def __contains__(self, name: object) -> bool:
        return name in self.pools

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, name: str) -> tuple[Component, ...]:
        return self.pools[name]
