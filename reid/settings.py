"""Typed settings, one checker for every entry point: params.yaml sections, the verbs' JSON options, the settings
dataclasses (TrainConfig, PretrainConfig). Every problem names its full key, e.g. `train.epochs: -3 is out of range
(expected >= 1)`, so no value that makes no sense reaches the code that would run with it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from typing import Any, Mapping

__all__ = ["ParamsError", "check_config", "check_range", "check_section", "check_value", "config_problems",
           "parse_json_option"]


class ParamsError(ValueError):
    """params.yaml holds an unknown key or a value of the wrong type (the message lists each, by full key)."""


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def check_value(key: str, value: Any, annotation: Any) -> list[str]:
    """Problems of `value` against a type annotation (int, float, bool, str, None, unions, list/tuple/dict)."""
    if annotation in (Any, inspect.Parameter.empty):
        return []
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if any(not check_value(key, value, option) for option in options):
            return []
        names = " or ".join(_name(o) for o in options)
        return [f"{key}: expected {names}, got {_describe(value)}"]
    if annotation is type(None):
        return [] if value is None else [f"{key}: expected null, got {_describe(value)}"]
    if annotation is bool:
        return [] if isinstance(value, bool) else [f"{key}: expected true or false, got {_describe(value)}"]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{key}: expected int, got {_describe(value)}"]
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{key}: expected a number, got {_describe(value)}"]
    if annotation is str:
        return [] if isinstance(value, str) else [f"{key}: expected a string, got {_describe(value)}"]
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return [f"{key}: expected a list, got {_describe(value)}"]
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not args:
            return []
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(annotation):
            if len(value) != len(args):
                return [f"{key}: expected {len(args)} values, got {len(value)}"]
            return [p for i, (v, a) in enumerate(zip(value, args)) for p in check_value(f"{key}[{i}]", v, a)]
        return [p for i, v in enumerate(value) for p in check_value(f"{key}[{i}]", v, args[0])]
    if origin is dict or annotation is dict:
        return [] if isinstance(value, Mapping) else [f"{key}: expected a mapping, got {_describe(value)}"]
    return []  # an annotation this checker does not model: accepted


def check_range(key: str, value: Any, bounds: tuple[float | None, float | None]) -> list[str]:
    """Problems of a number (or each number of a list) outside [lo, hi] (None: unbounded on that side)."""
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in check_range(f"{key}[{i}]", v, bounds)]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    lo, hi = bounds
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        return [f"{key}: {value!r} is out of range (expected {span})"]
    return []


def _name(annotation: Any) -> str:
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def check_section(key: str, section: Any, hints: Mapping[str, Any], owner: str) -> list[str]:
    if section is None:
        return []
    if not isinstance(section, Mapping):
        return [f"{key}: expected a mapping, got {_describe(section)}"]
    problems = []
    for name, value in section.items():
        if name not in hints:
            close = [k for k in hints if k.lower().startswith(str(name).lower()[:3])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{key}.{name}: unknown parameter of {owner}{hint}")
        else:
            problems += check_value(f"{key}.{name}", value, hints[name])
    return problems


def config_problems(cls: type, values: Any, where: str, owner: str | None = None) -> list[str]:
    """Problems of a settings dataclass's section (None: not set, no problem): unknown keys and wrong types (its
    annotations), values out of `cls.RANGES`, each named `<where>.<key>`."""
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [f"{where}: expected a mapping, got {_describe(values)}"]
    hints = typing.get_type_hints(cls)
    known = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "extra"}
    problems = check_section(where, values, known, owner or cls.__name__)
    ranges = getattr(cls, "RANGES", {})
    return problems + [p for k, v in values.items() if k in ranges for p in check_range(f"{where}.{k}", v, ranges[k])]


def check_config(cls: type, values: Mapping[str, Any], where: str) -> None:
    """`config_problems` as one ParamsError; used by every entry point that builds a settings dataclass
    (TrainConfig / PretrainConfig from params.yaml, `--train-cfg`, `--config` JSON)."""
    if not isinstance(values, Mapping):
        raise ParamsError(f"{where}: expected a mapping, got {_describe(values)}")
    problems = config_problems(cls, values, where)
    if problems:
        raise ParamsError(("\n  ".join([f"{len(problems)} problem(s):"] + problems)) if len(problems) > 1
                          else problems[0])


def parse_json_option(text: str, option: str) -> dict[str, Any]:
    """A verb's JSON-object option, or a ParamsError naming the option."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{option} is not valid JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ParamsError(f"{option} must be a JSON object, got {text[:200]!r}")
    return value
