"""TOML tables -> typed dataclasses: unknown keys and wrong types become one-line config errors.

Generic (it knows no setting by name): :mod:`edge.config` declares the sections, this module
turns parsed TOML and ``--set section.key=value`` overrides into them with the same checks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from edge.bounds import bad
from edge.errors import SonotrapError


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        bad(where or "config", f"must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            bad(_join(where, key), f"is not a known setting (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, _join(where, key))
        else:
            kwargs[key] = _coerce(_join(where, key), value, hint)
    return cls(**kwargs)


def set_value(cfg: Any, dotted: str, value: Any) -> None:
    """Set one setting by dotted name with the same checks as the file loader."""
    *path, key = dotted.split(".")
    target: Any = cfg
    for part in path:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            bad(dotted, "is not a known setting")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or key not in {f.name for f in dataclasses.fields(target)}:
        bad(dotted, "is not a known setting")
    hint = typing.get_type_hints(type(target))[key]
    setattr(target, key, _coerce(dotted, value, hint))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except SonotrapError as err:
                errors.append(str(err))
        bad(name, f"{value!r} has the wrong type (expected {_type_name(hint)})")
    if origin is list:
        if not isinstance(value, list):
            bad(name, f"{value!r} must be a list")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            bad(name, f"{value!r} must be a table")
        return {str(k): _coerce(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        bad(name, f"{value!r} must be true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        bad(name, f"{value!r} must be an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        bad(name, f"{value!r} must be a number")
    if hint is str:
        if isinstance(value, str):
            return value
        bad(name, f"{value!r} must be a string")
    return value


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
