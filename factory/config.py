"""The one place where ``params.yaml`` becomes typed, frozen config objects.

Unknown keys and bad values fail here, with the parameter's dotted name and what is allowed:
``params.yaml: split.test_fraction: Input should be less than 1 (got 1.5)``.
Library code never reads ``params.yaml``; stages load a section here and pass it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import FactoryError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(Section):
    seed: int = 0


class IngestParams(Section):
    source: str = "sklearn:digits"
    shard_size: int = Field(1000, ge=1)


class SplitParams(Section):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    shard_size: int = Field(1000, ge=1)


class Params(Section):
    base: BaseParams = BaseParams()
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()


S = TypeVar("S", bound=BaseModel)


def _format(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown parameter {loc!r}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc}: {err['msg']} (got {err.get('input')!r}){more}"


def parse(model: type[S], data: Any, where: str = "params.yaml") -> S:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise FactoryError(_format(exc, where)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FactoryError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    return parse(Params, data, str(path))
