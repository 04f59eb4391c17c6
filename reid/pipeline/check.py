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

from typing import Any, Mapping

from reid.settings import ParamsError, check_config, check_range, check_section, check_value, config_problems

__all__ = ["ParamsError", "check_config", "check_params", "check_range", "check_value"]


def _train_problems(key: str, section: Any) -> list[str]:
    """A trainer section, checked as every TrainConfig is (keys, types, TrainConfig.RANGES)."""
    from reid.engine.trainer import TrainConfig

    return config_problems(TrainConfig, section, key, "the trainer (TrainConfig)")


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


def method_param_hints(name: str) -> dict[str, Any] | None:
    from reid.methods.base import method_param_hints as hints

    return hints(name)


def teacher_param_hints(name: str) -> dict[str, Any] | None:
    from reid.teachers.base import teacher_param_hints as hints

    return hints(name)


def check_params(cfg: Mapping[str, Any]) -> None:
    """Raise ParamsError listing every unknown key and wrong type in the code-fed sections of params.yaml."""
    problems: list[str] = _dvc_blind_keys(cfg)
    problems += _train_problems("train", cfg.get("train"))
    for method, section in (cfg.get("train_presets") or {}).items():
        problems += _train_problems(f"train_presets.{method}", section)
    from reid.engine.pretrain import ARCHS, PretrainConfig

    if isinstance(cfg.get("pretrain"), Mapping):
        problems += config_problems(PretrainConfig, {k: v for k, v in cfg["pretrain"].items() if k != "dataset"},
                                    "pretrain")
    for arch, section in (cfg.get("pretrain_presets") or {}).items():
        if arch not in ARCHS:
            problems.append(f"pretrain_presets.{arch}: no pretrain arch {arch!r} (known: {', '.join(sorted(ARCHS))})")
        else:
            problems += config_problems(PretrainConfig, section, f"pretrain_presets.{arch}")

    def named_section(key: str, kind: str, name: str, section: Any) -> None:
        """A method's or a teacher's section, typed by that registered class (an unknown name is a problem)."""
        hints = method_param_hints(name) if kind == "method" else teacher_param_hints(name)
        if hints is not None:
            problems.extend(check_section(key, section, hints, f"{kind} {name}"))
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
        problems += _train_problems(f"datasets.{ds}.train", dcfg.get("train"))
        for method, section in (dcfg.get("train_presets") or {}).items():
            problems += _train_problems(f"datasets.{ds}.train_presets.{method}", section)
        for method, section in (dcfg.get("presets") or {}).items():
            named_section(f"datasets.{ds}.presets.{method}", "method", method, section)
        for method, section in (dcfg.get("pretrained") or {}).items():
            named_section(f"datasets.{ds}.pretrained.{method}", "method", method, section)
    if problems:
        raise ParamsError("params.yaml: " + ("\n  ".join([f"{len(problems)} problem(s):"] + problems)))
