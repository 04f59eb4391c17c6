"""params.yaml -> the keyword arguments of each pipeline stage, and the exact params.yaml keys each one reads.

One resolver serves all three front ends: Snakemake passes the resolved JSON of a stage through `params:` (so a
change reruns exactly the affected jobs), DVC lists the returned keys in the stage's `params:` and calls the CLI
with `--params params.yaml` (which resolves the same way), and the CLI accepts either.

Precedence of trainer settings (later wins):
  train < train_presets.<method> < datasets.<ds>.train < datasets.<ds>.train_presets.<method> < run-name seed
Precedence of method parameters:
  methods.<method> < top-level knobs (e.g. `alpha`) < datasets.<ds>.presets.<method>
  < datasets.<ds>.pretrained.<method> (runs named `--pretrained` only) < ablation row
Precedence of teacher parameters:
  teachers.<teacher> < datasets.<ds>.teachers.<teacher>

Extension: the teachers are the keys of `teachers:`; a teacher or method outside the package names its module,
`teachers.<t>.module: my_pkg.my_teacher` / `methods.<m>.module: ...` (importable from the project root), and is
imported (registered) when params are loaded. Derived caches, ablation rows and top-level knobs are read from the
registered Method classes (reid/methods/base.py), never from a list kept here.

A run name is `<method>[--<ablation>][--pretrained][--s<seed>]`, e.g. `deskpro`, `deskpro--model3`,
`deskpro--model3--s2`, `deskpro--model3--pretrained--s2` (the backbone starts from the weights files
`datasets.<ds>.pretrained.<method>` names, e.g. the pretrain stage's miniature ImageNet stand-ins).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

PLUGIN_KEY = "module"  # teachers.<t>.module / methods.<m>.module: where a teacher or method outside reid/ lives

PRETRAINED = "pretrained"  # the run-name token: start from `datasets.<ds>.pretrained.<method>`'s weights files
RUN_RE = re.compile(rf"^(?P<method>[a-z0-9_]+)(?:--(?!s\d+$|{PRETRAINED}(?:--s\d+)?$)(?P<ablation>[A-Za-z0-9_.+-]+?))?"
                    rf"(?P<pretrained>--{PRETRAINED})?(?:--s(?P<seed>\d+))?$")


class ConfigError(ValueError):
    """A params.yaml problem, with the key at fault in the message."""


# Dataset, teacher and run names become file names and command-line words: letters, digits, _ . + - only.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
MAX_CONFIG_NODES = 100_000  # params.yaml has ~2,000; a YAML alias bomb expands to billions
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate params.yaml (every entry point: Snakemake's parse, DVC's stage command, the verbs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    validate(cfg, str(path))
    return cfg


def check_size(cfg: Any, where: str = "params.yaml", limit: int = MAX_CONFIG_NODES) -> None:
    """Refuse a config whose aliases expand beyond `limit` values (a YAML alias bomb), before anything walks it."""
    count, stack = 0, [cfg]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{where}: more than {limit:,} values once YAML aliases are expanded (an alias bomb?); "
                              "refused before reading further")
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def check_schema(cfg: Mapping[str, Any], where: str = "params.yaml") -> None:
    """params.yaml against workflow/schemas/params.schema.yaml, one short line per problem (never the config)."""
    if not SCHEMA.is_file():  # an installed package without the workflow folder: the typed checks still run
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))
    problems = []
    for error in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        problems.append(f"{key}: {message}")
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:20]))


def check_names(cfg: Mapping[str, Any], where: str = "params.yaml") -> None:
    """Dataset, teacher and method names are safe as file names and command-line words."""
    bad = [f"{section}.{name!r}" for section in ("datasets", "teachers", "methods")
           for name in (_get(cfg, section, {}) or {}) if not re.fullmatch(NAME_PATTERN, str(name))]
    if bad:
        raise ConfigError(f"{where}: names may hold only letters, digits and _ . + - (they become file names and "
                          f"command-line words): {', '.join(bad)}")


def validate(cfg: Mapping[str, Any], where: str = "params.yaml") -> None:
    """Every check, in the order that keeps each one cheap: size, schema, names, then plugins and typed sections."""
    check_size(cfg, where)
    check_schema(cfg, where)
    check_names(cfg, where)
    prepare(cfg)


def prepare(cfg: Mapping[str, Any]) -> None:
    """Import the plugin modules params.yaml names, then type every code-fed section before any work."""
    from reid.pipeline.check import check_params
    from reid.registry import import_plugin

    for section in ("teachers", "methods"):
        for name, entry in (_get(cfg, section, {}) or {}).items():
            if isinstance(entry, Mapping) and entry.get(PLUGIN_KEY):
                import_plugin(str(entry[PLUGIN_KEY]), f"{section}.{name}.{PLUGIN_KEY}")
    check_params(cfg)


def teacher_names(cfg: Mapping[str, Any]) -> list[str]:
    """The teachers this project runs: the keys of `teachers:` (each a registered Teacher)."""
    return sorted(_get(cfg, "teachers", {}) or {})


def teacher_module(cfg: Mapping[str, Any], teacher: str) -> str:
    """The module that registers a teacher: its `module:` key, else reid.teachers.<teacher>."""
    return str(_get(cfg, f"teachers.{teacher}.{PLUGIN_KEY}") or f"reid.teachers.{teacher}")


def plugin_method_modules(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Modules of methods outside the package (`methods.<m>.module`), sorted."""
    found = {str(v[PLUGIN_KEY]) for v in (_get(cfg, "methods", {}) or {}).values()
             if isinstance(v, Mapping) and v.get(PLUGIN_KEY)}
    return tuple(sorted(found))


