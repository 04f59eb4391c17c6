"""PK identity sampler: batches of P identities x K images, seeded, exact length, split across DDP ranks."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def pk_batches(labels: Sequence[int], p: int, k: int, seed: int) -> list[list[int]]:
    """All batches of one epoch, as positions into `labels`.

    Each identity's images are shuffled and cut into chunks of K (an identity with fewer than K images is
    sampled with replacement up to K; a trailing chunk shorter than K is dropped). Batches then take one chunk
    from each of P distinct identities, drawn at random among those with chunks left, until fewer than P
    identities remain. The whole epoch is a pure function of (labels, p, k, seed), so its length is exact and a
    resumed run replays it.
    """
    if p < 1 or k < 1:
        raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
    rng = np.random.default_rng(seed)
    by_id: dict[int, list[int]] = defaultdict(list)
    for pos, lab in enumerate(labels):
        by_id[int(lab)].append(pos)
    if len(by_id) < p:
        raise ValueError(f"PK sampler needs at least P={p} identities, the training set has {len(by_id)}")
    chunks: dict[int, list[list[int]]] = {}
    for lab in sorted(by_id):
        idx = np.array(by_id[lab])
        idx = rng.choice(idx, size=k, replace=True) if len(idx) < k else rng.permutation(idx)
        chunks[lab] = [idx[i : i + k].tolist() for i in range(0, len(idx) - k + 1, k)]
    batches: list[list[int]] = []
    while True:
        available = [lab for lab in sorted(chunks) if chunks[lab]]
        if len(available) < p:
            break
        chosen = rng.choice(available, size=p, replace=False)
        batches.append([i for lab in chosen for i in chunks[int(lab)].pop()])
    return batches


class PKBatchSampler(Sampler[list[int]]):
    """Batch sampler over `pk_batches`; call `set_epoch(e)` each epoch (seed + epoch) like DistributedSampler.

    With world_size > 1 the global batch stays the P x K the config names (as with one process) and its
    identities are split between the ranks: rank r takes identities r, r + world_size, ... of every batch
    (P / world_size identities x K images), so the ranks see disjoint identities and run the same steps.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        if p % world_size:
            raise ValueError(f"batch_p = {p} identities cannot be split evenly over {world_size} processes: "
                             f"choose batch_p divisible by the number of GPUs")
        self.labels, self.p, self.k, self.seed = list(labels), p, k, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        batches = pk_batches(self.labels, self.p, self.k, self.seed * 100003 + self.epoch)
        if self.world_size == 1:
            return batches
        k = self.k
        return [[i for c in range(self.rank, self.p, self.world_size) for i in batch[c * k:(c + 1) * k]]
                for batch in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
