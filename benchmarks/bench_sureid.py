"""SUREID speed: HTS student (real token removal at inference) vs the vanilla backbone, paper Tables I/IV/V.

For each keep ratio p in {0.5, ..., 0.9} an HTS model (DeiT-S by default, eval mode: static top-k per stage,
dropped tokens gathered out) is timed against the same backbone without HTS, side by side in one run:
the models are interleaved inside every repeat and the median over repeats is reported, so load from other
jobs on a shared machine hits all of them alike. Also printed: the analytic multiply-accumulates per image
(what an ideal implementation would save). Paper (RTX 2080Ti, batch 32, 256x128): vanilla DeiT-S 1074 img/s,
p=0.7 1585 (1.48x); p=0.5 2269, 0.6 1843, 0.8 1392, 0.9 1279.

Usage: python benchmarks/bench_sureid.py [--quick] [--device cpu|cuda] [--amp] [--out bench.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import report, setup  # noqa: E402  (the scripts' folder is on sys.path)
from reid.methods.sureid import PAPER_TABLES  # noqa: E402
from reid.models.vit import ARCHS, VisionTransformer, build_vit, keep_counts  # noqa: E402

RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)


def vit_macs(model: VisionTransformer) -> float:
    """Analytic MACs per image of the eval forward: per block 12 n C^2 (qkv, proj, MLP) + 2 n^2 C (attention),
    n = tokens entering the block (1 + kept image tokens); plus patch embedding and decision MLPs."""
    c, n_img = model.embed_dim, model.patch_embed.num_patches
    k = model.patch_embed.proj.kernel_size
    macs = n_img * c * 3 * k[0] * k[1]
    counts = keep_counts(n_img, model.ratios) if model.hts else []
    stage = 0
    for i in range(len(model.blocks)):
        if stage < len(model.prune_layers) and i == model.prune_layers[stage]:
            macs += n_img * (c * c + c * c // 2 + c * c // 8 + c // 2)  # decision MLP on the tokens it scores
            n_img = counts[stage]
            stage += 1
        n = n_img + 1
        macs += 12 * n * c * c + 2 * n * n * c
    return float(macs)


def build_models(args: argparse.Namespace, device: torch.device) -> dict[str, VisionTransformer]:
    models = {"vanilla": build_vit(args.arch, (args.height, args.width), args.stride, keep_ratio=None)}
    for p in args.ratios:
        models[f"hts_p{p:.1f}"] = build_vit(args.arch, (args.height, args.width), args.stride, keep_ratio=p)
    return {k: m.to(device).eval() for k, m in models.items()}


def timed(model: VisionTransformer, x: torch.Tensor, device: torch.device, amp: bool) -> float:
    """Seconds for one batched forward (synchronised on CUDA)."""
    with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    models = build_models(args, device)
    x = torch.randn(args.batch, 3, args.height, args.width, device=device)
    for model in models.values():  # warm-up (allocator, kernels, cuDNN/oneDNN heuristics)
        for _ in range(args.warmup):
            timed(model, x, device, args.amp)
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(reversed(models))  # interleaved, alternating order
        for name in order:
            times[name].append(min(timed(models[name], x, device, args.amp) for _ in range(args.iters)))
    base = statistics.median(times["vanilla"])
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"images_per_s": args.batch / med, "speedup_vs_vanilla": base / med,
                      "gmacs_per_image": vit_macs(models[name]) / 1e9,
                      "ideal_speedup": vit_macs(models["vanilla"]) / vit_macs(models[name])}
    paper_v = PAPER_TABLES["V"]
    paper = {f"hts_p{p:.1f}": paper_v[f"t5_p{round(p * 100)}"]["throughput"] / 1074 for p in RATIOS}
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)")
    return {"device": dev_name, "arch": args.arch, "input": [args.height, args.width], "stride": args.stride,
            "batch": args.batch, "repeats": args.repeats, "amp": args.amp, "results": rows,
            "paper_speedup_2080ti": paper}


def table(result: dict[str, object]) -> str:
    lines = [f"{result['arch']} {result['input'][0]}x{result['input'][1]} batch {result['batch']} on "
             f"{result['device']} (median of {result['repeats']} interleaved repeats)",
             f"{'model':<12}{'img/s':>10}{'speed-up':>10}{'ideal':>8}{'GMACs':>8}{'paper':>8}"]
    for name, row in result["results"].items():
        paper = result["paper_speedup_2080ti"].get(name, 1.0 if name == "vanilla" else float("nan"))
        lines.append(f"{name:<12}{row['images_per_s']:>10.1f}{row['speedup_vs_vanilla']:>9.2f}x"
                     f"{row['ideal_speedup']:>7.2f}x{row['gmacs_per_image']:>8.2f}{paper:>7.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny test ViT, batch 8, 2 repeats (a smoke run)")
    p.add_argument("--arch", default=None, choices=sorted(ARCHS), help="default deit_small (--quick: vit_tiny_test)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--stride", type=int, default=16, help="patch stride (12 = TransReID overlapping patches)")
    p.add_argument("--batch", type=int, default=None, help="default 32 (the paper's)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (median), default 5")
    p.add_argument("--iters", type=int, default=1, help="calls per model per repeat (the fastest is kept)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    defaults = {"arch": "vit_tiny_test", "batch": 8, "repeats": 2} if args.quick else \
        {"arch": "deit_small", "batch": 32, "repeats": 5}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup(args.threads)
    return report(run(args), table, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
