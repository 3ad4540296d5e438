"""What every config model shares: frozen, no unknown keys, strict numbers, one error format.

Errors read ``<where>.<dotted.name>: <what is allowed> (got <value>)``, one line per error; inside
``params.yaml`` the dotted name starts at the top of the file (``classifier.arch``), for a model built
directly it starts at the model's section (:attr:`Section.where`).
"""

from __future__ import annotations

import math
import numbers
import re
import string
import types
import typing
from typing import Annotated, Any, ClassVar, Union

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, Strict, ValidationError
from pydantic_core import PydanticCustomError

from factory.core.errors import FactoryError

SEED_LIMIT = 2**32  # numpy's legacy seeding and scikit-learn's random_state take 32-bit seeds
_MISSING = object()


def field_error(field: str, message: str, got: Any = _MISSING) -> PydanticCustomError:
    """An error about ``field`` (dotted, relative to the model that raises it) of a cross-field check."""
    ctx: dict[str, Any] = {"field": field}
    if got is not _MISSING:
        ctx["got"] = got
    return PydanticCustomError("config_field", message, ctx)


def _integral(v: Any) -> Any:
    # numpy integers (numbers.Integral) count as integers, bools never
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    return v


def _float(v: Any) -> Any:
    if isinstance(v, bool):
        raise PydanticCustomError("number", "must be a number")
    if isinstance(v, (numbers.Real, str)):  # inf and nan fail here, before any bound is compared with them
        try:
            finite = math.isfinite(float(v))
        except OverflowError:
            finite = False
        except ValueError:
            return v  # not a number at all: pydantic says so
        if not finite:
            raise PydanticCustomError("finite_number", "must be a finite number")
    return v


