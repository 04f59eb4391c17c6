"""ResNet ReID backbones (torchvision), last stride 1, ImageNet weights only from a local file.

torchvision's `resnet50-0676ba61.pth` / `resnet50-11ad3fa6.pth` state dicts load as they are; a torchreid- or
timm-style checkpoint with a `state_dict`/`model` wrapper or a `module.` prefix is unwrapped first.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101

from reid.models.zoo import RANDOM, is_random
from reid.serialization import load_file

RESNETS = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}

log = logging.getLogger(__name__)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (.pth / .pt weights-only, or .safetensors) and unwrap the usual containers
    (`state_dict`, `model`, `module.` prefixes). A file that would run code is refused naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path}. Weights are never downloaded: place the file there or change the "
            "path in params.yaml."
        )
    obj = load_file(path, "weights")
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_pretrained(module: nn.Module, path: str | Path | None, what: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load weights non-strictly, logging missing/unexpected keys; warn loudly when no file is named (`random`, the
    explicit choice of random initialisation, is only logged)."""
    if is_random(path):
        log.info("%s: random initialisation (weights: %s in params.yaml)", what, RANDOM)
        return
    if not path:
        warnings.warn(
            f"{what}: no pretrained weights named in params.yaml; starting from random initialisation "
            "(expect much lower accuracy than with ImageNet weights).",
            stacklevel=2,
        )
        return
    state = load_state_dict_file(path)
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in shape_mismatch}
    result = module.load_state_dict(state, strict=False)
    log.info("%s: loaded %d tensors from %s", what, len(state), path)
    if result.missing_keys:
        log.warning("%s: %d missing keys (e.g. %s)", what, len(result.missing_keys), result.missing_keys[:5])
    if result.unexpected_keys:
        log.warning("%s: %d unexpected keys (e.g. %s)", what, len(result.unexpected_keys), result.unexpected_keys[:5])
    if shape_mismatch:
        log.warning("%s: %d keys skipped for shape mismatch (e.g. %s)", what, len(shape_mismatch), shape_mismatch[:5])
    if len(state) == 0:
        raise ValueError(f"{what}: no tensor of {path} matches the model; is it the right checkpoint?")


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk without pooling/fc; `last_stride=1` doubles the final map (16x8 at 256x128).

    Depth 50 is the papers' backbone; 18/34 are lighter choices for CPU runs on the synthetic worlds.
    """

    def __init__(self, depth: int = 50, last_stride: int = 1, weights: str | Path | None = None) -> None:
        super().__init__()
        if depth not in RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNETS)}, got {depth}")
        net = RESNETS[depth](weights=None)
        if last_stride == 1:
            block = net.layer4[0]
            (block.conv2 if depth >= 50 else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.out_channels = 2048 if depth >= 50 else 512
        load_pretrained(net, weights, f"ResNet-{depth}", ignore_prefixes=("fc.",))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class ResNet50Backbone(ResNetBackbone):
    """ResNet-50, last stride 1: the backbone of the baseline, PGFL-KD and ISP's alternative."""

    out_channels = 2048

    def __init__(self, last_stride: int = 1, weights: str | Path | None = None) -> None:
        super().__init__(50, last_stride, weights)


def imagenet_classifier(arch: str, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """`resnet<depth>`'s image classifier with torchvision's names, conv1 ... fc (the pretrain stage)."""
    return RESNETS[int(arch.removeprefix("resnet"))](weights=None, num_classes=num_classes)
