"""Compiled CPU kernel of the ranking core: where each positive lands in its query's ranking, without a sort.

A query's ranking needs, for each of its P same-pid gallery items (P is tens; the gallery is 10^4-10^5), how many
gallery items come before it: strictly closer ones, and equally close ones with a lower gallery index (the stable
order of reid.eval.metrics). Sorting the whole distance row answers that and much more; this kernel counts only
that, rows in parallel over the CPU cores (numba's prange), with no q x g temporary:
- up to DENSE_POSITIVES positives: one branch-free pass over the row per positive, j < index counted with <=
  and j > index with <, which the compiler turns into SIMD compares (O(P g) but ~0.3 ns per compare);
- more positives: one pass over the row, each distance binary-searched among the P sorted positive distances
  into P + 1 buckets whose prefix sums are the strictly-closer counts, ties by index in the same pass
  (O(g log P), ~30 ns per item: branchy, so only worth it past ~100 positives).
"""

from __future__ import annotations

import numpy as np

from reid.jit import njit, prange

DENSE_POSITIVES = 96  # crossover measured here (x86-64): ~0.3 ns per dense compare vs ~30 ns per bucketed item
DENSE_MAX_GALLERY = 1 << 24  # float32 counts are exact below this


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _row_dense(row: np.ndarray, t: np.ndarray, index: np.ndarray, n: int, out: np.ndarray) -> None:
    """Counts in float32 lanes (8 per AVX2 compare): the addends are 0 or 1 and every partial sum is an integer
    below 2^24 (the caller checks g < DENSE_MAX_GALLERY), so any summation order is exact and `reassoc` only
    lets the compiler vectorise."""
    g = row.shape[0]
    one, zero = np.float32(1.0), np.float32(0.0)
    for k in range(n):
        v, i = t[k], index[k]
        c = np.float32(0.0)
        for j in range(i):  # lower gallery index: a tie comes first
            c += one if row[j] <= v else zero
        for j in range(i + 1, g):
            c += one if row[j] < v else zero
        out[k] = np.int64(c)


@njit(cache=True, nogil=True)
def _row_buckets(row: np.ndarray, t: np.ndarray, index: np.ndarray, n: int, out: np.ndarray) -> None:
    hist = np.zeros(n + 1, np.int64)
    for j in range(row.shape[0]):
        v = row[j]
        lo, hi = 0, n  # lo := #{k : t_k <= v}; item j is strictly closer than exactly the positives k >= lo
        while lo < hi:
            mid = (lo + hi) >> 1
            if t[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        hist[lo] += 1
        k = lo - 1
        while k >= 0 and t[k] == v:  # j ties with positive k: it comes first when its index is lower
            if j < index[k]:
                out[k] += 1
            k -= 1
    acc = 0
    for k in range(n):
        acc += hist[k]
        out[k] += acc


@njit(parallel=True, cache=True, nogil=True)
def items_before(dist: np.ndarray, pos_dist: np.ndarray, pos_index: np.ndarray, num_pos: np.ndarray) -> np.ndarray:
    """For each query r and positive k < num_pos[r]: #{j : dist[r, j] < t} + #{j < pos_index[r, k] : dist[r, j] == t}
    with t = pos_dist[r, k], i.e. the number of gallery items ranked before that positive (ties by gallery index).

    ``dist`` (b, g); ``pos_dist`` (b, P), ascending within the first num_pos[r] entries of each row;
    ``pos_index`` (b, P) their gallery indices; ``num_pos`` (b,). Entries past num_pos[r] are left at 0.
    """
    b = dist.shape[0]
    out = np.zeros((b, pos_dist.shape[1]), np.int64)
    for r in prange(b):
        n = num_pos[r]
        if n == 0:
            continue
        if n <= DENSE_POSITIVES and dist.shape[1] < DENSE_MAX_GALLERY:
            _row_dense(dist[r], pos_dist[r], pos_index[r], n, out[r])
        else:
            _row_buckets(dist[r], pos_dist[r], pos_index[r], n, out[r])
    return out
