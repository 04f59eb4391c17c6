"""`python -m reid teach` and `python -m reid merge-shards`: the one door to every teacher's cache.

`teach` builds the registered teacher (any backend, with the caches its params `needs`) and calls its
`build_cache` (the batched runner, or the teacher's own whole-dataset driver such as isp_labels'); the pipeline's
teach stage (reid/pipeline/stage.py) calls the same `build_teacher` + `build_cache`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from reid.cache.h5 import merge_shards, parse_shard
from reid.cli import parse_caches
from reid.teachers.base import build_teacher

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m reid teach`."""
    parser.add_argument("--teacher", required=True, help="teacher name (= cache file stem), e.g. parsing")
    parser.add_argument("--backend", required=True, help="onnx | torch | oracle (what the teacher supports)")
    parser.add_argument("--index", required=True, type=Path, help="dataset index CSV")
    parser.add_argument("--root", required=True, type=Path, help="dataset root the index paths are relative to")
    parser.add_argument("--out", required=True, type=Path, help="cache file to write (.h5)")
    parser.add_argument("--model", default=None, help="model/weights file (not needed for oracle)")
    parser.add_argument("--params-json", default="{}",
                        help="teacher parameters as a JSON object, checked like params.yaml's teachers.<t> (default {})")
    parser.add_argument("--cache", action="append", metavar="NAME=PATH",
                        help="a cache the teacher aligns on (its params' `needs`), repeatable")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decode worker processes (0 = main process)")
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--shard", default=None, help="i/n: compute only rows [i*N//n, (i+1)*N//n) into a part")
    parser.add_argument("--flush-every", type=float, default=10.0, help="seconds between durable flushes")
    parser.add_argument("--summary", type=Path, default=None, help="also write the run summary JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """`python -m reid teach`: run one teacher over an index into an HDF5 cache."""
    from reid.settings import parse_json_option

    params = parse_json_option(args.params_json, "--params-json")
    teacher = build_teacher(args.teacher, args.backend, args.model, args.device, parse_caches(args.cache), **params)
    summary = teacher.build_cache(args.index, args.root, args.out, batch_size=args.batch_size,
                                  workers=args.workers, shard=parse_shard(args.shard), progress=not args.no_progress,
                                  flush_every_s=args.flush_every)
    report_summary(summary, args.summary)
    return 0


def report_summary(summary: dict[str, Any], path: Path | None) -> None:
    """Print a teacher run's summary as one JSON line and, when asked, also write it to `path`."""
    text = json.dumps(summary, sort_keys=True, default=str)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m reid merge-shards`."""
    parser.add_argument("--out", required=True, type=Path, help="merged cache file")
    parser.add_argument("parts", nargs="+", type=Path, help="shard part files (any order)")


def merge_main(args: argparse.Namespace) -> int:
    """`python -m reid merge-shards`: join shard parts into the bytes a single run writes."""
    out = merge_shards(args.parts, args.out)
    log.info("merged %d parts -> %s", len(args.parts), out)
    return 0
