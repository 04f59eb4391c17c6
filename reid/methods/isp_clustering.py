"""ISP cascaded clustering (Zhu et al., ECCV 2020, Sec. 3.2): pseudo part labels from feature maps, per identity.

For all pixels of all images of one identity:
  1. foreground / background: per-pixel L2 norm divided by the image's maximum (Eq. 3), optionally sharpened
     by 1 / (1 + exp(-5(2x - 1) - 3)), then 2-means on these 1-D values; foreground = the higher-mean cluster;
  2. parts: k-means with K-1 clusters on the L2-normalised features (Eq. 4) of the foreground pixels;
  3. clusters ordered by mean row (top to bottom) -> labels 1..K-1, background 0.
An identity with fewer than `min_foreground` foreground pixels gets horizontal stripes 1..K-1 (the reference's
fallback when no labels exist).

Why batched: the reference loops over identities in Python with faiss (about 3 min per round on DukeMTMC-reID).
Here identities are padded to a common pixel count (with masks) and clustered together with batched matmuls
(`torch.bmm`), on the GPU when the features are there. Identities of similar size are bucketed so padding stays
small, and each bucket is bounded by `max_elements` so memory stays bounded.

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

_MASK31 = (1 << 31) - 1
DEFAULT_MAX_ELEMENTS = 1 << 27  # floats per bucket of padded features (512 MiB in float32)


# --- Eq. 3 and the sharpening ------------------------------------------------------------------------------
def normalized_activation(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 3: a(x, y) = ||M(x, y)||_2 / max_(i,j) ||M(i, j)||_2 per image; (N, C, h, w) -> (N, h, w) in [0, 1]."""
    norms = features.float().norm(dim=1)
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


def hashed_uniform(seed: int, keys: torch.Tensor, draw: int, num: int) -> torch.Tensor:
    """Uniforms in (0, 1) for every (key, n), n < num: a pure function of (seed, key, draw, n); shape (G, num)."""
    h = _mix31(torch.tensor(seed & _MASK31, dtype=torch.int64, device=keys.device))
    h = _mix31(h ^ (keys.to(torch.int64)[:, None] & _MASK31))
    h = _mix31(h ^ (draw & _MASK31))
    n = torch.arange(num, dtype=torch.int64, device=keys.device)[None, :]
    h = _mix31(_mix31(h ^ n) + 0x9E3779B)
    return (h.double() + 0.5) / float(1 << 31)


