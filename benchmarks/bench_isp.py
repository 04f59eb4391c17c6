"""ISP clustering speed: one round of cascaded clustering for a DukeMTMC-reID-size problem.

Problem (default): 16,522 training images of 702 identities, 256-channel 64x32 feature maps, K = 7, 20 k-means
iterations per step -- what ISP re-clusters every epoch. The paper reports 6.3 h of clustering per DukeMTMC run
on one TITAN X: about 3.2 min per round if it re-clustered every one of 120 epochs (paper, Sec. 4.2), about
7.5 min per round with the reference schedule (every 2 epochs up to 101, about 50 rounds).

What is measured: the whole feature set (16,522 x 256 x 64 x 32 float32 = 35 GB) does not fit in memory here, so
the identities are processed in groups of about `--group-images` images, as the trainer and the teacher do
(reid/models/isp_clustering.py IdentityChunker): each group's synthetic features are generated (float16, on
the target device, NOT timed), then `cascaded_clustering` is timed on it (device synchronised; includes the
bucket gather, the float32 conversion, both k-means steps and the label scatter). `--limit-images` stops after
that many images and extrapolates linearly (each identity's k-means stops at a fixed point, so the cost is linear in
pixels times the iterations taken).
Synthetic features (`--structure parts`, default): low-norm noise background, a body region whose rows carry K-1
part directions plus noise; k-means converges after one or two updates. `--structure noise`: uniform noise
everywhere, no parts, so k-means runs (nearly) all `--iters` updates: the cost when nothing converges. The
identity sizes vary (lognormal), seeded. Features are stored channels_last float16, as IdentityChunker keeps them.

Usage: python benchmarks/bench_isp.py [--quick] [--device cpu|cuda] [--limit-images N] [--out bench.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import json_text, report  # noqa: E402  (the scripts' folder is on sys.path)
from reid.models.isp_clustering import cascaded_clustering  # noqa: E402

PAPER_HOURS_PER_RUN = 6.3
PAPER_EPOCHS = 120
REFERENCE_ROUNDS = 51  # epoch % 2 == 1 for epochs 1..101


def identity_sizes(images: int, ids: int, seed: int) -> np.ndarray:
    """Images per identity: lognormal shape, at least 2 each, summing exactly to `images`."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 0.5, ids)
    sizes = np.maximum(2, np.floor(w / w.sum() * images)).astype(np.int64)
    while sizes.sum() < images:
        sizes[rng.integers(ids)] += 1
    while sizes.sum() > images:
        i = int(np.argmax(sizes))
        sizes[i] -= 1
    return sizes


def synthetic_features(sizes: np.ndarray, first_id: int, channels: int, h: int, w: int, K: int,
                       device: torch.device, seed: int, structure: str = "parts") -> torch.Tensor:
    """float16 channels_last maps for identities with these sizes: noise background, body rows with
    per-identity part codes (`structure="parts"`), or noise only (`"noise"`)."""
    g = torch.Generator(device="cpu").manual_seed(seed * 100003 + first_id)
    n = int(sizes.sum())
    if structure == "noise":
        return torch.rand(n, channels, h, w, generator=g).to(device, torch.float16,
                                                              memory_format=torch.channels_last)
    feats = (0.05 * torch.rand(n, channels, h, w, generator=g)).to(device, torch.float16)
    bands = torch.linspace(0, h, K).long()
    start = 0
    for k, size in enumerate(sizes.tolist()):
        codes = torch.rand(K - 1, channels, generator=g).to(device, torch.float16)
        body = slice(w // 4, w - w // 4)
        for part in range(K - 1):
            rows = slice(int(bands[part]), int(bands[part + 1]))
            feats[start:start + size, :, rows, body] += codes[part][None, :, None, None]
        start += size
    return feats.contiguous(memory_format=torch.channels_last)


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = identity_sizes(args.images, args.ids, args.seed)
    limit = args.limit_images or args.images
    measured_s, measured_images, groups, i = 0.0, 0, 0, 0
    while i < len(sizes) and measured_images < limit:
        j = i
        while j < len(sizes) and (j == i or sizes[i:j + 1].sum() <= args.group_images):
            j += 1
        group = sizes[i:j]
        feats = synthetic_features(group, i, args.channels, args.height, args.width, args.parts, device, args.seed,
                                   args.structure)
        pids = torch.repeat_interleave(torch.arange(i, j), torch.as_tensor(group))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        labels = cascaded_clustering(feats, pids, K=args.parts, iters=args.iters, seed=args.seed,
                                     max_elements=args.max_elements, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        measured_s += time.perf_counter() - t0
        measured_images += int(group.sum())
        groups += 1
        assert labels.shape == (int(group.sum()), args.height, args.width)
        del feats
        i = j
    per_image = measured_s / measured_images
    round_s = per_image * args.images
    paper_round_s = PAPER_HOURS_PER_RUN * 3600 / PAPER_EPOCHS
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"),
        "problem": {"structure": args.structure, "images": args.images, "ids": args.ids, "channels": args.channels,
                    "map": [args.height, args.width], "K": args.parts, "iters": args.iters,
                    "images_per_id": [int(sizes.min()), float(round(sizes.mean(), 2)), int(sizes.max())]},
        "measured": {"images": measured_images, "identities": int(i), "groups": groups,
                     "seconds": round(measured_s, 3), "extrapolated": measured_images < args.images},
        "images_per_s": round(1.0 / per_image, 1),
        "seconds_per_round": round(round_s, 2),
        "hours_per_run_every_epoch": round(round_s * PAPER_EPOCHS / 3600, 3),
        "paper_seconds_per_round_every_epoch": round(paper_round_s, 1),
        "paper_seconds_per_round_reference_schedule": round(PAPER_HOURS_PER_RUN * 3600 / REFERENCE_ROUNDS, 1),
        "speedup_vs_paper_every_epoch": round(paper_round_s / round_s, 1),
        "max_elements": args.max_elements, "group_images": args.group_images,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small problem: 600 images of 30 ids, 64 channels")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--ids", type=int, default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--parts", type=int, default=7, help="K (background + K-1 parts)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--group-images", type=int, default=1024, help="images generated and clustered per call")
    p.add_argument("--max-elements", type=int, default=1 << 27, help="floats per padded bucket (memory knob)")
    p.add_argument("--limit-images", type=int, default=None, help="measure this many images, extrapolate the rest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--structure", choices=("parts", "noise"), default="parts",
                   help="planted parts (k-means converges at once) or noise only (runs ~all iterations)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    quick = args.quick
    args.images = args.images or (600 if quick else 16522)
    args.ids = args.ids or (30 if quick else 702)
    args.channels = args.channels or (64 if quick else 256)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(run(args), json_text, args.out)


if __name__ == "__main__":
    sys.exit(main())
