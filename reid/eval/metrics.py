"""Ranking metrics (CMC, mAP, mINP) for the Market, cloth-changing and same-clothes protocols.

Semantics (shared/specs/datasets.md section 2):
- distances: smaller = more similar; equal distances are ordered by gallery index (a STABLE sort), so results
  are deterministic and match a ``kind="stable"`` argsort reference exactly, ties included;
- per query, same-pid gallery items are split into *good* (positives) and *junk* (removed from the ranking) by
  the mode; items of other identities are never removed:
    standard  junk = same cam                      good = different cam              (torchreid Market rule)
    cc        junk = same cam OR same clothes      good = diff cam AND diff clothes  (CAL 'CC', LTCC)
    sc        junk = same cam OR diff clothes      good = diff cam AND same clothes  (CAL 'SC')
- queries without a good item are skipped (neither numerator nor denominator);
- AP is non-interpolated over the full ranking; INP = #good / (position of the last good + 1) (fast-reid);
- CMC has ``min(max_rank, num_gallery)`` entries (torchreid truncates the same way).

How (no argsort, no q x g index matrix): the kept position of a good item is the number of gallery items ranked
before it minus the junk items ranked before it, where "ranked before" = strictly closer, or equally close with a
lower gallery index. A query's same-pid items come from a pid -> gallery-items table (O(P), no q x g mask). The
"ranked before" counts of all P of them come, on CPU, from a compiled kernel over the query's distance row
(reid.eval.kernels: SIMD counting passes, or one bucketed binary-search pass for many positives; ties by index
in the same pass); on GPU, from a values-only torch.sort of the row and a batched binary search into it, exact ties
resolved by an explicit index comparison. Work is chunked over queries, so memory is O(chunk x g);
``evaluate_features`` computes each chunk's distances on the fly and never holds the q x g matrix.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reid.device import resolve_device
from reid.eval.kernels import items_before

MODES = ("standard", "cc", "sc")
METRICS = ("cosine", "euclidean")
_CHUNK_ELEMENTS = 1 << 24  # query-chunk x gallery elements per step (~8-12 bytes each of working memory)
_FEATURE_CHUNK_ELEMENTS = 1 << 26  # evaluate_features: 256 MB of float32 distances per step (a matmul of ~800
# queries against an MSMT-size gallery runs ~25% faster per row than one of ~200)
_TIE_ELEMENTS = 1 << 24


ArrayLike = np.ndarray | torch.Tensor | Sequence


# ----------------------------------------------------------------------------------------------------------------
# Labels and masks


def _as_int_tensor(x: ArrayLike, name: str, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)).reshape(-1)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n}")
    return t.long()


def encode_clothes(q_clothes: ArrayLike, g_clothes: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Map clothes keys (strings or ints, compared as strings) to shared integer codes."""
    q = np.asarray(q_clothes).astype(str).reshape(-1)
    g = np.asarray(g_clothes).astype(str).reshape(-1)
    _, inv = np.unique(np.concatenate([q, g]), return_inverse=True)
    inv = torch.as_tensor(inv.reshape(-1), dtype=torch.long)
    return inv[: len(q)], inv[len(q):]


