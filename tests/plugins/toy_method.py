"""A toy method: the baseline, pooled with the `edges` teacher's map as spatial weights in training only.

The student needs no teacher at test time (`test_caches` is empty). The worked example of docs/extending.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from reid.methods.base import METHODS, Method
from reid.methods.losses import batch_hard_triplet, cross_entropy_label_smooth
from reid.models.heads import BNNeck
from reid.models.resnet import ResNetBackbone


class EdgePooledNet(nn.Module):
    def __init__(self, num_classes: int, depth: int) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(depth=depth)
        self.neck = BNNeck(self.backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None):
        fmap = self.backbone(x)
        if weights is None:
            feat = fmap.mean(dim=(2, 3))
        else:  # weighted average pooling with the (resized) edge map
            w = F.interpolate(weights.float(), size=fmap.shape[-2:], mode="bilinear", align_corners=False)
            feat = (fmap * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1e-6)
        feat, bn_feat, logits = self.neck(feat)
        return (feat, logits) if self.training else bn_feat


@METHODS.register()
class EdgePooled(Method):
    name = "edge_pooled"
    caches = {"edges": ["magnitude"]}  # training reads cache/<ds>/edges.h5; nothing at test time
    ablations = {"uniform": {"use_edges": False}, "edges": {}}
    paper_tables = {"Toy table": {"uniform": {"R1": 1.0}, "edges": {"R1": 2.0}}}

    def __init__(self, depth: int = 18, use_edges: bool = True, label_smooth: float = 0.1) -> None:
        super().__init__(depth=depth, use_edges=use_edges, label_smooth=label_smooth)
        self.depth, self.use_edges, self.label_smooth = depth, use_edges, label_smooth

    def build_model(self, num_classes: int) -> nn.Module:
        return EdgePooledNet(num_classes, self.depth)

    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        feat, logits = model(batch["image"], batch["edges.magnitude"] if self.use_edges else None)
        return {"id": cross_entropy_label_smooth(logits, batch["pid"], self.label_smooth),
                "triplet": batch_hard_triplet(feat, batch["pid"], 0.3)}
