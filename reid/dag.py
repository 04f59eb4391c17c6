"""The pipeline's file layout and the dependencies of every stage: one source for Snakemake and DVC.

The Snakefile's input functions and the dvc.yaml generator (reid/workflow_gen.py) both call these, so the two
DAGs cannot drift apart; tests/test_dag.py checks that Snakemake's planned jobs equal dvc.yaml's stages.

    data/<ds>/                          generated synthetic world (real datasets live where params.yaml says)
    cache/<ds>/index.csv                dataset index
    cache/<ds>/<teacher>.h5             teacher cache (parsing, faces, restored_faces, keypoints, isp_labels)
    cache/<ds>/<derived>.h5             outputs of a trained teacher model (face_teacher, vit_teacher)
    models/<ds>/<run>/model.pt          trained student (+ train_log.csv, checkpoint.pt)
    results/<ds>/<run>/metrics.json     evaluation
"""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from reid import config as C

TEACHERS = ("parsing", "faces", "restored_faces", "keypoints", "isp_labels")


def data_dir(ds: str) -> str:
    return f"data/{ds}"


def index_path(ds: str) -> str:
    return f"cache/{ds}/index.csv"


def cache_path(ds: str, name: str) -> str:
    return f"cache/{ds}/{name}.h5"


def model_dir(ds: str, run: str) -> str:
    return f"models/{ds}/{run}"


def model_path(ds: str, run: str) -> str:
    return f"models/{ds}/{run}/model.pt"


def train_log_path(ds: str, run: str) -> str:
    return f"models/{ds}/{run}/train_log.csv"


def metrics_path(ds: str, run: str) -> str:
    return f"results/{ds}/{run}/metrics.json"


def is_generated(cfg: Mapping[str, Any], ds: str) -> bool:
    return bool(C.dataset_cfg(cfg, ds).get("generate"))


def root_of(cfg: Mapping[str, Any], ds: str) -> str:
    return data_dir(ds) if is_generated(cfg, ds) else str(C.dataset_cfg(cfg, ds)["root"])


