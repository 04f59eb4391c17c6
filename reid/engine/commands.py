"""CLI verbs `train`, `evaluate` and `teacher-outputs`: explicit paths and JSON parameters, no params.yaml.

The pipeline (reid/pipeline/stage.py) resolves params.yaml and calls the same functions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from reid.cli import parse_caches
from reid.engine.inference import DEFAULT_CPU_AMP

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="registered method name (baseline, deskpro, ...)")
    p.add_argument("--method-params", default="{}", help="JSON object of method parameters")
    p.add_argument("--train-cfg", default="{}", help="JSON object of trainer settings (see TrainConfig)")
    p.add_argument("--index", required=True, help="index CSV")
    p.add_argument("--root", required=True, help="dataset root the index paths are relative to")
    p.add_argument("--cache", action="append", metavar="NAME=PATH", help="a cache the method reads (repeatable)")
    p.add_argument("--out", required=True, help="output folder (model.pt, checkpoint.pt, train_log.csv)")


def main(args: argparse.Namespace) -> int:
    from reid.engine.trainer import TrainConfig, train
    from reid.methods.base import method_param_hints
    from reid.settings import ParamsError, check_section, parse_json_option

    method_params = parse_json_option(args.method_params, "--method-params")
    hints = method_param_hints(args.method)
    if hints is None:
        raise ParamsError(f"--method: no method named {args.method!r}")
    problems = check_section("--method-params", method_params, hints, f"method {args.method}")
    if problems:
        raise ParamsError("\n  ".join(problems))
    train_cfg = parse_json_option(args.train_cfg, "--train-cfg")
    TrainConfig.from_dict(train_cfg, "--train-cfg")  # keys, types and ranges named before any work
    path = train(args.method, method_params, args.index, args.root, args.out, caches=parse_caches(args.cache),
                 train_cfg=train_cfg)
    print(f"model written to {path}")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt written by `reid train`")
    p.add_argument("--index", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--dataset", required=True, help="dataset loader name (selects the evaluation protocol)")
    p.add_argument("--cache", action="append", metavar="NAME=PATH", help="a test-time cache (repeatable)")
    p.add_argument("--out", required=True, help="metrics.json")
    p.add_argument("--set", action="append", metavar="PARAM=VALUE", dest="overrides",
                   help="override a test-time method parameter, e.g. test_feature=P (repeatable; VALUE is YAML)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-amp", action=argparse.BooleanOptionalAction, default=DEFAULT_CPU_AMP,
                   help="embed in bfloat16 on a CPU with native bf16 (AMX / AVX512-BF16), as the pipeline's evaluate "
                        "stage does by default (params.yaml evaluate.cpu_amp), so this prints its numbers")
    p.add_argument("--rerank", nargs="?", const="20,6,0.3", metavar="K1,K2,LAMBDA",
                   help="also report k-reciprocal re-ranked metrics (default 20,6,0.3 as the papers)")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`param=value` pairs -> dict, each value read as YAML (so 0.5, true, [1, 2] keep their types)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set expects PARAM=VALUE, got {item!r}")
        out[name] = yaml.safe_load(value)
    return out


def main_evaluate(args: argparse.Namespace) -> int:
    from reid.engine.inference import evaluate_model, pin_evaluate_threads

    pin_evaluate_threads()  # the pipeline's evaluate stage's thread count: the same numbers as its metrics.json
    rerank = None
    if args.rerank:
        try:
            k1, k2, lam = args.rerank.split(",")
            rerank = {"k1": int(k1), "k2": int(k2), "lambda_value": float(lam)}
        except ValueError:
            raise SystemExit(f"--rerank expects K1,K2,LAMBDA (e.g. 20,6,0.3), got {args.rerank!r}")
    metrics = evaluate_model(args.model, args.index, args.root, args.dataset, args.out, parse_caches(args.cache),
                             args.batch_size, args.workers, args.device, overrides=parse_overrides(args.overrides),
                             rerank=rerank, cpu_amp=args.cpu_amp)
    print(format_metrics(metrics))
    return 0


def format_metrics(metrics: Mapping[str, Any], label: str | None = None) -> str:
    """A title line ('<label or dataset/method> [protocol]'), then one line per protocol setting: R1 .. mAP .."""
    title = label or f"{metrics.get('dataset')}/{metrics.get('method')}"
    lines = [f"{title} [{metrics.get('protocol')}]"]
    settings = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, dict) and "mAP" in v]
    settings += [(f"{k} +rerank", v) for k, v in sorted(metrics.get("reranked", {}).items())
                 if isinstance(v, dict) and "mAP" in v]
    for key, value in settings:
        lines.append(
            f"  {key:>14}: R1 {value['R1']:6.2f}  R5 {value['R5']:6.2f}  mAP {value['mAP']:6.2f}  "
            f"mINP {value['mINP']:6.2f}  ({value.get('num_query', '?')} queries)"
        )
    return "\n".join(lines)


def add_teacher_outputs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt of a trained teacher method")
    p.add_argument("--index", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--cache", action="append", metavar="NAME=PATH", help="caches the teacher reads (repeatable)")
    p.add_argument("--out", required=True, help="output HDF5 cache")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")


def main_teacher_outputs(args: argparse.Namespace) -> int:
    path = teacher_outputs(args.model, args.index, args.root, args.out, parse_caches(args.cache),
                           args.batch_size, args.workers, args.device)
    print(f"teacher outputs written to {path}")
    return 0


@torch.no_grad()
def teacher_outputs(
    model_path: str | Path, index: str | Path, root: str | Path, out: str | Path,
    caches: Mapping[str, str] | None = None, batch_size: int = 64, workers: int = 2, device: str = "auto",
) -> Path:
    """Run a trained teacher once over every index row (test transform) into an HDF5 cache for its student."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from reid.cache.h5 import CacheWriter, check_field
    from reid.data.dataset import ReIDDataset
    from reid.data.index import index_sha256, read_index
    from reid.engine.inference import load_model
    from reid.engine.trainer import method_fields, open_caches
    from reid.progress import progress_interval
    from reid.teachers.base import file_sha256

    method, model, ckpt = load_model(model_path, device)
    if not method.provides_cache:
        raise TypeError(f"method {method.name!r} provides no cache: it is not a teacher for a student")
    rows = read_index(index)
    opened = open_caches(caches or {}, index)
    fields = {k: check_field(k, spec) for k, spec in method.cache_fields(ckpt["num_classes"]).items()}
    ds = ReIDDataset(rows, root, range(len(rows)), tuple(ckpt["input_size"]), train=False, caches=opened,
                     fields=method_fields(method, train=False), image_field=method.image_field)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    dev = next(model.parameters()).device
    with CacheWriter(out, teacher=method.name, backend="torch", model_sha256=file_sha256(model_path),
                     params=dict(method.params), index_sha256=index_sha256(index), paths=[r.path for r in rows],
                     fields=fields) as writer:
        todo = set(int(i) for i in writer.pending_rows())
        for batch in tqdm(loader, desc=f"{method.name} outputs", dynamic_ncols=True, mininterval=progress_interval()):
            idx = batch["index"].numpy()
            keep = np.array([i in todo for i in idx])
            if not keep.any():
                continue
            batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            values = method.cache_outputs(model, batch)
            arrays = {k: v.float().cpu().numpy().astype(fields[k].dtype)[keep] for k, v in values.items()}
            writer.write_rows(idx[keep], arrays)
        return writer.finalize()
