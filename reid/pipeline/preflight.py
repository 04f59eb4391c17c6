"""Pre-flight: before any job runs, list every input a target needs that nobody will make, with the params.yaml key
to set, the expected format and where the official file comes from.

Snakemake runs it at parse time on its targets (workflow/rules/common.smk), the DVC stage command before its
stage, and users with `python -m reid check <target>...`. It walks the same dependency functions the orchestrators
use (reid/pipeline/layout.py) down to the leaves no rule makes: a real dataset's root and layout, each teacher's
weights file, each method's ImageNet backbone file. On a real dataset a null backbone key is an error: train from
random weights only by choosing it (`weights: random`), never by omission.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from reid.pipeline import layout as D
from reid.pipeline import params as C

__all__ = ["Problem", "PreflightError", "check_targets", "raise_if_missing"]


@dataclass(frozen=True)
class Problem:
    """One input that is missing or not chosen."""

    what: str  # e.g. "dataset prcc", "teacher faces (onnx)", "ImageNet backbone of deskpro"
    found: str  # what is wrong, e.g. "weights/det_10g.onnx: no such file"
    key: str  # the params.yaml key to set
    expect: str  # the expected format
    source: str  # where the official file comes from

    def text(self) -> str:
        return (f"- {self.what}: {self.found}\n    set: {self.key}\n    format: {self.expect}\n"
                f"    from: {self.source}")


class PreflightError(ValueError):
    """A target's inputs are missing; the message lists every one."""

    def __init__(self, problems: list[Problem], targets: Iterable[str]) -> None:
        self.problems = problems
        shown = ", ".join(targets) or "(default targets)"
        super().__init__(f"{len(problems)} missing input(s) for {shown}; nothing was run:\n"
                         + "\n".join(p.text() for p in problems)
                         + "\n(`python -m reid weights fetch <method>` downloads the files served at a direct URL)")


_DATASET_DOC = "docs/pipeline.md 'Datasets' (the layout under root, file naming per dataset)"
_DATASET_SOURCE = "the dataset's authors (real datasets are never downloaded by this project)"


