"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), as the DeSKPro, ISP and TransReID/SUREID papers report it.

The final distance of a query q and a gallery image g is  (1 - lambda) * d_J(q, g) + lambda * d(q, g) / max_x d(q, x):
d_J is the Jaccard distance between their k-reciprocal encodings V (Eq. 7-12 of the paper; V_i spreads weight
exp(-d) over the expanded k-reciprocal neighbours of i, then is averaged over i's k2 nearest neighbours).

Memory-bounded: the (N x N) distances over query + gallery (N = q + g) are never held; they are computed in row
chunks with the method's own distance, twice (once for the k1 + 1 nearest neighbours and row maxima, once for the
weights of each expansion), and V is a sparse matrix with about k1 non-zeros per row. What is held: the (q x g)
result, O(N k1) neighbour tables and V.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy import sparse

DistanceRows = Callable[[slice], np.ndarray]  # rows of the all-vs-all distance (N columns) for a row slice


def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """The k-reciprocal neighbours of i: among its k + 1 nearest, those that have i among their own k + 1."""
    forward = rank[i, : k + 1]
    return forward[(rank[forward, : k + 1] == i).any(axis=1)]


def expansions(rank: np.ndarray, k1: int) -> list[np.ndarray]:
    """R*(i, k1): i's k1-reciprocal set, grown by each member's round(k1/2)-reciprocal set when more than 2/3 of
    that set already lies in i's (Eq. 8 of the paper)."""
    half = int(np.around(k1 / 2))
    out = []
    for i in range(len(rank)):
        base = _reciprocal(rank, i, k1)
        grown = [base]
        for c in base:
            cand = _reciprocal(rank, int(c), half)
            if len(np.intersect1d(cand, base)) > 2 / 3 * len(cand):
                grown.append(cand)
        out.append(np.unique(np.concatenate(grown)))
    return out


def k_reciprocal_rerank(distance_rows: DistanceRows, num_query: int, num_all: int, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, chunk: int = 1024) -> np.ndarray:
    """Re-ranked (num_query x num_gallery) distances; rows 0..num_query-1 of the all-vs-all distance are the
    queries, the rest the gallery (distance_rows(slice) -> float array (rows, num_all))."""
    if not 0 <= lambda_value <= 1 or k1 < 1 or k2 < 1:
        raise ValueError(f"re-ranking needs k1 >= 1, k2 >= 1, 0 <= lambda <= 1 (got {k1}, {k2}, {lambda_value})")
    kk = min(k1 + 1, num_all)
    rank = np.empty((num_all, kk), np.int64)
    row_max = np.empty(num_all, np.float64)
    qg = np.empty((num_query, num_all - num_query), np.float32)
    for s in range(0, num_all, chunk):  # pass 1: nearest neighbours, row maxima, the query x gallery block
        d = np.asarray(distance_rows(slice(s, s + chunk)), np.float64)
        row_max[s:s + len(d)] = np.maximum(d.max(axis=1), 1e-12)
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(d, part, 1).argsort(axis=1, kind="stable")
        rank[s:s + len(d)] = np.take_along_axis(part, order, 1)
        q_rows = slice(s, min(s + len(d), num_query))
        if q_rows.start < q_rows.stop:
            qg[q_rows] = d[: q_rows.stop - s, num_query:] / row_max[q_rows, None]
    # the paper ranks with the normalised distance; a row's scale does not change its own order
    expanded = expansions(rank, k1)
    rows, cols, vals = [], [], []
    for s in range(0, num_all, chunk):  # pass 2: the weights exp(-d) of each expansion
        d = np.asarray(distance_rows(slice(s, s + chunk)), np.float64)
        for r in range(len(d)):
            i, idx = s + r, expanded[s + r]
            w = np.exp(-d[r, idx] / row_max[i])
            rows.append(np.full(len(idx), i))
            cols.append(idx)
            vals.append(w / w.sum())
    v = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(num_all, num_all))
    if k2 > 1:  # local query expansion: the mean encoding of the k2 nearest neighbours
        k = min(k2, kk)
        qe = sparse.csr_matrix((np.full(num_all * k, 1.0 / k), (np.repeat(np.arange(num_all), k),
                                                                  rank[:, :k].reshape(-1))), shape=(num_all, num_all))
        v = (qe @ v).tocsr()
    jaccard = _jaccard(v, num_query)
    return ((1 - lambda_value) * jaccard + lambda_value * qg).astype(np.float32)


def _jaccard(v: sparse.csr_matrix, num_query: int) -> np.ndarray:
    """d_J(i, j) = 1 - sum min(V_i, V_j) / sum max(V_i, V_j) for queries i and gallery j (rows of V sum to 1, so
    sum max = 2 - sum min)."""
    num_all = v.shape[0]
    vc = v.tocsc()
    out = np.ones((num_query, num_all - num_query), np.float64)
    for i in range(num_query):
        row = v.getrow(i)
        common = np.zeros(num_all)
        for c, value in zip(row.indices, row.data):
            start, end = vc.indptr[c], vc.indptr[c + 1]
            others = vc.indices[start:end]
            common[others] += np.minimum(value, vc.data[start:end])
        m = common[num_query:]
        out[i] = 1 - m / (2 - m)
    return out


def rerank_features(method, q: dict[str, torch.Tensor], g: dict[str, torch.Tensor], k1: int = 20, k2: int = 6,
                    lambda_value: float = 0.3, chunk: int = 1024) -> np.ndarray:
    """Re-rank with a method's own distance over its query and gallery embeddings."""
    keys = [k for k in q if k not in ("pid", "camid")]
    all_feats = {k: torch.cat([q[k], g[k]]) for k in keys}
    n_q = len(q[keys[0]])

    def rows(sl: slice) -> np.ndarray:
        return method.distance({k: v[sl] for k, v in all_feats.items()}, all_feats).float().numpy()

    return k_reciprocal_rerank(rows, n_q, len(all_feats[keys[0]]), k1, k2, lambda_value, chunk)
