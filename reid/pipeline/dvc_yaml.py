"""`python -m reid dvc-yaml`: write dvc.yaml, the DVC twin of the Snakefile, from params.yaml's `dvc.runs`.

Stages are explicit (no foreach templating) so each lists exactly the params.yaml keys its command reads, and the
code it runs (derived from its imports). Paths and dependencies come from reid/pipeline/layout.py, as the
Snakefile's do.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from reid.pipeline import params as C
from reid.pipeline.dvc_plots import TEMPLATE, write_template
from reid.pipeline.layout import (
    NON_CACHE_DEPS,
    cache_args,
    cache_path,
    cache_stem,
    cmc_y,
    data_dir,
    derived_deps,
    evaluate_deps,
    evaluation_outputs,
    index_deps,
    index_path,
    is_generated,
    is_weights_key,
    ledger_dir,
    metrics_path,
    model_dir,
    model_path,
    onnx_dir,
    pretrain_arch,
    pretrain_deps,
    pretrain_path,
    shard_paths,
    teacher_deps,
    train_deps,
    train_log_path,
)

# --- explicit stages for a set of targets ---------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    cmd: str
    deps: list[str]
    outs: list[str]
    params: list[str]
    metrics: list[str] = field(default_factory=list)
    plots: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # path -> DVC plot properties

    @property
    def code(self) -> list[str]:
        """The code files among the dependencies (what the ledger fingerprints and checks for age)."""
        return [d for d in self.deps if d.endswith(".py")]


# The modules each kind of stage starts from; `code_deps` follows their imports (module-level and local) through
# the package, so a stage depends on exactly the code it can run. Teachers and methods are looked up by name at
# run time (registries), so a stage adds its teacher's module or its run's method module
# (`params.stage_method_modules`): a method module is imported on lookup, never by the `reid.methods` package.
STAGE_ENTRIES: dict[str, tuple[str, ...]] = {
    "synth": ("reid.data.synthetic",),
    "index": ("reid.data.datasets",),
    "teach": ("reid.teachers.runner", "reid.teachers.base"),
    "pretrain": ("reid.engine.pretrain",),
    "train": ("reid.engine.trainer",),
    "teacher-outputs": ("reid.engine.commands",),
    "evaluate": ("reid.engine.inference",),
    "merge": ("reid.teachers.commands",),
    "export": ("reid.deploy.export",),
}
# Every stage runs through these (`reid pipeline` resolving params.yaml); their own imports are stage-specific.
STAGE_COMMON = ("reid/__init__.py", "reid/__main__.py", "reid/cli.py", "reid/registry.py", "reid/pipeline/__init__.py",
                "reid/pipeline/stage.py", "reid/pipeline/params.py", "reid/pipeline/check.py")


PROJECT_ROOT = Path(__file__).resolve().parents[2]  # holds reid/ (and any plugin modules params.yaml names)


def module_file(module: str, package_root: Path | None = None) -> Path | None:
    """The source file of a module or package (its __init__.py) under the project root, or None."""
    root = package_root or PROJECT_ROOT
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
    root = package_root or PROJECT_ROOT
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
def code_deps(kind: str, modules: tuple[str, ...] = ()) -> list[str]:
    """The code a DVC stage depends on: what its entry modules (plus `modules`: the teacher's module, plugin
    methods) really import, derived, never hand-kept."""
    return sorted(set(import_closure(STAGE_ENTRIES[kind] + modules)) | set(STAGE_COMMON))


def _pipeline_cmd(stage: str, ds: str, out: str, extra: str = "") -> str:
    base = f"python -m reid pipeline {stage} --dataset {ds} --params params.yaml"
    return " ".join(part for part in (base, extra, f"--out {out}") if part)


def synth_stage(cfg: Mapping[str, Any], ds: str) -> Stage:
    """The stage that renders synthetic world `ds` (also what the ledger's world records are keyed by)."""
    _, keys = C.stage_synth(cfg, ds)
    return Stage(f"synth-{ds}", _pipeline_cmd("synth", ds, data_dir(ds)), code_deps("synth"), [data_dir(ds)], keys)


def pretrain_stage(cfg: Mapping[str, Any], arch: str) -> Stage:
    """The stage that pretrains `arch`'s stand-in (also what the ledger's pretrain records are keyed by)."""
    from reid.engine.pretrain import ARCHS

    path = pretrain_path(arch)
    ds, deps = C.pretrain_dataset(cfg), pretrain_deps(cfg)
    _, keys = C.stage_pretrain(cfg, arch)
    cmd = (f"python -m reid pipeline pretrain --dataset {ds} --arch {arch} --params params.yaml "
           f"--index {deps['index']} --out {path}")
    return Stage(f"pretrain-{arch}", cmd, code_deps("pretrain", (ARCHS[arch][0],)) + sorted(set(deps.values())),
                 [path, path.removesuffix(".pth") + ".json"], keys)


def stages_for(cfg: Mapping[str, Any], runs: list[str], exports: list[str] = ()) -> dict[str, Stage]:
    """Every stage needed to build results/<ds>/<run>/metrics.json for each '<ds>/<run>' in `runs`, and
    models/<ds>/<run>/onnx/ for each in `exports`."""
    stages: dict[str, Stage] = {}

    def add(stage: Stage) -> None:
        stages.setdefault(stage.name, stage)

    def need_index(ds: str) -> None:
        if is_generated(cfg, ds):
            add(synth_stage(cfg, ds))
        _, keys = C.stage_index(cfg, ds)
        deps = list(index_deps(cfg, ds).values())
        if not is_generated(cfg, ds):
            deps.append(C.dataset_root(cfg, ds))
        add(Stage(f"index-{ds}", _pipeline_cmd("index", ds, index_path(ds)), code_deps("index") + deps,
                  [index_path(ds)], keys))

    def need_cache(ds: str, name: str, path: str) -> None:
        if name in C.derived_caches():
            stem = cache_stem(path)  # face_teacher, or face_teacher--pretrained for a --pretrained run
            run = C.derived_cache_run(stem)
            need_model(ds, run)
            deps = derived_deps(cfg, ds, stem)
            need_caches(ds, deps)
            _, keys = C.stage_evaluate(cfg, ds, run)
            extra = f"--run {run} --model {deps['model']} --index {index_path(ds)} {cache_args(deps)}".strip()
            add(Stage(f"outputs-{ds}-{stem}", _pipeline_cmd("teacher-outputs", ds, path, extra),
                      code_deps("teacher-outputs", C.stage_method_modules(cfg, run)) + sorted(set(deps.values())),
                      [path], keys))
            return
        need_index(ds)
        deps = teacher_deps(cfg, ds, name)
        need_caches(ds, deps)
        _, keys = C.stage_teacher(cfg, ds, name)
        extra = f"--teacher {name} --index {index_path(ds)} {cache_args(deps)}".strip()
        code = code_deps("teach", (C.teacher_module(cfg, name),)) + sorted(set(deps.values()))
        parts = shard_paths(cfg, ds, name)
        if not parts:
            add(Stage(f"teach-{ds}-{name}", _pipeline_cmd("teach", ds, cache_path(ds, name), extra), code,
                      [cache_path(ds, name)], keys))
            return
        n = len(parts)
        for i, part in enumerate(parts):  # one stage per shard (each its own cluster job), then the merge
            add(Stage(f"teach-{ds}-{name}-{i}-of-{n}", _pipeline_cmd("teach", ds, part, f"{extra} --shard {i}/{n}"),
                      code, [part], keys))
        add(Stage(f"teach-{ds}-{name}", f"python -m reid merge-shards --out {cache_path(ds, name)} {' '.join(parts)}",
                  code_deps("merge") + parts, [cache_path(ds, name)], []))

    def need_caches(ds: str, deps: Mapping[str, str]) -> None:
        for dep, path in deps.items():
            if is_weights_key(dep):
                need_weights(path)
            elif dep not in NON_CACHE_DEPS:
                need_cache(ds, dep, path)

    def need_weights(path: str) -> None:
        """A weights file the pretrain stage makes gets that stage; any other is a plain dependency."""
        arch = pretrain_arch(path)
        if arch is None:
            return
        need_index(C.pretrain_dataset(cfg))
        add(pretrain_stage(cfg, arch))

    def need_model(ds: str, run: str) -> None:
        need_index(ds)
        deps = train_deps(cfg, ds, run)
        need_caches(ds, deps)
        _, keys = C.stage_train(cfg, ds, run)
        extra = f"--run {run} --index {index_path(ds)} {cache_args(deps)}".strip()
        add(Stage(f"train-{ds}-{run}", _pipeline_cmd("train", ds, model_dir(ds, run), extra),
                  code_deps("train", C.stage_method_modules(cfg, run)) + sorted(set(deps.values())),
                  [model_path(ds, run)], keys,
                  plots=[{train_log_path(ds, run): {"cache": False, "x": "epoch", "y": "total",
                                                    "title": f"training loss of {ds}/{run}", "x_label": "epoch",
                                                    "y_label": "total loss"}}]))

    for target in runs:
        ds, run = C.split_target(target)
        need_model(C.model_dataset(cfg, ds), C.model_run(run))
        need_index(ds)
        deps = evaluate_deps(cfg, ds, run)
        need_caches(ds, deps)
        _, keys = C.stage_evaluate(cfg, ds, run)
        extra = f"--run {run} --model {deps['model']} --index {index_path(ds)} {cache_args(deps)}".strip()
        outs = evaluation_outputs(ds, run)
        add(Stage(f"evaluate-{ds}-{run}", _pipeline_cmd("evaluate", ds, metrics_path(ds, run), extra),
                  code_deps("evaluate", C.stage_method_modules(cfg, run)) + sorted(set(deps.values())),
                  [outs["per_query"]], keys, metrics=[outs["metrics"]],
                  plots=[{outs["cmc"]: {"cache": False, "x": "rank", "y": cmc_y(cfg, ds),
                                        "title": f"CMC of {ds}/{run}, {cmc_y(cfg, ds)} queries",
                                        "x_label": "rank", "y_label": "matches within rank (%)"}},
                         {outs["ranks"]: {}}, {outs["cmc_png"]: {}}]))
    for target in exports:  # `python -m reid export`: no params.yaml key changes it, so none is listed
        ds, run = C.split_target(target)
        need_model(ds, run)
        cmd = f"python -m reid export --model {model_path(ds, run)} --out {onnx_dir(ds, run)}"
        add(Stage(f"export-{ds}-{run}", cmd, code_deps("export", C.stage_method_modules(cfg, run)) + [model_path(ds, run)],
                  [onnx_dir(ds, run)], []))
    return stages


HEADER = (
    "# Generated by `python -m reid dvc-yaml` from params.yaml (dvc.runs) and reid/pipeline/layout.py:\n"
    "# do not edit by hand.\n"
    "# tests/test_dag.py checks that this file is up to date and agrees with the Snakefile.\n"
)


# The probe stage's code (it has no DVC stage; the ledger fingerprints it for rows with a probe).
PROBE_CODE = ("reid.engine.probe",)


@functools.lru_cache(maxsize=None)
def probe_code(modules: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The probe's code, with `modules` (the probed run's method modules, `params.stage_method_modules`)."""
    return tuple(sorted(import_closure(PROBE_CODE + modules)))


ASSEMBLY_CODE = ("reid.ledger", "reid.eval.claims", "reid.methods")


def assembly_inputs(cfg: Mapping[str, Any], dataset: str) -> tuple[list[str], list[str]]:
    """(code files, params.yaml keys) the assembled verdicts of `dataset` depend on: the assembly's own code, and
    every code file and key of the stages its rows' fingerprints cover (a change there makes rows stale, so
    pending). The DVC stage claims-<dataset> lists them."""
    runs = claims_runs(cfg, dataset)
    stages = stages_for(cfg, [f"{dataset}/{run}" for run in runs]).values()
    methods = tuple(sorted({m for run in runs for m in C.stage_method_modules(cfg, run)}))
    code = set(import_closure(ASSEMBLY_CODE + methods)) | set(probe_code(methods))
    code |= {d for st in stages for d in st.code}
    keys = {k for st in stages for k in st.params} | {"ablation.seeds", "ablation.init", "ablation.claims",
                                                      "ablation.ledger"}
    return sorted(code), sorted(keys)


def claims_runs(cfg: Mapping[str, Any], dataset: str) -> list[str]:
    """Every run the claims of `dataset` compare (params.yaml ablation.claims x seeds x init), sorted."""
    from reid.eval.claims import claim_inits, run_name

    ablation = cfg.get("ablation", {})
    runs = {run_name(method, row, init, s)
            for method in ablation.get("claims", {}).get(dataset, [])
            for claim in C.method_class(method).claims for row in claim.rows
            for s in ablation.get("seeds", [0, 1, 2]) for init in claim_inits(claim, ablation.get("init", ["scratch"]))}
    return sorted(runs)


def claims_stages(cfg: Mapping[str, Any]) -> dict[str, Stage]:
    """claims-<ds> per world with claims, when the ledger is on: the verdicts assembled from the committed ledger
    alone (`python -m reid ledger assemble`), into results/<ds>/claims.{md,json} as the Snakemake claims rule
    writes them. It depends on the ledger's rows and on the code and params their fingerprints cover, not on any
    model: `dvc repro claims-synthocc` on a fresh clone assembles without training; rows that are stale or missing
    are listed as pending (`python -m reid ledger build` makes them)."""
    if not C._get(cfg, "ablation.ledger", True):
        return {}
    out = {}
    for ds in (C._get(cfg, "ablation.claims", {}) or {}):
        code, keys = assembly_inputs(cfg, ds)
        folder = f"results/{ds}"
        out[f"claims-{ds}"] = Stage(
            f"claims-{ds}", f"python -m reid ledger assemble --dataset {ds} --params params.yaml --out {folder}",
            sorted(set(code) | set(STAGE_COMMON)) + [ledger_dir(ds)],
            [f"{folder}/claims.json", f"{folder}/claims.md"], keys)
    return out


def dvc_document(cfg: Mapping[str, Any]) -> dict[str, Any]:
    runs = list(C._get(cfg, "dvc.runs", []) or [])
    if not runs:
        raise C.ConfigError("params.yaml dvc.runs is empty: list <dataset>/<run> pairs for `dvc repro`")
    stages = stages_for(cfg, runs, list(C._get(cfg, "dvc.exports", []) or []))
    stages.update(claims_stages(cfg))
    doc: dict[str, Any] = {"stages": {}}
    for st in stages.values():
        entry: dict[str, Any] = {"cmd": st.cmd, "deps": st.deps}
        if st.params:
            entry["params"] = st.params
        if st.outs:
            entry["outs"] = st.outs
        if st.metrics:
            entry["metrics"] = [{m: {"cache": False}} for m in st.metrics]
        if st.plots:  # a plot without properties (an image) is written as a bare path, as DVC's docs do
            entry["plots"] = [next(iter(p)) if not next(iter(p.values())) else p for p in st.plots]
        doc["stages"][st.name] = entry
    return doc


class _NoAliasDumper(yaml.SafeDumper):
    """Write repeated lists in full instead of YAML anchors/aliases (easier to read and diff)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(cfg: Mapping[str, Any]) -> str:
    return HEADER + yaml.dump(dvc_document(cfg), Dumper=_NoAliasDumper, sort_keys=False, width=1000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="the configuration dvc.yaml is written from")
    p.add_argument("--out", default="dvc.yaml", help="the dvc.yaml to write (or check with --check)")
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    p.add_argument("--plots-page", action="store_true",
                   help=f"instead, write {TEMPLATE}: the offline page `dvc plots show` fills (make install runs it)")


def main(args: argparse.Namespace) -> int:
    if args.plots_page:
        out = write_template(Path(args.out).resolve().parent)
        print(f"wrote {out} ({out.stat().st_size // 1024} KiB: Vega, Vega-Lite and vega-embed inlined)")
        return 0
    text = render(C.load_params(args.params))
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is out of date: run `python -m reid dvc-yaml`")
            return 1
        print(f"{out} is up to date")
        return 0
    out.write_text(text)
    print(f"wrote {out} ({text.count(chr(10))} lines)")
    return 0
