"""Losses shared by every method: label-smoothed cross-entropy, batch-hard triplet, distillation KL."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def cross_entropy_label_smooth(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Szegedy et al. label smoothing: target q = (1-eps) one-hot + eps/C, loss = -sum q log p, batch mean."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    num_classes = logits.shape[1]
    q = torch.full_like(log_probs, epsilon / num_classes)
    q.scatter_(1, targets.unsqueeze(1), 1.0 - epsilon + epsilon / num_classes)
    return -(q * log_probs).sum(dim=1).mean()


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distance matrix, clamped before the sqrt so gradients stay finite on the diagonal.

    Always float32, autocast or not: |x|^2 + |y|^2 - 2 x.y cancels catastrophically for the close pairs a
    triplet loss cares about, and a float16 / bfloat16 matmul (8 significant bits for bf16) turns a distance of
    0.5 between two features of norm 20 into noise."""
    y = x if y is None else y
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        d2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.t()
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet(
    feats: torch.Tensor, targets: torch.Tensor, margin: float | None = 0.3, normalize: bool = False
) -> torch.Tensor:
    """Hermans et al. batch-hard triplet: hardest positive and hardest negative per anchor.

    loss = mean_a max(0, margin + max_p d(a,p) - min_n d(a,n)); margin=None uses the soft-margin
    log(1 + exp(d_ap - d_an)). Anchors without a positive or a negative in the batch are ignored.
    """
    feats = feats.float()
    if normalize:
        feats = F.normalize(feats, dim=1)
    dist = pairwise_euclidean(feats)
    same = targets.unsqueeze(0) == targets.unsqueeze(1)
    eye = torch.eye(len(targets), dtype=torch.bool, device=feats.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return feats.sum() * 0.0
    d_ap = torch.where(pos_mask, dist, torch.full_like(dist, -1e9)).max(1).values
    d_an = torch.where(neg_mask, dist, torch.full_like(dist, 1e9)).min(1).values
    d_ap, d_an = d_ap[valid], d_an[valid]
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(margin + d_ap - d_an).mean()


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton distillation: KL(softmax(t/tau) || softmax(s/tau)) * tau^2, batch mean (KL 'batchmean')."""
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    p_t = F.softmax(teacher_logits.float() / tau, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * tau**2
