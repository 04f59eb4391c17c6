"""k-reciprocal re-ranking: a case computed by hand, the paper's dense algorithm, and chunking that changes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reid.eval.rerank import k_reciprocal_rerank


def _rows(dist: np.ndarray):
    return lambda sl: dist[sl]


def test_a_case_computed_by_hand() -> None:
    """1-D points: query 0.0; gallery 0.1, 1.0, 1.05 (d = |x - y|), k1 = 1, k2 = 1, lambda = 0.3.
    Mutual nearest pairs {q, g0} and {g1, g2}: q's encoding overlaps g0's only."""
    x = np.array([0.0, 0.1, 1.0, 1.05])
    d = np.abs(x[:, None] - x[None, :])
    out = k_reciprocal_rerank(_rows(d), 1, 4, k1=1, k2=1, lambda_value=0.3)
    wq = [1.0, math.exp(-0.1 / 1.05)]                # V_q over (q, g0), row max of q = 1.05
    wg = [math.exp(-0.1 / 0.95), 1.0]                # V_g0 over (q, g0), row max of g0 = 0.95
    vq = [w / sum(wq) for w in wq]
    vg = [w / sum(wg) for w in wg]
    m = min(vq[0], vg[0]) + min(vq[1], vg[1])
    jac = 1 - m / (2 - m)                             # = 0.095389
    expected = [0.7 * jac + 0.3 * 0.1 / 1.05, 0.7 * 1 + 0.3 * 1.0 / 1.05, 0.7 * 1 + 0.3 * 1.05 / 1.05]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    assert round(jac, 6) == 0.095389


def _paper_dense(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """The algorithm as the paper's authors published it, dense, written out step by step for comparison."""
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    n_q, n = q_g.shape[0], full.shape[0]
    orig = (full / full.max(axis=0)).T
    v = np.zeros((n, n))
    rank = np.argsort(orig, axis=1, kind="stable")
    for i in range(n):
        fwd = rank[i, :k1 + 1]
        back = rank[fwd, :k1 + 1]
        recip = fwd[np.where(back == i)[0]]
        exp_idx = recip
        for c in recip:
            half = int(np.around(k1 / 2))
            cf = rank[c, :half + 1]
            cb = rank[cf, :half + 1]
            cr = cf[np.where(cb == c)[0]]
            if len(np.intersect1d(cr, recip)) > 2 / 3 * len(cr):
                exp_idx = np.append(exp_idx, cr)
        exp_idx = np.unique(exp_idx)
        w = np.exp(-orig[i, exp_idx])
        v[i, exp_idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.zeros((n_q, n))
    for i in range(n_q):
        m = np.minimum(v[i][None, :], v).sum(axis=1)
        jac[i] = 1 - m / (2 - m)
    return ((1 - lam) * jac + lam * orig[:n_q])[:, n_q:]


@pytest.mark.parametrize("k1, k2, chunk", [(3, 2, 1000), (4, 1, 3), (5, 3, 2)])
def test_matches_the_papers_dense_algorithm_in_any_chunking(k1: int, k2: int, chunk: int) -> None:
    rng = np.random.default_rng(k1)
    feats = rng.normal(size=(14, 6))
    feats[7:] += feats[:7] * 0.8  # gallery items resemble queries: real reciprocal structure
    d = np.linalg.norm(feats[:, None] - feats[None, :], axis=2)
    n_q = 5
    ours = k_reciprocal_rerank(_rows(d), n_q, len(d), k1=k1, k2=k2, lambda_value=0.3, chunk=chunk)
    ref = _paper_dense(d[:n_q, n_q:], d[:n_q, :n_q], d[n_q:, n_q:], k1, k2, 0.3)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_rerank(_rows(np.zeros((2, 2))), 1, 2, lambda_value=1.5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evaluation_reports_reranked_metrics_beside_the_plain_ones(trained, tiny_world, tmp_path) -> None:
    from reid.engine.inference import evaluate_model

    model_for, _ = trained
    model = model_for("baseline", None)
    plain = evaluate_model(model, tiny_world.index, tiny_world.root, "synthcc", tmp_path / "a/metrics.json",
                           workers=0, device="cpu")
    both = evaluate_model(model, tiny_world.index, tiny_world.root, "synthcc", tmp_path / "b/metrics.json",
                          workers=0, device="cpu", rerank={"k1": 4, "k2": 2, "lambda_value": 0.3})
    for setting in ("same_clothes", "cross_clothes"):
        assert both[setting] == plain[setting]  # never replaced
        assert set(both["reranked"][setting]) == set(plain[setting])
    assert both["reranked"]["parameters"] == {"k1": 4, "k2": 2, "lambda_value": 0.3}
