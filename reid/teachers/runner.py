"""The shared batched teacher runner: index -> decode worker pool -> teacher.infer -> HDF5 cache.

Every teacher's ``build_cache`` runs through ``run_teacher`` unless the teacher overrides it (isp_labels): images are decoded and preprocessed by ``teacher.load`` in forked
worker processes (a torch DataLoader over the rows still to do), batched, passed to ``teacher.infer`` in the main
process, and written with ``CacheWriter`` (atomic, resumable, shardable; see reid/cache/h5.py). An interrupted run
leaves ``<out>.tmp``; running the same command again computes only the missing rows.

CLI verbs: ``teach`` and ``merge-shards`` (``add_arguments``/``main`` and ``add_merge_arguments``/``merge_main``).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from reid.cache.h5 import CacheWriter, merge_shards, parse_shard
from reid.data.index import IndexRow, index_sha256, read_index
from reid.teachers.base import Teacher, build_teacher, read_image

log = logging.getLogger(__name__)


class _RowLoader:
    """Map-style dataset over the rows still to do: decode one image and run ``teacher.load`` on it."""

    def __init__(self, teacher: Teacher, rows: Sequence[IndexRow], root: Path, todo: np.ndarray):
        self.teacher, self.rows, self.root, self.todo = teacher, rows, Path(root), todo
        self.pass_index = teacher.load_accepts_index()

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[int, Any]:
        i = int(self.todo[k])
        row = self.rows[i]
        image = read_image(self.root / row.path) if self.teacher.needs_image else None
        if self.pass_index:
            return i, self.teacher.load(image, row, self.root, index=i)
        return i, self.teacher.load(image, row, self.root)


def _collate(samples: list[tuple[int, Any]]) -> tuple[np.ndarray, list[Any]]:
    return np.array([s[0] for s in samples], dtype=np.int64), [s[1] for s in samples]


def _batches(dataset: _RowLoader, batch_size: int, workers: int) -> Iterator[tuple[np.ndarray, list[Any]]]:
    """Ordered batches; decoding in ``workers`` forked processes (in-process when 0 or fork is unavailable)."""
    if workers > 0 and "fork" not in mp.get_all_start_methods():
        log.warning("no 'fork' start method on this platform: decoding in the main process")
        workers = 0
    if workers == 0:
        for start in range(0, len(dataset), batch_size):
            yield _collate([dataset[k] for k in range(start, min(start + batch_size, len(dataset)))])
        return
    from torch.utils.data import DataLoader

    from reid.data.workers import worker_init

    # fork: the teacher (possibly holding a model session) is inherited, never pickled; load() must not use it.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
                        multiprocessing_context="fork", prefetch_factor=4,  # reid/__init__: cv2 single-threaded
                        worker_init_fn=worker_init)
    yield from loader


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if sys.stderr.isatty() else 30.0)


def run_teacher(teacher: Teacher, index_path: str | Path, root: str | Path, out: str | Path, batch_size: int = 16,
                workers: int = 2, shard: tuple[int, int] | None = None, progress: bool = True,
                flush_every_s: float = 10.0) -> dict[str, Any]:
    """Fill ``out`` (or shard part ``out``) with the teacher's outputs for every index row; return a summary."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = read_index(index_path)
    start = time.perf_counter()
    with CacheWriter(out, teacher=teacher.name, backend=teacher.backend, model_sha256=teacher.model_sha256,
                     params=teacher.cache_params(), index_sha256=index_sha256(index_path),
                     paths=[r.path for r in rows], fields=teacher.fields(), shard=shard,
                     flush_every_s=flush_every_s) as writer:
        todo = writer.pending_rows()
        computed, infer_s = 0, 0.0
        if len(todo):
            batches = _batches(_RowLoader(teacher, rows, Path(root), todo), batch_size, workers)
            teacher.setup()
            with _progress(len(todo), progress, f"{teacher.name}/{teacher.backend}") as bar:
                for batch_rows, items in batches:
                    t0 = time.perf_counter()
                    values = teacher.infer(items)
                    infer_s += time.perf_counter() - t0
                    writer.write_rows(batch_rows, values)
                    computed += len(batch_rows)
                    bar.update(len(batch_rows))
        elapsed = time.perf_counter() - start
        final = writer.finalize()
        summary = {
            "out": str(final),
            "teacher": teacher.name,
            "backend": teacher.backend,
            "shard": f"{shard[0]}/{shard[1]}" if shard else "",
            "rows_total": len(rows),
            "rows_in_range": len(writer.rows),
            "rows_resumed": writer.resumed_rows,
            "rows_computed": computed,
            "seconds": round(elapsed, 3),
            "images_per_s": round(computed / elapsed, 2) if computed and elapsed > 0 else 0.0,
            "infer_images_per_s": round(computed / infer_s, 2) if computed and infer_s > 0 else 0.0,
            "batch_size": batch_size,
            "workers": workers,
            "provenance": teacher.provenance(),
        }
    log.info("%s/%s: %d images in %.1f s = %.1f images/s (inference alone %.1f images/s); %d rows resumed; -> %s",
             teacher.name, teacher.backend, computed, elapsed, summary["images_per_s"],
             summary["infer_images_per_s"], writer.resumed_rows, final)
    log.info("provenance: %s", json.dumps(summary["provenance"], sort_keys=True, default=str))
    return summary


# --- CLI ------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m reid teach`."""
    parser.add_argument("--teacher", required=True, help="teacher name (= cache file stem), e.g. parsing")
    parser.add_argument("--backend", required=True, help="onnx | torch | oracle (what the teacher supports)")
    parser.add_argument("--index", required=True, type=Path, help="dataset index CSV")
    parser.add_argument("--root", required=True, type=Path, help="dataset root the index paths are relative to")
    parser.add_argument("--out", required=True, type=Path, help="cache file to write (.h5)")
    parser.add_argument("--model", default=None, help="model/weights file (not needed for oracle)")
    parser.add_argument("--params-json", default="{}", help="teacher parameters as a JSON object")
    parser.add_argument("--cache", action="append", metavar="NAME=PATH",
                        help="a cache the teacher aligns on (its params' `needs`), repeatable")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decode worker processes (0 = main process)")
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--shard", default=None, help="i/n: compute only rows [i*N//n, (i+1)*N//n) into a part")
    parser.add_argument("--flush-every", type=float, default=10.0, help="seconds between durable flushes")
    parser.add_argument("--summary", type=Path, default=None, help="also write the run summary JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(args: argparse.Namespace) -> int:
    """`python -m reid teach`: run one teacher over an index into an HDF5 cache."""
    _setup_logging()
    try:
        params = json.loads(args.params_json)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--params-json is not valid JSON ({exc}): {args.params_json!r}")
    if not isinstance(params, dict):
        raise SystemExit(f"--params-json must be a JSON object, got {args.params_json!r}")
    from reid.cli import parse_caches

    try:
        teacher = build_teacher(args.teacher, args.backend, args.model, args.device, parse_caches(args.cache),
                                **params)
    except ValueError as exc:
        raise SystemExit(str(exc))
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
    _setup_logging()
    out = merge_shards(args.parts, args.out)
    log.info("merged %d parts -> %s", len(args.parts), out)
    return 0
