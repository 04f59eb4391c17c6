"""Training input pipeline: how fast one CPU core turns index rows + caches into training batches, per method.

    python benchmarks/bench_data_wait.py --out benchmarks/results/data_wait.json
    python benchmarks/bench_data_wait.py --runs synthcc:deskpro synthocc:isp --batches 20 --input-size 256 128

Each run builds the method's training dataset exactly as the trainer does (its cache fields, the train
transform: decode, resize, flip, pad-crop, random erasing, the warps of the dense cache maps by their kind) from
the pipeline's own files (data/<ds>, cache/<ds>/*.h5: run the demo or the teacher rules first; a run whose
caches are missing is skipped with the names) and times the DataLoader in the main process (workers=0), so the
figure is images/s per core. A cProfile of the same batches names the three most expensive functions.

Extrapolation (shared/specs/performance.md): a ResNet-50-sized student at 256x128 trains at ~2,470 images/s on
an A100 with AMP and channels-last. At `r` images/s per core, keeping such a GPU fed (< 5% waiting) takes about
2,470 / r decode workers (`train.workers`); the trainer logs the measured `data_wait_share` of every epoch in
train_log.csv. On a real dataset the decode cost per image is that of its JPEG crops (Market: 128x64 JPEGs,
about the size of these PNGs).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reid.methods  # noqa: F401  (registers the built-in methods)
from reid.data.dataset import ReIDDataset
from reid.data.index import read_index
from reid.data.samplers import PKBatchSampler
from reid.engine.trainer import TrainConfig, open_caches, train_dataset
from reid.methods.base import build_method
from reid.pipeline import layout
from reid.pipeline import params as C

A100_IMAGES_PER_S = 2470  # ResNet-50, AMP, channels-last (NVIDIA DeepLearningExamples; shared/specs/performance.md)
DEFAULT_RUNS = ("synthcc:baseline", "synthcc:deskpro", "synthcc:deskpro_face_teacher", "synthocc:pgfl_kd",
                "synthocc:isp", "synthocc:sureid")


def build_dataset(cfg: dict, dataset: str, run: str, input_size: tuple[int, int] | None, batch_p: int,
                  batch_k: int) -> tuple[ReIDDataset, PKBatchSampler] | str:
    """The run's training dataset and sampler as the trainer builds them, or the reason it cannot be built."""
    resolved, _ = C.stage_train(cfg, dataset, run)
    method = build_method(resolved["method"], **resolved["method_params"])
    names = C.method_caches(cfg, dataset, run, train=True)
    caches = {n: str(ROOT / layout.cache_path(dataset, n)) for n in names}
    missing = [p for p in caches.values() if not Path(p).is_file()]
    index = ROOT / layout.index_path(dataset)
    if missing or not index.is_file():
        return "missing " + ", ".join(missing or [str(index)])
    rows = read_index(index)
    train = TrainConfig.from_dict({**resolved["train_cfg"], **({"input_size": list(input_size)} if input_size
                                                                else {})})
    ds = train_dataset(method, rows, ROOT / C.dataset_root(cfg, dataset), open_caches(caches, index), train)
    labels = [ds.pid_labels[rows[i].pid] for i in ds.positions]
    return ds, PKBatchSampler(labels, batch_p, batch_k, 0, 0, 1)


def time_loader(ds: ReIDDataset, sampler: PKBatchSampler, batches: int) -> tuple[float, int, str]:
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=0)
    it = iter(loader)
    next(it)  # warm-up: opens the caches, first decodes
    images, t0 = 0, time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(batches):
        batch = next(it, None)
        if batch is None:
            it = iter(loader)
            batch = next(it)
        images += len(batch["image"])
    prof.disable()
    seconds = time.perf_counter() - t0
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(3)
    top = [line.strip() for line in text.getvalue().splitlines() if line.strip()[:1].isdigit()][:3]
    return images / seconds, images, "; ".join(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="dataset:run pairs")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--input-size", type=int, nargs=2, default=None, help="default: the run's train.input_size")
    ap.add_argument("--batch-p", type=int, default=16)
    ap.add_argument("--batch-k", type=int, default=4)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)  # one core, as one loader worker has
    cfg = C.load_params(a.params)
    results = []
    for spec in a.runs:
        dataset, run = spec.split(":", 1)
        built = build_dataset(cfg, dataset, run, tuple(a.input_size) if a.input_size else None, a.batch_p, a.batch_k)
        if isinstance(built, str):
            print(f"{spec}: skipped ({built})", flush=True)
            results.append({"run": spec, "skipped": built})
            continue
        ds, sampler = built
        rate, images, top = time_loader(ds, sampler, a.batches)
        row = {"run": spec, "input_size": list(ds.input_size),
               "fields": list(ds.fields), "images": images, "images_per_s_per_core": round(rate, 1),
               "workers_to_feed_a100": round(A100_IMAGES_PER_S / rate, 1), "top_functions": top}
        print(json.dumps(row), flush=True)
        results.append(row)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"batch": [a.batch_p, a.batch_k], "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
