"""`python -m reid isp-iou`: ISP's parts against the parsing cache (paper Table 3), two ways.

The per-group IoU of majority-voted parts (`reid.methods.isp.part_iou`) and the official metric
(`official_part_iou`: mean of the group's and its complement's IoU, fixed part labels), with the score of an
all-background prediction as the calibration floor. Labels come from an `isp_labels` cache, a per-round
`labels_epochNNN.npy`, an ISP model.pt's last clustering round, or a trained model's predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from reid.data.index import IndexRow, read_index
from reid.serialization import load_file


def add_iou_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m reid isp-iou`."""
    parser.add_argument("--index", required=True, type=Path, help="dataset index CSV")
    parser.add_argument("--parsing", required=True, type=Path, help="parsing cache (.h5, LIP labels)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", type=Path, help="pseudo labels: isp_labels cache (.h5), a labels_epochNNN.npy of a "
                     "training run, or an ISP model.pt (its last clustering round)")
    src.add_argument("--model", type=Path, help="trained ISP model.pt: IoU of its part predictions (argmax)")
    parser.add_argument("--root", type=Path, default=None, help="dataset root (with --model)")
    parser.add_argument("--split", default="train", help="train | query | gallery | test (= query + gallery)")
    parser.add_argument("--num-parts", type=int, default=None,
                        help="K of the labels (default: read from the model.pt or the cache's provenance)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")


def _split_rows(rows: Sequence[IndexRow], split: str) -> np.ndarray:
    wanted = ("query", "gallery") if split == "test" else (split,)
    return np.array([i for i, r in enumerate(rows) if r.split in wanted], dtype=np.int64)


def _read_labels(path: Path, index: Path, positions: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Pseudo labels (N, h, w) of index rows `positions` from a cache, a per-round .npy, or a model.pt's last round,
    with the K recorded beside them (model.pt method params, cache provenance; None for a .npy)."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)[positions], None
    if path.suffix == ".pt":
        ckpt = load_file(path, "model", require_digest=True)
        state = ckpt.get("method_state", {})
        if state.get("labels") is None:
            raise SystemExit(f"{path}: no pseudo labels in method_state (not an ISP model trained with clustering)")
        return np.asarray(state["labels"])[positions], int(ckpt.get("method_params", {}).get("num_parts", 7))
    from reid.cache.h5 import CacheReader

    reader = CacheReader(path, index_path=index)
    params = reader.attrs.get("params", {})
    params = json.loads(params) if isinstance(params, str) else params
    k = int(params["num_parts"]) if isinstance(params, dict) and "num_parts" in params else None
    return reader.read("labels", positions), k


@torch.no_grad()
def predict_parts(model_path: Path, index: Path, root: Path, positions: np.ndarray, device: str = "auto",
                  batch_size: int = 32) -> tuple[np.ndarray, int]:
    """Part-classifier argmax (N, h, w) of a trained ISP model over index rows (test transform), and its K."""
    from torch.utils.data import DataLoader

    from reid.data.dataset import ReIDDataset
    from reid.engine.inference import load_model

    method, model, ckpt = load_model(model_path, device)
    if method.name != "isp":
        raise ValueError(f"{model_path} is a {method.name!r} model; isp-iou --model needs an ISP model")
    rows = read_index(index)
    ds = ReIDDataset(rows, root, positions.tolist(), tuple(ckpt["input_size"]), train=False)
    dev = next(model.parameters()).device
    out = [model(b["image"].to(dev))["part_logits"].argmax(1).to(torch.uint8).cpu()
           for b in DataLoader(ds, batch_size=batch_size, shuffle=False)]
    return torch.cat(out).numpy(), int(method.num_parts)


def _fmt(ious: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {100 * v:.1f}%" for name, v in ious.items())


def iou_main(args: argparse.Namespace) -> int:
    """`python -m reid isp-iou`: Table 3-style IoU (foreground, head, legs, shoes) against the parsing cache."""
    from reid.cache.h5 import CacheReader
    from reid.methods.isp import assign_parts_to_groups, official_part_iou, part_iou

    rows = read_index(args.index)
    positions = _split_rows(rows, args.split)
    if not len(positions):
        raise SystemExit(f"{args.index}: no rows in split {args.split!r}")
    if args.model is not None:
        if args.root is None:
            raise SystemExit("isp-iou --model needs --root (the images are embedded again)")
        pred, recorded_k = predict_parts(args.model, args.index, args.root, positions, args.device)
        source = str(args.model)
    else:
        pred, recorded_k = _read_labels(args.labels, args.index, positions)
        source = str(args.labels)
    parsing = CacheReader(args.parsing, index_path=args.index).read("labels", positions)
    assignment = assign_parts_to_groups(pred, parsing)
    k = args.num_parts or recorded_k or int(pred.max()) + 1
    floor = official_part_iou(np.zeros_like(pred), parsing, k)
    result = {"source": source, "parsing": str(args.parsing), "split": args.split, "rows": int(len(positions)),
              "num_parts": k,
              "iou": part_iou(pred, parsing, assignment=assignment), "assignment": assignment,
              "official_iou": official_part_iou(pred, parsing, k), "official_iou_all_background": floor}
    text = json.dumps(result, sort_keys=True)
    print(text)
    print("per-group IoU (majority-vote parts): " + _fmt(result["iou"]), file=sys.stderr)
    print(f"official Table 3 metric (K={k}, fixed parts): " + _fmt(result["official_iou"]), file=sys.stderr)
    print("  calibration floor, an all-background prediction: " + _fmt(floor), file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0
