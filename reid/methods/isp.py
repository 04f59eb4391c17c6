"""ISP: identity-guided human semantic parsing for aligned ReID (Zhu et al., ECCV 2020).

Model: a backbone with a 1/4-resolution feature map (HRNet-W32 branches upsampled and concatenated, 480 ch,
as in the paper; or ResNet-50 with bilinear upsampling, the paper's Table 6 alternative; or a tiny HRNet for
tests), a 1x1 conv + BN + ReLU reduction to 256 channels (the reference's `cls_head`) giving M_g, a per-pixel
linear part classifier (Eq. 5) trained with the parsing loss (Eq. 6) against pseudo part labels, and three
representations pooled with the part probabilities (Eq. 2 + GAP): the concatenated parts F_1..F_{K-1}, the
foreground F_f and the global F_g, each with a BNNeck and the BoT loss pair (Eq. 7, alpha = 0.1).

Pseudo labels: the first round clusters the initialised network at epoch 0 (`initial: model`, the default: what
the paper says and the reference does; measured on synthocc, 3 seeds, the cache start was worse in every seed,
mAP -2.8 / -0.8 / -0.6), or comes from the `isp_labels` cache (`initial: cache`, reid/teachers/isp_labels.py,
a separately initialised backbone clustered once by its own DAG stage); every `period`
epochs `on_epoch_start` re-clusters the model's own feature maps of all training images with the cascaded
clustering (reid/models/isp_clustering.py, batched over identities, on the trainer's device) and hands them
to the dataset with `train_set.set_field("isp_labels.labels", labels, "labels")`. `semantics: parsing` replaces the pseudo
labels with the parsing cache (LIP) grouped into K parts: the paper's Table 5 "+extra info" row.

Official-code details the paper does not mention (`cls_hrnet.py`), both on by default because the published
numbers were produced with them: `incre_modules` passes every HRNet branch through the ImageNet classifier's
incre_modules Bottleneck (1920 channels for W32, weights from the same ImageNet checkpoint) before the 1x1
reduction, and `spatial_attention` multiplies M_g by a learned sigmoid mask (`SpatialAttention`) before the part
classifier, the pooling and the clustering, so the mask shapes the foreground/background split. Either can be
switched off to get the architecture as the paper describes it (rows `no_attention`, `no_incre`).

Test time (Eq. 8-10): part visibility from the argmax of the part classifier; the distance averages the cosine
distances of the shared-visible parts, the global and the foreground features (`matching: aligned`);
`matching: concat` is the reference's "w/o ARM" (cosine on all features concatenated) and `matching: global`
uses F_g alone.

Re-clustered labels are kept at the feature-map resolution (h, w) = input/4 in the image frame, like the cache:
the dataset warps image-frame label maps of any resolution to the input size with nearest sampling, and a
(N, 64, 32) array is 16x smaller than one at the input size (34 MB vs 541 MB on DukeMTMC-reID), which matters
because it is also saved with every checkpoint (`extra_state`) so a resumed run continues with the same labels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from reid.methods.base import METHODS, Claim, Method
from reid.models.isp_clustering import IdentityChunker, identity_order
from reid.methods.losses import batch_hard_triplet, cross_entropy_label_smooth
from reid.models.heads import BNNeck
from reid.models.isp_backbones import build_feature_backbone

log = logging.getLogger(__name__)

__all__ = [
    "ABLATIONS", "EVAL_ABLATIONS", "PAPER_TABLE3", "PAPER_TABLE4", "PAPER_TABLE5", "LIP_PART_GROUPS",
    "TABLE3_GROUPS",
    "ISP", "ISPNet", "build_feature_backbone", "part_probabilities", "pooled_representations", "parsing_loss",
    "reid_loss", "part_visibility", "part_distances", "aligned_distance", "downsample_labels", "lip_to_parts",
    "assign_parts_to_groups", "part_iou", "official_part_iou", "binary_mean_iou", "OFFICIAL_PART_GROUPS",
]

# --- paper numbers and ablation rows --------------------------------------------------------------------------
# Table 4 (K) and Table 5 (semantics): R-1 / R-5 / mAP on DukeMTMC, Market1501; R-1 / mAP on CUHK03-NP.
PAPER_TABLE4: dict[str, dict[str, float]] = {
    "k4": {"duke_r1": 89.6, "duke_r5": 95.2, "duke_map": 79.2, "market_r1": 95.3, "market_r5": 98.6,
           "market_map": 88.6, "cuhk03l_r1": 75.9, "cuhk03l_map": 72.9, "cuhk03d_r1": 73.5, "cuhk03d_map": 71.3},
    "k5": {"duke_r1": 88.6, "duke_r5": 95.0, "duke_map": 79.1, "market_r1": 94.4, "market_r5": 98.2,
           "market_map": 87.7, "cuhk03l_r1": 73.9, "cuhk03l_map": 72.4, "cuhk03d_r1": 73.1, "cuhk03d_map": 71.0},
    "k6": {"duke_r1": 89.0, "duke_r5": 95.1, "duke_map": 78.9, "market_r1": 95.2, "market_r5": 98.4,
           "market_map": 88.4, "cuhk03l_r1": 75.9, "cuhk03l_map": 73.8, "cuhk03d_r1": 75.2, "cuhk03d_map": 71.4},
    "k7": {"duke_r1": 89.6, "duke_r5": 95.5, "duke_map": 80.0, "market_r1": 95.0, "market_r5": 98.2,
           "market_map": 88.4, "cuhk03l_r1": 76.5, "cuhk03l_map": 74.1, "cuhk03d_r1": 73.6, "cuhk03d_map": 70.8},
    "k8": {"duke_r1": 88.9, "duke_r5": 94.7, "duke_map": 78.4, "market_r1": 94.9, "market_r5": 98.5,
           "market_map": 88.6, "cuhk03l_r1": 75.9, "cuhk03l_map": 73.1, "cuhk03d_r1": 74.0, "cuhk03d_map": 71.4},
}
PAPER_TABLE5: dict[str, dict[str, float]] = {
    # "baseline" is HRNet-W32 with BNNeck and the BoT losses on the global feature only (the `baseline`
    # method of this project uses ResNet-50; the row is listed for the table, not reproduced by an ISP row).
    "baseline": {"duke_r1": 87.7, "duke_r5": 94.3, "duke_map": 77.2, "market_r1": 94.0, "market_r5": 97.9,
                 "market_map": 85.9, "cuhk03l_r1": 71.9, "cuhk03l_map": 68.5, "cuhk03d_r1": 67.6,
                 "cuhk03d_map": 64.7},
    "extra_info": {"duke_r1": 88.6, "duke_r5": 94.7, "duke_map": 79.1, "market_r1": 94.8, "market_r5": 98.4,
                   "market_map": 87.7, "cuhk03l_r1": 73.3, "cuhk03l_map": 71.9, "cuhk03d_r1": 72.2,
                   "cuhk03d_map": 69.6},
    "learned": {"duke_r1": 89.6, "duke_r5": 95.5, "duke_map": 80.0, "market_r1": 95.3, "market_r5": 98.6,
                "market_map": 88.6, "cuhk03l_r1": 76.5, "cuhk03l_map": 74.1, "cuhk03d_r1": 75.2, "cuhk03d_map": 71.4},
}
# Table 3 (K = 6): IoU (%) against SCHP-LIP groups; pseudo labels of the training set / predictions on the test set.
PAPER_TABLE3: dict[str, dict[str, float]] = {
    "pseudo_duke": {"foreground": 65.66, "head": 68.17, "legs": 61.83, "shoes": 58.89},
    "pseudo_market": {"foreground": 65.45, "head": 54.74, "legs": 67.02, "shoes": 55.25},
    "pseudo_cuhk03l": {"foreground": 51.26, "head": 68.21, "legs": 52.24, "shoes": 57.60},
    "pred_duke": {"foreground": 66.94, "head": 71.35, "legs": 68.02, "shoes": 62.60},
    "pred_market": {"foreground": 63.44, "head": 55.78, "legs": 69.10, "shoes": 56.32},
    "pred_cuhk03l": {"foreground": 53.51, "head": 59.96, "legs": 50.14, "shoes": 59.08},
}

ABLATIONS: dict[str, dict[str, Any]] = {
    # Table 4: the first round is clustered on the initialised network, as the paper and the reference do.
    **{f"k{k}": {"num_parts": k, "initial": "model"} for k in (4, 5, 6, 7, 8)},
    "extra_info": {"semantics": "parsing"},                             # Table 5 "+extra info"
    # Not in the paper: the first round from the isp_labels cache (a separately initialised backbone).
    "learned_cache": {"semantics": "learned", "initial": "cache"},
    # Not in the paper: the official code's two additions off (the architecture as the paper describes it).
    "no_attention": {"spatial_attention": False},
    "no_incre": {"incre_modules": False},
}
# Rows that need no training of their own: Table 5 "ISP" is the default configuration, i.e. `k7`; Table 2
# "ISP w/o arm" is that model (same seed) matched by cosine on all features concatenated (test time only).
EVAL_ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "learned": ("k7", {}),
    "wo_arm": ("k7", {"matching": "concat"}),
    # The paper's Eq. 10 (global and foreground as two cosines) beside the official code's one cosine (the default).
    "arm_eq10": ("k7", {"arm_form": "eq10"}),
    # The same comparison on the model trained with ground-truth parts (the control until the oracle form below).
    "extra_info_wo_arm": ("extra_info", {"matching": "concat"}),
    # The positive control of the Table 2 claim: that model's features pooled with the ground-truth parts at test
    # time too (parsing cache), visibility included, matched aligned or concatenated. Its part classifier
    # predicts no head, legs or shoes even trained on those parts (docs/results.md), so the control above
    # compared two arbitrary splits of the foreground; this one asks whether aligned matching gains anything on
    # this world once the parts are right, whatever the classifier learned.
    "extra_info_oracle": ("extra_info", {"test_parts": "oracle"}),
    "extra_info_oracle_wo_arm": ("extra_info", {"test_parts": "oracle", "matching": "concat"}),
}

# LIP label groups (paper footnote 4 for head / legs / shoes; foreground = any non-background label).
LIP_HEAD = (1, 2, 4, 13)             # hat, hair, sunglasses, face
LIP_UPPER = (5, 6, 7, 10, 11)        # upper-clothes, dress, coat, jumpsuits, scarf
LIP_ARMS = (3, 14, 15)               # glove, left/right arm
LIP_LOWER = (9, 12)                  # pants, skirt
LIP_LEGS_BARE = (8, 16, 17)          # socks, left/right leg
LIP_SHOES = (18, 19)
TABLE3_GROUPS: dict[str, tuple[int, ...]] = {
    "foreground": tuple(range(1, 20)),
    "head": LIP_HEAD,
    "legs": (8, 9, 16, 17),          # left-leg, right-leg, socks, pants (footnote 4)
    "shoes": LIP_SHOES,
}
# Not in the paper's Table 3: an upper-body group for a finer check.
EXTRA_GROUPS: dict[str, tuple[int, ...]] = {"upper_body": LIP_UPPER + LIP_ARMS}

# `semantics: parsing` (Table 5 "+extra info"): LIP labels grouped into K-1 parts, top to bottom (this
# project's choice; the paper does not list its grouping).
LIP_PART_GROUPS: dict[int, tuple[tuple[int, ...], ...]] = {
    4: (LIP_HEAD, LIP_UPPER + LIP_ARMS, LIP_LOWER + LIP_LEGS_BARE + LIP_SHOES),
    5: (LIP_HEAD, LIP_UPPER + LIP_ARMS, LIP_LOWER + LIP_LEGS_BARE, LIP_SHOES),
    6: (LIP_HEAD, LIP_UPPER, LIP_ARMS, LIP_LOWER + LIP_LEGS_BARE, LIP_SHOES),
    7: (LIP_HEAD, LIP_UPPER, LIP_ARMS, LIP_LOWER, LIP_LEGS_BARE, LIP_SHOES),
    8: ((1, 2), (4, 13), LIP_UPPER, LIP_ARMS, LIP_LOWER, LIP_LEGS_BARE, LIP_SHOES),
}

LABEL_KEYS = {"learned": "isp_labels.labels", "parsing": "parsing.labels"}


# --- equations ----------------------------------------------------------------------------------------------
def part_probabilities(part_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 5: P_k(x, y) = softmax_k(W_k^T M_g(x, y)) over the K parts (dim 1 of (B, K, h, w))."""
    return F.softmax(part_logits.float(), dim=1)