def stage_method_modules(cfg: Mapping[str, Any], run: str) -> tuple[str, ...]:
    """The method modules a stage of `run` imports: its own method's (found without importing it) and every
    plugin module params.yaml names (`prepare` imports them all in each stage), sorted."""
    from reid.methods.base import METHODS

    method = parse_run(run).method
    try:
        own = METHODS.module(method)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    return tuple(sorted({own, *plugin_method_modules(cfg)}))


def method_class(method: str) -> type:
    """A registered Method class, or a ConfigError naming it."""
    from reid.methods.base import get_method_class

    try:
        return get_method_class(method)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def derived_caches() -> dict[str, str]:
    """Caches made from a trained teacher method (by `reid teacher-outputs`), not by an auxiliary teacher:
    cache name -> the run (= method name) that makes it, from each registered Method's `provides_cache` (declared
    for the built-in ones, so no method module is imported here)."""
    from reid.methods.base import METHODS

    provided = {m: METHODS.fact(m, "provides_cache") for m in METHODS.names()}
    return {cache: m for m, cache in provided.items() if cache}


def derived_cache_name(name: str, pretrained: bool) -> str:
    """The file stem of derived cache `name` as a run of either init reads it: a `--pretrained` student is
    distilled from a teacher that started from the same pretrained weights (`face_teacher--pretrained`)."""
    return f"{name}--{PRETRAINED}" if pretrained else name


def derived_cache_run(stem: str) -> str:
    """The run that makes the derived cache file `stem` (`face_teacher` -> `deskpro_face_teacher`,
    `face_teacher--pretrained` -> `deskpro_face_teacher--pretrained`)."""
    base, suffix, rest = stem.partition(f"--{PRETRAINED}")
    if rest or base not in derived_caches():
        raise ConfigError(f"{stem!r} is not a derived cache: expected one of {tuple(derived_caches())}, optionally "
                          f"followed by --{PRETRAINED}")
    return derived_caches()[base] + suffix


def derived_cache_pattern() -> str:
    """Regular expression of every derived cache file stem (the Snakemake wildcard constraint)."""
    return f"(?:{'|'.join(derived_caches())})(?:--{PRETRAINED})?"


def _get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _has(cfg: Mapping[str, Any], dotted: str) -> bool:
    return _get(cfg, dotted, _MISSING) is not _MISSING


def has_key(cfg: Mapping[str, Any], dotted: str) -> bool:
    """Whether params.yaml sets the dotted key (to any value, null included)."""
    return _has(cfg, dotted)


_MISSING = object()


