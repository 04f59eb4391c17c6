"""PK sampler: batch structure, exact epoch length, determinism per (seed, epoch), DDP split, errors."""

from __future__ import annotations

import pytest

from reid.data.samplers import PKBatchSampler, pk_batches

# 6 identities with 8, 8, 6, 5, 3, 2 images (positions 0..31).
COUNTS = [8, 8, 6, 5, 3, 2]
LABELS = [lab for lab, n in enumerate(COUNTS) for _ in range(n)]


def test_every_batch_has_p_distinct_ids_times_k_images() -> None:
    for seed in range(5):
        for batch in pk_batches(LABELS, p=3, k=2, seed=seed):
            assert len(batch) == 6
            ids = [LABELS[i] for i in batch]
            assert len(set(ids)) == 3
            assert all(ids.count(lab) == 2 for lab in set(ids))
            # consecutive chunks of K images per identity
            assert [ids[j] for j in range(0, 6, 2)] == [ids[j + 1] for j in range(0, 6, 2)]


def test_epoch_length_exact_and_equal_to_len() -> None:
    # K=2 chunks per id: 8->4, 8->4, 6->3, 5->2 (one dropped), 3->1, 2->1: 15 chunks.
    # P=3 from ids with chunks left: the epoch ends when fewer than 3 ids have chunks; whatever the order, every
    # batch uses 3 chunks, so len <= 15 // 3 = 5, and for every seed the sampler's len() equals its iteration.
    for seed in range(8):
        sampler = PKBatchSampler(LABELS, p=3, k=2, seed=seed)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler) <= 5
            assert len(batches) >= 1


def test_epoch_length_by_hand_when_ids_are_balanced() -> None:
    # 4 ids x 6 images, P=2, K=3: 2 chunks per id = 8 chunks, always 2 ids available until the end -> 4 batches;
    # every image is used exactly once.
    labels = [lab for lab in range(4) for _ in range(6)]
    batches = pk_batches(labels, p=2, k=3, seed=0)
    assert len(batches) == 4
    assert sorted(i for b in batches for i in b) == list(range(24))


def test_identity_with_fewer_than_k_images_is_sampled_with_replacement() -> None:
    labels = [0, 1, 1, 1, 1]
    batches = pk_batches(labels, p=2, k=4, seed=1)
    assert len(batches) == 1
    assert sorted(batches[0]).count(0) == 4  # the single image of id 0, repeated K=4 times


def test_deterministic_per_seed_and_epoch_and_epochs_differ() -> None:
    a = PKBatchSampler(LABELS, p=2, k=2, seed=7)
    b = PKBatchSampler(LABELS, p=2, k=2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iteration does not consume state
    e0 = PKBatchSampler(LABELS, p=2, k=2, seed=7)
    e0.set_epoch(0)
    e1 = PKBatchSampler(LABELS, p=2, k=2, seed=7)
    e1.set_epoch(1)
    assert list(e0) != list(e1)
    other_seed = PKBatchSampler(LABELS, p=2, k=2, seed=8)
    other_seed.set_epoch(0)
    assert list(other_seed) != list(e0)


def test_ddp_ranks_split_the_identities_of_the_configured_global_batch() -> None:
    """2 ranks, P = 4, K = 2: each step, rank 0 gets identities 1 and 3 of the single-process batch and rank 1
    identities 2 and 4 (2 x 2 images each): disjoint identities, the same number of steps, the same global batch."""
    labels = [lab for lab in range(10) for _ in range(7)]
    whole = PKBatchSampler(labels, p=4, k=2, seed=0)
    whole.set_epoch(2)
    all_batches = list(whole)
    ranks = [PKBatchSampler(labels, p=4, k=2, seed=0, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == len(all_batches)
    for b0, b1, full in zip(r0, r1, all_batches):
        assert b0 == full[0:2] + full[4:6] and b1 == full[2:4] + full[6:8]
        assert not {labels[i] for i in b0} & {labels[i] for i in b1}


def test_a_batch_p_not_divisible_by_the_ranks_is_an_error() -> None:
    with pytest.raises(ValueError, match="batch_p = 3 identities cannot be split evenly over 2 processes"):
        PKBatchSampler([0, 0, 1, 1, 2, 2], 3, 2, seed=0, rank=0, world_size=2)


def test_fewer_than_p_identities_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"at least P=4 identities.*has 3"):
        pk_batches([0, 0, 1, 1, 2, 2], p=4, k=2, seed=0)
    with pytest.raises(ValueError, match="P and K must be >= 1"):
        pk_batches([0, 1], p=0, k=2, seed=0)