# --- k-means on padded, masked batches ---------------------------------------------------------------------
def two_means_1d(values: torch.Tensor, mask: torch.Tensor, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """2-means on 1-D values per row of (G, N) (masked); init at the row's min and max (deterministic).

    Returns (high: bool (G, N), the pixels of the higher-mean cluster; centres (G, 2) low/high). In 1-D the
    order of two centres never swaps under Lloyd's updates, so the max-initialised cluster is the high one. A row
    whose values are all equal has no high cluster (all False).
    """
    v = values.float()
    big = torch.finfo(v.dtype).max
    lo = torch.where(mask, v, torch.full_like(v, big)).amin(dim=1)
    hi = torch.where(mask, v, torch.full_like(v, -big)).amax(dim=1)
    centres = torch.stack([lo, hi], dim=1)
    m = mask.float()
    for _ in range(iters):
        high = (v - centres[:, 1:2]).abs() < (v - centres[:, 0:1]).abs()
        w_hi = high.float() * m
        w_lo = (~high).float() * m
        n_hi, n_lo = w_hi.sum(1), w_lo.sum(1)
        new_hi = torch.where(n_hi > 0, (w_hi * v).sum(1) / n_hi.clamp(min=1), centres[:, 1])
        new_lo = torch.where(n_lo > 0, (w_lo * v).sum(1) / n_lo.clamp(min=1), centres[:, 0])
        centres = torch.stack([new_lo, new_hi], dim=1)
    high = (v - centres[:, 1:2]).abs() < (v - centres[:, 0:1]).abs()
    return high & mask & (centres[:, 1:2] > centres[:, 0:1]), centres


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (G, N) from every point of x (G, N, C) to one centre per row c (G, C)."""
    return (x_sq - 2.0 * torch.bmm(x, c[:, :, None])[..., 0] + (c * c).sum(1, keepdim=True)).clamp(min=0)


def kmeans_pp_init(x: torch.Tensor, mask: torch.Tensor, k: int, seed: int, keys: torch.Tensor) -> torch.Tensor:
    """k-means++ seeding for every row at once (exponential-race sampling with hashed uniforms) -> (G, k, C).

    Draw 0 picks a uniformly random valid point; draw j picks point n with probability D(n)^2 / sum D^2 as the
    argmin of E_n / D(n)^2 with E_n = -log u_n exponential. Rows whose points all coincide repeat a centre.
    """
    G, N, C = x.shape
    rows = torch.arange(G, device=x.device)
    x_sq = (x * x).sum(-1)
    u = hashed_uniform(seed, keys, 0, N).to(x.device)
    first = torch.where(mask, u, torch.full_like(u, 2.0)).argmin(dim=1)
    centres = [x[rows, first]]
    d2 = _sq_dist_to(x, x_sq, centres[0])
    for j in range(1, k):
        e = -torch.log(hashed_uniform(seed, keys, j, N).to(x.device))
        score = torch.where(mask & (d2 > 0), e / d2.double().clamp(min=1e-30), torch.full_like(e, math.inf))
        pick = score.argmin(dim=1)
        degenerate = ~torch.isfinite(score.gather(1, pick[:, None])[:, 0])
        pick = torch.where(degenerate, first, pick)
        centres.append(x[rows, pick])
        d2 = torch.minimum(d2, _sq_dist_to(x, x_sq, centres[-1]))
    return torch.stack(centres, dim=1)


def assign_nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (squared L2) for every point: (G, N, C), (G, k, C) -> (G, N) long."""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin.
    scores = (centres * centres).sum(-1)[:, None, :] - 2.0 * torch.bmm(x, centres.transpose(1, 2))
    return scores.argmin(dim=2)


def kmeans_batched(x: torch.Tensor, mask: torch.Tensor, k: int, iters: int = 20, seed: int = 0,
                   keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on every row of a padded batch: x (G, N, C), mask (G, N) -> (assign (G, N), centres).

    `iters` centre updates after k-means++ seeding (faiss' default is 20), then a final assignment. Empty
    clusters keep their previous centre. Padded points (mask False) get assignment -1 and never move a centre.
    """
    if keys is None:
        keys = torch.arange(x.shape[0], device=x.device)
    x = x.float()
    centres = kmeans_pp_init(x, mask, k, seed, keys)
    m = mask.float()[..., None]
    for _ in range(iters):
        onehot = F.one_hot(assign_nearest(x, centres), k).float() * m
        sums = torch.bmm(onehot.transpose(1, 2), x)
        counts = onehot.sum(1)[..., None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    assign = assign_nearest(x, centres)
    return torch.where(mask, assign, torch.full_like(assign, -1)), centres


def order_clusters_by_row(assign: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Rank of each cluster by its mean row (top first): (G, N) assignments (-1 = none), (N,) rows -> (G, k).

    Empty clusters rank last. Used to map clusters to labels 1..K-1 from top to bottom.
    """
    valid = assign >= 0
    onehot = F.one_hot(assign.clamp(min=0), k).double() * valid[..., None].double()
    counts = onehot.sum(1)
    mean_row = (onehot * rows.double()[None, :, None]).sum(1) / counts.clamp(min=1)
    mean_row = torch.where(counts > 0, mean_row, torch.full_like(mean_row, math.inf))
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
                 max_elements: int = DEFAULT_MAX_ELEMENTS) -> list[Bucket]:
    """Identities sorted by image count, packed while G * n_max * pixels * channels <= max_elements."""
    sizes = torch.tensor([len(m) for m in members])
    order = torch.argsort(sizes, stable=True).tolist()
    per_image = pixels_per_image * channels
    buckets, current = [], []
    for i in order:
        n_max = max(int(sizes[i]), max((int(sizes[j]) for j in current), default=0))
        if current and (len(current) + 1) * n_max * per_image > max_elements:
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


def cluster_bucket(features: torch.Tensor, bucket: Bucket, K: int, sharpen: bool, iters: int, seed: int,
                   min_foreground: int, device: torch.device) -> torch.Tensor:
    """Cascaded clustering of one bucket -> labels (G, n_max, h, w) uint8 (padding rows are junk)."""
    G, n_max = bucket.slots.shape
    _, C, h, w = features.shape
    valid_img = (bucket.slots >= 0).to(device)
    feats = features[bucket.slots.clamp(min=0).reshape(-1)].to(device, non_blocking=True).float()
    act = normalized_activation(feats)  # (G*n_max, h, w)
    if sharpen:
        act = sharpen_activation(act)
    mask = valid_img[:, :, None].expand(G, n_max, h * w).reshape(G, n_max * h * w)
    fg, _ = two_means_1d(act.reshape(G, -1), mask, iters)
    x = F.normalize(feats.permute(0, 2, 3, 1).reshape(G, n_max * h * w, C), dim=-1)
    del feats
    keys = bucket.keys.to(device)
    assign, _ = kmeans_batched(x, fg, K - 1, iters, seed, keys)
    rows = torch.arange(h, device=device).repeat_interleave(w).repeat(n_max)
    rank = order_clusters_by_row(assign, rows, K - 1)
    labels = torch.where(assign >= 0, 1 + rank.gather(1, assign.clamp(min=0)), torch.zeros_like(assign))
    labels = labels.reshape(G, n_max, h, w).to(torch.uint8)
    too_few = fg.sum(1) < min_foreground
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
    for bucket in make_buckets(keys, members, h * w, C, max_elements):
        labels = cluster_bucket(features, bucket, K, sharpen, iters, seed_v, min_fg, device).cpu()
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
        self._feats.append(features.detach().to("cpu", self.store_dtype))
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