class _Walk:
    """Depth-first over the stage dependencies, each node once."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.seen: set[str] = set()
        self.problems: dict[tuple[str, str], Problem] = {}

    def add(self, problem: Problem) -> None:
        self.problems.setdefault((problem.key, problem.found), problem)

    # --- targets ------------------------------------------------------------------------------------------
    def target(self, path: str) -> None:
        path = path.strip().removeprefix("./")
        if path in self.seen:
            return
        self.seen.add(path)
        parts = path.split("/")
        if len(parts) == 2 and not path.endswith((".json", ".md", ".h5", ".csv", ".pth", ".pt")):
            return self.target(D.metrics_path(*parts))  # `<dataset>/<run>`, as dvc.runs names it
        if parts[0] == "results" and len(parts) == 4:
            ds, run, name = parts[1], parts[2], parts[3]
            deps = D.probe_deps(self.cfg, ds, run) if name == "probe.json" else D.evaluate_deps(self.cfg, ds, run)
            return self.deps(ds, deps)
        if parts[0] == "models" and parts[1] == "pretrain" and len(parts) == 3:
            return self.deps(C.pretrain_dataset(self.cfg), D.pretrain_deps(self.cfg))
        if parts[0] == "models" and len(parts) >= 3:
            return self.train(parts[1], parts[2])
        if parts[0] == "cache" and len(parts) == 3:
            ds, name = parts[1], parts[2]
            if name == "index.csv":
                return self.dataset(ds)
            stem = name.removesuffix(".h5")
            if stem in C.teacher_names(self.cfg):
                return self.teacher(ds, stem)
            try:
                C.derived_cache_run(stem)
            except C.ConfigError:
                return None
            return self.deps(ds, D.derived_deps(self.cfg, ds, stem))
        return None  # tables, charts and other summaries: their inputs are runs checked when they are named

    def deps(self, ds: str, deps: Mapping[str, str]) -> None:
        for key, path in deps.items():
            if key == "index":
                self.dataset(ds)
            elif key == "root":
                continue  # a generated world's folder: the synth rule makes it
            elif key == "model" or D.pretrain_arch(path):
                self.target(path)  # made by a train or pretrain job: walk on
            elif not D.is_weights_key(key):
                self.target(path)  # a cache
            # a weights file the user places: `train` / `teacher` check it with its key and source

    # --- leaves -------------------------------------------------------------------------------------------
    def dataset(self, ds: str) -> None:
        if f"dataset:{ds}" in self.seen:
            return
        self.seen.add(f"dataset:{ds}")
        if D.is_generated(self.cfg, ds):
            return
        from reid.data.datasets import DatasetError, dataset_folder, dataset_info

        loader = C.dataset_cfg(self.cfg, ds).get("loader", ds)
        root = C.dataset_root(self.cfg, ds)
        info = dataset_info(loader)
        layout = " or ".join("{" + ", ".join(lay) + "}" for lay in info.layouts)
        try:
            dataset_folder(loader, root)
        except DatasetError as exc:
            self.add(Problem(f"dataset {ds} ({loader})", str(exc).splitlines()[0], f"datasets.{ds}.root",
                             f"the folder holding {layout} ({_DATASET_DOC})", _DATASET_SOURCE))

    def teacher(self, ds: str, teacher: str) -> None:
        if f"teacher:{ds}:{teacher}" in self.seen:
            return
        self.seen.add(f"teacher:{ds}:{teacher}")
        from reid.models.zoo import is_random
        from reid.teachers.base import get_teacher_class

        kw, keys = C.stage_teacher(self.cfg, ds, teacher)
        backend = kw.get("backend", "onnx")
        cls = get_teacher_class(teacher)
        source = cls.weights_source.get(backend)
        model = kw.get("model")
        key = _key_of(keys, f"teachers.{teacher}", "model", self.cfg, ds)
        if source is not None:
            random_ok = cls.weights_may_be_random
            if model is None and not (random_ok and D.is_generated(self.cfg, ds)):
                self.add(Problem(f"teacher {teacher} ({backend} backend)", "no file named (null)", key,
                                 _teacher_format(teacher, backend), source))
            elif model is not None and not (random_ok and is_random(model)) and not Path(str(model)).is_file():
                self.add(Problem(f"teacher {teacher} ({backend} backend)", f"{model}: no such file", key,
                                 _teacher_format(teacher, backend), source))
        deps = D.teacher_deps(self.cfg, ds, teacher)
        deps.pop("weights", None)
        self.deps(ds, deps)

    def train(self, ds: str, run: str) -> None:
        if f"train:{ds}:{run}" in self.seen:
            return
        self.seen.add(f"train:{ds}:{run}")
        from reid.models.zoo import backbone, is_random

        resolved, keys = C.stage_train(self.cfg, ds, run)
        method = C.resolved_method(resolved)
        params = resolved["method_params"]
        for param, arch in method.backbone_weights().items():
            value = params.get(param)
            entry = backbone(arch)
            what = f"ImageNet backbone of {run} on {ds} ({arch or 'its backbone'})"
            key = _key_of(keys, f"methods.{resolved['method']}", param, self.cfg, ds, resolved["method"])
            if value is None and not D.is_generated(self.cfg, ds):
                self.add(Problem(what, "not chosen (null): a real dataset never trains from random weights by "
                                 "omission; name the file, or `random` to choose random initialisation", key,
                                 f"{entry.file} ({entry.library}): {entry.format}", entry.source))
            elif value is not None and not is_random(value) and not D.pretrain_arch(str(value)) \
                    and not Path(str(value)).is_file():
                self.add(Problem(what, f"{value}: no such file", key,
                                 f"{entry.file} ({entry.library}): {entry.format}", entry.source))
        self.deps(ds, D.train_deps(self.cfg, ds, run))


def _teacher_format(teacher: str, backend: str) -> str:
    return {"onnx": "an ONNX model of the signature in docs/contracts.md 'Teachers'",
            "torch": "the official PyTorch checkpoint (.pth), loaded weights-only"}.get(backend, backend) + \
        f" (teacher {teacher})"


def _key_of(keys: list[str], section: str, param: str, cfg: Mapping[str, Any], ds: str, method: str = "") -> str:
    """The most specific params.yaml key that sets `param` (a dataset preset wins over the section's default)."""
    candidates = [f"datasets.{ds}.pretrained.{method}", f"datasets.{ds}.presets.{method}"] if method else [
        f"datasets.{ds}.{section}"]
    for base in candidates:
        if C.has_key(cfg, f"{base}.{param}"):
            return f"{base}.{param}"
    return f"{section}.{param}"


def check_targets(cfg: Mapping[str, Any], targets: Iterable[str]) -> list[Problem]:
    """Every missing input of `targets` (output paths, or `<dataset>/<run>`), each once."""
    walk = _Walk(cfg)
    for target in targets:
        walk.target(str(target))
    rank = {"dataset": 0, "teacher": 1}
    return sorted(walk.problems.values(), key=lambda p: (rank.get(p.what.split()[0], 2), p.key))


def raise_if_missing(cfg: Mapping[str, Any], targets: Iterable[str]) -> None:
    """PreflightError listing every missing input of `targets`; nothing when all are in place."""
    targets = list(targets)
    problems = check_targets(cfg, targets)
    if problems:
        raise PreflightError(problems, targets)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="output paths (results/prcc/deskpro/metrics.json, cache/prcc/faces.h5, models/...) or "
                        "<dataset>/<run>; default: params.yaml dvc.runs")
    p.add_argument("--params", default="params.yaml", help="the configuration to check (default: params.yaml)")


def main(args: argparse.Namespace) -> int:
    cfg = C.load_params(args.params)
    targets = args.targets or list(cfg["dvc"]["runs"])
    problems = check_targets(cfg, targets)
    if problems:
        print(PreflightError(problems, targets))
        return 1
    print(f"OK: every input of {', '.join(targets)} is in place or made by the pipeline")
    return 0