def _merge(base: dict[str, Any], over: Mapping[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class Run:
    method: str
    ablation: str | None
    seed: int | None
    pretrained: bool = False

    def name(self, ablation: str | None) -> str:
        """This run's name with another ablation row (same init and seed)."""
        return (self.method + (f"--{ablation}" if ablation else "") + (f"--{PRETRAINED}" if self.pretrained else "")
                + (f"--s{self.seed}" if self.seed is not None else ""))


def parse_run(run: str) -> Run:
    m = RUN_RE.match(run)
    if not m:
        raise ConfigError(f"bad run name {run!r}: expected <method>[--<ablation>][--pretrained][--s<seed>]")
    seed = m.group("seed")
    return Run(m.group("method"), m.group("ablation"), int(seed) if seed is not None else None,
               bool(m.group("pretrained")))


def split_target(target: str) -> tuple[str, str]:
    """'<dataset>/<run>' -> (dataset, run)."""
    ds, sep, run = target.partition("/")
    if not sep or not ds or not run:
        raise ConfigError(f"bad target {target!r}: expected <dataset>/<run>")
    return ds, run


def dataset_cfg(cfg: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    ds = _get(cfg, f"datasets.{dataset}")
    if not isinstance(ds, Mapping):
        known = ", ".join(sorted(_get(cfg, "datasets", {}) or {}))
        raise ConfigError(f"dataset {dataset!r} is not configured under `datasets:` in params.yaml (known: {known})")
    return dict(ds)


def model_dataset(cfg: Mapping[str, Any], dataset: str) -> str:
    """The dataset whose model a test set is evaluated with (`train_on` for test-only sets)."""
    return str(dataset_cfg(cfg, dataset).get("train_on", dataset))


def _method_tables(method: str) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, dict[str, Any]]]]:
    """(trained rows, evaluation-only rows) of a registered method: its ablations + extra_ablations, eval_ablations."""
    cls = method_class(method)
    return {**cls.ablations, **cls.extra_ablations}, dict(cls.eval_ablations)


def ablation_overrides(method: str, ablation: str | None) -> dict[str, Any]:
    """The parameter overrides of a named ablation row.

    Rows come from the Method class's `ablations` (the paper's tables, assembled by `ablation-table`),
    `extra_ablations` (further variants reachable by run name, e.g. `pgfl_kd--full_t1_heatmaps`, but not part
    of the assembled table) and `eval_ablations` (row -> (trained row, test-time overrides): the trained row's
    model evaluated another way, e.g. `pgfl_kd--test_P`; see `model_run`).
    """
    if ablation is None:
        return {}
    trained, evaluated = _method_tables(method)
    if ablation in evaluated:
        base, test_time = evaluated[ablation]
        return {**ablation_overrides(method, base), **test_time}
    if ablation not in trained:
        raise ConfigError(f"method {method!r} has no ablation {ablation!r}; known: {sorted({**trained, **evaluated})}")
    return dict(trained[ablation])


def eval_overrides(run_name: str) -> dict[str, Any]:
    """Test-time parameter overrides of an evaluation-only run ({} for a run that trains its own model)."""
    run = parse_run(run_name)
    _, evaluated = _method_tables(run.method)
    return dict(evaluated[run.ablation][1]) if run.ablation in evaluated else {}


def model_run(run_name: str) -> str:
    """The run whose model.pt a run evaluates: itself, or for an evaluation-only row its trained row (same seed),
    so e.g. `pgfl_kd--test_P--s1` reuses `pgfl_kd--full--s1` instead of training the same network again; likewise
    a row that under `--pretrained` trains another row's very network (`Method.same_model_pretrained`, e.g.
    `sureid--strong_teacher_npkd--pretrained--s1` -> `sureid--t4_hts_npkd--pretrained--s1`)."""
    run = parse_run(run_name)
    _, evaluated = _method_tables(run.method)
    if run.ablation in evaluated:
        return model_run(run.name(evaluated[run.ablation][0]))
    same = method_class(run.method).same_model_pretrained
    if run.pretrained and run.ablation in same:
        return run.name(same[run.ablation])
    return run_name


# --- stages ----------------------------------------------------------------------------------------------


def stage_synth(cfg: Mapping[str, Any], dataset: str) -> tuple[dict[str, Any], list[str]]:
    gen = dataset_cfg(cfg, dataset).get("generate")
    if not gen:
        raise ConfigError(f"datasets.{dataset} has no `generate:` section: it is a real dataset on disk")
    from reid.data.synthetic import WORLD_VERSIONS  # a renderer change reruns that world and what depends on it

    out = {"world": gen["world"], "seed": int(gen.get("seed", 0)), "scale": float(gen.get("scale", 1.0)),
           "renderer_version": WORLD_VERSIONS.get(gen["world"], 0)}
    if "test_ids" in gen:  # only worlds that set it carry the key, so other worlds' resolved params stay as they were
        out["test_ids"] = int(gen["test_ids"])
    return out, [
        f"datasets.{dataset}.generate"
    ]


def dataset_root(cfg: Mapping[str, Any], dataset: str) -> str:
    """The one place a dataset's root is derived: `datasets.<ds>.root`, which for a generated world must be
    data/<ds> (where `reid synth` writes it)."""
    ds = dataset_cfg(cfg, dataset)
    if ds.get("generate") and str(ds.get("root", f"data/{dataset}")) != f"data/{dataset}":
        raise ConfigError(f"datasets.{dataset}.root must be data/{dataset}: generated worlds live under data/")
    if ds.get("generate"):
        return f"data/{dataset}"
    if not ds.get("root"):
        raise ConfigError(f"datasets.{dataset} has no `root:` (the dataset's folder on disk)")
    return str(ds["root"])


