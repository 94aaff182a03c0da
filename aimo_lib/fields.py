"""Settings that check themselves: each dataclass field declares its help, type and range where
it is defined, and `check_fields` refuses a bad value when the object is built.

    num_samples: int = setting(16, "N: samples voted over", ge=1, le=4096)

A bad value is a ValueError naming the setting, the value and what it takes, raised where the
configuration is loaded (aimo_lib.config), never at the first problem.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

__all__ = ["check_fields", "check_value", "help_of", "setting"]


def setting(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002
            factory: Callable[[], Any] | None = None, name: str | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field with its help and its allowed values.

    ge/gt/le: numeric bounds (numbers are also required to be finite). choices: the names a
    string may take (or a function giving them, for tables defined later). check: any further
    rule, returning what is wrong (None: fine). name: the setting's name where it differs from
    the field's (EngineSpec.kind is the setting `engine`).
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices, "check": check}
    if name is not None:
        meta["setting"] = name
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def check_fields(obj: Any) -> None:
    """Every field of a dataclass instance against its declared type and range."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if "help" in f.metadata:
            check_value(f.metadata.get("setting", f.name), hints[f.name], getattr(obj, f.name),
                        f.metadata)


def check_value(name: str, kind: Any, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """ValueError with the setting's name, the value and what it takes, if `value` is not a
    `kind` within the field's declared range."""
    problem = _problem(kind, value, meta)
    if problem:
        raise ValueError(f"{name}={value!r} is not allowed: {problem}")


def _problem(kind: Any, value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    args = typing.get_args(kind)
    optional = type(None) in args and _is_union(kind)
    if optional:
        if value is None:
            return None
        (kind,) = [a for a in args if a is not type(None)]
    elif value is None:
        return "a value is required (None is not one of its values)"
    wrong = _wrong_type(kind, value)
    if wrong:
        return wrong + (" or None" if optional else "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
        if ((ge is not None and not value >= ge) or (gt is not None and not value > gt)
                or (le is not None and not value <= le)):
            return f"it takes {'an integer' if kind is int else 'a number'} {_range(ge, gt, le)}"
    choices = meta.get("choices")
    if choices is not None and isinstance(value, str):
        names = choices() if callable(choices) else choices
        if value not in names:
            return f"it takes one of {', '.join(names)}"
    check = meta.get("check")
    return check(value) if check is not None else None


def _range(ge: float | None, gt: float | None, le: float | None) -> str:
    low = "" if ge is None and gt is None else ("[" if ge is not None else "(") + (
        f"{ge if ge is not None else gt:g}")
    if low and le is not None:
        return f"in {low}, {le:g}]"
    if low:
        return f"{'at least' if ge is not None else 'above'} {low[1:]}"
    return f"at most {le:g}"


def _wrong_type(kind: Any, value: Any) -> str | None:
    if kind is bool:
        return None if isinstance(value, bool) else "it takes true or false"
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "it takes an integer"
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            return "it takes a number"
        return None if math.isfinite(value) else "it takes a finite number"
    if kind is str:
        if not isinstance(value, str):
            return "it takes a string"
        return None if value.strip() else "it takes a non-empty string"
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, tuple):
            return "it takes a list"
        item = typing.get_args(kind)[0]
        for x in value:
            wrong = _wrong_type(item, x)
            if wrong:
                return f"every item: {wrong[3:]}"
        return None
    if origin in (dict, typing.Mapping, collections.abc.Mapping) or kind is dict:
        return None if isinstance(value, collections.abc.Mapping) else "it takes a mapping"
    if origin is None and isinstance(kind, type) and not isinstance(value, kind):
        return f"it takes a value of type {kind.__name__}"
    return None


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