def as_number(v: Any) -> int | float:
    """A finite number, kept as given: an int stays an int (the bytes of a written config do not change),
    a string that reads as a number (PyYAML reads ``2e-3`` as a string) becomes a float."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise PydanticCustomError("number", "must be a number") from None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise PydanticCustomError("number", "must be a number")
    v = int(v) if isinstance(v, numbers.Integral) else float(v)
    if not math.isfinite(v):
        raise PydanticCustomError("number", "must be a finite number")
    return v


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Seed = Annotated[int, BeforeValidator(_integral), Strict(), Field(ge=0, lt=SEED_LIMIT)]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, BeforeValidator(_float), AllowInfNan(False)]  # any finite number, stored as a float
Num = Annotated[float, PlainValidator(as_number)]  # any finite number, an int kept as an int


def number(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> Any:
    """:data:`Num` within bounds (pydantic's own bounds do not apply to a plain validator)."""
    def check(v: Any) -> int | float:
        v = as_number(v)
        for kind, key, bound, ok in (("greater_than", "gt", gt, lambda b: v > b),
                                     ("greater_than_equal", "ge", ge, lambda b: v >= b),
                                     ("less_than", "lt", lt, lambda b: v < b),
                                     ("less_than_equal", "le", le, lambda b: v <= b)):
            if bound is not None and not ok(bound):
                raise PydanticCustomError(kind, f"must be {_BOUNDS[kind][1]} {_bound(bound)}", {key: bound})
        return v

    return Annotated[float, PlainValidator(check)]


def template_fields(t: str) -> set[str]:
    """The ``{field}`` names of a format template (``ValueError`` when it does not parse)."""
    return {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}


def template_problem(t: str, allowed: set[str]) -> str | None:
    """Why ``t`` is not a plain ``{field}`` template over ``allowed`` (None when it is): a placeholder may
    name an allowed field only, with no conversion (``!r``), format spec (``:>2000000``, which would build
    huge strings), attribute or index access (``{x.__class__}``, ``{x[0]}``)."""
    try:
        parsed = list(string.Formatter().parse(t))
    except ValueError as exc:
        return f"bad template {t!r} ({exc})"
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        if conv is not None or spec:
            return f"{t!r}: placeholder {shown} may not have a conversion or format spec; use plain {{field}}"
        if name not in allowed:
            return f"{t!r} uses field {shown}, an unknown field (allowed: {sorted(allowed)})"
    return None


class _Built(type(BaseModel)):  # pydantic's model metaclass
    """``Model(...)`` as a call: fields may be given by position too (in order, as with a dataclass), and
    bad values raise :class:`FactoryError` (one line per error). Only direct construction comes here:
    nested models validated inside another one report through the outer model, with their full names."""

    def __call__(cls, *args: Any, **data: Any) -> Any:
        if args:
            names = list(cls.model_fields)
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments")
            for name, value in zip(names, args):
                if name in data:
                    raise TypeError(f"{cls.__name__} got two values for {name!r}")
                data[name] = value
        try:
            return super().__call__(**data)
        except ValidationError as exc:
            raise FactoryError("\n".join(error_lines(exc, cls, cls.where))) from None


class Section(BaseModel, metaclass=_Built):
    """A frozen config model; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    where: ClassVar[str] = ""  # the model's place in params.yaml, for the errors of a model built directly

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any) -> "Section":
        """A copy with ``changes``, validated again (``model_copy(update=...)`` does not validate)."""
        return type(self)(**{**self.model_dump(), **changes})


# -- errors ---------------------------------------------------------------------------------------

_SIMPLE = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list", "tuple_type": "must be a list",
    "iterable_type": "must be a list", "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "none_required": "must be null",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _strip(t: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X (the first member that is not None)."""
    while True:
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin in (Union, types.UnionType):
            t = next(a for a in typing.get_args(t) if a is not type(None))
        else:
            return t


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (for the allowed keys of an unknown one)."""
    t: Any = root
    for part in loc:
        t = _strip(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = t.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                t = field.annotation
            elif t.model_config.get("extra") == "allow":  # typed extras (e.g. the pools by name)
                extra = typing.get_type_hints(t).get("__pydantic_extra__")
                t = typing.get_args(extra)[-1] if extra is not None else Any
            else:
                return None
        elif typing.get_origin(t) in (list, tuple, dict):
            t = typing.get_args(t)[-1 if typing.get_origin(t) is dict else 0]
        else:
            return None
    t = _strip(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _bound(b: Any) -> str:
    return f"{b:g}" if isinstance(b, float) else str(b)


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: dict[str, Any], root: type[BaseModel]) -> tuple[tuple, str]:
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    got = err.get("input", _MISSING)
    if kind == "config_field":
        loc += tuple(p for p in str(ctx["field"]).split(".") if p)
        msg, got = err["msg"], ctx.get("got", _MISSING)
    elif kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = f"; allowed: {', '.join(model.model_fields)}" if model is not None else ""
        return loc, f"unknown parameter{allowed}"
    elif kind == "missing":
        return loc, "is required"
    elif kind == "literal_error":
        msg = "must be one of " + ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
    elif kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        msg = f"must be {op} {_bound(ctx[key])}"
    elif kind == "multiple_of":
        msg = f"must be a multiple of {ctx['multiple_of']}"
    elif kind == "too_short":
        msg = f"must hold at least {ctx['min_length']} item{'s' if ctx['min_length'] != 1 else ''}"
    elif kind == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
    else:
        msg = _SIMPLE.get(kind, err["msg"])
    if got is not _MISSING and not isinstance(got, (dict, BaseModel)):
        msg += f" (got {got!r})"
    return loc, msg


def error_lines(exc: ValidationError, root: type[BaseModel], where: str = "") -> list[str]:
    """One line per error: ``<where>.<dotted name>: <message> (got <value>)``."""
    lines = []
    for err in exc.errors():
        loc, msg = _message(err, root)
        name = ".".join(p for p in (where, dotted(loc)) if p)
        lines.append(f"{name}: {msg}" if name else msg)
    return list(dict.fromkeys(lines))