def stage_index(cfg: Mapping[str, Any], dataset: str) -> tuple[dict[str, Any], list[str]]:
    ds = dataset_cfg(cfg, dataset)
    keys = [f"datasets.{dataset}.loader", f"datasets.{dataset}.root"]
    return {"dataset": ds.get("loader", dataset), "root": dataset_root(cfg, dataset)}, [k for k in keys if _has(cfg, k)]


def stage_teacher(cfg: Mapping[str, Any], dataset: str, teacher: str) -> tuple[dict[str, Any], list[str]]:
    dataset_cfg(cfg, dataset)  # an unknown dataset is an error, not silently the defaults
    base = _get(cfg, f"teachers.{teacher}")
    if not isinstance(base, Mapping):
        raise ConfigError(f"teacher {teacher!r} is not configured under `teachers:` in params.yaml")
    merged = _merge(dict(base), _get(cfg, f"datasets.{dataset}.teachers.{teacher}"))
    keys = [f"teachers.{teacher}"]
    if _has(cfg, f"datasets.{dataset}.teachers.{teacher}"):
        keys.append(f"datasets.{dataset}.teachers.{teacher}")
    run = {k: merged.pop(k) for k in ("backend", "model", "batch_size", "workers", "device", PLUGIN_KEY, "shards")
           if k in merged}
    if run.get("backend") == "oracle":  # the oracle reads ground truth: a weights file named globally is not used
        run["model"] = None
    return {"teacher": teacher, **run, "params": merged}, keys


def stage_train(cfg: Mapping[str, Any], dataset: str, run_name: str) -> tuple[dict[str, Any], list[str]]:
    run = parse_run(run_name)
    dataset_cfg(cfg, dataset)  # an unknown dataset is an error, not silently the defaults
    keys: list[str] = []

    def take(dotted: str) -> dict[str, Any]:
        value = _get(cfg, dotted)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"params.yaml key {dotted} must be a mapping")
        keys.append(dotted)
        return dict(value)

    train = _merge(take("train"), take(f"train_presets.{run.method}"))
    train = _merge(train, take(f"datasets.{dataset}.train"))
    train = _merge(train, take(f"datasets.{dataset}.train_presets.{run.method}"))
    if run.seed is not None:
        train["seed"] = run.seed
    if not _has(cfg, f"methods.{run.method}"):
        raise ConfigError(f"method {run.method!r} is not configured under `methods:` in params.yaml")
    params = take(f"methods.{run.method}")
    module = params.pop(PLUGIN_KEY, None)
    for knob, param in method_class(run.method).knobs.items():
        if _has(cfg, knob):
            params[param] = _get(cfg, knob)
            keys.append(knob)
    params = _merge(params, take(f"datasets.{dataset}.presets.{run.method}"))
    if run.pretrained:
        if not _has(cfg, f"datasets.{dataset}.pretrained.{run.method}"):
            raise ConfigError(f"run {run_name!r}: params.yaml has no datasets.{dataset}.pretrained.{run.method} "
                              "(the weights files a --pretrained run starts from)")
        params = _merge(params, take(f"datasets.{dataset}.pretrained.{run.method}"))
    params = _merge(params, ablation_overrides(run.method, run.ablation))
    out = {"method": run.method, "method_params": params, "train_cfg": train}
    if module:  # only plugin methods carry the key, so built-in runs' resolved params stay as they were
        out["method_module"] = str(module)
    return out, keys


def pretrain_archs() -> list[str]:
    from reid.engine.pretrain import ARCHS

    return sorted(ARCHS)


def pretrain_dataset(cfg: Mapping[str, Any]) -> str:
    """The world the pretrain stage trains on (`pretrain.dataset`)."""
    name = _get(cfg, "pretrain.dataset")
    if not name:
        raise ConfigError("params.yaml has no pretrain.dataset (the world the pretrain stage trains on)")
    dataset_cfg(cfg, str(name))
    return str(name)


