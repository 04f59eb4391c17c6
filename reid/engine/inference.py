"""Inference from a trained `model.pt`: rebuild the student, embed query/gallery, rank, write metrics.json.

Nothing here loads a teacher: the exported model holds the student only, and the only caches read at test time
are the ones a method declares in `test_caches` (e.g. DeSKPro's detected face crops).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.data.dataset import ReIDDataset
from reid.data.index import IndexRow, read_index, select
from reid.data.workers import worker_init
from reid.engine.trainer import (
    MODEL_FORMAT,
    filter_positions,
    method_fields,
    open_caches,
)
from reid.progress import progress_interval
from reid.device import autocast_dtype, resolve_device
from reid.methods.base import Method, method_from_record
from reid.models.zoo import RANDOM
from reid.serialization import load_file

log = logging.getLogger(__name__)


def load_model(
    path: str | Path, device: str = "auto", overrides: Mapping[str, Any] | None = None,
) -> tuple[Method, torch.nn.Module, dict[str, Any]]:
    """Rebuild a method and its student network from `model.pt` (eval mode, on `device`).

    `overrides` replace saved method parameters that act at test time only (e.g. PGFL-KD's `test_feature`, ISP's
    `matching`), so one trained network can be evaluated several ways; one that changes the network is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (train it first: `python -m reid train`)")
    ckpt = load_file(path, "model", require_digest=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        hint = (" (written by an older version of this project that pickled Python objects; train it again)"
                if found in ("reid-model/1", "reid-model/2") else "")
        raise ValueError(f"{path}: not a {MODEL_FORMAT} file (format={found!r}){hint}")
    params = {**ckpt["method_params"], **(overrides or {})}
    try:
        method = method_from_record(ckpt["method"], params, ckpt.get("method_module"), str(path))
    except ValueError as e:
        if not overrides:
            raise
        raise ValueError(f"{path}: cannot apply overrides {dict(overrides)} to {ckpt['method']}: {e}") from e
    # the network is built without loading its ImageNet file (the trained weights replace it at once): no file is
    # read that the model does not need, and no "random initialisation" warning for a trained model
    untouched = {k: RANDOM for k in method.backbone_weights()}
    builder = method_from_record(ckpt["method"], {**params, **untouched}, None, str(path)) if untouched else method
    model = builder.build_model(ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        if not overrides:
            raise
        raise ValueError(f"{path}: overrides {dict(overrides)} change the network; only test-time parameters "
                         f"can be overridden at evaluation ({str(e).splitlines()[0]})") from e
    method.load_extra_state(ckpt.get("method_state", {}))
    dev = torch.device(resolve_device(device))
    model.to(dev).eval()
    return method, model, ckpt


# Whether evaluation embeds in bfloat16 on a CPU with native bf16: the default of params.yaml's `evaluate.cpu_amp`
# and of the `evaluate` / `embed` / `search` verbs (`--no-cpu-amp`), so the CLI computes the pipeline's numbers.
DEFAULT_CPU_AMP = True
# Torch threads of an evaluation: the pipeline's evaluate stage pins it (reid.pipeline.params.stage_threads) and so do
# the `evaluate` / `embed` verbs, as float reductions (and so near-tie rankings) depend on the thread count.
EVALUATE_THREADS = 2


def pin_evaluate_threads() -> None:
    os.environ["OMP_NUM_THREADS"] = str(EVALUATE_THREADS)
    torch.set_num_threads(EVALUATE_THREADS)


def extraction_dtype(model: torch.nn.Module, cpu_amp: bool) -> torch.dtype | None:
    """The autocast dtype `extract` embeds under for this model's device (None: float32); metrics.json records it."""
    return autocast_dtype(next(model.parameters()).device.type, True, cpu_amp)


def for_extraction(model: torch.nn.Module, cpu_amp: bool) -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model as `extract` runs it and the autocast dtype (None: float32). Under bfloat16 the model's 4-D weights
    are switched to channels_last in place (`Module.to` mutates; the values and every later output are unchanged,
    only the memory layout differs), the layout oneDNN's bf16 kernels want."""
    dtype = extraction_dtype(model, cpu_amp)
    return (model.to(memory_format=torch.channels_last) if dtype == torch.bfloat16 else model), dtype


@torch.no_grad()
def embed_batch(method: Method, model: torch.nn.Module, batch: Mapping[str, Any],
                dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """`method.embed` of one batch (moved to the model's device) under the extraction autocast."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return method.embed(model, batch)


@torch.no_grad()
def extract(
    method: Method, model: torch.nn.Module, dataset: ReIDDataset, batch_size: int = 64, workers: int = 2,
    desc: str = "embed", cpu_amp: bool = False,
) -> dict[str, torch.Tensor]:
    """Run `method.embed` over a dataset; returns each feature key concatenated over rows (on CPU).

    Autocast: float16 on CUDA; bfloat16 on a CPU with native bf16 when `cpu_amp` (features come back as float32)."""
    model, dtype = for_extraction(model, cpu_amp)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, worker_init_fn=worker_init)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=progress_interval()):
        feats = embed_batch(method, model, batch, dtype)
        for k, v in feats.items():
            parts.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def distance_matrix(method: Method, q: Mapping[str, torch.Tensor], g: Mapping[str, torch.Tensor],
                    chunk: int = 1024) -> np.ndarray:
    """Method distance, computed for query chunks so memory stays bounded by chunk x gallery."""
    n = len(next(iter(q.values())))
    out = []
    for s in range(0, n, chunk):
        qc = {k: v[s : s + chunk] for k, v in q.items()}
        out.append(method.distance(qc, dict(g)).float().cpu().numpy())
    dist = np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)
    if not np.isfinite(dist).all():
        raise FloatingPointError(f"the distance matrix has {int((~np.isfinite(dist)).sum())} non-finite values")
    return dist


def check_not_degenerate(feats: Mapping[str, Mapping[str, torch.Tensor]], model_path: str | Path) -> None:
    """Refuse features that cannot rank: every embedding equal (e.g. all zero), so every distance ties and the
    metrics would only reflect the tie order. Names the model file."""
    for split, parts in feats.items():
        for key, value in parts.items():
            if key in ("has_face", "visibility"):  # flags, not embeddings
                continue
            if key == "face" and "has_face" in parts:  # only images with a face have a face embedding
                value = value[parts["has_face"].bool().view(-1)]
            if len(value) < 2:
                continue
            v = value.float().reshape(len(value), -1)
            if not torch.isfinite(v).all():
                raise FloatingPointError(f"{model_path}: {split} feature '{key}' has non-finite values")
            if float((v - v[:1]).abs().max()) == 0.0:
                raise ValueError(f"{model_path}: every {split} image has the same '{key}' feature "
                                 f"(all {float(v[0].abs().max()):.3g} in magnitude): a degenerate model; the "
                                 "ranking would be the tie order, so it is not evaluated")


def evaluate_model(
    model_path: str | Path,
    index: str | Path,
    root: str | Path,
    dataset: str,
    out: str | Path,
    caches: Mapping[str, str | Path] | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    rerank: Mapping[str, Any] | None = None,
    cpu_amp: bool = False,
) -> dict[str, Any]:
    """Embed query and gallery of `index`, rank with the method's distance, run the dataset's protocol.

    `overrides`: test-time method parameters replacing the saved ones (see `load_model`); recorded in the metrics.
    `rerank`: k-reciprocal re-ranking parameters (k1, k2, lambda_value); its metrics go under "reranked", beside
    the plain ones.
    """
    from reid.data.datasets import dataset_info
    from reid.eval.protocols import run_protocol

    method, model, ckpt = load_model(model_path, device, overrides)
    rows: list[IndexRow] = read_index(index)
    opened = open_caches(caches or {}, index)
    info = dataset_info(dataset)
    subsets = {}
    for split in ("query", "gallery"):
        pos = select(rows, split)
        kept = filter_positions(method, pos, opened)
        subsets[split] = kept
        if len(kept) < len(pos):
            log.warning("%s: %d of %d %s images lack %s and are left out", method.name, len(pos) - len(kept),
                        len(pos), split, method.require_field)
        if not kept:
            why = f" ({len(pos)} rows, none with {method.require_field})" if pos else ""
            raise ValueError(f"{index}: no {split} rows to evaluate{why}; is this a test split of {dataset}?")
    t0 = time.perf_counter()
    feats = {}
    for split, pos in subsets.items():
        ds = ReIDDataset(rows, root, pos, tuple(ckpt["input_size"]), train=False, caches=opened,
                         fields=method_fields(method, train=False), image_field=method.image_field)
        feats[split] = extract(method, model, ds, batch_size, workers, desc=f"embed {split}", cpu_amp=cpu_amp)
    embed_s = time.perf_counter() - t0
    check_not_degenerate(feats, model_path)
    dist = distance_matrix(method, feats["query"], feats["gallery"])
    q_rows = [rows[i] for i in subsets["query"]]
    g_rows = [rows[i] for i in subsets["gallery"]]
    curves: dict[str, np.ndarray] = {}
    per_query: dict[str, dict[str, np.ndarray]] = {}
    metrics = run_protocol(info.protocol, dist, q_rows, g_rows, curves=curves, per_query=per_query)
    metrics.pop("description")  # the protocol's prose lives in reid.eval.protocols (a metrics column in `dvc exp show`)
    n_images = len(subsets["query"]) + len(subsets["gallery"])
    metrics.update({
        "dataset": dataset,
        "method": method.name,
        "num_query_images": len(q_rows),
        "num_gallery_images": len(g_rows),
        "embed_images_per_s": round(n_images / max(embed_s, 1e-9), 2),
        "embed_dtype": str(extraction_dtype(model, cpu_amp) or torch.float32).removeprefix("torch."),
        "test_caches": sorted(method.test_caches),
    })
    if rerank:
        from reid.eval.rerank import rerank_features

        reranked = rerank_features(method, feats["query"], feats["gallery"], **dict(rerank))
        metrics["reranked"] = {k: v for k, v in run_protocol(info.protocol, reranked, q_rows, g_rows).items()
                               if k not in ("protocol", "description")}
        metrics["reranked"]["parameters"] = dict(rerank)
    if overrides:
        metrics["method_overrides"] = dict(overrides)
    if method.require_field:
        metrics["subset"] = f"only images with {method.require_field}"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=_jsonable) + "\n")
    write_per_query(out.parent / "per_query.csv", per_query, q_rows)
    write_pictures(out.parent, f"{dataset}/{Path(model_path).parent.name}", info.protocol, curves, dist, q_rows,
                   g_rows, root)
    return metrics


def write_per_query(path: Path, per_query: Mapping[str, Mapping[str, np.ndarray]], q_rows: list[IndexRow]) -> None:
    """per_query.csv: one line per (setting, valid query): its image, the rank of its first correct match (0 =
    rank-1 hit) and its AP; runs evaluated on the same index compare query by query (reid/eval/claims.py)."""
    lines = ["setting,query,first,ap"]
    for setting, pq in per_query.items():
        for q, first, ap in zip(pq["query"], pq["first"], pq["ap"]):
            lines.append(f"{setting},{q_rows[int(q)].path},{int(first)},{float(ap):.8f}")
    path.write_text("\n".join(lines) + "\n")


def write_pictures(folder: Path, title: str, protocol: str, curves: Mapping[str, np.ndarray], dist: np.ndarray,
                   q_rows: list[IndexRow], g_rows: list[IndexRow], root: str | Path, k: int = 10,
                   n: int = 4) -> None:
    """cmc.csv (a DVC plot) + cmc.png, and ranks.png: the `n` worst and `n` best queries of the protocol's last
    setting (PRCC: cross-clothes) with their top-k, green/red borders for right/wrong identity."""
    from reid.eval.protocols import PROTOCOLS
    from reid.viz.charts import cmc_plot
    from reid.viz.ranks import display_rankings, rank_sheet

    length = max(len(c) for c in curves.values())
    lines = ["rank," + ",".join(curves)]
    for r in range(length):
        lines.append(f"{r + 1}," + ",".join(f"{100 * float(c[min(r, len(c) - 1)]):.4f}" for c in curves.values()))
    (folder / "cmc.csv").write_text("\n".join(lines) + "\n")
    cmc_plot(dict(curves), folder / "cmc.png", title=f"{title} [{protocol}]")
    setting = PROTOCOLS.get(protocol).settings[-1]
    idx = np.array([i for i, r in enumerate(q_rows) if setting.accepts(r)])
    sub_q = [q_rows[i] for i in idx]
    order, hits, first = display_rankings(np.asarray(dist)[idx], sub_q, g_rows, setting.mode, k)
    by_rank = list(np.argsort(first, kind="stable"))  # best first
    worst = by_rank[::-1][:n]
    best = [i for i in by_rank if i not in worst][:n]
    chosen = worst + best[::-1]  # the worst queries first, then the best ones
    rank_sheet([Path(root) / sub_q[i].path for i in chosen], [[Path(root) / g_rows[j].path for j in order[i]]
                                                                for i in chosen], hits[chosen],
               folder / "ranks.png", captions=[f"{'worst' if c < len(worst) else 'best'} r{first[i] + 1}"
                                               for c, i in enumerate(chosen)],
               distances=np.take_along_axis(np.asarray(dist)[idx], order, axis=1)[chosen],
               title=[f"{title} [{protocol}], setting {setting.name}: its {len(worst)} worst and {len(best)} best "
                      "queries",
                      f"'worst r{first[chosen[0]] + 1}': that query's first correct match is at rank "
                      f"{first[chosen[0]] + 1} (junk removed as in the metrics)"])


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
