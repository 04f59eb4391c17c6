"""Which feature SUREID's BNNeck was fitted to, and which one each reading of Eq. 7-8 deploys.

Sec. III-A applies the class-token reweighting (Eq. 7-8) in training only; the project's default also applies it
in the deployed model (`cls_reweight_at_test`). This script measures, on a trained SUREID model and the test
images of an index, the mean cosine between the training-path class feature (the one the BNNeck and classifier
were fitted to: masks from the decision MLP with Gumbel noise, reweighting on; no stochastic depth) and the
deployed class feature with and without the reweighting, plus the cosine between the two deployed features.

Usage (after `snakemake --cores 2 results/synthocc/sureid--t4_sureid/metrics.json`):
  python benchmarks/sureid_reweight_agreement.py --model models/synthocc/sureid--t4_sureid/model.pt \
      --index cache/synthocc/index.csv --root data/synthocc [--images 256] [--out agreement.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

from reid.data.images import read_rgb
from reid.data.index import read_index
from reid.data.transforms import Geometry, normalize_rgb, warp
from reid.engine.inference import load_model

from bench_io import write_result


@torch.no_grad()
def agreement(model_path: str, index: str, root: str, images: int = 256, seed: int = 0) -> dict[str, float]:
    method, model, ckpt = load_model(model_path, "cpu")
    vit = model.backbone.eval()  # eval: no stochastic depth; the training path is called explicitly below
    if not vit.hts or not vit.cls_reweight:
        raise SystemExit(f"{model_path}: not a SUREID model with HTS and the class-token reweighting")
    rows = [r for r in read_index(index) if r.split in ("query", "gallery")][:images]
    size = tuple(ckpt["input_size"])
    x = torch.stack([normalize_rgb(warp(read_rgb(Path(root) / r.path), Geometry(size))) for r in rows])
    torch.manual_seed(seed)
    train_feat = vit._forward_train(vit.embed_tokens(x))[0]  # noqa: SLF001 - the path training takes
    vit.reweight_at_test = True
    deployed = vit(x)
    vit.reweight_at_test = False
    unweighted = vit(x)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=1).mean())

    return {"images": len(rows), "train_vs_deployed_reweighted": cos(train_feat, deployed),
            "train_vs_deployed_unweighted": cos(train_feat, unweighted),
            "deployed_reweighted_vs_unweighted": cos(deployed, unweighted),
            "reweight_lambda": float(vit.reweight_lambda)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = agreement(args.model, args.index, args.root, args.images)
    print(json.dumps(result, indent=1))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
