"""Seconds per pretrain step of each stand-in backbone, float32 against bfloat16 autocast (+ channels-last for the
CNNs, as the trainer runs them): what turning `pretrain.cpu_amp` on would save of the build's pretrain share.

    python benchmarks/pretrain_step.py --steps 12 --archs hrnet_w18_small deit_small

The step is the pretrain loop's own (`reid.engine.pretrain`: forward, label-smoothed cross-entropy, backward,
optimizer step, params.yaml's recipe per backbone) on a batch of random images of its pretrain size; data loading is
left out (the pretrain stage's two workers decode while the step runs). Run it on an idle machine: a second job
changes a timing by 4x.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn import functional as F

from reid.device import cpu_bf16_usable
from reid.engine.pretrain import ARCHS, PretrainConfig, build_classifier, make_optimizer
from reid.ledger import cpu_model
from reid.pipeline import params as C


def seconds_per_step(arch: str, cfg: PretrainConfig, bf16: bool, steps: int, classes: int) -> float:
    """Median seconds of `steps` timed steps after two warm-up steps, on `cfg`'s batch size and input size."""
    torch.manual_seed(0)
    size = cfg.input_size
    model = build_classifier(arch, classes, size)
    opt = make_optimizer(model, cfg)
    channels_last = bf16 and not arch.startswith("deit")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    x = torch.randn(cfg.batch_size, 3, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (cfg.batch_size,))
    times = []
    for k in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smooth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet18", "osnet_x0_25", "hrnet_w18_small", "deit_tiny",
                                                  "deit_small"], choices=sorted(ARCHS))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--params", default="params.yaml", help="the pretrain recipe per backbone (`pretrain:` and "
                   "`pretrain_presets:`)")
    p.add_argument("--classes", type=int, default=800, help="the pretrain world's appearance classes")
    args = p.parse_args()
    if not cpu_bf16_usable():
        raise SystemExit("this CPU has no usable native bf16: cpu_amp would compute in float32, nothing to compare")
    params = C.load_params(args.params)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; median of "
          f"{args.steps} steps")
    rows = []
    for arch in args.archs:
        cfg = PretrainConfig.from_dict(C.stage_pretrain(params, arch)[0]["config"])
        fp32 = seconds_per_step(arch, cfg, False, args.steps, args.classes)
        bf16 = seconds_per_step(arch, cfg, True, args.steps, args.classes)
        rows.append({"arch": arch, "batch": cfg.batch_size, "input_size": list(cfg.input_size),
                     "optimizer": cfg.optimizer, "float32_s": round(fp32, 4), "bfloat16_s": round(bf16, 4),
                     "speedup": round(fp32 / bf16, 2)})
        print(f"{arch:16s} float32 {fp32:.3f} s/step  bfloat16 {bf16:.3f} s/step  x{fp32 / bf16:.2f}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
