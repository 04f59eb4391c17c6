"""Ranking metrics and protocols: hand-ranked tiny cases, a plain reference loop, features vs distmat."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reid.data.index import IndexRow
from reid.eval import PROTOCOLS, evaluate, evaluate_features, pairwise_distance, run_protocol, run_protocol_features
from reid.eval.metrics import MODES

# Tiny galleries are the point of these tests; the truncation warning itself is tested explicitly below.
pytestmark = pytest.mark.filterwarnings("ignore:gallery has only")


def reference(distmat: np.ndarray, qp: np.ndarray, gp: np.ndarray, qc: np.ndarray, gc: np.ndarray,
              qcl: np.ndarray | None = None, gcl: np.ndarray | None = None, mode: str = "standard",
              max_rank: int = 50) -> tuple[np.ndarray, float, float, int]:
    """Straightforward per-query loop over a stable argsort (torchreid + fast-reid + CAL semantics)."""
    max_rank = min(max_rank, distmat.shape[1])
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same, cam = gp[order] == qp[i], gc[order] == qc[i]
        if mode == "standard":
            junk = same & cam
        else:
            cl = gcl[order] == qcl[i]
            junk = same & (cam | cl) if mode == "cc" else same & (cam | ~cl)
        raw = (same & ~junk)[~junk]
        if not raw.any():
            continue
        hits = np.where(raw)[0]
        cmc = np.zeros(max_rank)
        cmc[hits[0]:] = 1.0
        cmcs.append(cmc)
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        inps.append(len(hits) / (hits[-1] + 1))
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


# ------------------------------------------------------------------------------------------- hand-ranked cases


def test_standard_by_hand() -> None:
    # Gallery:        g0       g1       g2       g3       g4
    gp = np.array([1, 2, 1, 3, 1])
    gc = np.array([0, 1, 1, 0, 2])
    # q0 (pid 1, cam 0): order g0 g1 g2 g3 g4; g0 is same pid+cam -> removed; kept g1 g2 g3 g4 = [0,1,0,1]
    #   CMC first hit at position 1; AP = (1/2)(1/2 + 2/4) = 0.5; INP = 2 / (3 + 1) = 0.5
    # q1 (pid 2, cam 0): g1 closest -> kept ranking starts [1, ...]; AP = 1; INP = 1/1 = 1; first hit at 0
    # q2 (pid 9): no same-pid item in the gallery -> skipped entirely
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                  [0.5, 0.1, 0.2, 0.3, 0.4],
                  [0.1, 0.2, 0.3, 0.4, 0.5]], np.float32)
    r = evaluate(d, np.array([1, 2, 9]), gp, np.array([0, 0, 0]), gc, max_rank=5)
    assert r["num_valid_queries"] == 2 and r["num_queries"] == 3
    np.testing.assert_allclose(r["cmc"], [0.5, 1, 1, 1, 1])  # mean of [0,1,1,1,1] and [1,1,1,1,1]
    assert r["mAP"] == pytest.approx(0.75) and r["mINP"] == pytest.approx(0.75)


# One query (pid 1, cam 0, clothes "a") against six gallery items, in distance order:
#   g0 pid1 cam1 a   g1 pid2 cam1 b   g2 pid1 cam0 b   g3 pid1 cam2 b   g4 pid3 cam2 a   g5 pid1 cam1 c
CLOTHES_CASE = dict(distmat=np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]), q_pids=[1], g_pids=[1, 2, 1, 1, 3, 1],
                    q_camids=[0], g_camids=[1, 1, 0, 2, 2, 1], q_clothes=["a"], g_clothes=list("abbbac"))


@pytest.mark.parametrize("mode, first, ap, inp", [
    # standard: junk g2 (same cam). kept g0 g1 g3 g4 g5 = [1,0,1,0,1]
    #   AP = (1/3)(1/1 + 2/3 + 3/5) = 0.755556; INP = 3/5 = 0.6; first hit 0
    ("standard", 0, (1 + 2 / 3 + 3 / 5) / 3, 0.6),
    # cc: junk g0 (same clothes) and g2 (same cam). kept g1 g3 g4 g5 = [0,1,0,1]
    #   AP = (1/2)(1/2 + 2/4) = 0.5; INP = 2/4 = 0.5; first hit 1
    ("cc", 1, 0.5, 0.5),
    # sc: good = diff cam & same clothes = g0; junk = g2 (same cam), g3, g5 (other clothes). kept g0 g1 g4 = [1,0,0]
    #   AP = 1; INP = 1/1 = 1; first hit 0
    ("sc", 0, 1.0, 1.0),
])
def test_clothes_modes_by_hand(mode: str, first: int, ap: float, inp: float) -> None:
    r = evaluate(**CLOTHES_CASE, mode=mode, max_rank=4)
    expected_cmc = (np.arange(4) >= first).astype(float)
    np.testing.assert_allclose(r["cmc"], expected_cmc)
    assert r["mAP"] == pytest.approx(ap) and r["mINP"] == pytest.approx(inp)


def test_ties_follow_gallery_order() -> None:
    # All three distances equal: stable order g0 (pid 2), g1 (pid 1), g2 (pid 1) -> [0, 1, 1]
    # AP = (1/2)(1/2 + 2/3) = 0.583333; INP = 2/3; first hit at position 1
    r = evaluate(np.full((1, 3), 0.5), [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1])
    assert r["mAP"] == pytest.approx((0.5 + 2 / 3) / 2) and r["mINP"] == pytest.approx(2 / 3)
    # Same values with the positives first in gallery order: [1, 1, 0] -> AP 1, INP 1
    r = evaluate(np.full((1, 3), 0.5), [1], [1, 1, 2], [0], [1, 1, 1], max_rank=3)
    assert r["mAP"] == pytest.approx(1.0) and r["mINP"] == pytest.approx(1.0)


def test_items_before_kernel_by_hand() -> None:
    """One row, gallery 0..5 = [0.3, 0.1, 0.3, 0.2, 0.3, 0.0]; positives g2 and g4 (both at 0.3) and g3 (0.2).
    Before g3: g1, g5 (strictly closer) = 2. Before g2: g1, g3, g5 closer + g0 (tie, lower index) = 4.
    Before g4: 3 closer + g0, g2 (ties, lower index) = 5. A reading without the index tie-break gives 3, 3."""
    from reid.eval.kernels import _row_buckets, _row_dense, items_before

    dist = np.array([[0.3, 0.1, 0.3, 0.2, 0.3, 0.0]], np.float32)
    pos = np.array([[0.2, 0.3, 0.3, np.inf]], np.float32)  # ascending, (distance, index) order, one pad slot
    idx = np.array([[3, 2, 4, 6]], np.int64)
    got = items_before(dist, pos, idx, np.array([3], np.int64))
    np.testing.assert_array_equal(got, [[2, 4, 5, 0]])
    for strategy in (_row_dense, _row_buckets):  # both ways of counting (few / many positives)
        out = np.zeros(4, np.int64)
        strategy(dist[0], pos[0], idx[0], 3, out)
        np.testing.assert_array_equal(out, [2, 4, 5, 0], err_msg=strategy.__name__)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("gallery", [200, 3000])  # ~20 positives per query (dense passes), ~300 (buckets)
def test_cpu_kernel_and_gpu_sort_path_count_the_same(ties: bool, gallery: int) -> None:
    """The ways of counting (compiled passes on CPU, sort + binary search on GPU) agree, ties included."""
    from reid.eval.kernels import DENSE_POSITIVES
    from reid.eval.metrics import SamePidIndex, _items_before, items_before_by_sort

    rng = np.random.default_rng(3 + ties)
    p = random_problem(rng, 30, gallery, 10, ties)
    dist = torch.from_numpy(p["distmat"]).float()
    gidx, valid = SamePidIndex(torch.as_tensor(p["g_pids"])).slots(torch.as_tensor(p["q_pids"]))
    assert (valid.sum(1).max() > DENSE_POSITIVES) == (gallery > 1000)
    dvals = torch.where(valid, dist.gather(1, gidx.clamp(max=gallery - 1)), torch.tensor(float("inf")))
    dvals, perm = torch.sort(dvals, dim=1, stable=True)
    gidx, valid = gidx.gather(1, perm), valid.gather(1, perm)
    a = _items_before(dist, dvals, gidx, valid)
    b = items_before_by_sort(dist, dvals, gidx, valid)
    assert torch.equal(a[valid], b[valid])


def test_max_rank_beyond_gallery_is_truncated() -> None:
    with pytest.warns(UserWarning, match="max_rank 50 lowered to 3"):
        r = evaluate(np.array([[0.3, 0.2, 0.1]]), [1], [1, 2, 2], [0], [1, 1, 1])
    # ranking g2 g1 g0 = [0, 0, 1]: first hit at 2, AP = 1/3, INP = 1/3
    np.testing.assert_allclose(r["cmc"], [0, 0, 1])
    assert r["mAP"] == pytest.approx(1 / 3) and r["mINP"] == pytest.approx(1 / 3)


def test_pairwise_distance_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    g = torch.tensor([[2.0, 0.0], [0.0, 3.0], [3.0, 4.0]])
    # cosine (1 - cos) of (1,0): with (2,0) -> 0; with (0,3) -> 1; with (3,4) -> 1 - 3/5 = 0.4
    np.testing.assert_allclose(pairwise_distance(q[:1], g, "cosine").numpy(), [[0.0, 1.0, 0.4]], atol=1e-6)
    # squared euclidean from (0,0): 4, 9, 25
    np.testing.assert_allclose(pairwise_distance(q[1:], g, "euclidean").numpy(), [[4.0, 9.0, 25.0]], atol=1e-5)


# ----------------------------------------------------------------------------------------------------- errors


def test_errors() -> None:
    d = np.zeros((1, 2))
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(np.array([[0.1, 0.2]]), [1], [2, 3], [0], [1, 1])
    with pytest.raises(ValueError, match="needs q_clothes"):
        evaluate(d, [1], [1, 2], [0], [1, 1], mode="cc")
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        evaluate(d, [1], [1, 2], [0], [1, 1], mode="strict")
    with pytest.raises(ValueError, match="g_pids has 3 entries"):
        evaluate(d, [1], [1, 2, 3], [0], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([[np.nan, 0.1]]), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="2-D"):
        evaluate(np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_features(np.ones((1, 2)), np.ones((2, 2)), [1], [1, 2], [0], [1, 1], metric="l1")


# -------------------------------------------------------------------------------------- random cross-checks


def random_problem(rng: np.random.Generator, nq: int, ng: int, ids: int, ties: bool) -> dict:
    d = rng.random((nq, ng)).astype(np.float32)
    if ties:
        d = np.round(d * 8) / 8  # only 9 distinct values: ties everywhere
    return dict(distmat=d, q_pids=rng.integers(0, ids, nq), g_pids=rng.integers(0, ids, ng),
                q_camids=rng.integers(0, 3, nq), g_camids=rng.integers(0, 3, ng),
                q_clothes=rng.integers(0, 3, nq).astype(str), g_clothes=rng.integers(0, 3, ng).astype(str))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_loop(mode: str, ties: bool) -> None:
    rng = np.random.default_rng(7 + MODES.index(mode) + 10 * ties)
    p = random_problem(rng, 40, 120, 12, ties)
    r = evaluate(**p, mode=mode, max_rank=20, chunk_size=7)
    cmc, ap, inp, n = reference(*(p[k] for k in ("distmat", "q_pids", "g_pids", "q_camids", "g_camids",
                                                  "q_clothes", "g_clothes")), mode=mode, max_rank=20)
    assert r["num_valid_queries"] == n > 0
    np.testing.assert_allclose(r["cmc"], cmc, atol=1e-12)
    assert r["mAP"] == pytest.approx(ap, abs=1e-12) and r["mINP"] == pytest.approx(inp, abs=1e-12)


def test_tensor_distmat_and_chunking_agree() -> None:
    p = random_problem(np.random.default_rng(3), 25, 60, 8, False)
    a = evaluate(**p)
    b = evaluate(**{**p, "distmat": torch.from_numpy(p["distmat"]).double()}, chunk_size=4)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("mode", MODES)
def test_features_agree_with_distmat(metric: str, mode: str) -> None:
    rng = np.random.default_rng(11)
    qf, gf = rng.standard_normal((30, 16)).astype(np.float32), rng.standard_normal((150, 16)).astype(np.float32)
    p = random_problem(rng, 30, 150, 10, False)
    labels = {k: p[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids", "q_clothes", "g_clothes")}
    d = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric).numpy()
    a = evaluate(d, **labels, mode=mode)
    b = evaluate_features(qf, gf, **labels, metric=metric, mode=mode, chunk_size=7)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["mAP"] == b["mAP"] and a["mINP"] == b["mINP"]
    assert a["num_valid_queries"] == b["num_valid_queries"]


# ------------------------------------------------------------------------------------------------- protocols


def rows(spec: list[tuple[int, int, str]], split: str) -> list[IndexRow]:
    return [IndexRow(f"{split}/{i}.jpg", pid, cam, clothes, split) for i, (pid, cam, clothes) in enumerate(spec)]


def test_prcc_protocol_by_hand() -> None:
    g = rows([(1, 0, "1"), (2, 0, "2")], "gallery")  # camera A
    q = rows([(1, 1, "1"), (1, 2, "1C"), (2, 2, "2C")], "query")  # B p1, C p1, C p2
    # B p1 -> p1 nearest: R1 100, AP 100. C p1 -> p2 nearest, p1 second: R1 0, R5 100, AP 1/2, INP 1/2.
    # C p2 -> p2 nearest: AP 1. cross_clothes: R1 = 50, mAP = (0.5 + 1)/2 = 75, mINP = 75.
    d = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    out = run_protocol("prcc", d, q, g)
    json.dumps(out)
    assert out["protocol"] == "prcc" and "camera A" in out["description"]
    assert set(out) == {"protocol", "description", "same_clothes", "cross_clothes"}
    assert out["same_clothes"] == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "R20": 100.0, "mAP": 100.0,
                                   "mINP": 100.0, "num_query": 1, "num_valid_query": 1}
    cc = out["cross_clothes"]
    assert (cc["R1"], cc["R5"], cc["num_query"]) == (50.0, 100.0, 2)
    assert cc["mAP"] == pytest.approx(75.0) and cc["mINP"] == pytest.approx(75.0)


def test_ltcc_protocol_settings_differ() -> None:
    g = rows([(5, 1, "5_1"), (5, 2, "5_2"), (6, 2, "6_1")], "gallery")
    q = rows([(5, 0, "5_1")], "query")
    d = np.array([[0.1, 0.3, 0.2]])
    # general: g0 (same clothes, other cam) counts: ranking g0 g2 g1 = [1,0,1] -> AP (1 + 2/3)/2 = 83.33
    # cloth_changing: g0 removed (same clothes): g2 g1 = [0,1] -> R1 0, AP 1/2 = 50
    out = run_protocol("ltcc", d, q, g)
    assert out["general"]["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2) and out["general"]["R1"] == 100.0
    assert out["cloth_changing"]["mAP"] == pytest.approx(50.0) and out["cloth_changing"]["R1"] == 0.0


@pytest.mark.parametrize("name", ["market", "celeb", "occluded", "partial"])
def test_single_setting_protocols(name: str) -> None:
    p = random_problem(np.random.default_rng(5), 12, 40, 4, False)
    q = rows(list(zip(p["q_pids"].tolist(), p["q_camids"].tolist(), [""] * 12)), "query")
    g = rows(list(zip(p["g_pids"].tolist(), p["g_camids"].tolist(), [""] * 40)), "gallery")
    out = run_protocol(name, p["distmat"], q, g)
    key = "general" if name == "celeb" else "standard"
    assert set(out) == {"protocol", "description", key}
    ref = evaluate(p["distmat"], p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"], max_rank=40)
    assert out[key]["mAP"] == pytest.approx(100 * ref["mAP"]) and out[key]["R1"] == pytest.approx(100 * ref["cmc"][0])


def test_protocol_from_features_and_errors() -> None:
    rng = np.random.default_rng(9)
    qf, gf = rng.standard_normal((6, 8)), rng.standard_normal((10, 8))
    q = rows([(i % 3, 1 + i % 2, f"{i % 3}") for i in range(6)], "query")
    g = rows([(i % 3, 0, f"{i % 3}") for i in range(10)], "gallery")
    d = pairwise_distance(torch.from_numpy(qf).float(), torch.from_numpy(gf).float(), "cosine")
    assert run_protocol_features("prcc", qf, gf, q, g, chunk_size=2) == run_protocol("prcc", d, q, g)
    assert sorted(PROTOCOLS.names()) == ["celeb", "ltcc", "market", "occluded", "partial", "prcc"]
    with pytest.raises(ValueError, match="does not match"):
        run_protocol("prcc", d[:3], q, g)
    with pytest.raises(ValueError, match="cross_clothes"):
        run_protocol("prcc", d[::2], q[::2], g)  # only camera-B queries left
    with pytest.raises(ValueError, match="gallery is empty"):
        run_protocol("market", np.zeros((6, 0)), q, [])
    with pytest.raises(KeyError, match="unknown protocol"):
        run_protocol("viper", d, q, g)