def stage_pretrain(cfg: Mapping[str, Any], arch: str) -> tuple[dict[str, Any], list[str]]:
    """`pretrain:` for one backbone, with `pretrain_presets.<arch>` on top (the recipe an architecture's official
    weights were trained with: DeiT's AdamW, the CNNs' SGD): {"arch", "dataset", "config"} (config =
    PretrainConfig's fields)."""
    from reid.engine.pretrain import ARCHS

    if arch not in ARCHS:
        raise ConfigError(f"no pretrain arch {arch!r} (known: {', '.join(sorted(ARCHS))})")
    config = {k: v for k, v in dict(_get(cfg, "pretrain", {}) or {}).items() if k != "dataset"}
    keys = ["pretrain"]
    preset = _get(cfg, f"pretrain_presets.{arch}")
    if preset is not None:
        if not isinstance(preset, Mapping):
            raise ConfigError(f"params.yaml key pretrain_presets.{arch} must be a mapping")
        config = _merge(config, preset)
        keys.append(f"pretrain_presets.{arch}")
    return {"arch": arch, "dataset": pretrain_dataset(cfg), "config": config}, keys


def stage_evaluate(cfg: Mapping[str, Any], dataset: str, run_name: str) -> tuple[dict[str, Any], list[str]]:
    ev = dict(_get(cfg, "evaluate", {}) or {})
    keys = ["evaluate"] if _has(cfg, "evaluate") else []
    out = {"dataset": dataset_cfg(cfg, dataset).get("loader", dataset), **ev}
    overrides = eval_overrides(run_name)
    if overrides:  # only evaluation-only rows carry the key, so other runs' resolved params stay as they were
        out["method_overrides"] = overrides
    module = _get(cfg, f"methods.{parse_run(run_name).method}.{PLUGIN_KEY}")
    if module:  # a plugin method: the stage imports the module params.yaml names (model.pt never chooses it)
        out["method_module"] = str(module)
        keys.append(f"methods.{parse_run(run_name).method}.{PLUGIN_KEY}")
    return out, keys


def resolved_method(resolved: Mapping[str, Any]) -> Any:
    """The Method object of a run's resolved `train` parameters (what it reads, its probes)."""
    from reid.methods import build_method

    return build_method(resolved["method"], **resolved["method_params"])


def run_method(cfg: Mapping[str, Any], dataset: str, run_name: str) -> Any:
    """The Method object of a run, built from its resolved parameters."""
    return resolved_method(stage_train(cfg, dataset, run_name)[0])


def method_caches(cfg: Mapping[str, Any], dataset: str, run_name: str, train: bool = True) -> list[str]:
    """Cache names (teachers and derived caches) a run reads in training (or at test time)."""
    return cache_names(run_method(cfg, dataset, run_name), train)


def cache_names(method: Any, train: bool = True) -> list[str]:
    """Cache names a Method reads in training (or at test time), with the caches of its image/require fields."""
    spec = method.caches if train else method.test_caches
    needed = set(spec)
    for extra in (method.image_field, method.require_field):
        if extra:
            needed.add(extra.split(".", 1)[0])
    return sorted(needed)


def teacher_inputs(cfg: Mapping[str, Any], dataset: str, teacher: str) -> list[str]:
    """Other caches a teacher reads (restored_faces aligns on the faces cache)."""
    kwargs, _ = stage_teacher(cfg, dataset, teacher)
    return [str(t) for t in kwargs["params"].get("needs", [])]


def to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# Threads per job, one formula for both orchestrators: Snakemake's `threads:` and the stage command itself
# (`reid pipeline` pins torch to it), so a run made by `dvc repro` computes with the same thread count as one
# made by Snakemake, and gives the same bytes (CPU float reductions depend on the thread count).
STAGE_THREADS = {"synth": 1, "index": 2, "teacher-outputs": 2, "export": 1}  # export: a
# plain `python -m reid export` (nothing in params.yaml changes it)


def train_processes(resolved: Mapping[str, Any]) -> int:
    """Processes (GPUs) of one training job: `train.gpus` (DDP through torchrun when > 1)."""
    return max(1, int(resolved["train_cfg"].get("gpus", 1)))


def stage_threads(stage: str, resolved: Mapping[str, Any]) -> int:
    """Threads of one job of `stage` with resolved parameters `resolved` (train: its loader workers, teach: its
    decode workers, at least 1)."""
    if stage == "train":
        return max(1, int(resolved["train_cfg"].get("workers", 2)))
    if stage == "pretrain":
        return max(1, int(resolved["config"].get("workers", 2)))
    if stage == "teach":
        return max(1, int(resolved.get("workers", 2)))
    if stage == "evaluate":  # the `evaluate` / `embed` verbs pin the same count (one number for one model)
        from reid.engine.inference import EVALUATE_THREADS

        return EVALUATE_THREADS
    return STAGE_THREADS.get(stage, 1)
