"""Miniature stand-ins for ImageNet weights: train a backbone once on a disjoint synthetic world, save it in the
layout of the official ImageNet file it replaces.

The papers all start from ImageNet weights; none can be downloaded here. `python -m reid pretrain` (rule
`pretrain`, DVC stage `pretrain-<arch>`) trains each miniature backbone as an image classifier on a larger
synthetic world whose identities are drawn by another seed (params.yaml `pretrain:`), and writes
`models/pretrain/<arch>.pth`: a plain state dict with the official file's tensor names (torchvision ResNet,
torchreid OSNet, HRNet-Image-Classification trunk + incre_modules, timm DeiT), so the methods load it through the
same `weights:` keys and loaders a user's real ImageNet file takes. Runs named `<method>...--pretrained...` use it
(`datasets.<ds>.pretrained.<method>` names the files).

Classes are appearance classes by default (`labels: clothes`, one class per identity and outfit): like ImageNet,
the task teaches what things look like, not the cross-clothes invariance the cloth-changing methods are meant to
add. `labels: pid` trains on identities instead (a ReID-pretrained start, stronger than the papers had).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.data.dataset import ReIDDataset, label_maps
from reid.data.index import read_index, select
from reid.data.workers import worker_init
from reid.locking import exclusive_lock
from reid.serialization import save_file
from reid.device import resolve_device
from reid.progress import progress_interval

log = logging.getLogger(__name__)


# --- architectures: a classifier to train and the official file's state dict to save --------------------------


# name -> (the model module whose `imagenet_classifier` builds it, the official file it stands in for). The stage
# imports only that module (dvc.yaml lists it), so editing the ViT leaves OSNet's pretrain, and every row built
# on it, current. The `weights` key a method reads the file through is in params.yaml (`datasets.<ds>.pretrained`).
ARCHS: dict[str, tuple[str, str]] = {
    "resnet18": ("reid.models.resnet", "torchvision resnet18-f37072fd.pth"),
    "resnet50": ("reid.models.resnet", "torchvision resnet50-0676ba61.pth"),
    "osnet_x0_25": ("reid.models.osnet", "torchreid osnet_x0_25_imagenet.pth"),
    "osnet_x1_0": ("reid.models.osnet", "torchreid osnet_x1_0_imagenet.pth"),
    "hrnet_w18_small": ("reid.models.hrnet", "HRNet-Image-Classification hrnet_w18_small_model_v2.pth"),
    "deit_small": ("reid.models.vit", "timm deit_small_patch16_224 state dict"),
    "deit_tiny": ("reid.models.vit", "timm deit_tiny_patch16_224 state dict"),
}


def build_classifier(arch: str, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """The image classifier of `arch` whose state dict (`official_state`) has the official file's names."""
    import importlib

    return importlib.import_module(ARCHS[arch][0]).imagenet_classifier(arch, num_classes, tuple(input_size))


def official_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under the official file's tensor names (torchvision/torchreid models already use them)."""
    fn = getattr(model, "official_state", None)
    state = fn() if fn is not None else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


# --- training ------------------------------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    """`pretrain:` in params.yaml (the `dataset` key is the orchestrators', not the loop's)."""

    labels: str = "clothes"  # clothes (identity x outfit: appearance classes) | pid
    epochs: int = 6
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd (Nesterov momentum: torchvision's and torchreid's CNNs) | adamw (DeiT's ViTs)
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    label_smooth: float = 0.1
    input_size: tuple[int, int] = (128, 64)
    pad: int = 6
    erasing_p: float = 0.0
    workers: int = 2
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda[:i]

    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "epochs": (1, None), "batch_size": (2, None), "lr": (0, None), "momentum": (0, 1), "weight_decay": (0, None),
        "warmup_epochs": (0, None), "label_smooth": (0, 0.999), "input_size": (8, 4096), "pad": (0, None),
        "erasing_p": (0, 1), "workers": (0, 256), "seed": (0, None)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PretrainConfig:
        from reid.settings import check_config

        known = {f.name for f in fields(cls)}
        check_config(cls, {k: v for k, v in d.items() if k != "dataset"}, "pretrain")
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.input_size = (int(cfg.input_size[0]), int(cfg.input_size[1]))
        if cfg.labels not in ("clothes", "pid"):
            raise ValueError(f"pretrain.labels must be clothes or pid, got {cfg.labels!r}")
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"pretrain.optimizer must be sgd or adamw, got {cfg.optimizer!r}")
        return cfg


# Parameters a ViT never decays (timm's VisionTransformer.no_weight_decay): learned tokens, not weights.
NO_WEIGHT_DECAY = ("cls_token", "pos_embed", "dist_token")


