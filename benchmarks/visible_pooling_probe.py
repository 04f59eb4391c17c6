"""Why PGFL-KD's first oracle-pose control failed on synthocc: does pooling a trained network's own feature map
over the person's visible cells (the world's ground truth) beat pooling it globally?

That control (f_P of the full model with the world's visibility-aware oracle heatmaps) lost to the baseline's
global feature; this measurement led to the declared control that replaced it (row `visible_pool`). The
renderer's self-check shows the occlusion signal is in the pixels (an oracle colour histogram over the visible
person beats one over person + occluder). This asks the same of the learned features: each PGFL-KD model's
ResNet-18 stride-16 map (8 x 4 cells at 128x64), pooled (a) over all cells, as f_G is, and (b) weighted by each
cell's share of visible person pixels (the ground-truth parsing, which the occluder covers;
`reid.methods.pgfl_kd.visible_pool`), on query and gallery alike, without flip TTA; cosine distance on both, the
dataset's protocol (Market rule, 510 occluded queries). If (b) does not beat (a), the features of the cells the
person is visible in already carry the occluder (each cell's receptive field spans most of the image), so no
pose-guided pooling of them can show the effect here.

Usage: python benchmarks/visible_pooling_probe.py [--runs pgfl_kd--baseline--pretrained--s0 ...] [--out F.json]
(needs the trained models under models/synthocc/ and the world under data/synthocc/)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.data.dataset import ReIDDataset  # noqa: E402
from reid.data.datasets import dataset_info  # noqa: E402
from reid.data.groundtruth import load_groundtruth  # noqa: E402
from reid.data.index import read_index, select  # noqa: E402
from reid.engine.inference import load_model, pin_evaluate_threads  # noqa: E402
from reid.eval.claims import paired_bootstrap  # noqa: E402
from reid.eval.protocols import run_protocol  # noqa: E402
from reid.methods.pgfl_kd import visible_pool  # noqa: E402


@torch.no_grad()
def pooled_features(model: torch.nn.Module, ds: ReIDDataset, root: Path, batch: int = 64) -> dict[str, torch.Tensor]:
    """Global and visible-person average of the backbone's map (`visible_pool`, the declared control's pooling,
    here over the ground-truth parsing files), per image (float32, before any BNNeck)."""
    out: dict[str, list[torch.Tensor]] = {"global": [], "visible": []}
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=2)
    k = 0
    for b in loader:
        fmap = model.backbone(b["image"])  # (B, C, h, w)
        n = fmap.shape[0]
        person = torch.stack([torch.from_numpy(
            load_groundtruth(root, ds.rows[ds.positions[k + i]].path)["parsing"] > 0) for i in range(n)])
        k += n
        out["global"].append(fmap.mean(dim=(2, 3)))
        out["visible"].append(visible_pool(fmap, person))
    return {key: torch.cat(v) for key, v in out.items()}


def cosine_distance(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).T


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthocc")
    p.add_argument("--runs", nargs="+", default=[f"pgfl_kd--{row}--pretrained--s{s}" for row in ("baseline", "full")
                                                 for s in range(3)],
                   help="trained models; seeds of one row are paired per query (visible - global, bootstrap)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    pin_evaluate_threads()
    root, index = Path("data") / args.dataset, Path("cache") / args.dataset / "index.csv"
    rows = read_index(index)
    protocol = dataset_info(args.dataset).protocol
    report = {}
    for run in args.runs:
        method, model, ckpt = load_model(Path("models") / args.dataset / run / "model.pt", "cpu")
        feats = {}
        for split in ("query", "gallery"):
            ds = ReIDDataset(rows, root, select(rows, split), tuple(ckpt["input_size"]), train=False)
            feats[split] = pooled_features(model, ds, root)
        q_rows, g_rows = ([rows[i] for i in select(rows, s)] for s in ("query", "gallery"))
        res: dict = {}
        for pool in ("global", "visible"):
            pq: dict = {}
            m = run_protocol(protocol, cosine_distance(feats["query"][pool], feats["gallery"][pool]), q_rows, g_rows,
                             per_query=pq)
            res[pool] = {"mAP": round(float(m["standard"]["mAP"]), 2), "R1": round(float(m["standard"]["R1"]), 2),
                         "ap": dict(zip(pq["standard"]["query"].tolist(), pq["standard"]["ap"].tolist()))}
        report[run] = res
        print(f"{run}: global mAP {res['global']['mAP']:.2f} R1 {res['global']['R1']:.2f} | visible-weighted mAP "
              f"{res['visible']['mAP']:.2f} R1 {res['visible']['R1']:.2f}", flush=True)
    rows = list(dict.fromkeys(run.rsplit("--s", 1)[0] for run in report))
    seeds = {row: [run for run in report if run.rsplit("--s", 1)[0] == row] for row in rows}
    queries = sorted(set.intersection(*(set(pool["ap"]) for r in report.values() for pool in r.values())))

    def aps(row: str, pool: str) -> np.ndarray:
        return np.array([[report[r][pool]["ap"][q] for q in queries] for r in seeds[row]])

    # each row's visible - global pooling, and each row's visible pooling against the first row's global one
    # (with the default runs: the full model's map pooled over the visible person vs the baseline's f_G), seeds
    # paired by their order
    pairs = [((row, "visible"), (row, "global")) for row in rows]
    pairs += [((row, "visible"), (rows[0], "global")) for row in rows[1:]]
    summary = {}
    for (ra, pa), (rb, pb) in pairs:
        stats = {k: (round(100 * v, 2) if k in ("mean", "lo", "hi") else v)
                 for k, v in paired_bootstrap(aps(ra, pa), aps(rb, pb)).items()}
        name = f"{ra} {pa} - {rb} {pb}"
        summary[name] = stats
        print(f"{name}: mAP {stats['mean']:+.2f} [{stats['lo']:+.2f}, {stats['hi']:+.2f}] ({stats['seeds']} seeds "
              f"x {stats['queries']} queries)", flush=True)
    for r in report.values():
        for pool in r.values():
            pool.pop("ap")
    if args.out:
        from reid.ledger import environment

        result = {"runs": report, "paired": summary, "environment": environment(), "command": " ".join(sys.argv)}
        Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