def junk_rule(cam_eq: torch.Tensor, clothes_eq: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Which SAME-PID gallery items are removed from a query's ranking (good = the other same-pid items)."""
    if mode == "standard":
        return cam_eq
    if clothes_eq is None:
        raise ValueError(f"mode '{mode}' needs q_clothes and g_clothes")
    if mode == "cc":
        return cam_eq | clothes_eq
    if mode == "sc":
        return cam_eq | ~clothes_eq
    raise ValueError(f"unknown evaluation mode '{mode}'; known: {', '.join(MODES)}")


class SamePidIndex:
    """Gallery items grouped by pid, so a query's same-pid items are found in O(P), never by a q x g scan."""

    def __init__(self, g_pids: torch.Tensor) -> None:
        self.num_g = g_pids.numel()
        self.order = torch.sort(g_pids, stable=True).indices  # within a pid: gallery index ascending
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = self.counts.cumsum(0) - self.counts

    def slots(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gidx, valid), both (b, P): the same-pid gallery indices of each query, padded with num_g."""
        if self.num_g == 0:
            raise ValueError("the gallery is empty")
        pos = torch.searchsorted(self.pids, q_pids).clamp(max=self.pids.numel() - 1)
        count = torch.where(self.pids[pos] == q_pids, self.counts[pos], torch.zeros_like(q_pids))
        width = int(count.max()) if count.numel() else 0
        ar = torch.arange(width, device=q_pids.device)
        valid = ar[None, :] < count[:, None]
        if width == 0:
            return torch.zeros_like(valid, dtype=torch.long), valid
        flat = (self.starts[pos][:, None] + ar[None, :]).clamp(max=self.num_g - 1)
        return torch.where(valid, self.order[flat], torch.full_like(flat, self.num_g)), valid


def _items_before(dist: torch.Tensor, dvals: torch.Tensor, gidx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(b, P): how many gallery items rank before each same-pid item (``dvals`` ascending per row, valid first).

    CPU: the compiled one-pass counting kernel (reid.eval.kernels). GPU: a values-only sort of each row and a
    batched binary search of the P positive distances into it (a GPU sorts 10^5 floats per row in microseconds).
    """
    if dist.device.type == "cpu":
        counts = items_before(dist.contiguous().numpy(), dvals.contiguous().numpy(),
                              gidx.contiguous().numpy(), valid.sum(1).numpy())
        return torch.from_numpy(counts)
    return items_before_by_sort(dist, dvals, gidx, valid)


def items_before_by_sort(dist: torch.Tensor, dvals: torch.Tensor, gidx: torch.Tensor, valid: torch.Tensor
                         ) -> torch.Tensor:
    """The GPU form of the same counts: sort each row's values, binary-search the positives, break exact ties."""
    srt = torch.sort(dist, dim=1).values
    closer = torch.searchsorted(srt, dvals, right=False)  # #{j : dist_j < t_k}
    at_most = torch.searchsorted(srt, dvals, right=True)  # #{j : dist_j <= t_k} (includes the item itself)
    tied = valid & (at_most - closer > 1)  # another gallery item has exactly this distance
    if not bool(tied.any()):
        return closer
    r, k = tied.nonzero(as_tuple=True)
    before = closer.clone()
    before[r, k] += _tie_counts(dist, r, dvals[r, k], gidx[r, k])
    return before


# ----------------------------------------------------------------------------------------------------------------
# The ranking core


def _tie_counts(dist: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """For each (row, value, index): #{j < index : dist[row, j] == value}, in blocks to bound memory."""
    out = torch.empty_like(rows)
    ar = torch.arange(dist.shape[1], device=dist.device)
    step = max(1, _TIE_ELEMENTS // max(1, dist.shape[1]))
    for s in range(0, rows.numel(), step):
        r, v, i = rows[s:s + step], values[s:s + step], index[s:s + step]
        out[s:s + step] = ((dist[r] == v[:, None]) & (ar[None, :] < i[:, None])).sum(1)
    return out


def rank_statistics(dist: torch.Tensor, gidx: torch.Tensor, valid: torch.Tensor, junk: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """Per-query ranking results for one chunk of distances ``dist`` (b, g).

    ``gidx``/``valid``/``junk`` (b, P) list each query's same-pid gallery items (see SamePidIndex, junk_rule).
    Returns ``first`` (0-based position of the first good item in the ranking with junk removed), ``ap``,
    ``inp`` and ``valid`` (the query has a good item); entries of invalid queries are meaningless.
    """
    b, g = dist.shape
    if gidx.shape[1] == 0:
        zero = torch.zeros(b, device=dist.device)
        return {"first": zero.long(), "ap": zero.double(), "inp": zero.double(),
                "valid": torch.zeros(b, dtype=torch.bool, device=dist.device)}
    dvals = torch.where(valid, dist.gather(1, gidx.clamp(max=g - 1)), torch.full_like(gidx, 0, dtype=dist.dtype)
                        + float("inf"))
    # Order each query's same-pid items by (distance, gallery index): stable sort of index-ascending slots.
    dvals, perm = torch.sort(dvals, dim=1, stable=True)
    gidx, junk, valid = gidx.gather(1, perm), junk.gather(1, perm), valid.gather(1, perm)
    before = _items_before(dist, dvals, gidx, valid)
    junk = junk & valid
    good = valid & ~junk
    junk_before = junk.long().cumsum(1) - junk.long()
    pos = before - junk_before  # 0-based position in the ranking with junk removed
    good_rank = good.long().cumsum(1) - good.long()  # how many good items come before this one
    n_good = good.sum(1)
    has_good = n_good > 0
    posf = pos.double()
    ap = torch.where(good, (good_rank + 1).double() / (posf + 1), torch.zeros_like(posf)).sum(1)
    ap = ap / n_good.clamp_min(1)
    big = torch.iinfo(torch.long).max
    first = torch.where(good, pos, torch.full_like(pos, big)).min(1).values
    last = torch.where(good, pos, torch.full_like(pos, -1)).max(1).values
    inp = n_good.double() / (last + 1).clamp_min(1).double()
    return {"first": torch.where(has_good, first, torch.zeros_like(first)), "ap": ap, "inp": inp, "valid": has_good}


class _Accumulator:
    """Collects per-query statistics over chunks and reduces them to the reported metrics."""

    def __init__(self, max_rank: int) -> None:
        self.max_rank = max_rank
        self.first: list[np.ndarray] = []
        self.ap: list[np.ndarray] = []
        self.inp: list[np.ndarray] = []
        self.valid_index: list[np.ndarray] = []
        self.num_queries = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        valid = stats["valid"].cpu().numpy()
        self.valid_index.append(self.num_queries + np.flatnonzero(valid))
        self.num_queries += valid.size
        self.first.append(stats["first"].cpu().numpy()[valid])
        self.ap.append(stats["ap"].cpu().numpy()[valid])
        self.inp.append(stats["inp"].cpu().numpy()[valid])

    def result(self) -> dict:
        first = np.concatenate(self.first) if self.first else np.zeros(0, np.int64)
        if first.size == 0:
            raise ValueError(f"no valid query: none of the {self.num_queries} queries has a positive in the "
                             "gallery under this mode (check pids, camids and clothes)")
        cmc = (first[:, None] <= np.arange(self.max_rank)[None, :]).mean(0)
        ap = np.concatenate(self.ap)
        return {"cmc": cmc, "mAP": float(ap.mean()),
                "mINP": float(np.concatenate(self.inp).mean()), "num_valid_queries": int(first.size),
                "num_queries": self.num_queries,
                # per valid query (for paired comparisons): its row among the queries, rank of the first match, AP
                "per_query": {"query": np.concatenate(self.valid_index), "first": first, "ap": ap}}


def _check_rank(max_rank: int, num_g: int) -> int:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if num_g < 1:
        raise ValueError("the gallery is empty")
    if num_g < max_rank:
        warnings.warn(f"gallery has only {num_g} items: max_rank {max_rank} lowered to {num_g}", stacklevel=3)
        return num_g
    return max_rank


def _labels(q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
            q_clothes: ArrayLike | None, g_clothes: ArrayLike | None, nq: int, ng: int, mode: str,
            device: torch.device) -> tuple[torch.Tensor, ...]:
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode '{mode}'; known: {', '.join(MODES)}")
    labels = [_as_int_tensor(q_pids, "q_pids", nq), _as_int_tensor(g_pids, "g_pids", ng),
              _as_int_tensor(q_camids, "q_camids", nq), _as_int_tensor(g_camids, "g_camids", ng)]
    if mode != "standard":
        if q_clothes is None or g_clothes is None:
            raise ValueError(f"mode '{mode}' needs q_clothes and g_clothes")
        qc, gc = encode_clothes(q_clothes, g_clothes)
        if qc.numel() != nq or gc.numel() != ng:
            raise ValueError(f"clothes have {qc.numel()} / {gc.numel()} entries, expected {nq} / {ng}")
        labels += [qc, gc]
    else:
        labels += [None, None]  # type: ignore[list-item]
    return tuple(t if t is None else t.to(device) for t in labels)


def _check_finite(d: torch.Tensor, what: str) -> None:
    lo, hi = torch.aminmax(d)  # one pass; NaN propagates into min/max
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise ValueError(f"{what} contain NaN or inf")


def _chunk_statistics(d: torch.Tensor, rows: slice, labels: tuple[torch.Tensor | None, ...], index: SamePidIndex,
                      mode: str) -> dict[str, torch.Tensor]:
    """Rank statistics of the queries ``rows`` given their distance rows ``d``."""
    qp, _, qc, gc, qcl, gcl = labels
    gidx, valid = index.slots(qp[rows])  # type: ignore[index]
    gi = gidx.clamp(max=d.shape[1] - 1)
    cam_eq = qc[rows][:, None] == gc[gi]  # type: ignore[index]
    clothes_eq = None if qcl is None else qcl[rows][:, None] == gcl[gi]  # type: ignore[index]
    return rank_statistics(d, gidx, valid, junk_rule(cam_eq, clothes_eq, mode))


def _chunk_rows(chunk_size: int | None, num_g: int, elements: int = _CHUNK_ELEMENTS) -> int:
    return max(1, chunk_size or elements // max(1, num_g))


# ----------------------------------------------------------------------------------------------------------------
# Public API


def evaluate(distmat: np.ndarray | torch.Tensor, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
             g_camids: ArrayLike, q_clothes: ArrayLike | None = None, g_clothes: ArrayLike | None = None,
             mode: str = "standard", max_rank: int = 50, chunk_size: int | None = None) -> dict:
    """CMC / mAP / mINP (fractions) of a (q, g) distance matrix; a tensor stays on its device.

    Returns ``{"cmc": np.ndarray[min(max_rank, g)], "mAP", "mINP", "num_valid_queries", "num_queries"}``.
    """
    dist = distmat.detach() if isinstance(distmat, torch.Tensor) else torch.from_numpy(np.asarray(distmat))
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    if not dist.dtype.is_floating_point or dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    nq, ng = dist.shape
    max_rank = _check_rank(max_rank, ng)
    labels = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, nq, ng, mode, dist.device)
    index = SamePidIndex(labels[1])
    acc = _Accumulator(max_rank)
    step = _chunk_rows(chunk_size, ng)
    for s in range(0, nq, step):
        d = dist[s:s + step].contiguous()
        _check_finite(d, f"distmat rows {s}..{s + d.shape[0] - 1}")
        acc.add(_chunk_statistics(d, slice(s, s + step), labels, index, mode))
    return acc.result()


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """(q, g) distances: ``cosine`` = 1 - cos (features L2-normalised here), ``euclidean`` = squared L2."""
    if metric == "cosine":
        return _cosine(F.normalize(qf, dim=1), F.normalize(gf, dim=1))
    if metric == "euclidean":
        return _sq_euclidean(qf, gf, (gf * gf).sum(1))
    raise ValueError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")


def _cosine(qn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
    """1 - qn gn^T of unit rows, in the matmul itself (no second pass over the q x g result)."""
    return torch.addmm(torch.ones(1, 1, dtype=qn.dtype, device=qn.device), qn, gn.T, beta=1.0, alpha=-1.0)


def _sq_euclidean(qf: torch.Tensor, gf: torch.Tensor, g_sq: torch.Tensor) -> torch.Tensor:
    return ((qf * qf).sum(1, keepdim=True) + g_sq[None, :] - 2.0 * (qf @ gf.T)).clamp_min(0.0)


def evaluate_features(qf: ArrayLike, gf: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                      g_camids: ArrayLike, q_clothes: ArrayLike | None = None, g_clothes: ArrayLike | None = None,
                      metric: str = "cosine", mode: str = "standard", max_rank: int = 50,
                      chunk_size: int | None = None, device: str | torch.device | None = None) -> dict:
    """Same result as ``evaluate(pairwise_distance(qf, gf, metric), ...)`` without ever holding q x g values.

    Distances are computed one query chunk at a time (on CUDA when present) and ranked by counting, so peak
    memory is O(chunk_size x g + features): MSMT17-size (11,659 x 82,161) runs in well under 4 GB.
    """
    dev = torch.device(resolve_device(device or "auto"))  # a GPU ranks in milliseconds
    qf_t = torch.as_tensor(np.asarray(qf) if not isinstance(qf, torch.Tensor) else qf).float()
    gf_t = torch.as_tensor(np.asarray(gf) if not isinstance(gf, torch.Tensor) else gf).float().to(dev)
    if qf_t.ndim != 2 or gf_t.ndim != 2 or qf_t.shape[1] != gf_t.shape[1]:
        raise ValueError(f"features must be (n, d) with the same d, got {tuple(qf_t.shape)} and {tuple(gf_t.shape)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")
    nq, ng = qf_t.shape[0], gf_t.shape[0]
    max_rank = _check_rank(max_rank, ng)
    labels = _labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, nq, ng, mode, dev)
    index = SamePidIndex(labels[1])
    g_prep = F.normalize(gf_t, dim=1) if metric == "cosine" else gf_t
    g_sq = (gf_t * gf_t).sum(1) if metric == "euclidean" else None
    acc = _Accumulator(max_rank)
    step = _chunk_rows(chunk_size, ng, _FEATURE_CHUNK_ELEMENTS)
    with torch.no_grad():
        for s in range(0, nq, step):
            q = qf_t[s:s + step].to(dev)
            d = _cosine(F.normalize(q, dim=1), g_prep) if g_sq is None else _sq_euclidean(q, g_prep, g_sq)
            _check_finite(d, f"distances of queries {s}..{s + d.shape[0] - 1}")
            acc.add(_chunk_statistics(d, slice(s, s + step), labels, index, mode))
            del d
    return acc.result()