def make_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `cfg`, weight decay on weight matrices and kernels only (not biases, norms, nor a ViT's
    class token and position embedding: timm's `no_weight_decay`): SGD with Nesterov momentum as the CNNs'
    ImageNet weights were trained, or AdamW as DeiT's were. params.yaml's `pretrain_presets` picks per backbone
    by the pretrain's own accuracy (DeiT-Tiny: 37% with SGD, 60% with AdamW; DeiT-S: 64% with SGD, 58% with AdamW)."""
    named = list(model.named_parameters())
    exempt = [p.ndim <= 1 or n.endswith(NO_WEIGHT_DECAY) for n, p in named]
    decay = [p for (_, p), e in zip(named, exempt) if not e]
    no_decay = [p for (_, p), e in zip(named, exempt) if e]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def lr_at(step: int, steps: int, warmup: int, base: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine to 0 at `steps`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def pretrain(arch: str, index: str | Path, root: str | Path, out: str | Path,
             cfg: PretrainConfig | Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `arch` as a classifier on the index's train split; write `out` (state dict) and `out`.json."""
    with exclusive_lock(out, "pretrain"):
        return _pretrain(arch, index, root, out, cfg, progress)


def _pretrain(arch: str, index: str | Path, root: str | Path, out: str | Path,
              cfg: PretrainConfig | Mapping[str, Any] | None, progress: bool) -> dict[str, Any]:
    if arch not in ARCHS:
        raise ValueError(f"unknown pretrain arch {arch!r}; choose one of {sorted(ARCHS)}")
    cfg = cfg if isinstance(cfg, PretrainConfig) else PretrainConfig.from_dict(cfg or {})
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    rows = read_index(index)
    positions = select(rows, "train")
    if not positions:
        raise ValueError(f"{index}: no train rows to pretrain on")
    pid_labels, clothes_labels = label_maps(rows, positions)
    classes = len(clothes_labels if cfg.labels == "clothes" else pid_labels)
    data = ReIDDataset(rows, root, positions, cfg.input_size, train=True, pid_labels=pid_labels,
                       clothes_labels=clothes_labels, pad=cfg.pad, erasing_p=cfg.erasing_p)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=gen,
                        num_workers=cfg.workers, persistent_workers=cfg.workers > 0, worker_init_fn=worker_init)
    if len(loader) == 0:
        raise ValueError(f"{index}: {len(data)} train images, fewer than one batch of {cfg.batch_size}")
    official = ARCHS[arch][1]
    device = torch.device(resolve_device(cfg.device))
    model = build_classifier(arch, classes, cfg.input_size).to(device)
    opt = make_optimizer(model, cfg)
    steps, warmup = cfg.epochs * len(loader), cfg.warmup_epochs * len(loader)
    key = "clothes" if cfg.labels == "clothes" else "pid"
    history, step, t0 = [], 0, time.time()
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = correct = seen = 0.0
        bar = tqdm(loader, desc=f"pretrain {arch} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress, mininterval=progress_interval())
        for batch in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, warmup, cfg.lr)
            logits = model(batch["image"].to(device, non_blocking=True))
            target = batch[key].to(device)
            loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smooth)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain {arch}: loss is {loss.item()} at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n = target.numel()
            loss_sum += float(loss.detach()) * n
            correct += float((logits.argmax(1) == target).sum())
            seen += n
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
                        "seconds": time.time() - t0})
        log.info("pretrain %s epoch %d: loss %.4f, train accuracy %.3f", arch, epoch + 1, loss_sum / seen,
                 correct / seen)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"arch": arch, "stands_in_for": official, "classes": classes, "labels": cfg.labels,
               "device": str(device), "train_images": len(data), "index": str(index), "config": asdict(cfg),
               "history": history}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    save_file(official_state(model), out, "weights")  # last, atomically: the weights file exists only when complete
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, choices=sorted(ARCHS), help="the backbone to pretrain")
    p.add_argument("--index", required=True, help="index CSV of the pretraining world (its train split is used)")
    p.add_argument("--root", required=True, help="the world's root folder")
    p.add_argument("--out", required=True, help="weights file to write (e.g. models/pretrain/resnet18.pth)")
    p.add_argument("--config", default="{}", help="PretrainConfig as JSON (params.yaml `pretrain:`), e.g. "
                   '\'{"epochs": 2}\'')


def main(args: argparse.Namespace) -> int:
    from reid.settings import parse_json_option

    summary = pretrain(args.arch, args.index, args.root, args.out, parse_json_option(args.config, "--config"))
    last = summary["history"][-1]
    print(f"{args.arch}: {summary['classes']} classes, {summary['train_images']} images, final train accuracy "
          f"{last['train_acc']:.3f} -> {args.out}")
    return 0
