"""`python -m reid probe`: what a trained model's mechanism does on real images, beside what it scores.

A method's `probe(model, batch)` returns per-image statistics (e.g. PGFL-KD: how concentrated its pose group
maps and FEB attention are); this verb runs it over a split of an index and prints their means, so a
mechanism that silently does nothing (a flat attention, parts equal to the global feature) shows up.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from reid.data.dataset import ReIDDataset
from reid.data.index import read_index, select
from reid.engine.inference import load_model
from reid.engine.trainer import open_caches

log = logging.getLogger(__name__)


@torch.no_grad()
def probe_model(
    model_path: str | Path, index: str | Path, root: str | Path, caches: Mapping[str, str | Path] | None = None,
    split: str = "query", limit: int = 256, batch_size: int = 32, device: str = "cpu",
) -> dict[str, Any]:
    """Mean (and standard deviation) over up to `limit` images of `split` of every statistic `method.probe` gives."""
    method, model, ckpt = load_model(model_path, device)
    needed = sorted(set(method.probe_caches) - set(caches or {}))
    if needed:
        raise KeyError(f"{method.name} probes need the caches {needed}: pass --cache NAME=PATH for each")
    rows = read_index(index)
    positions = select(rows, split)[:limit]
    if not positions:
        raise ValueError(f"{index}: no rows in split {split!r} to probe")
    fields = [f"{t}.{f}" for t, fs in method.probe_caches.items() for f in fs]
    ds = ReIDDataset(rows, root, positions, tuple(ckpt["input_size"]), train=False,
                     caches=open_caches(caches or {}, index), fields=fields)
    if method.probe_groundtruth:
        if (Path(root) / "groundtruth").is_dir():
            for key in method.probe_groundtruth:
                ds.set_field(f"groundtruth.{key}", groundtruth_masks(root, rows, positions, key, ckpt["input_size"]),
                             "labels")
        else:
            log.info("%s: no groundtruth/ folder (not a synthetic world): the probe leaves out its statistics on %s",
                     root, ", ".join(method.probe_groundtruth))
    dev = next(model.parameters()).device
    values: dict[str, list[torch.Tensor]] = {}
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for name, v in method.probe(model, batch).items():
            values.setdefault(name, []).append(v.float().cpu())
    stats = {}
    for name, parts in values.items():
        v = torch.cat(parts)
        stats[name] = {"mean": round(float(v.mean()), 5), "std": round(float(v.std()) if len(v) > 1 else 0.0, 5)}
    return {"model": str(model_path), "method": method.name, "split": split, "images": len(positions),
            "stats": stats}


def groundtruth_masks(root: str | Path, rows: list, positions: list[int], key: str,
                      size: tuple[int, int] | list[int]) -> np.ndarray:
    """(len(rows), H, W) uint8: the synthetic ground truth's mask `key` of each probed row, resized (nearest) to the
    model's input size; other rows stay 0. A world rendered before the mask existed is a clear error."""
    from reid.data.groundtruth import load_groundtruth

    h, w = int(size[0]), int(size[1])
    out = np.zeros((len(rows), h, w), np.uint8)
    for i in positions:
        gt = load_groundtruth(root, rows[i].path)
        if key not in gt:
            npz = Path(root) / "groundtruth" / Path(rows[i].path).with_suffix(".npz")
            raise KeyError(f"{npz}: no {key!r} array; this world was rendered "
                           f"before the renderer wrote it: regenerate it (snakemake --forcerun synth ...)")
        out[i] = cv2.resize(np.asarray(gt[key], np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt written by `reid train`")
    p.add_argument("--index", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--cache", action="append", metavar="NAME=PATH", help="a cache the probe reads (repeatable)")
    p.add_argument("--split", default="query", choices=("train", "query", "gallery"),
                   help="the index rows to probe")
    p.add_argument("--limit", type=int, default=256, help="images probed (the first of the split)")
    p.add_argument("--out", help="also write the statistics as JSON")


def main(args: argparse.Namespace) -> int:
    from reid.cli import parse_caches

    report = probe_model(args.model, args.index, args.root, parse_caches(args.cache), args.split, args.limit)
    if args.out:  # written even when empty, so a DAG rule's output exists for every run
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if not report["stats"]:
        print(f"{report['method']}: this model has no mechanism to probe")
        return 0
    print(f"{report['method']} probe on {report['images']} {report['split']} images of {args.index}:")
    width = max(len(k) for k in report["stats"])
    for name, s in report["stats"].items():
        print(f"  {name:<{width}}  {s['mean']:10.4f}  ± {s['std']:.4f}")
    return 0
