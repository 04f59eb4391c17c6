"""Baseline: ResNet-50 (last stride 1) + BNNeck, label-smoothed ID loss + batch-hard triplet (BoT, Luo 2019).

The reference point every paper compares against, and the template for a method module.
"""

from __future__ import annotations

import torch
from torch import nn

from reid.methods.base import METHODS, Method
from reid.methods.losses import batch_hard_triplet, cross_entropy_label_smooth
from reid.models.heads import BNNeck
from reid.models.resnet import ResNetBackbone


class BaselineNet(nn.Module):
    """Backbone -> global average pool -> BNNeck. Train: (feat, logits); eval: the post-BN feature."""

    def __init__(self, num_classes: int, last_stride: int = 1, weights: str | None = None, depth: int = 50) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(depth=depth, last_stride=last_stride, weights=weights)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = BNNeck(self.backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feat = self.pool(self.backbone(x)).flatten(1)
        feat, bn_feat, logits = self.neck(feat)
        return (feat, logits) if self.training else bn_feat


@METHODS.register()
class Baseline(Method):
    name = "baseline"
    tiny_params = {"depth": 18}

    def __init__(
        self,
        last_stride: int = 1,
        weights: str | None = None,
        depth: int = 50,
        label_smooth: float = 0.1,
        triplet_margin: float = 0.3,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
    ) -> None:
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.last_stride, self.weights, self.depth = last_stride, weights, depth
        self.label_smooth, self.triplet_margin = label_smooth, triplet_margin
        self.id_weight, self.triplet_weight = id_weight, triplet_weight

    def build_model(self, num_classes: int) -> nn.Module:
        return BaselineNet(num_classes, self.last_stride, self.weights, self.depth)

    def backbone_weights(self) -> dict[str, str]:
        return {"weights": f"resnet{self.depth}"}

    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        feat, logits = model(batch["image"])
        return {
            "id": self.id_weight * cross_entropy_label_smooth(logits, batch["pid"], self.label_smooth),
            "triplet": self.triplet_weight * batch_hard_triplet(feat, batch["pid"], self.triplet_margin),
        }
