"""Read one section of params.yaml into a typed, validated dataclass.

Each stage owns one section. Unknown keys are refused (a typo in
`dvc exp run -S` would otherwise be silently ignored) and every error names
the file and the `section.key` that is wrong and what was expected.

params.yaml holds every value: the dataclasses of its sections declare names,
types and ranges, and no defaults (tests/test_params_yaml.py), so a section
that lacks a key is refused naming it (`missing key train.lr_schedule`).
An override put over a section (`cv.train`, `backbones.<name>`) sets some of
its keys only; `check_override` checks those.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml section is missing, malformed or out of range."""


def load_params_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def _check_type(value: Any, expected: Any, where: str) -> Any:
    origin = typing.get_origin(expected)
    if expected is Any:
        return value
    if dataclasses.is_dataclass(expected):
        source, _, section = where.rpartition(": ")
        return parse_section(expected, value, section, source=source, validate=False)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(expected):
            try:
                return _check_type(value, option, where)
            except ParamsError:
                continue
        raise ParamsError(f"{where} must be {expected}, got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(expected)
        if value not in allowed:
            raise ParamsError(f"{where} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where} must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(expected) or (Any,)
        items = [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if expected is type(None):
        if value is not None:
            raise ParamsError(f"{where} must be null, got {value!r}")
        return value
    if expected is float:
        # YAML reads 1e-3 as a string and 2 as an int; accept both as floats.
        if isinstance(value, bool):
            raise ParamsError(f"{where} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(f"{where} must be a number, got {value!r}")
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where} must be an integer, got {value!r}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where} must be true or false, got {value!r}")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {expected!r} for {where}")


def _known_fields(cls: type, raw: Any, section: str, source: str) -> dict[str, dataclasses.Field]:
    """The fields of dataclass `cls`, once `raw` is known to be a mapping of some of them only."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: section '{section}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(raw) - set(fields)))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"allowed: {', '.join(fields)}"
        )
    return fields


def check_override(cls: type, raw: Any, section: str, source: str = "params.yaml") -> None:
    """Check the keys an override of a `cls` section sets (`cv.train`, `backbones.<name>` over `train`): each one
    known and of its type, a nested section's key by key; the keys it leaves out come from the section it is put
    over, whose ranges are checked once merged."""
    _known_fields(cls, raw, section, source)
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            check_override(hints[name], value, f"{section}.{name}", source)
        else:
            _check_type(value, hints[name], f"{source}: {section}.{name}")


def parse_section(cls: type[T], raw: Any, section: str, source: str = "params.yaml", validate: bool = True) -> T:
    """Build dataclass `cls` from `raw`, refusing unknown or missing keys, then validate it."""
    fields = _known_fields(cls, raw, section, source)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        where = f"{source}: {section}.{name}"
        if name in raw:
            values[name] = _check_type(raw[name], hints[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{source}: missing key {section}.{name}")
    params = cls(**values)
    check = getattr(params, "validate", None)
    if validate and check is not None:
        try:
            check()
        except ParamsError as exc:
            raise ParamsError(f"{source}: {exc}") from None
    return params


def load_section(cls: type[T], path: str | os.PathLike, section: str) -> T:
    """Read `section` of the params file at `path` as a `cls` instance."""
    data = load_params_file(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section '{section}'")
    return parse_section(cls, data[section], section, source=str(path))


def require(condition: bool, message: str) -> None:
    """Raise ParamsError(message) unless condition holds; for dataclass validate() methods."""
    if not condition:
        raise ParamsError(message)
