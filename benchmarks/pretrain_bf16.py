"""The pretrain stand-ins trained under bfloat16 autocast (+ channels-last for the CNNs, as the trainer runs its
steps): wall time and train accuracy per epoch beside the float32 stand-ins the ledger's rows were built on.

    python benchmarks/pretrain_bf16.py --archs hrnet_w18_small deit_small --out benchmarks/results/pretrain_bf16.json

What it decides: whether `cpu_amp` for the pretrain stage (the build's one large lever left, docs/results.md) keeps
the accuracies the controls were judged on (DeiT-Tiny 60%, DeiT-S 64%, the CNNs 81-95%) and what it saves. It runs
the pretrain stage's own loop (`reid.engine.pretrain.pretrain`, params.yaml's recipe per backbone) with the
classifier wrapped so its forward runs under autocast, into a scratch folder: the stand-ins in models/pretrain and
every ledger row stay as they are. Run it alone on an idle machine (~1 h for all five on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import reid.engine.pretrain as P
from reid.device import cpu_bf16_usable
from reid.ledger import cpu_model
from reid.pipeline import params as C
from reid.pipeline.layout import pretrain_deps


class Bf16Classifier(nn.Module):
    """`model` whose forward runs under CPU bfloat16 autocast (logits returned in float32, so the loss is float32),
    in channels-last memory for the CNNs: the trainer's `cpu_amp` step, around the pretrain's classifier."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()

    def official_state(self) -> dict[str, torch.Tensor]:
        return P.official_state(self.model)


def epochs(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Epoch, train accuracy and elapsed seconds of a pretrain history (`pretrain`'s summary, the stand-in's .json)."""
    return [{k: round(h[k], 4) for k in ("epoch", "train_acc", "seconds")} for h in history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["hrnet_w18_small", "deit_small", "deit_tiny", "resnet18",
                                                  "osnet_x0_25"], choices=sorted(P.ARCHS))
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--scratch", default="/tmp/pretrain_bf16", help="where the bf16 stand-ins are written")
    p.add_argument("--out", default=None, help="JSON file for the results (appended to per arch as each ends)")
    args = p.parse_args()
    if not cpu_bf16_usable():
        raise SystemExit("this CPU has no usable native bf16: cpu_amp would compute in float32, nothing to measure")
    cfg = C.load_params(args.params)
    original = P.build_classifier
    results = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).is_file() else {}
    results["cpu"], results["torch"] = cpu_model(), torch.__version__
    for arch in args.archs:
        stage, _ = C.stage_pretrain(cfg, arch)
        P.build_classifier = lambda a, n, s: Bf16Classifier(original(a, n, s), not a.startswith("deit"))
        t0 = time.time()
        try:
            summary = P.pretrain(arch, pretrain_deps(cfg)["index"], C.dataset_root(cfg, stage["dataset"]),
                                 Path(args.scratch) / f"{arch}.pth", stage["config"])
        finally:
            P.build_classifier = original
        fp32 = Path(f"models/pretrain/{arch}.json")
        before = json.loads(fp32.read_text())["history"] if fp32.is_file() else None
        row = {"bf16": epochs(summary["history"]), "bf16_wall_s": round(time.time() - t0, 1),
               "float32": epochs(before) if before else None}
        results[arch] = row
        last, ref = row["bf16"][-1], (row["float32"] or [{}])[-1]
        print(f"{arch}: bf16 {last['seconds'] / 60:.1f} min, train accuracy {last['train_acc']:.3f}; float32 "
              f"{ref.get('seconds', float('nan')) / 60:.1f} min, {ref.get('train_acc', float('nan')):.3f}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