def _cache_inputs(cfg: Mapping[str, Any], ds: str, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        if name not in TEACHERS and name not in C.DERIVED_CACHES:
            raise C.ConfigError(f"unknown cache {name!r}: not a teacher {TEACHERS} nor a derived cache "
                                f"{tuple(C.DERIVED_CACHES)}")
        out[name] = cache_path(ds, name)
    return out


def index_deps(cfg: Mapping[str, Any], ds: str) -> dict[str, str]:
    return {"root": data_dir(ds)} if is_generated(cfg, ds) else {}


def teacher_deps(cfg: Mapping[str, Any], ds: str, teacher: str) -> dict[str, str]:
    """index + caches the teacher aligns on + the weights file (so new weights rerun the cache)."""
    kw, _ = C.stage_teacher(cfg, ds, teacher)
    deps = {"index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, list(kw["params"].get("needs", []))))
    if kw.get("backend", "onnx") != "oracle" and kw.get("model"):
        deps["weights"] = str(kw["model"])
    return deps


def train_deps(cfg: Mapping[str, Any], ds: str, run: str) -> dict[str, str]:
    deps = {"index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, C.method_caches(cfg, ds, run, train=True)))
    return deps


def derived_deps(cfg: Mapping[str, Any], ds: str, name: str) -> dict[str, str]:
    run = C.DERIVED_CACHES[name]
    deps = {"model": model_path(ds, run), "index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, C.method_caches(cfg, ds, run, train=False)))
    return deps


def evaluate_deps(cfg: Mapping[str, Any], ds: str, run: str) -> dict[str, str]:
    # an evaluation-only row (EVAL_ABLATIONS) reads the model of the row it reuses
    model = model_path(C.model_dataset(cfg, ds), C.model_run(run))
    deps = {"model": model, "index": index_path(ds), **index_deps(cfg, ds)}
    deps.update(_cache_inputs(cfg, ds, C.method_caches(cfg, ds, run, train=False)))
    return deps


# Dependency names that are not caches; every other name in a stage's deps is a cache (teacher or derived).
NON_CACHE_DEPS = frozenset({"index", "root", "model", "weights"})


def cache_args(deps: Mapping[str, str]) -> str:
    """`--cache name=path` for every cache among a stage's deps."""
    return " ".join(f"--cache {k}={shlex.quote(v)}" for k, v in sorted(deps.items()) if k not in NON_CACHE_DEPS)


# --- the DVC side: explicit stages for a set of targets ------------------------------------------------------


@dataclass
class Stage:
    name: str
    cmd: str
    deps: list[str]
    outs: list[str]
    params: list[str]
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


# The modules each kind of stage starts from; `code_deps` follows their imports (module-level and local) through
# the package, so a stage depends on exactly the code it can run. Teachers and methods are looked up by name at
# run time (registries), hence the explicit teacher module and the `reid.methods` package (which imports them all).
STAGE_ENTRIES: dict[str, tuple[str, ...]] = {
    "synth": ("reid.data.synthetic",),
    "index": ("reid.data.datasets",),
    "teach": ("reid.teachers.runner", "reid.teachers.base"),
    "train": ("reid.engine.trainer", "reid.methods"),
    "teacher-outputs": ("reid.engine.commands", "reid.methods"),
    "evaluate": ("reid.engine.inference", "reid.methods"),
}
# Every stage runs through these (`reid pipeline` resolving params.yaml); their own imports are stage-specific.
STAGE_COMMON = ("reid/__init__.py", "reid/__main__.py", "reid/cli.py", "reid/pipeline.py", "reid/config.py",
                "reid/params_check.py")


def module_file(module: str, package_root: Path | None = None) -> Path | None:
    """The source file of a `reid.*` module or package (its __init__.py), or None."""
    root = package_root or Path(__file__).resolve().parents[1]
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """`reid.*` modules a file imports anywhere (top level or inside functions), including `from x import sub`."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "reid" or a.name.startswith("reid.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "reid" or node.module.startswith("reid.")):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # submodules; non-modules are dropped below
    return found


def import_closure(entries: Iterable[str], package_root: Path | None = None) -> list[str]:
    """Repository-relative files of the `reid` modules `entries` import, transitively, with their packages'
    __init__.py files (importing reid.a.b runs reid/__init__.py and reid/a/__init__.py)."""
    root = package_root or Path(__file__).resolve().parents[1]
    seen: set[str] = set()
    todo = list(entries)
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module, root)
        if path is None:
            continue
        files.add(path)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imported_modules(path))
    return sorted(p.relative_to(root).as_posix() for p in files)


@functools.lru_cache(maxsize=None)
def code_deps(kind: str, teacher: str | None = None) -> list[str]:
    """The code a DVC stage depends on: what its entry modules really import (derived, never hand-kept)."""
    entries = STAGE_ENTRIES[kind] + ((f"reid.teachers.{teacher}",) if kind == "teach" and teacher else ())
    return sorted(set(import_closure(entries)) | set(STAGE_COMMON))


def _pipeline_cmd(stage: str, ds: str, out: str, extra: str = "") -> str:
    base = f"python -m reid pipeline {stage} --dataset {ds} --params params.yaml"
    return " ".join(part for part in (base, extra, f"--out {out}") if part)


def stages_for(cfg: Mapping[str, Any], runs: list[str]) -> dict[str, Stage]:
    """Every stage needed to build results/<ds>/<run>/metrics.json for each '<ds>/<run>' in `runs`."""
    stages: dict[str, Stage] = {}

    def add(stage: Stage) -> None:
        stages.setdefault(stage.name, stage)

    def need_index(ds: str) -> None:
        if is_generated(cfg, ds):
            _, keys = C.stage_synth(cfg, ds)
            add(Stage(f"synth-{ds}", _pipeline_cmd("synth", ds, data_dir(ds)), code_deps("synth"), [data_dir(ds)],
                      keys))
        _, keys = C.stage_index(cfg, ds)
        deps = list(index_deps(cfg, ds).values())
        if not is_generated(cfg, ds):
            deps.append(root_of(cfg, ds))
        add(Stage(f"index-{ds}", _pipeline_cmd("index", ds, index_path(ds)), code_deps("index") + deps,
                  [index_path(ds)], keys))

    def need_cache(ds: str, name: str) -> None:
        if name in C.DERIVED_CACHES:
            run = C.DERIVED_CACHES[name]
            need_model(ds, run)
            deps = derived_deps(cfg, ds, name)
            need_caches(ds, deps)
            _, keys = C.stage_evaluate(cfg, ds, run)
            extra = f"--run {run} --model {deps['model']} --index {index_path(ds)} {cache_args(deps)}".strip()
            add(Stage(f"outputs-{ds}-{name}", _pipeline_cmd("teacher-outputs", ds, cache_path(ds, name), extra),
                      code_deps("teacher-outputs") + sorted(set(deps.values())), [cache_path(ds, name)], keys))
            return
        need_index(ds)
        deps = teacher_deps(cfg, ds, name)
        need_caches(ds, deps)
        _, keys = C.stage_teacher(cfg, ds, name)
        extra = f"--teacher {name} --index {index_path(ds)} {cache_args(deps)}".strip()
        add(Stage(f"teach-{ds}-{name}", _pipeline_cmd("teach", ds, cache_path(ds, name), extra),
                  code_deps("teach", name) + sorted(set(deps.values())), [cache_path(ds, name)], keys))

    def need_caches(ds: str, deps: Mapping[str, str]) -> None:
        for dep in deps:
            if dep not in NON_CACHE_DEPS:
                need_cache(ds, dep)

    def need_model(ds: str, run: str) -> None:
        need_index(ds)
        deps = train_deps(cfg, ds, run)
        need_caches(ds, deps)
        _, keys = C.stage_train(cfg, ds, run)
        extra = f"--run {run} --index {index_path(ds)} {cache_args(deps)}".strip()
        add(Stage(f"train-{ds}-{run}", _pipeline_cmd("train", ds, model_dir(ds, run), extra),
                  code_deps("train") + sorted(set(deps.values())), [model_path(ds, run)], keys,
                  plots=[train_log_path(ds, run)]))

    for target in runs:
        ds, run = C.split_target(target)
        need_model(C.model_dataset(cfg, ds), C.model_run(run))
        need_index(ds)
        deps = evaluate_deps(cfg, ds, run)
        need_caches(ds, deps)
        _, keys = C.stage_evaluate(cfg, ds, run)
        extra = f"--run {run} --model {deps['model']} --index {index_path(ds)} {cache_args(deps)}".strip()
        add(Stage(f"evaluate-{ds}-{run}", _pipeline_cmd("evaluate", ds, metrics_path(ds, run), extra),
                  code_deps("evaluate") + sorted(set(deps.values())), [], keys, metrics=[metrics_path(ds, run)]))
    return stages
