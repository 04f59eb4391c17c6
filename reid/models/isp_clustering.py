"""ISP cascaded clustering (Zhu et al., ECCV 2020, Sec. 3.2): pseudo part labels from feature maps, per identity.

For all pixels of all images of one identity:
  1. foreground / background: per-pixel L2 norm divided by the image's maximum (Eq. 3), optionally sharpened
     by 1 / (1 + exp(-5(2x - 1) - 3)), then 2-means on these 1-D values; foreground = the higher-mean cluster;
  2. parts: k-means with K-1 clusters on the L2-normalised features (Eq. 4) of the foreground pixels;
  3. clusters ordered by mean row (top to bottom) -> labels 1..K-1, background 0.
An identity with fewer than `min_foreground` foreground pixels gets horizontal stripes 1..K-1 (the reference's
fallback when no labels exist).

Why batched: the reference loops over identities in Python with faiss (about 3 min per round on DukeMTMC-reID).
Here identities are padded to a common pixel count (with masks) and clustered together: on CPU in compiled
kernels (numba, one identity per thread, one fused pass over the points per Lloyd iteration), on GPU with
batched matmuls (`torch.bmm`). Identities of similar size are bucketed so padding stays small, and each bucket
is bounded by `max_elements` so memory stays bounded. Pixels are read channels-last (IdentityChunker stores the
maps that way) and converted to float32 a cache-sized block at a time. Each identity's k-means stops at its
fixed point (an assignment that repeats), which gives the same labels as running every iteration.

Determinism: k-means++ draws come from a counter-based hash of (seed, identity key, draw number, pixel number),
so an identity's labels depend only on its own features, its pid and the seed, never on which other identities
share its bucket or chunk (a resumed or chunked teacher run writes the same labels as one pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from reid.jit import njit, prange

_MASK31 = (1 << 31) - 1
DEFAULT_MAX_ELEMENTS = 1 << 27  # floats per bucket of padded features (512 MiB in float32)
_ROWS_PER_STEP = 8192  # pixel rows converted to float32 at a time: 8 MB blocks stay in cache (5x faster than
# converting a whole bucket, which streams through fresh memory)


# --- Eq. 3 and the sharpening ------------------------------------------------------------------------------
def normalized_activation(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 3: a(x, y) = ||M(x, y)||_2 / max_(i,j) ||M(i, j)||_2 per image; (N, C, h, w) -> (N, h, w) in [0, 1].
    The clustering computes it the same way, from `pixel_rows`' norms."""
    n, _, h, w = features.shape
    return activation_from_norms(pixel_rows(features)[1].view(n, h, w), eps)


