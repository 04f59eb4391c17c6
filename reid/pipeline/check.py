"""Type-check the nested sections of params.yaml against the code that reads them, before any job runs.

The JSON schema (workflow/schemas/params.schema.yaml) fixes the top-level layout; the sections that feed code are
checked here against that code itself, so the check cannot drift from it:
- `train`, `train_presets.<m>`, `datasets.<ds>.train`, `datasets.<ds>.train_presets.<m>`: the fields and types
  of the trainer's `TrainConfig` dataclass;
- `methods.<m>`, `datasets.<ds>.presets.<m>`, `datasets.<ds>.pretrained.<m>`: the parameters and annotations of
  method m's constructor;
- `teachers.<t>`, `datasets.<ds>.teachers.<t>`: the runner's keys, the teacher class's constructor parameters and
  its module's `DEFAULTS` (typed by the default's type).
Every problem names its full key, e.g. `datasets.synthocc.train.epochs: expected int, got 'two'`.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Mapping

__all__ = ["ParamsError", "check_params", "check_value"]


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


def _name(annotation: Any) -> str:
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _check_section(key: str, section: Any, hints: Mapping[str, Any], owner: str) -> list[str]:
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


def _train_hints() -> dict[str, Any]:
    from reid.engine.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if f.name != "extra"}


def _method_hints(name: str) -> dict[str, Any] | None:
    import reid.methods  # noqa: F401  (registers the built-in methods)
    from reid.methods.base import METHODS

    if name not in METHODS.names():
        return None
    init = METHODS.get(name).__init__
    sig = inspect.signature(init)
    hints = typing.get_type_hints(init)
    out = {p: hints.get(p, Any) for p in sig.parameters if p not in ("self", "args", "kwargs")}
    return {**out, "module": str}  # where a method outside the package lives (reid.pipeline.params.PLUGIN_KEY)


# Keys every teacher section may hold besides the teacher's own parameters (read by params.stage_teacher / runner).
TEACHER_RUN_KEYS: dict[str, Any] = {"backend": str, "model": str | None, "batch_size": int, "workers": int,
                                    "device": str, "needs": list[str], "module": str, "shards": int}


def _type_of_default(value: Any) -> Any:
    if value is None:
        return Any
    if isinstance(value, bool):
        return bool
    if isinstance(value, float):
        return float
    if isinstance(value, int):
        return int
    if isinstance(value, str):
        return str
    if isinstance(value, (list, tuple)):
        return list | None
    return Any


def _teacher_hints(name: str) -> dict[str, Any] | None:
    from reid.teachers.base import get_teacher_class

    try:
        cls = get_teacher_class(name)
    except KeyError:
        return None
    hints = dict(TEACHER_RUN_KEYS)
    init = cls.__init__
    sig = inspect.signature(init)
    annotations = typing.get_type_hints(init)
    for p in sig.parameters.values():
        if p.name in ("self", "backend", "model_path", "device") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.name.endswith("_cache"):  # filled from `needs`, never set by hand
            continue
        hints[p.name] = annotations.get(p.name, Any)
    hints.update({k: _type_of_default(v) for k, v in cls.defaults.items()})
    return hints


def _check_backend(key: str, teacher: str, section: Any) -> list[str]:
    """The backend named must be one the teacher class offers."""
    from reid.teachers.base import get_teacher_class

    backends = get_teacher_class(teacher).backends
    if not isinstance(section, Mapping) or "backend" not in section or not backends or section["backend"] in backends:
        return []
    return [f"{key}.backend: {section['backend']!r} is not a backend of teacher {teacher} ({', '.join(backends)})"]


# DVC's run cache drops keys with these names anywhere in a stage's params when it hashes the stage, so changing
# such a parameter restores the previous run's outputs instead of rerunning (treeverse/dvc#10296, open in DVC 3.67).
DVC_BLIND_KEYS = ("size", "nfiles")


def _dvc_blind_keys(node: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key in DVC_BLIND_KEYS:
                found.append(f"{dotted}: DVC's run cache ignores parameters named {key!r} (treeverse/dvc#10296: a "
                             f"changed value would restore stale outputs); rename it (e.g. map_{key})")
            found += _dvc_blind_keys(value, dotted)
    return found


def check_params(cfg: Mapping[str, Any]) -> None:
    """Raise ParamsError listing every unknown key and wrong type in the code-fed sections of params.yaml."""
    problems: list[str] = _dvc_blind_keys(cfg)
    train = _train_hints()
    problems += _check_section("train", cfg.get("train"), train, "the trainer (TrainConfig)")
    for method, section in (cfg.get("train_presets") or {}).items():
        problems += _check_section(f"train_presets.{method}", section, train, "the trainer (TrainConfig)")

    def named_section(key: str, kind: str, name: str, section: Any) -> None:
        """A method's or a teacher's section, typed by that registered class (an unknown name is a problem)."""
        hints = _method_hints(name) if kind == "method" else _teacher_hints(name)
        if hints is not None:
            problems.extend(_check_section(key, section, hints, f"{kind} {name}"))
            if kind == "teacher":
                problems.extend(_check_backend(key, name, section))

        elif kind == "method":
            from reid.methods.base import METHODS

            problems.append(f"{key}: no method named {name!r} (registered: {', '.join(METHODS.names())})")
        else:
            problems.append(f"{key}: no teacher named {name!r}")

    for method, section in (cfg.get("methods") or {}).items():
        named_section(f"methods.{method}", "method", method, section)
    for teacher, section in (cfg.get("teachers") or {}).items():
        named_section(f"teachers.{teacher}", "teacher", teacher, section)
    for ds, dcfg in (cfg.get("datasets") or {}).items():
        if not isinstance(dcfg, Mapping):
            continue
        for teacher, section in (dcfg.get("teachers") or {}).items():
            named_section(f"datasets.{ds}.teachers.{teacher}", "teacher", teacher, section)
        problems += _check_section(f"datasets.{ds}.train", dcfg.get("train"), train, "the trainer (TrainConfig)")
        for method, section in (dcfg.get("train_presets") or {}).items():
            problems += _check_section(f"datasets.{ds}.train_presets.{method}", section, train,
                                       "the trainer (TrainConfig)")
        for method, section in (dcfg.get("presets") or {}).items():
            named_section(f"datasets.{ds}.presets.{method}", "method", method, section)
        for method, section in (dcfg.get("pretrained") or {}).items():
            named_section(f"datasets.{ds}.pretrained.{method}", "method", method, section)
    if problems:
        raise ParamsError("params.yaml: " + ("\n  ".join([f"{len(problems)} problem(s):"] + problems)))
