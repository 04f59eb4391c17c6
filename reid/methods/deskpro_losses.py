"""DeSKPro's equations (Wu et al., ICIP 2022, "Identity-Sensitive Knowledge Propagation for CC-ReID").

One named function per equation, each with a hand-computed unit test in tests/test_deskpro.py:
Eq. 1-2 `cloth_irrelevant_attention` / `apply_attention` (the CSA module itself lives in deskpro.py),
Eq. 3 `non_clothing_mask`, Eq. 4 `attention_loss`, Eq. 5 `facial_knowledge_propagation`,
Eq. 6 `ce_sum` / `triplet_sum`, Eq. 7 `deskpro_total`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from reid.methods.losses import batch_hard_triplet, cross_entropy_label_smooth, kd_kl

# Clothing categories C of Eq. 3, per parsing label set. Everything else (background, hair, face, sunglasses,
# arms, legs) counts as cloth-irrelevant and gets the target 1.
# LIP (SCHP-LIP, 20 classes): 0 Background, 1 Hat, 2 Hair, 3 Glove, 4 Sunglasses, 5 Upper-clothes, 6 Dress,
# 7 Coat, 8 Socks, 9 Pants, 10 Jumpsuits, 11 Scarf, 12 Skirt, 13 Face, 14 Left-arm, 15 Right-arm, 16 Left-leg,
# 17 Right-leg, 18 Left-shoe, 19 Right-shoe.
LIP_CLOTHING: tuple[int, ...] = (1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19)
# ATR (SCHP-ATR, 18 classes): 0 Background, 1 Hat, 2 Hair, 3 Sunglasses, 4 Upper-clothes, 5 Skirt, 6 Pants,
# 7 Dress, 8 Belt, 9 Left-shoe, 10 Right-shoe, 11 Face, 12 Left-leg, 13 Right-leg, 14 Left-arm, 15 Right-arm,
# 16 Bag, 17 Scarf. The bag is carried, not worn, and is left out of C.
ATR_CLOTHING: tuple[int, ...] = (1, 4, 5, 6, 7, 8, 9, 10, 17)
CLOTHING_SETS: dict[str, tuple[int, ...]] = {"lip": LIP_CLOTHING, "atr": ATR_CLOTHING}


def cloth_irrelevant_attention(logits_map: torch.Tensor) -> torch.Tensor:
    """Eq. 1 after the convolution(s): Psi_hat = sigmoid(W * F + b), one score in (0, 1) per position."""
    return torch.sigmoid(logits_map)


def apply_attention(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Eq. 2: F_att = F (x) Psi_hat, the (B, 1, h, w) map broadcast over the channels."""
    return features * attention


def non_clothing_mask(labels: torch.Tensor, clothing: Sequence[int], epsilon: float) -> torch.Tensor:
    """Eq. 3: Psi_tilde = epsilon where the parsing label is in C (clothing), 1 elsewhere (background included).

    `labels`: integer (B, H, W) parsing map at the input resolution. Epsilon keeps the target away from 0 so
    the CSA module is not pushed to produce near-zero attention (the paper's reason for it).
    """
    if labels.dim() != 3:
        raise ValueError(f"non_clothing_mask: expected parsing labels (B, H, W), got shape {tuple(labels.shape)}")
    ids = torch.as_tensor(list(clothing), device=labels.device, dtype=labels.dtype)
    is_cloth = torch.isin(labels, ids)
    return torch.where(is_cloth, torch.full(labels.shape, float(epsilon), device=labels.device), 1.0)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. 4's Psi_tilde': the (B, H, W) mask area-averaged to the (h_f, w_f) feature grid -> (B, 1, h_f, w_f).

    Area averaging keeps each feature cell's target equal to the fraction-weighted mean of the pixels it covers
    (the public code resizes a binary JPEG bilinearly, then replaces exact zeros by 0.1; the paper applies
    epsilon first, Eq. 3, and resizes after, Eq. 4, which is what this does).
    """
    return F.adaptive_avg_pool2d(mask.float().unsqueeze(1), size)


def attention_loss(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: L_att = mean over the h_f x w_f grid of (Psi_hat - Psi_tilde')^2, averaged over the batch.

    `attention`: (B, 1, h_f, w_f) CSA output; `mask`: Eq. 3's (B, H, W) mask at any resolution (resized here).
    """
    if attention.dim() != 4 or attention.shape[1] != 1:
        raise ValueError(f"attention_loss: expected an attention map (B, 1, h, w), got {tuple(attention.shape)}")
    target = resize_mask(mask, tuple(attention.shape[-2:])).to(attention.device)
    return F.mse_loss(attention.float(), target)


def facial_knowledge_propagation(
    student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor], tau: float
) -> torch.Tensor:
    """Eq. 5: L_fkp = tau^2 * sum_i KL(S(I_t(i), tau) || S(I_s(i), tau)) over the logit set I (7 pairs).

    Each KL is averaged over the batch ('batchmean'), as in the public code; the teacher side is detached.
    """
    if len(student_logits) != len(teacher_logits):
        raise ValueError(
            f"facial_knowledge_propagation: {len(student_logits)} student vs {len(teacher_logits)} teacher logit sets"
        )
    return sum(kd_kl(s, t.detach(), tau) for s, t in zip(student_logits, teacher_logits))  # kd_kl has tau^2


def ce_sum(logits: Sequence[torch.Tensor], targets: torch.Tensor, label_smooth: float = 0.1) -> torch.Tensor:
    """Eq. 6: L_ce = sum over the logit set of the (label-smoothed) cross-entropy."""
    return sum(cross_entropy_label_smooth(z, targets, label_smooth) for z in logits)


def triplet_sum(feats: Sequence[torch.Tensor], targets: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Eq. 6: L_trip = sum over the feature set R of the batch-hard triplet loss (margin 0.7, public code)."""
    return sum(batch_hard_triplet(f, targets, margin) for f in feats)


def deskpro_total(
    l_att: torch.Tensor | float,
    l_trip: torch.Tensor | float,
    l_fkp: torch.Tensor | float,
    l_ce_s: torch.Tensor | float,
    l_ce_g: torch.Tensor | float,
    lambda_att: float,
    alpha: float,
) -> torch.Tensor | float:
    """Eq. 7: L = lambda L_att + L_trip + (alpha L_fkp + (1 - alpha) L_ce^s) + L_ce^g."""
    return lambda_att * l_att + l_trip + (alpha * l_fkp + (1.0 - alpha) * l_ce_s) + l_ce_g
