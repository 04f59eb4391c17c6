"""The shared losses by hand: batch-hard triplet on an asymmetric four-point batch, and its distances under
mixed precision (the close pairs a triplet loss ranks must not drown in a bf16 / fp16 matmul's rounding)."""

from __future__ import annotations

import math

import pytest
import torch

from reid.methods.losses import batch_hard_triplet, pairwise_euclidean


def test_batch_hard_triplet_by_hand() -> None:
    """a0=(0,0), a1=(3,4) of identity 0; b0=(1,0), b1=(0,2) of identity 1; margin 0.3. Per anchor, hardest
    positive and hardest negative: a0 5 / 1, a1 5 / sqrt(13), b0 sqrt(5) / 1, b1 sqrt(5) / 2."""
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    pids = torch.tensor([0, 0, 1, 1])
    per_anchor = [0.3 + 5 - 1, 0.3 + 5 - math.sqrt(13), 0.3 + math.sqrt(5) - 1, 0.3 + math.sqrt(5) - 2]
    assert float(batch_hard_triplet(feats, pids, 0.3)) == pytest.approx(sum(per_anchor) / 4, rel=1e-5)
    soft = [math.log1p(math.exp(v - 0.3)) for v in per_anchor]
    assert float(batch_hard_triplet(feats, pids, None)) == pytest.approx(sum(soft) / 4, rel=1e-5)


def test_pairwise_distances_stay_float32_under_autocast() -> None:
    """Two features of norm ~20 at distance 0.5: |x|^2 + |y|^2 - 2 x.y in bfloat16 (8 significant bits) would
    be off by ~1.5 in d^2 = 0.25; the distance must come out as in float32 whatever autocast is active."""
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(1, 64, generator=g), dim=1) * 20
    v = torch.nn.functional.normalize(torch.randn(1, 64, generator=g), dim=1)
    x = torch.cat([u, u + 0.5 * v, -u])
    want = pairwise_euclidean(x)
    assert float(want[0, 1]) == pytest.approx(0.5, rel=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pairwise_euclidean(x)
        loss = batch_hard_triplet(x, torch.tensor([0, 0, 1]), 0.3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert float(loss) == pytest.approx(float(batch_hard_triplet(x, torch.tensor([0, 0, 1]), 0.3)), rel=1e-5)
