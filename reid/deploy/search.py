"""`python -m reid search`: rank a gallery of embeddings for each query with the method's own distance.

Both sides are files written by `python -m reid embed` (or query images embedded on the spot with `--model`).
The method and its parameters come from the gallery file, so DeSKPro's chunked cosine with the face rule, ISP's
aligned matching with visibilities and the others' cosine are applied exactly as in evaluation; queries are
processed in chunks, so memory stays bounded by chunk x gallery.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reid.methods.base import Method, method_from_record


def load_embeddings(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """(features by name, image paths, the file's params: method, method_params, root...)."""
    from reid.cache.h5 import CacheReader

    reader = CacheReader(path)
    params = reader.meta.params
    if not isinstance(params.get("method"), str) or not isinstance(params.get("method_params"), dict):
        raise ValueError(f"{path} is not an embeddings file (made by `python -m reid embed`)")
    feats = {k: torch.from_numpy(reader.read(k, np.arange(len(reader)))) for k in reader.meta.fields}
    for name, value in feats.items():
        if name in ("pid", "camid"):
            continue
        if not value.is_floating_point():
            raise ValueError(f"{path}: embedding field '{name}' is {value.dtype}, expected floating point")
        bad = (~torch.isfinite(value)).reshape(len(value), -1).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{path}: {len(bad)} rows have NaN or infinite '{name}' (first: row {bad[0]}, "
                             f"{reader.paths[bad[0]]}); they cannot be ranked: re-embed the images")
    return feats, list(reader.paths), params


def check_compatible(q: dict[str, torch.Tensor], g: dict[str, torch.Tensor], q_name: str, g_name: str) -> None:
    """Query and gallery must carry the same embedding fields with the same per-row shapes (the same model)."""
    shapes = lambda d: {k: tuple(v.shape[1:]) for k, v in d.items() if k not in ("pid", "camid")}  # noqa: E731
    if shapes(q) != shapes(g):
        raise ValueError(f"{q_name} and {g_name} were embedded differently: fields {shapes(q)} vs {shapes(g)}; "
                         "embed both with the same model")


def method_of(params: dict[str, Any]) -> Method:
    return method_from_record(params["method"], params["method_params"], params.get("method_module"), "embeddings")


def rank(method: Method, q: dict[str, torch.Tensor], g: dict[str, torch.Tensor], top_k: int,
         chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of the top_k gallery items per query, nearest first, chunk by chunk."""
    feats = lambda d: {k: v for k, v in d.items() if k not in ("pid", "camid")}  # noqa: E731
    q, g = feats(q), feats(g)
    n = len(next(iter(q.values())))
    k = min(top_k, len(next(iter(g.values()))))
    idx, dist = [], []
    for s in range(0, n, chunk):
        d = method.distance({key: v[s:s + chunk] for key, v in q.items()}, g).float()
        top = torch.topk(d, k, dim=1, largest=False)  # ties: the lower gallery index first (stable)
        idx.append(top.indices.numpy())
        dist.append(top.values.numpy())
    return np.concatenate(idx), np.concatenate(dist)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", required=True, help="embeddings file of the gallery (`python -m reid embed`)")
    p.add_argument("--query", required=True, nargs="+", help="an embeddings file, or image files (needs --model)")
    p.add_argument("--model", help="model.pt / model.onnx to embed query images with")
    p.add_argument("--teacher-model", action="append", metavar="NAME=FILE",
                   help="query images: the file of a teacher the model runs at test time (DeSKPro: "
                        "faces=det_10g.onnx), checked against the sha256 the model recorded")
    p.add_argument("--top-k", type=_positive_int, default=10, help="gallery items listed per query (default 10)")
    p.add_argument("--out", default="ranking.json", help="the full ranking (every query, top-k, distances) as JSON")
    p.add_argument("--show", type=int, default=3, help="queries printed as a summary (the file has all of them)")
    p.add_argument("--sheet", help="draw the rankings (query + top-k, nearest first) into this PNG")
    p.add_argument("--sheet-queries", type=int, default=20, help="queries drawn on the sheet (the first N)")


def main(args: argparse.Namespace) -> int:
    g, g_paths, g_params = load_embeddings(args.gallery)
    method = method_of(g_params)
    with tempfile.TemporaryDirectory(prefix="reid-search-") as tmp:
        if len(args.query) == 1 and args.query[0].endswith(".h5"):
            q, q_paths, q_params = load_embeddings(args.query[0])
            q_root = q_params["root"]
        else:
            if not args.model:
                raise SystemExit("query images need --model to embed them (or pass an embeddings .h5)")
            from reid.data.index import IndexRow
            from reid.deploy.embed import embed_images

            images = [Path(p).resolve() for p in args.query]
            q_root = os.path.commonpath([str(p.parent) for p in images])
            rows = [IndexRow(str(p.relative_to(q_root)), -1, -1, "", "query") for p in images]
            out = Path(tmp) / "query.h5"
            from reid.cli import parse_caches

            embed_images(args.model, rows, q_root, out, workers=0, progress=False,
                         teacher_models=parse_caches(args.teacher_model))
            q, q_paths, _ = load_embeddings(out)
        check_compatible(q, g, str(args.query[0]) if len(args.query) == 1 else "the query images", args.gallery)
        idx, dist = rank(method, q, g, args.top_k)
    result = [{"query": q_paths[i], "ranked": [{"path": g_paths[j], "distance": round(float(d), 6)}
                                                for j, d in zip(idx[i], dist[i])]} for i in range(len(q_paths))]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in result[: args.show]:
        print(r["query"])
        for n, hit in enumerate(r["ranked"][:5], 1):
            print(f"  {n:3d}  {hit['distance']:.4f}  {hit['path']}")
    more = f" (the first {min(args.show, len(result))} above, top 5 each)" if args.show else ""
    print(f"ranked {len(result)} queries against {len(g_paths)} gallery images with {method.name}'s distance, "
          f"top {idx.shape[1]} each: {args.out}{more}")
    if args.sheet:
        from reid.viz.ranks import rank_sheet

        n, k = min(args.sheet_queries, len(q_paths)), min(args.top_k, 10)
        correct = None
        if "pid" in q and "pid" in g:  # embedded from an index: identities known
            correct = (q["pid"].numpy()[:, None] == g["pid"].numpy()[idx])[:n, :k]
        rank_sheet([Path(q_root) / p for p in q_paths[:n]], [[Path(g_params["root"]) / g_paths[j] for j in row[:k]]
                                                             for row in idx[:n]], correct, args.sheet,
                   distances=dist[:n, :k])
        print(f"wrote {args.sheet}")
    return 0