def activation_from_norms(norms: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 3 given the per-pixel norms (N, h, w): each divided by its image's largest."""
    peak = norms.flatten(1).amax(dim=1).clamp(min=eps)
    return norms / peak[:, None, None]


def sharpen_activation(a: torch.Tensor) -> torch.Tensor:
    """The reference's optional sharpening s(a) = 1 / (1 + exp(-5(2a - 1) - 3)) (monotonic, so only the split moves)."""
    return torch.sigmoid(5.0 * (2.0 * a - 1.0) + 3.0)


# --- counter-based random numbers --------------------------------------------------------------------------
def _mix31(h: torch.Tensor) -> torch.Tensor:
    """Integer avalanche on int64 values < 2^31 (multipliers < 2^30 so products never overflow int64)."""
    h = h ^ (h >> 15)
    h = (h * 0x2C1B3C6D) & _MASK31
    h = h ^ (h >> 12)
    h = (h * 0x297A2D39) & _MASK31
    return h ^ (h >> 15)


def hash_base(seed: int, keys: torch.Tensor, num: int) -> torch.Tensor:
    """Per-(key, n) hash codes (G, num), a pure function of (seed, key, n); `hashed_uniform` derives draws."""
    h = _mix31(torch.tensor(seed & _MASK31, dtype=torch.int64, device=keys.device))
    h = _mix31(h ^ (keys.to(torch.int64)[:, None] & _MASK31))
    n = torch.arange(num, dtype=torch.int64, device=keys.device)[None, :]
    return _mix31(h ^ n)


def hashed_uniform(seed: int, keys: torch.Tensor, draw: int, num: int, base: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Uniforms in (0, 1) for every (key, n), n < num: a pure function of (seed, key, draw, n); shape (G, num)."""
    if base is None:
        base = hash_base(seed, keys, num)
    h = _mix31(base ^ ((draw * 0x5851F42D + 0x14057B7E) & _MASK31))
    return (h.double() + 0.5) / float(1 << 31)


# --- k-means on padded, masked batches ---------------------------------------------------------------------
def two_means_1d(values: torch.Tensor, mask: torch.Tensor, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """2-means on 1-D values per row of (G, N) (masked); init at the row's min and max (deterministic).

    Returns (high: bool (G, N), the pixels of the higher-mean cluster; centres (G, 2) low/high). In 1-D the
    order of two centres never swaps under Lloyd's updates, so the max-initialised cluster is the high one. A row
    whose values are all equal has no high cluster (all False).
    """
    v = values.float()
    # Lloyd's iterations on sorted values with prefix sums: each update is O(log N) per row (searchsorted).
    sorted_v = torch.sort(torch.where(mask, v, torch.full_like(v, math.inf)), dim=1).values
    finite = torch.where(mask.sort(dim=1, descending=True).values, sorted_v, torch.zeros_like(sorted_v))
    csum = F.pad(torch.cumsum(finite.double(), dim=1), (1, 0))
    n_valid = mask.sum(1)
    lo = sorted_v[:, 0].double()
    hi = finite.gather(1, (n_valid - 1).clamp(min=0)[:, None])[:, 0].double()
    total = csum.gather(1, n_valid[:, None])[:, 0]
    for _ in range(iters):
        # nearer to hi than to lo <=> above the midpoint (ties go low)
        mid = ((lo + hi) / 2).to(sorted_v.dtype)
        n_lo = torch.searchsorted(sorted_v, mid[:, None].contiguous(), right=True)[:, 0].clamp(max=n_valid)
        n_hi = n_valid - n_lo
        s_lo = csum.gather(1, n_lo[:, None])[:, 0]
        hi = torch.where(n_hi > 0, (total - s_lo) / n_hi.clamp(min=1), hi)
        lo = torch.where(n_lo > 0, s_lo / n_lo.clamp(min=1), lo)
    mid = ((lo + hi) / 2).to(v.dtype)
    high = (v > mid[:, None]) & mask
    return high & (hi > lo)[:, None], torch.stack([lo, hi], dim=1).to(v.dtype)


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (G, N) from every point of x (G, N, C) to one centre per row c (G, C)."""
    return (x_sq - 2.0 * torch.bmm(x, c[:, :, None])[..., 0] + (c * c).sum(1, keepdim=True)).clamp(min=0)


def kmeans_pp_init(x: torch.Tensor, mask: torch.Tensor, k: int, seed: int, keys: torch.Tensor) -> torch.Tensor:
    """k-means++ seeding for every row at once (exponential-race sampling with hashed uniforms) -> (G, k, C).

    Draw 0 picks a uniformly random valid point; draw j picks point n with probability D(n)^2 / sum D^2 as the
    argmin of E_n / D(n)^2 with E_n = -log u_n exponential. Rows whose points all coincide repeat a centre.
    The draws are hashed here (torch); the k passes over the points run in a compiled kernel on CPU.
    """
    G, N, _ = x.shape
    base = hash_base(seed, keys.to(x.device), N)
    u = hashed_uniform(seed, keys, 0, N, base)
    first = torch.where(mask, u, torch.full_like(u, 2.0)).argmin(dim=1)
    exp_draws = torch.stack([-torch.log(hashed_uniform(seed, keys, j, N, base)) for j in range(1, k)], dim=1) \
        if k > 1 else torch.zeros(G, 0, N, dtype=torch.float64, device=x.device)
    if x.device.type == "cpu":
        return torch.from_numpy(kmeans_pp_rows(x.contiguous().numpy(), mask.contiguous().numpy(),
                                               first.numpy(), exp_draws.contiguous().numpy()))
    return _kmeans_pp_matmul(x, mask, first, exp_draws)


def _kmeans_pp_matmul(x: torch.Tensor, mask: torch.Tensor, first: torch.Tensor, exp_draws: torch.Tensor
                      ) -> torch.Tensor:
    """The batched-matmul passes of `kmeans_pp_init` (GPU path; same result as kmeans_pp_rows)."""
    G, k = x.shape[0], exp_draws.shape[1] + 1
    rows = torch.arange(G, device=x.device)
    x_sq = (x * x).sum(-1)
    centres = [x[rows, first]]
    d2 = _sq_dist_to(x, x_sq, centres[0])
    for j in range(1, k):
        score = torch.where(mask & (d2 > 0), exp_draws[:, j - 1] / d2.double().clamp(min=1e-30),
                            torch.full_like(exp_draws[:, 0], math.inf))
        pick = score.argmin(dim=1)
        degenerate = ~torch.isfinite(score.gather(1, pick[:, None])[:, 0])
        pick = torch.where(degenerate, first, pick)
        centres.append(x[rows, pick])
        d2 = torch.minimum(d2, _sq_dist_to(x, x_sq, centres[-1]))
    return torch.stack(centres, dim=1)


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def kmeans_pp_rows(x: np.ndarray, mask: np.ndarray, first: np.ndarray, exp_draws: np.ndarray) -> np.ndarray:
    """The CPU passes of `kmeans_pp_init`: x (G, N, C) float32, mask (G, N), first (G,), exp_draws (G, k-1, N)
    float64 -> centres (G, k, C). D(n)^2 = ||x_n||^2 - 2 x_n.c + ||c||^2 (clamped at 0), as the matmul form."""
    G, N, C = x.shape
    k = exp_draws.shape[1] + 1
    out = np.zeros((G, k, C), np.float32)
    for g in prange(G):
        d2 = np.full(N, np.inf, np.float32)
        pick = first[g]
        for j in range(k):
            if j > 0:
                best, pick = np.inf, -1
                for i in range(N):
                    if mask[g, i] and d2[i] > 0:
                        score = exp_draws[g, j - 1, i] / max(np.float64(d2[i]), 1e-30)
                        if score < best:
                            best, pick = score, i
                if pick < 0:
                    pick = first[g]
            c = x[g, pick]
            out[g, j] = c
            c_sq = np.float32(0.0)
            for d in range(C):
                c_sq += c[d] * c[d]
            for i in range(N):
                xi = x[g, i]
                dot, x_sq = np.float32(0.0), np.float32(0.0)
                for d in range(C):
                    dot += xi[d] * c[d]
                    x_sq += xi[d] * xi[d]
                dist = max(x_sq - np.float32(2.0) * dot + c_sq, np.float32(0.0))
                if dist < d2[i]:
                    d2[i] = dist
    return out


def assign_nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (squared L2) for every point: (G, N, C), (G, k, C) -> (G, N) long."""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin.
    c_sq = (centres * centres).sum(-1)[:, None, :]
    return torch.baddbmm(c_sq, x, centres.transpose(1, 2), alpha=-2.0).argmin(dim=2)


def kmeans_batched(x: torch.Tensor, mask: torch.Tensor, k: int, iters: int = 20, seed: int = 0,
                   keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on every row of a padded batch: x (G, N, C), mask (G, N) -> (assign (G, N), centres).

    At most `iters` centre updates after k-means++ seeding (faiss' default is 20), then a final assignment.
    Empty clusters keep their previous centre. Padded points (mask False) get assignment -1 and never move a
    centre. A row stops once an assignment repeats the previous one: its centres would be recomputed from the
    same points in the same order, so every later iteration is that same fixed point and the result equals the
    full `iters` run. On CPU the rows run in parallel in a compiled kernel (one fused pass over the points per
    iteration: nearest centre, then its running sum); elsewhere (CUDA) two batched matmuls per iteration.
    """
    if keys is None:
        keys = torch.arange(x.shape[0], device=x.device)
    x = x.float()
    centres = kmeans_pp_init(x, mask, k, seed, keys)
    if x.device.type == "cpu":
        assign, centres_np = lloyd_rows(x.contiguous().numpy(), mask.contiguous().numpy(),
                                        centres.contiguous().numpy(), iters)
        return torch.from_numpy(assign), torch.from_numpy(centres_np)
    return _kmeans_matmul(x, mask, centres, iters)


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def lloyd_rows(x: np.ndarray, mask: np.ndarray, centres: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """The CPU Lloyd iterations of `kmeans_batched`, one row (identity) per thread: x (G, N, C) float32, mask (G, N),
    centres (G, k, C) -> (assign (G, N) int64, -1 where masked; centres). Each iteration is one pass over the
    points: the nearest centre by ||c||^2 - 2 x.c (first index on ties), then the point joins that centre's sum."""
    G, N, C = x.shape
    k = centres.shape[1]
    cent = centres.copy()
    assign = np.full((G, N), -1, np.int64)
    for g in prange(G):
        c = cent[g]
        sums = np.zeros((k, C), np.float32)
        counts = np.zeros(k, np.int64)
        csq = np.zeros(k, np.float32)
        dots = np.zeros(k, np.float32)
        for it in range(iters + 1):
            for j in range(k):
                acc = np.float32(0.0)
                for d in range(C):
                    acc += c[j, d] * c[j, d]
                csq[j] = acc
            sums[:] = 0.0
            counts[:] = 0
            changed = False
            for i in range(N):
                if not mask[g, i]:
                    continue
                xi = x[g, i]
                for j in range(k):
                    acc = np.float32(0.0)
                    for d in range(C):
                        acc += xi[d] * c[j, d]
                    dots[j] = acc
                best, bj = np.inf, 0
                for j in range(k):
                    v = csq[j] - np.float32(2.0) * dots[j]
                    if v < best:
                        best, bj = v, j
                if assign[g, i] != bj:
                    changed = True
                    assign[g, i] = bj
                counts[bj] += 1
                row = sums[bj]
                for d in range(C):
                    row[d] += xi[d]
            if it == iters or (it > 0 and not changed):
                break  # the final assignment, or a fixed point (see kmeans_batched)
            for j in range(k):
                if counts[j] > 0:
                    n = np.float32(counts[j])
                    for d in range(C):
                        c[j, d] = sums[j, d] / n
    return assign, cent


def _kmeans_matmul(x: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, iters: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched-matmul Lloyd iterations (GPU path; any mask layout)."""
    k = centres.shape[1]
    m = mask.float()[..., None]
    onehot = torch.empty((*x.shape[:2], k), dtype=x.dtype, device=x.device)
    mf = mask.float()
    previous = None
    for _ in range(iters):
        assign = assign_nearest(x, centres)
        if previous is not None and torch.equal(torch.where(mask, assign, -1), previous):
            break  # every row is at its fixed point (see kmeans_batched)
        previous = torch.where(mask, assign, -1)
        onehot.zero_().scatter_(2, assign[..., None], m)
        sums = torch.bmm(onehot.transpose(1, 2), x)
        counts = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device).scatter_add_(1, assign, mf)[..., None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    assign = assign_nearest(x, centres)
    return torch.where(mask, assign, torch.full_like(assign, -1)), centres


def compact_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the positions of the True entries first (stable), cut to the longest row's count.

    Returns (idx (G, M) positions into dim 1, valid (G, M)); used to cluster only foreground pixels.
    """
    counts = mask.sum(1)
    width = max(int(counts.max()), 1) if mask.numel() else 1
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return idx, valid


def order_clusters_by_row(assign: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Rank of each cluster by its mean row (top first): (G, N) assignments (-1 = none), (N,) rows -> (G, k).

    Empty clusters rank last. Used to map clusters to labels 1..K-1 from top to bottom.
    """
    return order_clusters_by_row_batched(assign, rows[None, :].expand_as(assign), k)


def order_clusters_by_row_batched(assign: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """`order_clusters_by_row` with a row number per point, (G, N)."""
    valid = assign >= 0
    slot = assign.clamp(min=0)
    counts = torch.zeros(assign.shape[0], k, dtype=torch.float64, device=assign.device)
    counts.scatter_add_(1, slot, valid.double())
    row_sum = torch.zeros_like(counts).scatter_add_(1, slot, rows.double() * valid.double())
    mean_row = torch.where(counts > 0, row_sum / counts.clamp(min=1), torch.full_like(counts, math.inf))
    order = torch.argsort(mean_row, dim=1, stable=True)
    return torch.argsort(order, dim=1, stable=True)


def stripe_labels(h: int, w: int, parts: int) -> torch.Tensor:
    """Horizontal stripes 1..parts over an (h, w) map (row r -> 1 + floor(r * parts / h)); no background."""
    rows = torch.arange(h)
    return (1 + (rows * parts) // h).to(torch.uint8)[:, None].expand(h, w).contiguous()


# --- buckets of identities ---------------------------------------------------------------------------------
@dataclass
class Bucket:
    """Identities clustered together: `slots` (G, n_max) image indices into the features, -1 = padding."""

    keys: torch.Tensor
    slots: torch.Tensor


def group_images(pids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Unique identity keys (sorted) and, for each, its image indices in input order."""
    keys, inverse = torch.unique(pids.cpu(), sorted=True, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(keys)).tolist()
    return keys, list(torch.split(order, counts))


def make_buckets(keys: torch.Tensor, members: Sequence[torch.Tensor], pixels_per_image: int, channels: int,
                 max_elements: int = DEFAULT_MAX_ELEMENTS, pad_ratio: float = 1.25) -> list[Bucket]:
    """Identities sorted by image count, packed while G * n_max * pixels * channels <= max_elements and the
    largest identity of a bucket has at most `pad_ratio` times the images of its smallest (bounded padding)."""
    sizes = torch.tensor([len(m) for m in members])
    order = torch.argsort(sizes, stable=True).tolist()
    per_image = pixels_per_image * channels
    buckets: list[list[int]] = []
    current: list[int] = []
    for i in order:
        n_max = int(sizes[i])  # ascending order: the newcomer is the largest
        if current and ((len(current) + 1) * n_max * per_image > max_elements
                        or n_max > pad_ratio * int(sizes[current[0]])):
            buckets.append(current)
            current = []
        current.append(i)
    if current:
        buckets.append(current)
    out = []
    for ids in buckets:
        n_max = max(int(sizes[i]) for i in ids)
        slots = torch.full((len(ids), n_max), -1, dtype=torch.long)
        for row, i in enumerate(ids):
            slots[row, : len(members[i])] = members[i]
        out.append(Bucket(keys[ids], slots))
    return out


# --- the cascade -------------------------------------------------------------------------------------------
def _resolve_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None:
        return int(seed)
    if generator is not None:
        return int(torch.randint(0, _MASK31, (1,), generator=generator))
    return 0


def pixel_rows(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, h, w) -> (pixels (N*h*w, C) in the features' dtype, their L2 norms (N*h*w,) float32).

    One pass over the features: a view when they are channels_last (as IdentityChunker stores them), else one
    copy; the norms are accumulated in float32 straight from float16. Buckets then gather only what they need.
    """
    N, C, h, w = features.shape
    pixels = features.permute(0, 2, 3, 1).reshape(N * h * w, C)
    norms = torch.empty(pixels.shape[0], dtype=torch.float32, device=pixels.device)
    for s in range(0, pixels.shape[0], _ROWS_PER_STEP):
        torch.linalg.vector_norm(pixels[s:s + _ROWS_PER_STEP].float(), dim=1, out=norms[s:s + _ROWS_PER_STEP])
    return pixels, norms


def gather_rows(pixels: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """pixels[rows] as float32 on `device`, converted a cache-sized block at a time."""
    out = torch.empty((rows.numel(), pixels.shape[1]), dtype=torch.float32, device=device)
    rows = rows.to(pixels.device)
    for s in range(0, rows.numel(), _ROWS_PER_STEP):
        out[s:s + _ROWS_PER_STEP].copy_(pixels.index_select(0, rows[s:s + _ROWS_PER_STEP]))
    return out


def cluster_bucket(pixels: torch.Tensor, norms: torch.Tensor, hw: tuple[int, int], bucket: Bucket, K: int,
                   sharpen: bool, iters: int, seed: int, min_foreground: int, device: torch.device) -> torch.Tensor:
    """Cascaded clustering of one bucket -> labels (G, n_max, h, w) uint8 (padding rows are junk).

    `pixels`, `norms`: `pixel_rows` of all the feature maps; `hw` the map size."""
    G, n_max = bucket.slots.shape
    h, w = hw
    C = pixels.shape[1]
    valid_img = (bucket.slots >= 0).to(device)
    # global pixel row of every (identity, image slot, pixel) of the bucket
    rows_of = (bucket.slots.clamp(min=0).reshape(-1, 1).to(pixels.device) * (h * w)
               + torch.arange(h * w, device=pixels.device)).reshape(G, n_max * h * w)
    act = activation_from_norms(norms[rows_of].to(device).view(G * n_max, h, w))
    if sharpen:
        act = sharpen_activation(act)
    mask = valid_img[:, :, None].expand(G, n_max, h * w).reshape(G, n_max * h * w)
    fg, _ = two_means_1d(act.reshape(G, -1), mask, iters)
    del act
    # step 2 on the foreground pixels only, packed to the front of each identity's row, L2-normalised (Eq. 4)
    idx, valid = compact_rows(fg)
    picked = rows_of.to(device).gather(1, idx).reshape(-1).to(pixels.device)
    x = gather_rows(pixels, picked, device)
    x /= norms.index_select(0, picked).to(device).clamp(min=1e-12)[:, None]
    assign, _ = kmeans_batched(x.view(G, -1, C), valid, K - 1, iters, seed, bucket.keys.to(device))
    del x
    rows = (idx % (h * w)) // w
    rank = order_clusters_by_row_batched(assign, rows, K - 1)
    part = torch.where(assign >= 0, 1 + rank.gather(1, assign.clamp(min=0)), torch.zeros_like(assign))
    labels = torch.zeros((G, n_max * h * w), dtype=torch.long, device=device).scatter_(1, idx, part)
    labels = labels.reshape(G, n_max, h, w).to(torch.uint8)
    too_few = valid.sum(1) < min_foreground
    if too_few.any():
        labels[too_few] = stripe_labels(h, w, K - 1).to(device)
    return labels


def cascaded_clustering(features: torch.Tensor, pids: torch.Tensor | np.ndarray | Sequence[int], K: int = 7,
                        sharpen: bool = True, iters: int = 20, generator: torch.Generator | None = None,
                        seed: int | None = None, min_foreground: int | None = None,
                        max_elements: int = DEFAULT_MAX_ELEMENTS,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """ISP pseudo part labels for a set of feature maps: (N, C, h, w), pids (N,) -> labels (N, h, w) uint8.

    Args:
        features: feature maps (any float dtype; float16 halves the memory, compute is float32 per bucket).
        pids: identity of each image; all images of an identity are clustered together.
        K: parts including background (labels 0..K-1).
        sharpen: apply `sharpen_activation` before the 2-means.
        iters: Lloyd iterations of both k-means steps.
        generator / seed: randomness of k-means++ (seed wins; else one draw from the generator; else 0).
        min_foreground: identities with fewer foreground pixels get stripes (default K-1, the fewest k-means needs).
        max_elements: bound on the floats of one bucket of padded features (memory knob).
        device: where to compute (default: the features' device).
    """
    if features.ndim != 4:
        raise ValueError(f"cascaded_clustering: features must be (N, C, h, w), got {tuple(features.shape)}")
    pids = torch.as_tensor(np.asarray(pids), dtype=torch.int64)
    if pids.shape != (features.shape[0],):
        raise ValueError(f"cascaded_clustering: pids must be ({features.shape[0]},), got {tuple(pids.shape)}")
    if K < 2:
        raise ValueError(f"cascaded_clustering: K must be >= 2 (background + parts), got {K}")
    device = torch.device(device) if device is not None else features.device
    seed_v = _resolve_seed(seed, generator)
    min_fg = K - 1 if min_foreground is None else int(min_foreground)
    N, C, h, w = features.shape
    out = torch.zeros((N, h, w), dtype=torch.uint8)
    keys, members = group_images(pids)
    pixels, norms = pixel_rows(features)
    for bucket in make_buckets(keys, members, h * w, C, max_elements):
        labels = cluster_bucket(pixels, norms, (h, w), bucket, K, sharpen, iters, seed_v, min_fg, device).cpu()
        valid = bucket.slots >= 0
        out[bucket.slots[valid]] = labels[valid]
    return out


# --- streaming in identity chunks --------------------------------------------------------------------------
@dataclass
class IdentityChunker:
    """Accumulate feature maps of images arriving grouped by identity; cluster whole identities in chunks.

    Feed batches with `add(rows, pids, features)` in an order where each identity's images are contiguous
    (sort by pid). Once more than `chunk_images` images are held, every identity that is complete (a later
    identity has started) is clustered and its (rows, labels) returned; `finish()` clusters the rest. Memory is
    bounded by about chunk_images + one identity of feature maps (kept as float16 on the CPU).
    """

    K: int = 7
    sharpen: bool = True
    iters: int = 20
    seed: int = 0
    chunk_images: int = 1024
    device: torch.device | str | None = None
    max_elements: int = DEFAULT_MAX_ELEMENTS
    store_dtype: torch.dtype = torch.float16
    _rows: list[np.ndarray] = field(default_factory=list)
    _pids: list[np.ndarray] = field(default_factory=list)
    _feats: list[torch.Tensor] = field(default_factory=list)
    _held: int = 0
    _seen: set = field(default_factory=set)

    def add(self, rows: np.ndarray, pids: np.ndarray, features: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        rows, pids = np.asarray(rows, dtype=np.int64), np.asarray(pids, dtype=np.int64)
        self._check_order(pids)
        self._rows.append(rows)
        self._pids.append(pids)
        # channels_last: cluster_bucket reads pixels x channels, so this copy (made anyway) also sets the layout
        self._feats.append(features.detach().to("cpu", self.store_dtype, memory_format=torch.channels_last))
        self._held += len(rows)
        if self._held <= self.chunk_images:
            return []
        return self._flush(keep_last_identity=True)

    def finish(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._flush(keep_last_identity=False) if self._held else []

    def _check_order(self, pids: np.ndarray) -> None:
        last = int(self._pids[-1][-1]) if self._pids else None
        for p in pids.tolist():
            if p != last:
                if p in self._seen:
                    raise ValueError(f"IdentityChunker: identity {p} came back after another one started; "
                                     "feed the images sorted by identity")
                self._seen.add(p)
                last = p

    def _flush(self, keep_last_identity: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        rows, pids = np.concatenate(self._rows), np.concatenate(self._pids)
        feats = torch.cat(self._feats)
        cut = len(rows)
        if keep_last_identity:
            cut = int(np.flatnonzero(pids != pids[-1])[-1]) + 1 if (pids != pids[-1]).any() else 0
        self._rows, self._pids, self._feats, self._held = [], [], [], 0
        if cut < len(rows):
            self._rows, self._pids, self._feats = [rows[cut:]], [pids[cut:]], [feats[cut:]]
            self._held = len(rows) - cut
        if cut == 0:
            return []
        labels = cascaded_clustering(feats[:cut], pids[:cut], self.K, self.sharpen, self.iters, seed=self.seed,
                                     max_elements=self.max_elements, device=self.device)
        return [(rows[:cut], labels.numpy())]


def identity_order(pids: Sequence[int]) -> np.ndarray:
    """Positions sorted by identity (stable: input order within an identity), for feeding an IdentityChunker."""
    return np.argsort(np.asarray(pids, dtype=np.int64), kind="stable")


def iterate_chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
