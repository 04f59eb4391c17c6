"""`python -m reid pipeline <stage>`: one DAG stage, its parameters resolved from params.yaml.

Snakemake calls it with `--resolved JSON` (the value it tracks in `params:`), DVC with `--params params.yaml`
(whose keys it tracks per stage); both routes go through reid.pipeline.params, so the two DAGs run the same code
with the same values. File paths always come from the orchestrator's command line.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from typing import Any, Callable

from reid.pipeline import params as C

log = logging.getLogger(__name__)

STAGES = ("synth", "index", "teach", "pretrain", "train", "teacher-outputs", "evaluate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES, help="the DAG stage to run")
    p.add_argument("--dataset", required=True, help="dataset name under `datasets:` in params.yaml")
    p.add_argument("--teacher", help="teach: teacher name")
    p.add_argument("--arch", help="pretrain: backbone name (reid.engine.pretrain.ARCHS)")
    p.add_argument("--run", help="train/evaluate/teacher-outputs: run name "
                   "<method>[--<ablation>][--pretrained][--s<seed>]")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", help="params.yaml to resolve the stage from (DVC)")
    src.add_argument("--resolved", help="the stage's resolved parameters as JSON (Snakemake)")
    p.add_argument("--index", help="index CSV")
    p.add_argument("--root", help="dataset root (default: from params.yaml)")
    p.add_argument("--model", help="model.pt (evaluate, teacher-outputs)")
    p.add_argument("--cache", action="append", metavar="NAME=PATH", help="an input cache (repeatable)")
    p.add_argument("--shard", help="teach: i/n, compute one shard part (merge the parts with merge-shards)")
    p.add_argument("--out", required=True, help="the stage's output path")


def _resolve(args: argparse.Namespace, fn: Callable[..., tuple[dict[str, Any], list[str]]], *extra: str) -> dict:
    if args.resolved is not None:
        return json.loads(args.resolved)
    return fn(_params(args), args.dataset, *extra)[0]


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return _load_params(args.params)


@functools.lru_cache(maxsize=None)
def _load_params(path: str) -> dict[str, Any]:
    """params.yaml, parsed (and checked) once per command."""
    return C.load_params(path)


def _stage_target(args: argparse.Namespace) -> str:
    """The layout path of what this stage makes (whatever --out says), for the pre-flight walk."""
    from reid.pipeline import layout as D

    if args.stage == "index":
        return D.index_path(args.dataset)
    if args.stage == "teach":
        return D.cache_path(args.dataset, args.teacher)
    if args.stage == "pretrain":
        return D.pretrain_path(args.arch)
    if args.stage == "train":
        return D.model_path(args.dataset, args.run)
    if args.stage == "evaluate":
        return D.metrics_path(args.dataset, args.run)
    return args.out  # teacher-outputs: its --out is the derived cache's layout path


def _root(args: argparse.Namespace) -> str:
    if args.root:
        return args.root
    if args.params:
        return C.dataset_root(_params(args), args.dataset)
    raise SystemExit("--root is required with --resolved")


def _import_plugin(kw: dict[str, Any], key: str) -> None:
    """A teacher or method outside the package: import the module params.yaml names (it registers itself)."""
    if kw.get(key):
        from reid.registry import import_plugin

        import_plugin(str(kw[key]), key)


def pin_threads(stage: str, resolved: dict[str, Any]) -> int:
    """Pin torch (and OpenMP) to the stage's thread count (params.stage_threads), whoever started the job."""
    import torch

    n = C.stage_threads(stage, resolved)
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n


def main(args: argparse.Namespace) -> int:
    from reid.cli import parse_caches
    from reid.engine.commands import format_metrics

    caches = parse_caches(args.cache)
    if args.params is not None and args.stage != "synth":
        # the DVC route (Snakemake checked at DAG time): every missing input of this stage's output, before any work
        from reid.pipeline.preflight import raise_if_missing

        raise_if_missing(_params(args), [_stage_target(args)])
    if args.stage == "synth":
        from reid.data.synthetic import DEFAULT_TEST_IDS, generate_world

        kw = _resolve(args, C.stage_synth)
        generate_world(kw["world"], args.out, seed=kw["seed"], scale=kw["scale"],
                       test_ids=kw.get("test_ids", DEFAULT_TEST_IDS))
    elif args.stage == "index":
        from reid.data.datasets import build_index
        from reid.data.index import write_index

        kw = _resolve(args, C.stage_index)
        rows = build_index(kw["dataset"], args.root or kw["root"])
        write_index(rows, args.out)
        log.info("index: %d rows -> %s", len(rows), args.out)
    elif args.stage == "teach":
        from reid.teachers.base import build_teacher

        kw = _resolve(args, C.stage_teacher, args.teacher)
        pin_threads("teach", kw)
        _import_plugin(kw, C.PLUGIN_KEY)
        try:
            teacher = build_teacher(kw["teacher"], kw.get("backend", "onnx"), kw.get("model"),
                                    kw.get("device", "auto"), caches, **kw["params"])
        except ValueError as exc:
            raise SystemExit(str(exc))
        from reid.cache.h5 import parse_shard

        summary = teacher.build_cache(args.index, _root(args), args.out, batch_size=int(kw.get("batch_size", 16)),
                                      workers=int(kw.get("workers", 2)), shard=parse_shard(args.shard))
        print(json.dumps({k: v for k, v in summary.items() if k != "provenance"}, sort_keys=True))
    elif args.stage == "pretrain":
        from reid.engine.pretrain import pretrain

        kw = json.loads(args.resolved) if args.resolved is not None else C.stage_pretrain(_params(args), args.arch)[0]
        pin_threads("pretrain", kw)
        summary = pretrain(kw["arch"], args.index, _root(args), args.out, kw["config"])
        print(json.dumps({k: summary[k] for k in ("arch", "classes", "train_images")} |
                         {"train_acc": summary["history"][-1]["train_acc"]}, sort_keys=True))
    elif args.stage == "train":
        from reid.engine.trainer import train

        kw = _resolve(args, C.stage_train, args.run)
        pin_threads("train", kw)
        _import_plugin(kw, "method_module")
        train(kw["method"], kw["method_params"], args.index, _root(args), args.out, caches=caches,
              train_cfg=kw["train_cfg"])
    elif args.stage == "teacher-outputs":
        from reid.engine.commands import teacher_outputs

        kw = _resolve(args, C.stage_evaluate, args.run)
        pin_threads("teacher-outputs", kw)
        _import_plugin(kw, "method_module")
        teacher_outputs(args.model, args.index, _root(args), args.out, caches,
                        batch_size=int(kw.get("batch_size", 64)), workers=int(kw.get("workers", 2)),
                        device=str(kw.get("device", "auto")))
    elif args.stage == "evaluate":
        from reid.engine.inference import DEFAULT_CPU_AMP, evaluate_model

        kw = _resolve(args, C.stage_evaluate, args.run)
        pin_threads("evaluate", kw)
        _import_plugin(kw, "method_module")
        metrics = evaluate_model(args.model, args.index, _root(args), kw["dataset"], args.out, caches,
                                 batch_size=int(kw.get("batch_size", 64)), workers=int(kw.get("workers", 2)),
                                 device=str(kw.get("device", "auto")), overrides=kw.get("method_overrides"),
                                 rerank=kw.get("rerank"), cpu_amp=bool(kw.get("cpu_amp", DEFAULT_CPU_AMP)))
        print(format_metrics(metrics))
    return 0