def pooled_representations(fmap: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 2 + GAP: F_k = GAP(P_k o M_g) for k = 1..K-1, F_f = GAP(sum_{k>=1} P_k o M_g), F_g = GAP(M_g).

    fmap (B, C, h, w), probs (B, K, h, w) -> parts (B, K-1, C), foreground (B, C), global (B, C).
    """
    fmap = fmap.float()
    hw = fmap.shape[-2] * fmap.shape[-1]
    parts = torch.einsum("bkhw,bchw->bkc", probs[:, 1:], fmap) / hw
    return parts, parts.sum(dim=1), fmap.mean(dim=(2, 3))


def parsing_loss(part_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 6: cross-entropy of the part classifier against the pseudo labels, averaged over pixels and images.

    The paper writes a sum over pixels; the reference averages (nn.CrossEntropyLoss), which is what makes
    alpha = 0.1 a sensible weight next to the per-image ReID losses.
    """
    return F.cross_entropy(part_logits.float(), labels.long())


def reid_loss(feat: torch.Tensor, logits: torch.Tensor, pids: torch.Tensor, label_smooth: float = 0.1,
              margin: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """One basic loss group of Eq. 7 (BoT): label-smoothed cross-entropy and batch-hard triplet."""
    return cross_entropy_label_smooth(logits, pids, label_smooth), batch_hard_triplet(feat, pids, margin)


def part_visibility(part_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 8: l_k = 1 when some pixel's argmax is part k (k = 1..K-1); (B, K, h, w) -> (B, K-1) float."""
    winner = part_logits.argmax(dim=1).flatten(1)
    K = part_logits.shape[1]
    present = F.one_hot(winner, K).amax(dim=1)
    return present[:, 1:].float()


def part_distances(q_parts: torch.Tensor, g_parts: torch.Tensor) -> torch.Tensor:
    """Eq. 9: d_k = cosine distance between the k-th part features; (nq, P, C), (ng, P, C) -> (nq, ng, P)."""
    qn, gn = F.normalize(q_parts.float(), dim=-1), F.normalize(g_parts.float(), dim=-1)
    return 1.0 - torch.einsum("qkc,gkc->qgk", qn, gn)


def _cosine(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.normalize(q.float(), dim=1) @ F.normalize(g.float(), dim=1).t()


ARM_FORMS = ("official", "eq10")


def aligned_distance(q: Mapping[str, torch.Tensor], g: Mapping[str, torch.Tensor], form: str = "official"
                     ) -> torch.Tensor:
    """Aligned matching of the shared-visible parts plus the global and foreground features; cosine distances.

    form="eq10" (the paper's Eq. 10): d = (sum_k l_k^q l_k^g d_k + d_g + d_f) / (sum_k l_k^q l_k^g + 2).
    form="official" (the official `arm_eval_func`, the published numbers): the global and foreground features are
    concatenated into one vector and compared by one cosine, d = (sum_k l_k^q l_k^g d_k + d_gf) / (sum_k ... + 1)
    (the official code ranks by the similarity (1 + cos) / 2, which orders exactly as this distance).

    Vectorised without an (nq, ng, K-1) tensor: sum_k v_k (1 - <q_k, g_k>) = sum_k v_k - <Q', G'> with
    Q' = (l^q_k * q_k / |q_k|)_k flattened (same for G'), so the numerator is one matrix product.
    Inputs: dicts with "parts" (n, K-1, C), "visibility" (n, K-1), "global" (n, C), "foreground" (n, C).
    """
    vq, vg = q["visibility"].float(), g["visibility"].float()
    qn = F.normalize(q["parts"].float(), dim=-1) * vq[..., None]
    gn = F.normalize(g["parts"].float(), dim=-1) * vg[..., None]
    shared = vq @ vg.t()
    parts_sum = shared - qn.flatten(1) @ gn.flatten(1).t()
    if form == "official":
        d_gf = _cosine(torch.cat([q["global"], q["foreground"]], dim=1),
                       torch.cat([g["global"], g["foreground"]], dim=1))
        return (parts_sum + d_gf) / (shared + 1.0)
    if form != "eq10":
        raise ValueError(f"isp: arm_form must be one of {ARM_FORMS}, got {form!r}")
    d_g = _cosine(q["global"], g["global"])
    d_f = _cosine(q["foreground"], g["foreground"])
    return (parts_sum + d_g + d_f) / (shared + 2.0)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest label of each cell centre: (B, H, W) -> (B, h, w), sampling row floor((i + 0.5) H / h)."""
    H, W = labels.shape[-2:]
    h, w = size
    if (H, W) == (h, w):
        return labels
    rows = ((torch.arange(h, device=labels.device) + 0.5) * H / h).long().clamp(max=H - 1)
    cols = ((torch.arange(w, device=labels.device) + 0.5) * W / w).long().clamp(max=W - 1)
    return labels[:, rows][:, :, cols]


def lip_to_parts(labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """LIP labels -> K part labels (0 background, 1..K-1 by LIP_PART_GROUPS[K], top to bottom)."""
    if num_parts not in LIP_PART_GROUPS:
        raise ValueError(f"semantics=parsing has LIP groupings for K in {sorted(LIP_PART_GROUPS)}, not {num_parts}")
    lut = torch.zeros(256, dtype=torch.long, device=labels.device)
    for part, group in enumerate(LIP_PART_GROUPS[num_parts], start=1):
        lut[list(group)] = part
    return lut[labels.long()]


# --- Table 3: IoU against grouped parsing labels ------------------------------------------------------------
def _as_numpy_labels(x: Any) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _match_resolution(pred: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    """Nearest (cell-centre) resampling of (N, h, w) labels to (N, H, W), both in the image frame."""
    if pred.shape[-2:] == tuple(target_hw):
        return pred
    H, W = target_hw
    h, w = pred.shape[-2:]
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return pred[:, rows][:, :, cols]


def assign_parts_to_groups(pred_labels: Any, parsing_labels: Any, groups: Mapping[str, tuple[int, ...]] = TABLE3_GROUPS
                           ) -> dict[str, list[int]]:
    """Map each ISP part label to the parsing group it overlaps most (majority vote over all pixels).

    ISP parts are unnamed clusters, so a group's predicted region is the union of the parts voted to it.
    Candidates are the groups other than "foreground", plus "other" (foreground pixels in no group) and
    "background"; parts won by those two belong to no group.
    """
    pred = _as_numpy_labels(pred_labels)
    gt = _as_numpy_labels(parsing_labels)
    pred = _match_resolution(pred, gt.shape[-2:])
    named = [g for g in groups if g != "foreground"]
    lut = np.full(256, len(named), dtype=np.int64)  # "other" foreground
    lut[0] = len(named) + 1  # background
    for i, g in enumerate(named):
        lut[list(groups[g])] = i
    target = lut[gt.astype(np.int64)]
    K = int(pred.max()) + 1 if pred.size else 1
    votes = np.zeros((K, len(named) + 2), dtype=np.int64)
    np.add.at(votes, (pred.astype(np.int64).ravel(), target.ravel()), 1)
    assignment: dict[str, list[int]] = {g: [] for g in named}
    for k in range(1, K):
        if votes[k].sum() == 0:
            continue
        winner = int(votes[k].argmax())
        if winner < len(named):
            assignment[named[winner]].append(k)
    return assignment


def part_iou(pred_labels: Any, parsing_labels: Any, groups: Mapping[str, tuple[int, ...]] = TABLE3_GROUPS,
             assignment: Mapping[str, list[int]] | None = None) -> dict[str, float]:
    """Table 3 check: IoU per LIP group of ISP part labels (N, h, w) against parsing labels (N, H, W).

    "foreground": pred > 0 vs any non-background LIP label; other groups: the union of the ISP parts assigned
    to the group (`assign_parts_to_groups` when not given) vs the group's LIP labels. NaN when both are empty.
    """
    pred = _as_numpy_labels(pred_labels)
    gt = _as_numpy_labels(parsing_labels)
    if pred.ndim != 3 or gt.ndim != 3 or len(pred) != len(gt):
        raise ValueError(f"part_iou: expected (N, h, w) and (N, H, W) label maps, got {pred.shape} and {gt.shape}")
    pred = _match_resolution(pred, gt.shape[-2:])
    if assignment is None:
        assignment = assign_parts_to_groups(pred, gt, groups)
    out: dict[str, float] = {}
    for name, members in groups.items():
        truth = np.isin(gt, members)
        mine = pred > 0 if name == "foreground" else np.isin(pred, list(assignment.get(name, [])))
        union = np.logical_or(truth, mine).sum()
        out[name] = float(np.logical_and(truth, mine).sum() / union) if union else float("nan")
    return out


# The official Table 3 metric (reference `engine/miou.py`): fixed part labels per group for K = 6 and 7 (parts
# are ordered top to bottom, so part 1 is the head), foreground = any part > 0 for every K.
OFFICIAL_PART_GROUPS: dict[int, dict[str, tuple[int, ...]]] = {
    6: {"head": (1,), "legs": (4,), "shoes": (5,)},
    7: {"head": (1,), "legs": (4, 5), "shoes": (6,)},
}


def resize_labels_nearest_cv2(gt: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) label maps resized to (N, h, w) with cv2 INTER_NEAREST, as the reference resizes its ground truth."""
    import cv2

    h, w = hw
    if gt.shape[-2:] == (h, w):
        return gt
    return np.stack([cv2.resize(np.ascontiguousarray(g), (w, h), interpolation=cv2.INTER_NEAREST) for g in gt])


def binary_mean_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the IoU of the positive class and of its complement, from one 2x2 confusion matrix over all pixels
    (the reference's "IoU" of a group); each class IoU is tp / max(1, |truth| + |pred| - tp)."""
    t, p = truth.astype(bool).ravel(), pred.astype(bool).ravel()
    ious = []
    for cls_t, cls_p in ((~t, ~p), (t, p)):
        tp = np.logical_and(cls_t, cls_p).sum()
        ious.append(tp / max(1.0, cls_t.sum() + cls_p.sum() - tp))
    return float(np.mean(ious))


def official_part_iou(pred_labels: Any, parsing_labels: Any, num_parts: int,
                      groups: Mapping[str, tuple[int, ...]] = TABLE3_GROUPS) -> dict[str, float]:
    """Table 3 as the official code computes it: ground truth resized (cv2 nearest) to the label grid, fixed
    part-to-group labels (`OFFICIAL_PART_GROUPS`, head / legs / shoes only for K = 6 or 7), and per group the
    mean of the group's and its complement's IoU (`binary_mean_iou`). An all-background prediction already
    scores about the background share; `isp-iou` prints that floor beside the result."""
    pred = _as_numpy_labels(pred_labels)
    gt = resize_labels_nearest_cv2(_as_numpy_labels(parsing_labels), pred.shape[-2:])
    out = {"foreground": binary_mean_iou(np.isin(gt, groups["foreground"]), pred > 0)}
    for name, parts in OFFICIAL_PART_GROUPS.get(num_parts, {}).items():
        out[name] = binary_mean_iou(np.isin(gt, groups[name]), np.isin(pred, parts))
    return out


# --- model ------------------------------------------------------------------------------------------------
class SpatialAttention(nn.Module):
    """The official code's `SpatialAttn` (not in the paper): a (B, 1, h, w) sigmoid mask multiplied into M_g
    before the part classifier, the pooling and the clustering. 3x3 stride-2 conv to 1 channel + BN + ReLU,
    bilinear upsampling back (align_corners=True, as the reference), 1x1 conv + BN, sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(channels, 1, 3, stride=2, padding=1), nn.BatchNorm2d(1))
        self.scale = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
        for conv in (self.down[0], self.scale[0]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in")
            nn.init.zeros_(conv.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.down(fmap))
        a = F.interpolate(a, size=fmap.shape[-2:], mode="bilinear", align_corners=True)
        return torch.sigmoid(self.scale(a))


class ISPNet(nn.Module):
    """Backbone -> 1x1 reduction (M_g) -> part classifier; parts / foreground / global with a BNNeck each.

    `forward` returns a dict: "fmap" M_g (B, C, h, w), "part_logits" (B, K, h, w); in training the pre-BN
    features "part_feat" (B, (K-1)C), "fore_feat", "global_feat" and their logits; in eval the post-BN features
    "parts" (B, K-1, C), "foreground", "global".
    """

    def __init__(self, num_classes: int, num_parts: int = 7, backbone: str = "hrnet_w32", weights: str | None = None,
                 reduce_dim: int = 256, spatial_attention: bool = True, incre_modules: bool = True,
                 align_corners: bool = True) -> None:
        super().__init__()
        if num_parts < 2:
            raise ValueError(f"num_parts (K) must be >= 2, got {num_parts}")
        self.num_parts, self.dim = num_parts, reduce_dim
        self.backbone = build_feature_backbone(backbone, weights, incre_modules and backbone != "resnet50",
                                               align_corners)
        self.reduce = nn.Sequential(nn.Conv2d(self.backbone.out_channels, reduce_dim, 1), nn.BatchNorm2d(reduce_dim),
                                    nn.ReLU(inplace=True))
        self.part_classifier = nn.Conv2d(reduce_dim, num_parts, 1, bias=False)  # Eq. 5: W_k^T M_g(x, y)
        self.neck_part = BNNeck(reduce_dim * (num_parts - 1), num_classes)
        self.neck_fore = BNNeck(reduce_dim, num_classes)
        self.neck_global = BNNeck(reduce_dim, num_classes)
        self.attention = SpatialAttention(reduce_dim) if spatial_attention else None
        for m in list(self.reduce.modules()) + [self.part_classifier]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """M_g (Eq. 1): the reduced 1/4-resolution map the clustering and the pooling use (times the spatial
        attention mask when it is on, as in the official code)."""
        fmap = self.reduce(self.backbone(x))
        return fmap * self.attention(fmap) if self.attention is not None else fmap

    def forward(self, x: torch.Tensor, part_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`part_labels` (B, H, W) K-part labels (0 background), resized to M_g by nearest sampling: pool with
        those one-hot maps instead of the part classifier's probabilities (ground-truth parts at test time)."""
        fmap = self.feature_map(x)
        logits = self.part_classifier(fmap)
        if part_labels is None:
            probs = part_probabilities(logits)
        else:
            labels = downsample_labels(part_labels.long(), tuple(fmap.shape[-2:]))
            probs = F.one_hot(labels, self.num_parts).permute(0, 3, 1, 2).float()
        parts, fore, glob = pooled_representations(fmap, probs)
        part_feat, part_bn, part_logits = self.neck_part(parts.flatten(1))
        fore_feat, fore_bn, fore_logits = self.neck_fore(fore)
        glob_feat, glob_bn, glob_logits = self.neck_global(glob)
        out = {"fmap": fmap, "part_logits": logits}
        if self.training:
            out.update(part_feat=part_feat, part_id_logits=part_logits, fore_feat=fore_feat,
                       fore_id_logits=fore_logits, global_feat=glob_feat, global_id_logits=glob_logits)
        else:
            out.update({"parts": part_bn.view(-1, self.num_parts - 1, self.dim), "foreground": fore_bn,
                        "global": glob_bn})
        return out


# --- the method ----------------------------------------------------------------------------------------------
@METHODS.register()
class ISP(Method):
    """ISP on the shared trainer; `caches` depends on `semantics` (instance attribute)."""

    name = "isp"
    tiny_params = {"backbone": "hrnet_tiny", "reduce_dim": 16}
    ablations = ABLATIONS
    eval_ablations = EVAL_ABLATIONS
    paper_tables = {"Table 3 (IoU)": PAPER_TABLE3, "Table 4 (K)": PAPER_TABLE4, "Table 5 (semantics)": PAPER_TABLE5}
    claims = (
        Claim("learned pseudo parts beat parsing-given parts (Table 5)", "learned", "extra_info", "standard"),
        # Control: aligned vs concatenated matching of the model trained on ground-truth parts (the parsing cache),
        # pooled with them at test time too: can aligned matching gain anything on this world once the parts are
        # right?
        Claim("aligned matching beats matching all features (Table 2, w/o arm)", "k7", "wo_arm", "standard",
              control="extra_info_oracle", control_worse="extra_info_oracle_wo_arm"),
    )
    caches = {"isp_labels": ["labels"]}
    test_caches: dict[str, list[str]] = {}
    probe_caches = {"parsing": ["labels"]}  # Table 3 of the predicted parts against the parsing
    # models saved before these parameters existed upsampled that way and were evaluated with Eq. 10 as printed
    record_defaults = {"align_corners": False, "arm_form": "eq10"}

    def __init__(
        self,
        num_parts: int = 7,
        backbone: str = "hrnet_w32",
        weights: str | None = None,
        reduce_dim: int = 256,
        spatial_attention: bool = True,
        incre_modules: bool = True,
        align_corners: bool = True,
        alpha: float = 0.1,
        label_smooth: float = 0.1,
        triplet_margin: float = 0.3,
        semantics: str = "learned",
        initial: str = "model",
        period: int = 1,
        recluster_until: int | None = None,
        sharpen: bool = True,
        kmeans_iters: int = 20,
        cluster_seed: int = 0,
        cluster_chunk_images: int = 1024,
        cluster_batch_size: int = 64,
        labels_dir: str | None = None,
        matching: str = "aligned",
        arm_form: str = "official",
        flip_test: bool = False,
        test_parts: str = "learned",
    ) -> None:
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if semantics not in LABEL_KEYS:
            raise ValueError(f"isp: semantics must be one of {sorted(LABEL_KEYS)}, got {semantics!r}")
        if matching not in ("aligned", "concat", "global"):
            raise ValueError(f"isp: matching must be aligned, concat or global, got {matching!r}")
        if arm_form not in ARM_FORMS:
            raise ValueError(f"isp: arm_form must be one of {ARM_FORMS}, got {arm_form!r}")
        if test_parts not in ("learned", "oracle"):
            raise ValueError(f"isp: test_parts must be learned (the part classifier) or oracle (the parsing cache's "
                             f"ground-truth parts), got {test_parts!r}")
        if test_parts == "oracle" and num_parts not in LIP_PART_GROUPS:
            raise ValueError(f"isp: test_parts=oracle needs num_parts in {sorted(LIP_PART_GROUPS)}, got {num_parts}")
        if initial not in ("cache", "model"):
            raise ValueError(f"isp: initial must be cache (the isp_labels teacher) or model, got {initial!r}")
        if period < 1:
            raise ValueError(f"isp: period must be >= 1 epoch, got {period}")
        if semantics == "parsing" and num_parts not in LIP_PART_GROUPS:
            raise ValueError(f"isp: semantics=parsing needs num_parts in {sorted(LIP_PART_GROUPS)}, got {num_parts}")
        self.num_parts, self.backbone, self.weights, self.reduce_dim = num_parts, backbone, weights, reduce_dim
        self.spatial_attention, self.incre_modules, self.align_corners = spatial_attention, incre_modules, align_corners
        self.alpha, self.label_smooth, self.triplet_margin = alpha, label_smooth, triplet_margin
        self.semantics, self.initial = semantics, initial
        self.period, self.recluster_until = period, recluster_until
        self.sharpen, self.kmeans_iters, self.cluster_seed = sharpen, kmeans_iters, cluster_seed
        self.cluster_chunk_images, self.cluster_batch_size = cluster_chunk_images, cluster_batch_size
        self.labels_dir = Path(labels_dir) if labels_dir else None
        self.matching, self.arm_form, self.flip_test = matching, arm_form, flip_test
        self.test_parts = test_parts
        # ground-truth parts at test time: the parsing cache goes to the embedding pass (an instance attribute)
        self.test_caches = {"parsing": ["labels"]} if test_parts == "oracle" else {}
        self.label_key = LABEL_KEYS[semantics]
        learned_from_model = semantics == "learned" and initial == "model"
        self.caches = {} if learned_from_model else {self.label_key.split(".")[0]: ["labels"]}
        self.labels: np.ndarray | None = None  # current re-clustered labels (N_index, h, w), None = the cache's
        self.labels_epoch: int | None = None
        self._applied_to: Any = None

    def backbone_weights(self) -> dict[str, str]:
        return {"weights": self.backbone}

    def build_model(self, num_classes: int) -> nn.Module:
        return ISPNet(num_classes, self.num_parts, self.backbone, self.weights, self.reduce_dim,
                      self.spatial_attention, self.incre_modules, self.align_corners)

    # --- training -------------------------------------------------------------------------------------------
    def part_targets(self, batch: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Pseudo part labels at the feature-map size (nearest), from the batch key of the chosen semantics."""
        if self.label_key not in batch:
            raise KeyError(f"isp: batch has no {self.label_key!r} (caches {self.caches} not given to the trainer?)")
        labels = batch[self.label_key]
        if labels.ndim != 3:
            raise ValueError(f"isp: {self.label_key} must be (B, H, W) labels, got {tuple(labels.shape)}")
        labels = downsample_labels(labels.long(), size)
        if self.semantics == "parsing":
            return lip_to_parts(labels, self.num_parts)
        top = int(labels.max()) if labels.numel() else 0
        if top >= self.num_parts:
            raise ValueError(f"isp: {self.label_key} holds label {top} but num_parts (K) = {self.num_parts}; "
                             "rebuild the isp_labels cache with the same K")
        return labels

    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        pids = batch["pid"]
        targets = self.part_targets(batch, tuple(out["part_logits"].shape[-2:]))
        losses: dict[str, torch.Tensor] = {}
        for group in ("part", "fore", "global"):  # L_p, L_f, L_g of Eq. 7
            ce, tri = reid_loss(out[f"{group}_feat"], out[f"{group}_id_logits"], pids, self.label_smooth,
                                self.triplet_margin)
            losses[f"{group}_id"], losses[f"{group}_triplet"] = ce, tri
        losses["parsing"] = self.alpha * parsing_loss(out["part_logits"], targets)
        return losses

    # --- diagnostics -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def probe(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Table 3 per image: the official metric (`official_part_iou`, mean of a group's and its complement's
        IoU) of the part classifier's argmax against the parsing labels, beside the score of an all-background
        prediction (`floor_*`: the metric's calibration floor) and the shares of cells predicted and parsed
        foreground."""
        if "parsing.labels" not in batch:
            return {}
        pred = model(batch["image"])["part_logits"].argmax(1).cpu().numpy()
        gt = resize_labels_nearest_cv2(batch["parsing.labels"].cpu().numpy().astype(np.uint8), pred.shape[-2:])
        per_image = [official_part_iou(p[None], g[None], self.num_parts) for p, g in zip(pred, gt)]
        floor = [official_part_iou(np.zeros_like(p[None]), g[None], self.num_parts) for p, g in zip(pred, gt)]
        out = {f"pred_{name}_iou": torch.tensor([r[name] for r in per_image]) for name in per_image[0]}
        out.update({f"floor_{name}_iou": torch.tensor([r[name] for r in floor]) for name in floor[0]})
        out["pred_foreground_share"] = torch.from_numpy((pred > 0).mean(axis=(1, 2)))
        out["parsing_foreground_share"] = torch.from_numpy((gt > 0).mean(axis=(1, 2)))
        return out

    # --- re-clustering ---------------------------------------------------------------------------------------
    def should_recluster(self, epoch: int) -> bool:
        """Epoch 0 trains on the cache's labels (`initial: cache`) or clusters the initialised network
        (`initial: model`); then every `period` epochs up to `recluster_until` (exclusive)."""
        if self.semantics != "learned":
            return False
        if epoch == 0:
            return self.initial == "model"
        if epoch % self.period:
            return False
        return self.recluster_until is None or epoch < self.recluster_until

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if self.should_recluster(epoch) and self.labels_epoch != epoch:
            self.labels = self.recluster(trainer)
            self.labels_epoch = epoch
            self._save_round(epoch)
        if self.labels is not None and self._applied_to is not trainer.train_set:
            trainer.train_set.set_field(self.label_key, self.labels, "labels")
            self._applied_to = trainer.train_set

    @torch.no_grad()
    def recluster(self, trainer: Any) -> np.ndarray:
        """Cascaded clustering of the model's M_g over all training images -> labels (N_index, h, w) uint8."""
        from torch.utils.data import DataLoader, Subset

        model = trainer.model
        was_training = model.training
        model.eval()
        base = trainer.feature_loader(self.cluster_batch_size)
        ds = base.dataset
        pids = [trainer.rows[p].pid for p in ds.positions]
        loader = DataLoader(Subset(ds, identity_order(pids).tolist()), batch_size=self.cluster_batch_size,
                            shuffle=False, num_workers=base.num_workers)
        device = trainer.device
        chunker = IdentityChunker(K=self.num_parts, sharpen=self.sharpen, iters=self.kmeans_iters,
                                  seed=self.cluster_seed, chunk_images=self.cluster_chunk_images, device=device)
        labels: np.ndarray | None = None
        amp = device.type == "cuda"
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                fmap = model.feature_map(batch["image"].to(device))
            if labels is None:  # rows never trained on stay 0 (background)
                labels = np.zeros((len(trainer.rows), *fmap.shape[-2:]), dtype=np.uint8)
            rows = batch["index"].numpy()
            for done_rows, lab in chunker.add(rows, np.array([trainer.rows[int(i)].pid for i in rows]), fmap):
                labels[done_rows] = lab
        if labels is None:
            raise ValueError("isp: re-clustering found no training images")
        for done_rows, lab in chunker.finish():
            labels[done_rows] = lab
        model.train(was_training)
        log.info("isp: re-clustered %d training images into K=%d parts", len(ds.positions), self.num_parts)
        return labels

    def _save_round(self, epoch: int) -> None:
        if self.labels_dir is None or self.labels is None:
            return
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        path = self.labels_dir / f"labels_epoch{epoch:03d}.npy"
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, self.labels)
        tmp.replace(path)

    def extra_state(self) -> dict[str, Any]:
        """The current pseudo-labels as a uint8 tensor (model.pt and checkpoints load weights-only)."""
        labels = None if self.labels is None else torch.from_numpy(np.ascontiguousarray(self.labels))
        return {"labels": labels, "labels_epoch": self.labels_epoch}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        labels = state.get("labels")
        self.labels = labels.numpy() if isinstance(labels, torch.Tensor) else labels
        self.labels_epoch = state.get("labels_epoch")
        self._applied_to = None

    # --- inference --------------------------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        labels = self.oracle_part_labels(batch)
        out = model(images, part_labels=labels)
        feats = {"parts": out["parts"], "global": out["global"], "foreground": out["foreground"],
                 "visibility": self._visibility(out, labels)}
        if self.flip_test:
            flipped_labels = None if labels is None else torch.flip(labels, dims=[2])
            flipped = model(torch.flip(images, dims=[3]), part_labels=flipped_labels)
            for key in ("parts", "global", "foreground"):
                feats[key] = feats[key] + flipped[key]
            feats["visibility"] = torch.maximum(feats["visibility"], self._visibility(flipped, flipped_labels))
        return {k: v.float() for k, v in feats.items()}

    def oracle_part_labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """With test_parts=oracle: the image's ground-truth K-part labels (parsing cache, LIP_PART_GROUPS)."""
        if self.test_parts != "oracle":
            return None
        if "parsing.labels" not in batch:
            raise KeyError("isp: test_parts=oracle needs the parsing cache at test time (batch has no "
                           "'parsing.labels')")
        return lip_to_parts(batch["parsing.labels"], self.num_parts)

    def _visibility(self, out: Mapping[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        """Eq. 8 from the part classifier, or from the ground-truth parts at M_g's size (the same rule: a part is
        visible when some cell is labelled with it)."""
        if labels is None:
            return part_visibility(out["part_logits"])
        cells = downsample_labels(labels.long(), tuple(out["part_logits"].shape[-2:]))
        return part_visibility(F.one_hot(cells, self.num_parts).permute(0, 3, 1, 2).float())

    def distance(self, q: dict[str, torch.Tensor], g: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.matching == "aligned":
            return aligned_distance(q, g, self.arm_form)
        if self.matching == "global":
            return _cosine(q["global"], g["global"])
        cat_q = torch.cat([q["parts"].flatten(1), q["global"], q["foreground"]], dim=1)
        cat_g = torch.cat([g["parts"].flatten(1), g["global"], g["foreground"]], dim=1)
        return _cosine(cat_q, cat_g)

