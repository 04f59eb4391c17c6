"""PGFL-KD speed: the deployed f_G model vs pose-based features (paper Table 8), and the training step time.

Measures, at a small batch on CPU (CUDA when present):
- inference images/s and GFLOPs/image of the deployed model (backbone -> avg pool -> BN, no heatmaps);
- the same for the pose-based features f_E / f_V computed from cached heatmaps (FEB + SAB), and with the
  HRNet-W32 pose estimator a pose-at-test-time deployment would also run (256x192 person crops);
- training step time (forward, Eq. 10 losses, backward, Adam step) of the full method vs the baseline row.

Usage: python benchmarks/bench_pgfl.py [--quick] [--out bench.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import json_text, report, setup  # noqa: E402  (the scripts' folder is on sys.path)
from reid.methods.pgfl_kd import ABLATIONS, PGFLKD, PGFLNet, pgfl_flops  # noqa: E402
from reid.models.hrnet import hrnet_tiny, hrnet_w32  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 1) -> float:
    """Median seconds per call after warm-up (median: robust to other jobs on a shared machine)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def n_params(*modules: nn.Module) -> float:
    """Millions of parameters."""
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6


def deployed_params(model: PGFLNet) -> float:
    """Parameters the deployed f_G model keeps: backbone + the BN of the main BNNeck."""
    return n_params(model.backbone, model.necks["G"].bn)


def bench_inference(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s and GFLOPs of f_G vs pose-based features (with and without the pose estimator)."""
    h, w = args.height, args.width
    model = PGFLNet(args.num_classes, backbone=args.backbone).to(device).eval()
    pose = (hrnet_tiny() if args.quick else hrnet_w32()).to(device).eval()
    x = torch.randn(args.batch, 3, h, w, device=device)
    hm = torch.rand(args.batch, 17, h // 4, w // 4, device=device)
    crops = torch.randn(args.batch, 3, *args.pose_size, device=device)

    def pose_based() -> object:
        heat = nn.functional.interpolate(pose(crops), size=(h // 4, w // 4), mode="bilinear", align_corners=False)
        return model(x, heat)["E_bn"]

    with torch.no_grad():
        t_g = time_call(lambda: model(x), device, args.iters)
        t_cached = time_call(lambda: model(x, hm)["E_bn"], device, args.iters)
        t_pose = time_call(pose_based, device, args.iters)
    flops = pgfl_flops(model, (h, w), pose_model=pose, pose_input_size=tuple(args.pose_size))
    return {
        "deployed_G_images_per_s": args.batch / t_g,
        "pose_branches_cached_heatmaps_images_per_s": args.batch / t_cached,
        "pose_based_with_estimator_images_per_s": args.batch / t_pose,
        **flops,
        "deployed_G_params_M": deployed_params(model),
        "pose_based_params_M": n_params(model) + n_params(pose),
    }


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds per training step (batch of P x K images) for the full method and the baseline row."""
    h, w = args.height, args.width
    batch = {
        "image": torch.randn(args.batch, 3, h, w, device=device),
        "pid": torch.arange(args.batch // 2, device=device).repeat_interleave(2),
        "keypoints.heatmaps": torch.rand(args.batch, 17, h // 4, w // 4, device=device),
    }
    out: dict[str, float] = {}
    for row in ("baseline", "full"):
        method = PGFLKD(backbone=args.backbone, **ABLATIONS[row])
        model = method.build_model(args.num_classes).to(device).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            sum(method.training_losses(model, batch, epoch=0).values()).backward()
            opt.step()

        out[f"train_step_s_{row}"] = time_call(step, device, args.iters)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ResNet-18, 128x64, tiny HRNet, batch 4, 2 iterations")
    p.add_argument("--backbone", default=None, help="resnet50 (default) or resnet18 (--quick)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--pose-size", type=int, nargs=2, default=(256, 192), help="pose estimator input H W")
    p.add_argument("--num-classes", type=int, default=702, help="Occluded-Duke training identities")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    quick = {"backbone": "resnet18", "height": 128, "width": 64, "batch": 4, "iters": 2}
    full = {"backbone": "resnet50", "height": 384, "width": 128, "batch": 8, "iters": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.pose_size = (64, 64)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "input": [args.height, args.width],
        "batch": args.batch,
        "pose_input": list(args.pose_size),
        "pose_estimator": "hrnet_tiny" if args.quick else "hrnet_w32",
        **bench_inference(args, device),
        **bench_training(args, device),
    }
    return report(result, json_text, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
