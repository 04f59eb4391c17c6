"""Named evaluation protocols: which queries, which mode, reported in percent (every metrics.json names its own).

A protocol is a list of settings; each setting picks a subset of the queries by their index row and scores it
against the whole gallery with one mode of :func:`reid.eval.metrics.evaluate`. Facts: shared/specs/datasets.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from reid.data.index import IndexRow
from reid.eval.metrics import evaluate, evaluate_features
from reid.registry import Registry

RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class Setting:
    """One scored setting: a query filter over index rows and an evaluation mode."""

    name: str
    mode: str
    accepts: Callable[[IndexRow], bool] = lambda row: True


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    settings: tuple[Setting, ...]


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def _add(protocol: Protocol) -> None:
    PROTOCOLS.register(protocol.name)(protocol)


_add(Protocol("market", "Market-1501 protocol (torchreid): every query against the whole gallery; gallery items "
              "with the same pid AND the same camera are removed; queries without a match are skipped.",
              (Setting("standard", "standard"),)))
_add(Protocol("prcc", "PRCC as CAL/Simple-CCReID: gallery = camera A; same_clothes = queries from camera B, "
              "cross_clothes = queries from camera C; standard evaluation (cameras differ, nothing is removed).",
              (Setting("same_clothes", "standard", lambda r: r.camid == 1),
               Setting("cross_clothes", "standard", lambda r: r.camid == 2))))
_add(Protocol("ltcc", "LTCC as CAL: general = standard (same pid & same camera removed); cloth_changing = same-pid "
              "gallery items with the same camera OR the same clothes removed.",
              (Setting("general", "standard"), Setting("cloth_changing", "cc"))))
_add(Protocol("celeb", "Celeb-reID: general setting; camids are split-based (query 0, gallery 1), so no gallery "
              "item is excluded and every same-id gallery image is a positive.", (Setting("general", "standard"),)))
_add(Protocol("occluded", "Occluded ReID (Occluded-Duke, Occluded-REID): Market protocol, same pid & same camera "
              "removed; split-based camids of test-only sets exclude nothing.", (Setting("standard", "standard"),)))
_add(Protocol("partial", "Partial ReID (Partial-REID, Partial-iLIDS): partial-body queries against whole-body "
              "gallery; Market protocol with split-based camids (nothing excluded).",
              (Setting("standard", "standard"),)))


def _labels(rows: Sequence[IndexRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r.pid for r in rows], np.int64), np.array([r.camid for r in rows], np.int64),
            np.array([r.clothes for r in rows], dtype=object).astype(str))


def summarize(result: dict, num_query: int) -> dict:
    """Percent, JSON-ready: R1/R5/R10/R20 (a rank beyond a tiny gallery reads the last CMC entry), mAP, mINP."""
    cmc = result["cmc"]
    out = {f"R{k}": 100.0 * float(cmc[min(k, len(cmc)) - 1]) for k in RANKS}
    out.update(mAP=100.0 * result["mAP"], mINP=100.0 * result["mINP"], num_query=int(num_query),
               num_valid_query=int(result["num_valid_queries"]))
    return out


def _run(name: str, q_rows: Sequence[IndexRow], g_rows: Sequence[IndexRow],
         score: Callable[[np.ndarray, tuple, tuple, str], dict], curves: dict | None = None,
         per_query: dict | None = None) -> dict:
    protocol = PROTOCOLS.get(name)
    if not g_rows:
        raise ValueError(f"protocol '{name}': the gallery is empty")
    g_lab = _labels(g_rows)
    out: dict = {"protocol": name, "description": protocol.description}
    for setting in protocol.settings:
        idx = np.array([i for i, r in enumerate(q_rows) if setting.accepts(r)], np.int64)
        if idx.size == 0:
            raise ValueError(f"protocol '{name}', setting '{setting.name}': no query row qualifies "
                             f"(check the query camids/splits of the index)")
        q_lab = tuple(a[idx] for a in _labels(q_rows))
        result = score(idx, q_lab, g_lab, setting.mode)
        out[setting.name] = summarize(result, idx.size)
        if curves is not None:
            curves[setting.name] = np.asarray(result["cmc"])
        if per_query is not None:  # query rows of q_rows, first-match rank and AP of each valid query
            pq = result["per_query"]
            per_query[setting.name] = {"query": idx[pq["query"]], "first": pq["first"], "ap": pq["ap"]}
    return out


def run_protocol(name: str, distmat: np.ndarray | torch.Tensor, q_rows: Sequence[IndexRow],
                 g_rows: Sequence[IndexRow], max_rank: int = 50, curves: dict | None = None,
                 per_query: dict | None = None) -> dict:
    """Score a (len(q_rows), len(g_rows)) distance matrix under protocol ``name``; clothes compared as strings.
    ``curves``, when given, receives each setting's CMC curve (fractions, rank 1 first).

    ``max_rank`` is capped at the gallery size without a warning (small synthetic galleries are normal here).
    """
    if tuple(distmat.shape) != (len(q_rows), len(g_rows)):
        raise ValueError(f"distmat shape {tuple(distmat.shape)} does not match {len(q_rows)} query rows x "
                         f"{len(g_rows)} gallery rows")

    def score(idx: np.ndarray, q: tuple, g: tuple, mode: str) -> dict:
        sub = distmat[torch.as_tensor(idx)] if isinstance(distmat, torch.Tensor) else np.asarray(distmat)[idx]
        return evaluate(sub, q[0], g[0], q[1], g[1], q[2], g[2], mode=mode,
                        max_rank=min(max_rank, len(g_rows)))

    return _run(name, q_rows, g_rows, score, curves, per_query)


def run_protocol_features(name: str, qf: np.ndarray | torch.Tensor, gf: np.ndarray | torch.Tensor,
                          q_rows: Sequence[IndexRow], g_rows: Sequence[IndexRow], metric: str = "cosine",
                          max_rank: int = 50, chunk_size: int | None = None,
                          device: str | torch.device | None = None) -> dict:
    """Like :func:`run_protocol` from features, never holding the q x g matrix (large galleries)."""
    if len(qf) != len(q_rows) or len(gf) != len(g_rows):
        raise ValueError(f"{len(qf)} / {len(gf)} feature rows for {len(q_rows)} / {len(g_rows)} index rows")

    def score(idx: np.ndarray, q: tuple, g: tuple, mode: str) -> dict:
        sub = qf[torch.as_tensor(idx)] if isinstance(qf, torch.Tensor) else np.asarray(qf)[idx]
        return evaluate_features(sub, gf, q[0], g[0], q[1], g[1], q[2], g[2], metric=metric, mode=mode,
                                 max_rank=min(max_rank, len(g_rows)), chunk_size=chunk_size, device=device)

    return _run(name, q_rows, g_rows, score)
