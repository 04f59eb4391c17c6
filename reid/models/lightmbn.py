"""LightMBN (Herzog et al., "Lightweight Multi-Branch Network for Person Re-Identification", ICIP 2021) on OSNet.

Layout (as in the LightMBN and DeSKPro public code, written here from their description):
- shared stem: OSNet `conv1`, `maxpool`, `conv2`, `conv3[0]` -> `channels[2]` (384) channels at stride 8
  ("the first layer of the third convolutional block" of the DeSKPro paper);
- three branches, each with its own copy of `conv3[1:]`, `conv4`, `conv5` -> 512 channels at stride 16:
  global: an OSBlock, then (a) average pool -> f_glo and (b) drop the most activated rows (ratio 0.33, training
  only) and max pool -> f_glo_drop; both paths read the OSBlock output, as in the reference;
  part: global max pool -> f_p0, two horizontal stripes (average pool) -> f_p1, f_p2;
  channel: average pool split into two halves of 256 channels, one shared 1x1 conv 256 -> 512 + BN + ReLU
  -> f_c0, f_c1;
- each of the 7 embeddings has a BNNeck; the 5 global/part necks start with a 1x1 conv 512 -> 512 (reference
  `BNNeck3`); the 2 channel necks do not, because the shared conv already maps to 512 (reference `BNNeck`).

Outputs (`MBNOutput`): `logits` = the logit set I (7 classifier outputs, order glo, glo_drop, p0, p1, p2, c0, c1),
`triplet` = the feature set R (pre-BN f_glo, f_glo_drop, f_p0), `embeddings` = the 7 post-BN features (B, 7, D)
that retrieval uses ("before the last FC layer").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from reid.models.heads import BNNeck
from reid.models.osnet import OSNET_WIDTHS, OSBlock, OSNet, osnet_tiny, osnet_width

__all__ = ["LightMBN", "MBNOutput", "drop_top_rows", "NUM_EMBEDDINGS", "EMBEDDING_NAMES"]

EMBEDDING_NAMES = ("glo", "glo_drop", "p0", "p1", "p2", "c0", "c1")
NUM_EMBEDDINGS = len(EMBEDDING_NAMES)
TRIPLET_NAMES = ("glo", "glo_drop", "p0")


class MBNOutput(NamedTuple):
    """What one LightMBN forward gives: logit set I, triplet set R, and the retrieval embeddings."""

    logits: tuple[torch.Tensor, ...]
    triplet: tuple[torch.Tensor, ...]
    embeddings: torch.Tensor


def drop_top_rows(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the round(ratio * H) rows whose strongest position has the largest channel energy sum_c x^2.

    Batch DropTop (LightMBN): forces the drop path to use the less salient body parts.
    """
    b, _, h, _ = x.shape
    n_drop = int(round(ratio * h))
    if n_drop == 0:
        return x
    row_peak = x.detach().pow(2).sum(1).amax(2)  # (B, H): per-row maximum of the activation energy
    idx = row_peak.topk(n_drop, dim=1).indices
    keep = torch.ones(b, h, device=x.device, dtype=x.dtype).scatter_(1, idx, 0.0)
    return x * keep[:, None, :, None]


class ReducedNeck(nn.Module):
    """Optional 1x1 conv reduction (bias-free) before a BNNeck; input (B, C, 1, 1)."""

    def __init__(self, in_dim: int, feat_dim: int, num_classes: int, reduce: bool = True) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, feat_dim, 1, bias=False) if reduce else None
        if self.reduction is not None:
            nn.init.kaiming_normal_(self.reduction.weight, mode="fan_in")
        self.neck = BNNeck(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.reduction is not None:
            x = self.reduction(x)
        return self.neck(x.flatten(1))


def _branch_trunk(osnet: OSNet) -> nn.Sequential:
    """A private copy of conv3[1:], conv4 and conv5 (each branch learns its own)."""
    return nn.Sequential(copy.deepcopy(osnet.conv3[1:]), copy.deepcopy(osnet.conv4), copy.deepcopy(osnet.conv5))


class LightMBN(nn.Module):
    """LightMBN with its 7 BNNeck heads. `forward_stem` and `forward_branches` let a module sit in between (CSA)."""

    def __init__(
        self,
        num_classes: int,
        weights: str | Path | None = None,
        feat_dim: int = 512,
        drop_ratio: float = 0.33,
        width: str = "x1_0",
    ) -> None:
        super().__init__()
        if width in OSNET_WIDTHS:
            osnet = osnet_width(width, weights)
        elif width == "tiny":
            osnet = osnet_tiny()  # CPU tests only; no weights exist for it
        else:
            raise ValueError(f"LightMBN: unknown width '{width}' (expected one of {sorted(OSNET_WIDTHS)} or 'tiny')")
        c_stem, c_out = osnet.channels[2], osnet.channels[3]
        self.stem_channels, self.feat_dim, self.drop_ratio = c_stem, feat_dim, drop_ratio
        self.stem = nn.Sequential(osnet.conv1, osnet.maxpool, osnet.conv2, osnet.conv3[0])
        self.global_trunk = _branch_trunk(osnet)
        self.part_trunk = _branch_trunk(osnet)
        self.channel_trunk = _branch_trunk(osnet)
        self.drop_block = OSBlock(c_out, c_out)
        self.shared = nn.Sequential(
            nn.Conv2d(c_out // 2, feat_dim, 1, bias=False), nn.BatchNorm2d(feat_dim), nn.ReLU(True)
        )
        nn.init.kaiming_normal_(self.shared[0].weight, mode="fan_in")
        self.necks = nn.ModuleList(
            [ReducedNeck(c_out, feat_dim, num_classes) for _ in range(5)]
            + [ReducedNeck(feat_dim, feat_dim, num_classes, reduce=False) for _ in range(2)]
        )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def pooled_features(self, f: torch.Tensor) -> list[torch.Tensor]:
        """The 7 pooled (B, C, 1, 1) inputs of the necks, in EMBEDDING_NAMES order."""
        glo = self.drop_block(self.global_trunk(f))
        glo_drop = drop_top_rows(glo, self.drop_ratio) if self.training else glo
        par = self.part_trunk(f)
        stripes = F.adaptive_avg_pool2d(par, (2, 1))
        cha = F.adaptive_avg_pool2d(self.channel_trunk(f), 1)
        half = cha.shape[1] // 2
        return [
            F.adaptive_avg_pool2d(glo, 1),
            F.adaptive_max_pool2d(glo_drop, 1),
            F.adaptive_max_pool2d(par, 1),
            stripes[:, :, 0:1],
            stripes[:, :, 1:2],
            self.shared(cha[:, :half]),
            self.shared(cha[:, half:]),
        ]

    def forward_branches(self, f: torch.Tensor) -> MBNOutput:
        outs = [neck(p) for neck, p in zip(self.necks, self.pooled_features(f))]
        return MBNOutput(
            logits=tuple(o[2] for o in outs),
            triplet=tuple(outs[EMBEDDING_NAMES.index(n)][0] for n in TRIPLET_NAMES),
            embeddings=torch.stack([o[1] for o in outs], dim=1),
        )

    def forward(self, x: torch.Tensor) -> MBNOutput:
        return self.forward_branches(self.forward_stem(x))
