"""How far DeSKPro's cached face-teacher targets are from online ones once the faces are augmented.

The face teacher's logits are cached once per image for the restored face as is and mirrored (test transform).
With the reference's face augmentation (`face_augment`: flip, Random2DTranslation and erasing on the raw and
restored faces alike) the student sees a translated / erased crop, while the cached target still describes the
untouched face: an approximation. This script measures it on trained models: over the same augmented batches,
L_fkp (Eq. 5) of the student against (a) the cached target of the matching flip view and (b) the teacher run
online on the identically augmented restored face. With `face_augment` off the two must agree (flip only,
handled by the two cached views): that run is the control that the comparison itself is exact.

Usage (after `snakemake --cores 2 results/synthcc/deskpro/metrics.json`):
  python benchmarks/kd_gap_deskpro.py --student models/synthcc/deskpro/model.pt \
      --teacher models/synthcc/deskpro_face_teacher/model.pt --index cache/synthcc/index.csv --root data/synthcc \
      --cache faces=cache/synthcc/faces.h5 --cache restored_faces=cache/synthcc/restored_faces.h5 \
      --cache face_teacher=cache/synthcc/face_teacher.h5 [--batches 20] [--out kd_gap.json]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from reid.data.dataset import ReIDDataset, label_maps
from reid.data.index import read_index, select
from reid.data.transforms import FieldAugment
from reid.cli import parse_caches
from reid.engine.inference import load_model
from reid.engine.trainer import filter_positions, open_caches
from reid.methods.deskpro import pick_view, resize_face
from reid.methods.deskpro_losses import facial_knowledge_propagation

from bench_io import write_result

FIELDS = ["faces.crop", "faces.has_face", "restored_faces.restored", "face_teacher.logits"]


@torch.no_grad()
def kd_gap(student_path: str, teacher_path: str, index: str, root: str, caches: dict[str, str], augment: bool,
           batches: int, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    method, student, ckpt = load_model(student_path, "cpu")
    _, teacher, teacher_ckpt = load_model(teacher_path, "cpu")
    rows = read_index(index)
    opened = open_caches(caches, index)
    positions = filter_positions(method, select(rows, "train"), opened)
    pids, clothes = label_maps(rows, positions)
    ds = ReIDDataset(rows, root, positions, tuple(ckpt["input_size"]), train=True, caches=opened, fields=FIELDS,
                     pid_labels=pids, clothes_labels=clothes,
                     rgb_augment=(method.rgb_field_augment or FieldAugment()) if augment else None)
    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    teacher_size = int(teacher_ckpt["input_size"][0])
    cached_losses, online_losses, gaps = [], [], []
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        has = batch["faces.has_face"].bool().view(-1)
        if int(has.sum()) < 2:
            continue
        student_logits = student(None, resize_face(batch["faces.crop"][has], method.face_size)).face.logits
        cached = list(pick_view(batch["face_teacher.logits"], batch["flipped"])[has].float().unbind(1))
        online = [z.float() for z in teacher(resize_face(batch["restored_faces.restored"][has], teacher_size)).logits]
        l_cached = float(facial_knowledge_propagation(student_logits, cached, method.tau))
        l_online = float(facial_knowledge_propagation(student_logits, online, method.tau))
        cached_losses.append(l_cached)
        online_losses.append(l_online)
        gaps.append(abs(l_cached - l_online) / max(l_online, 1e-12))
    if not gaps:
        raise SystemExit("no batch had two faces: nothing measured")
    return {"face_augment": augment, "batches": len(gaps), "kd_cached_mean": statistics.fmean(cached_losses),
            "kd_online_mean": statistics.fmean(online_losses), "relative_gap_mean": statistics.fmean(gaps),
            "relative_gap_max": max(gaps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--cache", action="append", metavar="NAME=PATH", required=True)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    caches = parse_caches(args.cache)
    result = {mode: kd_gap(args.student, args.teacher, args.index, args.root, caches, augment, args.batches)
              for mode, augment in (("control_flip_only", False), ("face_augment", True))}
    for mode, r in result.items():
        print(f"{mode:>18}: L_fkp cached {r['kd_cached_mean']:.4f}  online {r['kd_online_mean']:.4f}  "
              f"relative gap mean {100 * r['relative_gap_mean']:.2f}%  max {100 * r['relative_gap_max']:.2f}%  "
              f"({r['batches']} batches)")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
