"""The shared batched teacher runner: index -> decode worker pool -> teacher.infer -> HDF5 cache.

Every teacher's ``build_cache`` runs through ``run_teacher`` unless the teacher overrides it (isp_labels): images are decoded and preprocessed by ``teacher.load`` in forked
worker processes (a torch DataLoader over the rows still to do), batched, passed to ``teacher.infer`` in the main
process, and written with ``CacheWriter`` (atomic, resumable, shardable; see reid/cache/h5.py). An interrupted run
leaves ``<out>.tmp``; running the same command again computes only the missing rows.

The CLI verbs ``teach`` and ``merge-shards`` live in reid/teachers/commands.py.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from reid.cache.h5 import CacheWriter
from reid.data.index import IndexRow, index_sha256, read_index
from reid.data.images import read_bgr

if TYPE_CHECKING:  # the base class calls the runner (Teacher.build_cache); the runner only names the type
    from reid.teachers.base import Teacher

log = logging.getLogger(__name__)


class _RowLoader:
    """Map-style dataset over the rows still to do: decode one image and run ``teacher.load`` on it."""

    def __init__(self, teacher: "Teacher", rows: Sequence[IndexRow], root: Path, todo: np.ndarray):
        self.teacher, self.rows, self.root, self.todo = teacher, rows, Path(root), todo
        self.pass_index = teacher.load_accepts_index()

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[int, Any]:
        i = int(self.todo[k])
        row = self.rows[i]
        image = read_bgr(self.root / row.path) if self.teacher.needs_image else None
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


def run_teacher(teacher: "Teacher", index_path: str | Path, root: str | Path, out: str | Path, batch_size: int = 16,
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
