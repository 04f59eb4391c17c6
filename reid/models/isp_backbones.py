"""ISP's 1/4-resolution feature-map backbones (HRNet branches concatenated, or an upsampled ResNet-50).

Shared by the ISP method (reid/methods/isp.py) and its first-round pseudo-label teacher
(reid/teachers/isp_labels.py), which must build the same map without importing the method.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from reid.models.hrnet import HRNET_TINY, HRNET_W18_SMALL, HRNetFeatureMap
from reid.models.resnet import ResNet50Backbone, load_pretrained, load_state_dict_file
from reid.models.zoo import is_random

log = logging.getLogger(__name__)


class UpsampledResNet50(nn.Module):
    """ResNet-50 (last stride 1, 1/16) bilinearly upsampled to 1/4 of the input (paper Table 6 alternative)."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.body = ResNet50Backbone(last_stride=1, weights=weights)
        self.out_channels = ResNet50Backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] // 4, x.shape[-1] // 4)
        return F.interpolate(self.body(x), size=size, mode="bilinear", align_corners=False)


# ISP backbones built from HRNet: name -> (HRNetFeatureMap topology, name in the weights warning). Their ImageNet
# checkpoints (or the COCO pose one) load non-strictly: the classification / pose head keys are ignored.
_HRNET_BACKBONES: dict[str, tuple[dict[str, Any], str]] = {
    "hrnet_w32": ({"width": 32}, "HRNet-W32 (ISP backbone)"),
    "hrnet_w18_small": (HRNET_W18_SMALL, "HRNet-W18-small-v2 (ISP backbone)"),
}
_HRNET_HEAD_KEYS = ("final_layer", "incre_modules", "downsamp_modules", "classifier")


def build_feature_backbone(name: str, weights: str | None = None, incre_modules: bool = False,
                           align_corners: bool = True) -> nn.Module:
    """A module mapping (B, 3, H, W) to a (B, C, H/4, W/4) feature map, with `out_channels` = C.

    `incre_modules` (HRNet backbones only): pass each branch through the ImageNet classifier's incre_modules
    Bottleneck (1920 channels in all), loaded from the same checkpoint, as ISP's official code does.
    `align_corners` (HRNet backbones only): of the bilinear upsampling of the branches (True: the official code).

    hrnet_w32: HRNetFeatureMap (480 ch); weights = an ImageNet HRNet-W32 classification checkpoint (or the COCO
    pose one), loaded non-strictly (the classification head keys are ignored). resnet50: torchvision weights.
    hrnet_w18_small: HRNet-W18-small-v2's topology (270 ch, 3.9 M parameters; stage modules 1/3/2, 2 blocks per
    branch), the CPU-sized backbone of the synthetic worlds. hrnet_tiny: a width-8 HRNet (120 ch, 0.2 M) for tests.
    """
    if name in _HRNET_BACKBONES:
        topology, what = _HRNET_BACKBONES[name]
        net = HRNetFeatureMap(**topology, incre_modules=incre_modules, align_corners=align_corners)
        load_pretrained(net.body, weights, what, ignore_prefixes=_HRNET_HEAD_KEYS)
        if weights and not is_random(weights) and incre_modules:
            n = net.load_incre_modules(load_state_dict_file(weights), str(weights))
            log.info("%s: %d incre_modules tensors loaded from %s", what, n, weights)
        return net
    if name == "hrnet_tiny":
        net = HRNetFeatureMap(**HRNET_TINY, incre_modules=incre_modules, align_corners=align_corners)
        if weights and not is_random(weights):
            load_pretrained(net.body, weights, "tiny HRNet", ignore_prefixes=("incre_modules",))
            if incre_modules:
                net.load_incre_modules(load_state_dict_file(weights), str(weights))
        return net
    if name == "resnet50":
        return UpsampledResNet50(weights)
    raise ValueError(f"unknown ISP backbone {name!r}; choose hrnet_w32, hrnet_w18_small, resnet50 or hrnet_tiny")
