"""Shared heads: BNNeck (Luo et al., "Bag of Tricks", CVPRW 2019) and generalised-mean pooling."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BNNeck(nn.Module):
    """BN between the triplet feature and the ID classifier; the BN bias is frozen so the feature stays centred.

    Returns (pre-BN feature for the triplet loss, post-BN feature for retrieval, logits or None in eval).
    """

    def __init__(self, in_dim: int, num_classes: int, bias_frozen: bool = True, init_std: float = 0.001) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim)
        if bias_frozen:
            self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=init_std)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bn_feat = self.bn(feat)
        return feat, bn_feat, self.classifier(bn_feat)


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over H, W: p=1 is average pooling, p->inf max pooling."""
    return F.adaptive_avg_pool2d(x.clamp(min=eps).pow(p), 1).pow(1.0 / p).flatten(1)
