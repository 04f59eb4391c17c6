"""ISP cascaded clustering against hand-computed cases (reid/models/isp_clustering.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reid.models.isp_clustering import (
    IdentityChunker,
    cascaded_clustering,
    hashed_uniform,
    identity_order,
    kmeans_batched,
    normalized_activation,
    order_clusters_by_row,
    sharpen_activation,
    stripe_labels,
    two_means_1d,
)


def test_sharpening_values() -> None:
    # s(a) = 1 / (1 + exp(-5(2a-1) - 3)):
    # a=0: exponent 5-3=2 -> 1/(1+e^2) = 1/8.389056 = 0.119203
    # a=0.5: exponent -3 -> 1/(1+0.049787) = 0.952574
    # a=1: exponent -8 -> 1/(1+0.000335) = 0.999665
    got = sharpen_activation(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(got, torch.tensor([0.119203, 0.952574, 0.999665]), atol=1e-6)


def test_eq3_normalized_activation() -> None:
    # one image, C=2, 1x3 pixels: features (3,4), (0,1), (0,0) -> norms 5, 1, 0 -> divided by max 5: 1, 0.2, 0
    f = torch.tensor([[[[3.0, 0.0, 0.0]], [[4.0, 1.0, 0.0]]]])
    assert torch.allclose(normalized_activation(f), torch.tensor([[[1.0, 0.2, 0.0]]]))


def test_two_means_1d_by_hand() -> None:
    # row 0: values 0.1 0.2 0.9 1.0 -> init centres 0.1 / 1.0 -> {0.1,0.2} and {0.9,1.0} -> centres 0.15 / 0.95
    # row 1: the 5.0 is padding (mask False), so the row is 0.0 0.3 0.4 (+pad): init 0.0 / 0.4;
    #   0.3 is nearer 0.4 -> centres 0.0 / 0.35 -> stable; high = {0.3, 0.4}
    v = torch.tensor([[0.1, 0.2, 0.9, 1.0], [0.0, 0.3, 0.4, 5.0]])
    m = torch.tensor([[True, True, True, True], [True, True, True, False]])
    high, centres = two_means_1d(v, m)
    assert high.tolist() == [[False, False, True, True], [False, True, True, False]]
    assert torch.allclose(centres, torch.tensor([[0.15, 0.95], [0.0, 0.35]]))


def test_two_means_constant_row_has_no_foreground() -> None:
    high, _ = two_means_1d(torch.full((1, 5), 0.7), torch.ones(1, 5, dtype=torch.bool))
    assert not high.any()


def test_order_clusters_by_row_by_hand() -> None:
    # cluster 0 at rows 5,5 (mean 5), cluster 1 at rows 1,1 (mean 1), cluster 2 at row 3, padding ignored
    # -> top to bottom: c1 (rank 0), c2 (rank 1), c0 (rank 2); an empty 4th cluster ranks last (3)
    assign = torch.tensor([[0, 0, 1, 1, 2, -1]])
    rows = torch.tensor([5, 5, 1, 1, 3, 0])
    assert order_clusters_by_row(assign, rows, 4).tolist() == [[2, 0, 1, 3]]


def test_stripes() -> None:
    # h=4, 2 parts: rows 0,1 -> 1 + floor(r*2/4) = 1; rows 2,3 -> 2
    assert stripe_labels(4, 2, 2).tolist() == [[1, 1], [1, 1], [2, 2], [2, 2]]


def test_hashed_uniform_range_and_keys() -> None:
    u = hashed_uniform(3, torch.tensor([1, 2]), 0, 20000)
    assert u.shape == (2, 20000) and float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert not torch.equal(u[0], u[1])
    assert torch.equal(u, hashed_uniform(3, torch.tensor([1, 2]), 0, 20000))


def test_kmeans_batched_planted_clusters() -> None:
    # row 0: two tight groups around (0,0) and (10,10); row 1: around (0,5) and (5,0); one padded point.
    x = torch.tensor([
        [[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 9.9], [0.0, 0.1]],
        [[0.0, 5.0], [5.0, 0.0], [0.1, 5.0], [5.0, 0.1], [99.0, 99.0]],
    ])
    mask = torch.tensor([[True] * 5, [True, True, True, True, False]])
    assign, centres = kmeans_batched(x, mask, 2, iters=5, seed=1)
    a0, a1 = assign.tolist()
    assert a0[0] == a0[1] == a0[4] != a0[2] == a0[3]
    assert a1[0] == a1[2] != a1[1] == a1[3] and a1[4] == -1
    means = sorted(centres[0].tolist())
    assert means[0] == pytest.approx([0.1 / 3, 0.1 / 3], abs=1e-5) and means[1] == pytest.approx([10.05, 9.95])


def _blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 rows of 60 points in 8-d around 4 random centres each, with a scattered (not valid-first) mask."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(3, 4, 8, generator=g)
    member = torch.randint(0, 4, (3, 60), generator=g)
    x = centres.gather(1, member[..., None].expand(-1, -1, 8)) + 0.8 * torch.randn(3, 60, 8, generator=g)
    mask = torch.rand(3, 60, generator=g) > 0.2
    return x, mask


def _reference_lloyd(x: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, iters: int) -> torch.Tensor:
    """Textbook Lloyd in float64, exactly `iters` updates (no early stop), then the final assignment."""
    x, c = x.double(), centres.double().clone()
    for it in range(iters + 1):
        a = torch.cdist(x, c).argmin(2)
        if it == iters:
            return torch.where(mask, a, -1)
        for g in range(x.shape[0]):
            for j in range(c.shape[1]):
                sel = mask[g] & (a[g] == j)
                if sel.any():
                    c[g, j] = x[g][sel].mean(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_cpu_kernels_match_the_matmul_path_and_a_fixed_iteration_reference(seed: int) -> None:
    """The CPU kernels (kmeans_pp_rows, lloyd_rows, stopping at a fixed point) give the GPU path's (batched
    matmuls) seeds and assignments, and those of a plain Lloyd that always runs all 20 updates."""
    from reid.models.isp_clustering import (_kmeans_matmul, _kmeans_pp_matmul, hash_base, hashed_uniform,
                                            kmeans_pp_rows)

    x, mask = _blobs(seed)
    keys = torch.tensor([5, 9, 11])
    base = hash_base(3, keys, 60)
    u = hashed_uniform(3, keys, 0, 60, base)
    first = torch.where(mask, u, torch.full_like(u, 2.0)).argmin(1)
    draws = torch.stack([-torch.log(hashed_uniform(3, keys, j, 60, base)) for j in range(1, 4)], 1)
    seeds_cpu = torch.from_numpy(kmeans_pp_rows(x.numpy(), mask.numpy(), first.numpy(), draws.numpy()))
    seeds_mm = _kmeans_pp_matmul(x, mask, first, draws)
    torch.testing.assert_close(seeds_cpu, seeds_mm)
    assign_cpu, _ = kmeans_batched(x, mask, 4, iters=20, seed=3, keys=keys)
    assign_mm, _ = _kmeans_matmul(x, mask, seeds_mm, 20)
    assert torch.equal(assign_cpu, assign_mm)
    assert torch.equal(assign_cpu, _reference_lloyd(x, mask, seeds_mm, 20))
    assert bool((assign_cpu[~mask] == -1).all())


def _planted(n_images: int, directions: tuple[int, int, int], occlude_bottom: bool = False) -> torch.Tensor:
    """Images 8x4 with C=4: low-norm noise background (columns 0 and 3); a body in columns 1-2 whose rows 0-2,
    3-5, 6-7 point along the given channel directions (norm 1, vs background norm < 0.02)."""
    g = torch.Generator().manual_seed(sum(directions) + n_images)
    f = 0.005 * torch.rand(n_images, 4, 8, 4, generator=g)
    for i in range(n_images):
        f[i, directions[0], 0:3, 1:3] = 1.0
        f[i, directions[1], 3:6, 1:3] = 1.0
        if not (occlude_bottom and i == n_images - 1):
            f[i, directions[2], 6:8, 1:3] = 1.0
    return f


def test_two_identities_planted_parts_top_to_bottom() -> None:
    # identity 5: head/torso/legs along channels 0/1/2; identity 9 uses channels 2/0/3 (different features):
    # both must come out as labels 1 (rows 0-2), 2 (rows 3-5), 3 (rows 6-7) inside columns 1-2, 0 elsewhere.
    # identity 9's last image is occluded below row 5: it keeps parts 1-2 only (same semantics).
    feats = torch.cat([_planted(3, (0, 1, 2)), _planted(3, (2, 0, 3), occlude_bottom=True)])
    pids = [5, 5, 5, 9, 9, 9]
    labels = cascaded_clustering(feats, pids, K=4, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(8, 4, dtype=torch.uint8)
    expected[0:3, 1:3], expected[3:6, 1:3], expected[6:8, 1:3] = 1, 2, 3
    for i in range(5):
        assert torch.equal(labels[i], expected), (i, labels[i])
    occluded = expected.clone()
    occluded[6:8] = 0
    assert torch.equal(labels[5], occluded)
    assert labels.dtype == torch.uint8 and labels.shape == (6, 8, 4)


def test_identity_without_foreground_gets_stripes() -> None:
    # constant features: every pixel has activation 1 -> no 2-means split -> stripes 1..3 over 8 rows
    # rows 0-2 -> 1 + floor(3r/8) = 1 (r=0,1,2), rows 3-5 -> 2, rows 6-7 -> 3
    feats = torch.ones(2, 4, 8, 4)
    labels = cascaded_clustering(feats, [1, 1], K=4)
    assert torch.equal(labels[0], stripe_labels(8, 4, 3)) and torch.equal(labels[1], stripe_labels(8, 4, 3))


def test_labels_do_not_depend_on_bucketing_or_companions() -> None:
    g = torch.Generator().manual_seed(4)
    feats = torch.rand(9, 8, 8, 4, generator=g) ** 3
    pids = [3, 3, 7, 7, 7, 1, 1, 1, 1]
    together = cascaded_clustering(feats, pids, K=5, seed=11)
    one_per_bucket = cascaded_clustering(feats, pids, K=5, seed=11, max_elements=1)
    alone = cascaded_clustering(feats[2:5], pids[2:5], K=5, seed=11)
    assert torch.equal(together, one_per_bucket)
    assert torch.equal(together[2:5], alone)


def test_identity_chunker_matches_one_pass_and_refuses_disorder() -> None:
    g = torch.Generator().manual_seed(5)
    feats = torch.rand(10, 6, 8, 4, generator=g) ** 3
    pids = np.array([4, 2, 4, 2, 9, 9, 2, 4, 9, 4])
    one_pass = cascaded_clustering(feats.half(), pids, K=4, seed=2)
    order = identity_order(pids)
    chunker = IdentityChunker(K=4, seed=2, chunk_images=3)
    got = np.zeros((10, 8, 4), dtype=np.uint8)
    outputs = []
    for start in range(0, 10, 2):
        sel = order[start:start + 2]
        outputs += chunker.add(sel, pids[sel], feats[sel])
    outputs += chunker.finish()
    assert len(outputs) >= 2  # really chunked
    for rows, labels in outputs:
        got[rows] = labels
    assert np.array_equal(got, one_pass.numpy())
    bad = IdentityChunker(K=4)
    bad.add(np.array([0]), np.array([1]), feats[:1])
    bad.add(np.array([1]), np.array([2]), feats[1:2])
    with pytest.raises(ValueError, match="identity 1 came back"):
        bad.add(np.array([2]), np.array([1]), feats[2:3])


def test_bad_inputs_named() -> None:
    with pytest.raises(ValueError, match="features must be"):
        cascaded_clustering(torch.zeros(2, 3, 4), [1, 1])
    with pytest.raises(ValueError, match="pids must be"):
        cascaded_clustering(torch.zeros(2, 3, 4, 4), [1])
    assert math.isfinite(float(sharpen_activation(torch.tensor(0.3))))
