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


def test_ddp_ranks_get_disjoint_batches_of_equal_count() -> None:
    labels = [lab for lab in range(10) for _ in range(7)]
    whole = PKBatchSampler(labels, p=2, k=2, seed=0)
    whole.set_epoch(2)
    all_batches = list(whole)
    ranks = [PKBatchSampler(labels, p=2, k=2, seed=0, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == len(ranks[0]) == len(all_batches) // 2
    # disjoint as batches; the union is the single-process epoch truncated to a multiple of 2
    assert not {tuple(b) for b in r0} & {tuple(b) for b in r1}
    n = len(all_batches) // 2 * 2
    assert sorted(map(tuple, r0 + r1)) == sorted(map(tuple, all_batches[:n]))
    assert r0 == all_batches[0:n:2] and r1 == all_batches[1:n:2]


def test_odd_batch_count_is_truncated_for_ddp() -> None:
    # 3 ids x 2 images, P=1, K=2: 3 batches; 2 ranks -> 1 batch each (the third is dropped on both).
    labels = [0, 0, 1, 1, 2, 2]
    assert len(pk_batches(labels, 1, 2, seed=0)) == 3
    for r in range(2):
        assert len(PKBatchSampler(labels, 1, 2, seed=0, rank=r, world_size=2)) == 1


def test_fewer_than_p_identities_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"at least P=4 identities.*has 3"):
        pk_batches([0, 0, 1, 1, 2, 2], p=4, k=2, seed=0)
    with pytest.raises(ValueError, match="P and K must be >= 1"):
        pk_batches([0, 1], p=0, k=2, seed=0)
