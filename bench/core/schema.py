"""Typed validation of plain YAML data into dataclasses, with messages that name the key and what is allowed.

One mechanism serves the suite schema and every method's hyperparameters: a dataclass declares fields with
type hints and defaults, optionally a ``bounds`` metadata entry, and ``parse`` turns a mapping into an instance
or collects every problem it finds (unknown keys with a "did you mean", wrong types, values out of range).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from bench.core.errors import ConfigError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, doc: str = "", low: float | None = None,
          high: float | None = None, low_open: bool = False, high_open: bool = False, min_items: int = 0,
          default_factory: Any = dataclasses.MISSING, keyed_at_default: bool = True) -> Any:
    """A dataclass field with a help text, optional numeric bounds (closed unless ``*_open``) and, for a
    list (a swept axis), the fewest items it may have. ``keyed_at_default=False`` (for an option added after
    results exist) leaves it out of run ids while it holds its default, so those results keep their ids."""
    metadata = {"doc": doc, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
                "min_items": min_items, "keyed_at_default": keyed_at_default}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + (
            " or null" if type(None) in get_args(tp) else "")
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return f"a mapping of {_type_name(get_args(tp)[0])} to {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            Any: "any value"}.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("low"), meta.get("high")
    parts = []
    if low is not None:
        parts.append(f"{'>' if meta.get('low_open') else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if meta.get('high_open') else '<='} {high:g}")
    return " and ".join(parts)


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str, problems: list[str]) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = meta.get("low"), meta.get("high")
    bad = (low is not None and (value <= low if meta.get("low_open") else value < low)) or (
        high is not None and (value >= high if meta.get("high_open") else value > high))
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        problems.append(f"'{path}' is {value!r}; it must be {_bounds_text(meta) or 'finite'}.")


def unknown_key(path: str, key: Any, allowed: list[str], allowed_label: str = "Allowed here") -> str:
    """The problem text for an unknown ``key`` at ``path``, with the closest allowed name as a suggestion."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{path}'.{hint} {allowed_label}: {', '.join(allowed)}."


def convert_value(value: Any, tp: Any, path: str, meta: Mapping[str, Any], problems: list[str]) -> Any:
    """Check ``value`` against type ``tp``; return the converted value (or None after recording a problem)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            result = convert_value(value, option, path, meta, trial)
            if not trial:
                return result
            if _matches_shape(value, option):  # the right kind of value with a wrong detail: report that
                problems.extend(trial)
                return None
        problems.append(f"'{path}' is {value!r}; it must be {_type_name(tp)}.")
        return None
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        problems.append(f"'{path}' is {value!r}; allowed: {_type_name(tp)}.{hint}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, list):
            problems.append(f"'{path}' must be {_type_name(tp)}, not {value!r}.")
            return None
        if len(value) < meta.get("min_items", 0):
            problems.append(f"'{path}' is an empty sweep: give at least {meta['min_items']} value(s).")
            return None
        (item_tp,) = get_args(tp)[:1]
        return [convert_value(v, item_tp, f"{path}[{i}]", meta, problems) for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            problems.append(f"'{path}' must be {_type_name(tp)}, not {value!r}.")
            return None
        key_tp, val_tp = get_args(tp)
        return {convert_value(k, key_tp, f"{path}.{k}", {}, problems):
                convert_value(v, val_tp, f"{path}.{k}", meta, problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path, problems)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"'{path}' is {value!r}; it must be a number.")
            return None
        _check_bounds(value, meta, path, problems)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"'{path}' is {value!r}; it must be an integer.")
            return None
        _check_bounds(value, meta, path, problems)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"'{path}' is {value!r}; it must be true or false.")
            return None
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"'{path}' is {value!r}; it must be a string.")
            return None
        return value
    raise TypeError(f"schema: unsupported type {tp!r} at {path}")


def _matches_shape(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the broad kind ``tp`` expects (list, mapping, number...), ignoring details."""
    origin = get_origin(tp) or tp
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if tp in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return False


def parse(cls: type[T], data: Any, path: str = "", problems: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; raise ConfigError listing every problem (or append to ``problems``)."""
    own = problems is None
    problems = [] if problems is None else problems
    where = path or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"'{where}' must be a mapping, not {data!r}.")
        if own:
            raise ConfigError(problems)
        return None  # type: ignore[return-value]
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            problems.append(unknown_key(key_path, key, list(fields)))
            continue
        values[key] = convert_value(value, hints[key], key_path, fields[key].metadata, problems)
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"missing key '{f'{path}.{name}' if path else name}' ({_type_name(hints[name])}).")
    if problems:
        if own:
            raise ConfigError(problems)
        return None  # type: ignore[return-value]
    instance = cls(**values)
    check = getattr(instance, "validate", None)
    if callable(check):
        for problem in check() or []:
            problems.append(f"'{path}': {problem}" if path else problem)
        if problems and own:
            raise ConfigError(problems)
    return instance


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type with its bounds, default, help) for each field: what ``bench.py list methods`` prints."""
    hints = get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        rows.append((f.name, _typed(hints[f.name], f.metadata), default, f.metadata.get("doc", "")))
    return rows


def describe_keywords(func: Any, skip: tuple[str, ...] = (), lows: Mapping[str, float] | None = None
                      ) -> list[tuple[str, str, Any, str]]:
    """(name, type with its bounds, default, help) for each keyword option of a function (a dataset builder), as
    ``describe`` gives them for a dataclass; ``lows`` are the options' inclusive lower bounds."""
    try:
        hints = get_type_hints(func)
    except (NameError, TypeError):  # a plugin's annotations that do not resolve: names and defaults only
        hints = {}
    rows = []
    for name, param in inspect.signature(func).parameters.items():
        if name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        low = (lows or {}).get(name)
        type_name = _typed(hints[name], {"low": low}) if name in hints else "any value"
        rows.append((name, type_name, "required" if param.default is param.empty else param.default, ""))
    return rows


def _typed(tp: Any, meta: Mapping[str, Any]) -> str:
    """A type's name with the bounds a field declares, e.g. 'an integer >= 1'."""
    bounds = _bounds_text(meta)
    return f"{_type_name(tp)} {bounds}" if bounds else _type_name(tp)


def to_plain(obj: Any, keyed: bool = False) -> Any:
    """A dataclass tree as plain JSON-able data (for result files); ``keyed=True`` gives what enters run ids:
    every field, except those declared ``keyed_at_default=False`` while they hold their default, at any depth."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        plain = {f.name: to_plain(getattr(obj, f.name), keyed) for f in dataclasses.fields(obj)}
        if keyed:
            plain = {f.name: plain[f.name] for f in dataclasses.fields(obj)
                     if f.metadata.get("keyed_at_default", True) or plain[f.name] != to_plain(_default(f), True)}
        return plain
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, keyed) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v, keyed) for k, v in obj.items()}
    return obj


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


