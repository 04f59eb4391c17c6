"""ViT-B/16 and DeiT-S for ReID (256x128), with hierarchical token sparsification (HTS, SUREID / DynamicViT).

Provenance: the architecture is ViT (Dosovitskiy et al., ICLR 2021) / DeiT (Touvron et al., ICML 2021); the
parameter names follow timm's `vit_base_patch16_224` / `deit_small_patch16_224` state dicts (`cls_token`,
`pos_embed`, `patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`) so local
ImageNet checkpoints load; the ImageNet 14x14 position grid is resized bicubically to the ReID grid (16x8 at
256x128 with stride 16; 21x10 with TransReID's overlapping stride 12). Written for this project.

HTS (SUREID Sec. III-A, following DynamicViT): a decision MLP before blocks 4, 7 and 10 (0-based 3, 6, 9)
predicts keep/drop for every image token.
- Training: all tokens stay in the sequence; hard Gumbel-softmax decisions (Eq. 2) accumulate into a mask
  (Eq. 3) that cuts the dropped tokens out of the attention of every later block (Eq. 4-6), so the model learns
  to work without them; the class-token attention of the last block reweights the tokens (Eq. 7-8).
- Inference: no Gumbel noise, no masking: at each stage the `floor(N * p^s)` best-scored tokens are gathered
  (static shapes) and the others are really removed, so later blocks cost less. With `reweight_at_test=True`
  (this module's default: train and eval compute one function) the class-token reweighting (Eq. 7-8) is applied
  here too, over the tokens kept; Sec. III-A says it is applied in training only, which is
  `reweight_at_test=False`, SUREID's default (`cls_reweight_at_test`; docs/methods.md gives the measurement).
Given `keep_scores` (B, N) (SUREID's positive control: each token's share of ground-truth person pixels), every
stage keeps the best-scored tokens by those scores instead of the decision MLP, in training (hard masks, exactly
`floor(N * p^s)` kept) and at inference alike.
Layout follows timm's order: layers -> model -> weight loading -> factories (incl. a tiny test variant).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from reid.models.resnet import load_pretrained, load_state_dict_file
from reid.models.zoo import is_random

log = logging.getLogger(__name__)

__all__ = [
    "ARCHS",
    "HTSOutput",
    "VisionTransformer",
    "adapt_vit_state_dict",
    "build_vit",
    "gumbel_keep_decision",
    "keep_counts",
    "load_vit_weights",
    "masked_softmax_attention",
    "resize_pos_embed",
    "token_coverage",
    "topk_keep",
]

# Paper's pruning locations: before the 4th, 7th and 10th transformer layers (0-based block indices).
DEFAULT_PRUNE_LAYERS: tuple[int, ...] = (3, 6, 9)


# --------------------------------------------------------------------------------------------------------------
# HTS equations as functions
# --------------------------------------------------------------------------------------------------------------
def masked_softmax_attention(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 4-6: softmax over keys where key j only counts if kept (D_j = 1) or j is the query itself.

    `logits` (B, H, N, N) = QK^T * scale; `policy` (B, N) in {0, 1} (class token always 1). G_ij = 1 if i == j
    else D_j; A~_ij = exp(A_ij) G_ij / sum_k exp(A_ik) G_ik (the paper's denominator index is a typo for k).
    The max is subtracted for stability; `eps` (DynamicViT's guard) keeps a row finite, spread uniformly.
    """
    n = logits.shape[-1]
    if policy.shape != (logits.shape[0], n):
        raise ValueError(f"masked_softmax_attention: policy shape {tuple(policy.shape)} != (B, N) = "
                         f"({logits.shape[0]}, {n})")
    eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
    gate = policy.to(logits.dtype)[:, None, None, :]
    gate = gate + (1.0 - gate) * eye  # G: the diagonal always contributes
    logits = logits - logits.amax(dim=-1, keepdim=True)
    weights = logits.exp() * gate
    return (weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)


def gumbel_keep_decision(log_probs: torch.Tensor, prev_mask: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Eq. 2-3: D = hard Gumbel-softmax(pi)[..., 1] (straight-through), D^ <- D^ * D.

    `log_probs` (B, N, 2) with index 0 = drop, 1 = keep (paper's convention); `prev_mask` (B, N) = D^ so far.
    """
    decision = F.gumbel_softmax(log_probs, tau=tau, hard=True)[..., 1]
    return decision * prev_mask


def keep_counts(num_tokens: int, ratios: list[float] | tuple[float, ...]) -> list[int]:
    """Tokens kept at each inference stage: k_s = floor(N * ratio_s), at least 1 (DynamicViT's rule).

    Ratios are relative to the ORIGINAL token count N (p, p^2, p^3), not to the previous stage. A 1e-6 slack
    guards against float error (0.7**2 * 100 = 48.999... -> 49). E.g. N = 128, p = 0.7: 89, 62, 43.
    """
    return [max(1, int(math.floor(num_tokens * r + 1e-6))) for r in ratios]


def topk_keep(tokens: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best-scored image tokens (static k) and really remove the rest with `torch.gather`.

    `tokens` (B, N, C) image tokens (no class token); `scores` (B, N). Returns (kept tokens (B, k, C) ordered by
    decreasing score, their indices (B, k) into the N input tokens).
    """
    if k > tokens.shape[1]:
        raise ValueError(f"topk_keep: k={k} > {tokens.shape[1]} tokens")
    index = torch.topk(scores, k, dim=1, largest=True, sorted=True).indices
    kept = torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return kept, index


def token_coverage(mask: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """Share of each patch token's pixels that `mask` (B, H, W) in [0, 1] covers, in the patch embedding's token
    order (B, N): the ground truth a keep decision is judged by (SUREID's oracle control and its probe)."""
    return F.avg_pool2d(mask.float().unsqueeze(1), patch_size, stride).flatten(1)


def cls_attention_reweight(x: torch.Tensor, cls_attn: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Eq. 8: x_out = x + lambda * concat(x_cls-part, Attn_cls (x) x_image) (training and inference).

    Interpretation of the paper's compact notation (stated because it is ambiguous): `cls_attn` (B, N) is the
    head-averaged class-token attention over the N image tokens (Eq. 7); the image tokens are reweighted by it
    (a_i * x_i), and the class-token slot of the concatenation receives the attention-pooled image feature
    sum_i a_i x_i, so the reweighting reaches the class token that forms the ReID feature.
    """
    x_cls, x_img = x[:, :1], x[:, 1:]
    weighted = cls_attn.unsqueeze(-1) * x_img
    pooled = weighted.sum(dim=1, keepdim=True)
    return x + lam * torch.cat([pooled, weighted], dim=1)


# --------------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Conv patch embedding; `stride < patch_size` gives TransReID's overlapping patches."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, stride: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.grid = ((img_size[0] - patch_size) // stride + 1, (img_size[1] - patch_size) // stride + 1)
        self.num_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"ViT input is {tuple(x.shape[-2:])} but the model was built for {self.img_size}: "
                             "set the method's img_size to the trainer's input size")
        return self.proj(x).flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention; with a policy it uses the masked softmax of Eq. 4-6, else fused SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, policy: torch.Tensor | None = None, want_cls_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cls_attn = None
        if policy is None and not want_cls_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if policy is None:
                attn = logits.softmax(dim=-1)
            else:
                attn = masked_softmax_attention(logits.float(), policy).to(v.dtype)
            out = attn @ v
            if want_cls_attn:  # Eq. 7: class-token row, averaged over heads, image columns
                cls_attn = attn[:, :, 0, 1:].mean(dim=1)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), cls_attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm names)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, policy: torch.Tensor | None = None, want_cls_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, cls_attn = self.attn(self.norm1(x), policy, want_cls_attn)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, cls_attn


class TokenDecision(nn.Module):
    """Eq. 1: pi = Softmax(MLP(D^ x)) (B, N, 2), index 0 drop / 1 keep; returns log-probabilities.

    As in DynamicViT the MLP sees each token's local half-feature next to a global feature averaged over the
    tokens still kept, so a token is judged in context.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.inp(tokens)
        half = h.shape[-1] // 2
        m = mask.unsqueeze(-1).to(h.dtype)
        glob = (h[..., half:] * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1e-6)
        h = torch.cat([h[..., :half], glob.expand(-1, h.shape[1], -1)], dim=-1)
        return F.log_softmax(self.out(h), dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------
@dataclass
class HTSOutput:
    """What `forward_features` returns besides the class feature.

    decisions: training: per stage the accumulated mask D^ (B, N) (Eq. 3; used by the ratio loss Eq. 9).
    keep_index: inference: per stage the kept token indices (B, k_s) into the ORIGINAL N patch tokens.
    """

    decisions: list[torch.Tensor] = field(default_factory=list)
    keep_index: list[torch.Tensor] = field(default_factory=list)


class VisionTransformer(nn.Module):
    """ViT/DeiT trunk returning the final class token (after `norm`); HTS on when `keep_ratio` is set."""

    def __init__(
        self,
        img_size: tuple[int, int] = (256, 128),
        patch_size: int = 16,
        stride: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        keep_ratio: float | None = None,
        prune_layers: tuple[int, ...] = DEFAULT_PRUNE_LAYERS,
        cls_reweight: bool = True,
        gumbel_tau: float = 1.0,
        reweight_at_test: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = self.out_dim = embed_dim
        self.patch_embed = PatchEmbed(tuple(img_size), patch_size, stride, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.hts = keep_ratio is not None
        self.prune_layers = tuple(prune_layers) if self.hts else ()
        if self.hts:
            if not 0.0 < keep_ratio <= 1.0:
                raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
            if any(not 0 < i < depth for i in self.prune_layers):
                raise ValueError(f"prune_layers {self.prune_layers} must lie in 1..{depth - 1}")
            self.keep_ratio = float(keep_ratio)
            self.ratios = [self.keep_ratio ** (s + 1) for s in range(len(self.prune_layers))]  # p, p^2, p^3
            self.decision = nn.ModuleList(TokenDecision(embed_dim) for _ in self.prune_layers)
            self.cls_reweight, self.reweight_at_test = cls_reweight, reweight_at_test
            self.reweight_lambda = nn.Parameter(torch.tensor(0.5)) if cls_reweight else None  # Eq. 8 init 0.5
            self.gumbel_tau = gumbel_tau
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward_features(self, images: torch.Tensor, keep_scores: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, HTSOutput]:
        """(class feature (B, C), HTS side outputs). `keep_scores` (B, N): keep tokens by these given scores
        (an oracle) instead of the decision MLP's."""
        x = self.embed_tokens(images)
        if not self.hts:
            if keep_scores is not None:
                raise ValueError("keep_scores given to a ViT built without HTS (keep_ratio None)")
            for blk in self.blocks:
                x = blk(x)[0]
            return self.norm(x)[:, 0], HTSOutput()
        if keep_scores is not None:
            if keep_scores.shape != x.shape[:1] + (x.shape[1] - 1,):
                raise ValueError(f"keep_scores must be (B, N) = {(x.shape[0], x.shape[1] - 1)}, got "
                                 f"{tuple(keep_scores.shape)}")
            # Ties (e.g. all-background tokens) go to the earlier token, identically in training and inference.
            n = keep_scores.shape[1]
            keep_scores = keep_scores.float() - 1e-4 * torch.arange(n, device=x.device) / n
        return self._forward_train(x, keep_scores) if self.training else self._forward_infer(x, keep_scores)

    def _forward_train(self, x: torch.Tensor, keep_scores: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, HTSOutput]:
        """All tokens kept in the sequence; dropped ones masked out of attention (Eq. 2-6), then Eq. 7-8."""
        b, n1, _ = x.shape
        mask = x.new_ones(b, n1 - 1)
        counts = keep_counts(n1 - 1, self.ratios)
        out, stage, cls_attn = HTSOutput(), 0, None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            if stage < len(self.prune_layers) and i == self.prune_layers[stage]:
                if keep_scores is None:
                    log_probs = self.decision[stage](x[:, 1:], mask)
                    mask = gumbel_keep_decision(log_probs, mask, self.gumbel_tau)
                else:  # the oracle: the best-scored of the tokens still kept, exactly as inference keeps them
                    best = torch.topk(keep_scores.masked_fill(mask == 0, -math.inf), counts[stage], dim=1).indices
                    mask = torch.zeros_like(mask).scatter_(1, best, 1.0)
                out.decisions.append(mask)
                stage += 1
            policy = torch.cat([mask.new_ones(b, 1), mask], dim=1) if stage else None
            want = self.cls_reweight and i == last
            x, attn = blk(x, policy, want)
            cls_attn = attn if want else cls_attn
        if cls_attn is not None:
            x = cls_attention_reweight(x, cls_attn, self.reweight_lambda)
        return self.norm(x)[:, 0], out

    def _forward_infer(self, x: torch.Tensor, keep_scores: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, HTSOutput]:
        """Static top-k per stage by the keep score; dropped tokens leave the sequence for good."""
        counts = keep_counts(self.patch_embed.num_patches, self.ratios)
        out, stage, cls_attn = HTSOutput(), 0, None
        last = len(self.blocks) - 1
        origin = torch.arange(x.shape[1] - 1, device=x.device).expand(x.shape[0], -1)
        for i, blk in enumerate(self.blocks):
            if stage < len(self.prune_layers) and i == self.prune_layers[stage]:
                img = x[:, 1:]
                if keep_scores is None:
                    score = self.decision[stage](img, img.new_ones(img.shape[:2]))[..., 1]
                else:
                    score = torch.gather(keep_scores, 1, origin)
                img, index = topk_keep(img, score, counts[stage])
                origin = torch.gather(origin, 1, index)
                out.keep_index.append(origin)
                x = torch.cat([x[:, :1], img], dim=1)
                stage += 1
            want = self.cls_reweight and self.reweight_at_test and i == last
            x, attn = blk(x, None, want)
            cls_attn = attn if want else cls_attn
        if cls_attn is not None:
            x = cls_attention_reweight(x, cls_attn, self.reweight_lambda)
        return self.norm(x)[:, 0], out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)[0]


# --------------------------------------------------------------------------------------------------------------
# ImageNet weights
# --------------------------------------------------------------------------------------------------------------
def resize_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix: int = 1, old_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Bicubic resize of the patch part of a (1, prefix + h*w, C) position table to `new_grid`; keeps the
    first prefix (class) entry. The old grid defaults to square (ImageNet 14x14)."""
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    if old_grid is None:
        side = int(math.isqrt(grid.shape[1]))
        if side * side != grid.shape[1]:
            raise ValueError(f"pos_embed with {grid.shape[1]} patch entries is not a square grid; pass old_grid")
        old_grid = (side, side)
    c = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], c).to(pos_embed.dtype)
    return torch.cat([prefix[:, :1], grid], dim=1)


def adapt_vit_state_dict(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Make a timm/DeiT ImageNet state dict fit the ReID model: drop classifier heads and the DeiT
    distillation token, resize the position table to the model's patch grid."""
    num_prefix = 2 if "dist_token" in state else 1  # DeiT distilled checkpoints: (cls, dist) prefix
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm.", "dist_token"))}
    if "pos_embed" in state:
        pe = state["pos_embed"]
        if pe.ndim != 3 or pe.shape[-1] != model.embed_dim:
            raise ValueError(f"pos_embed in checkpoint has shape {tuple(pe.shape)}; model dim is {model.embed_dim}"
                             " (wrong architecture for these weights?)")
        if pe.shape[1] - num_prefix != model.patch_embed.num_patches or num_prefix != 1:
            state["pos_embed"] = resize_pos_embed(pe, model.patch_embed.grid, num_prefix)
    return state


def load_vit_weights(model: VisionTransformer, path: str | Path, what: str = "ViT") -> None:
    """Load a local ImageNet ViT/DeiT checkpoint (timm names) non-strictly, logging missing/unexpected keys.

    Mirrors `reid.models.resnet.load_pretrained` (which cannot resize pos_embed: it skips shape mismatches);
    the HTS decision MLPs and the reweight lambda are new and expected to be missing.
    """
    state = adapt_vit_state_dict(load_state_dict_file(path), model)
    own = model.state_dict()
    mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatch:
        raise ValueError(f"{what}: {path} has tensors of the wrong shape for this architecture, e.g. "
                         f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in mismatch[:3]]}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("decision.", "reweight_lambda"))]
    log.info("%s: loaded %d tensors from %s", what, len(state) - len(result.unexpected_keys), path)
    if missing:
        log.warning("%s: %d missing keys (e.g. %s)", what, len(missing), missing[:5])
    if result.unexpected_keys:
        log.warning("%s: %d unexpected keys (e.g. %s)", what, len(result.unexpected_keys), result.unexpected_keys[:5])
    if len(state) == len(result.unexpected_keys):
        raise ValueError(f"{what}: no tensor of {path} matches the model; is it a timm ViT/DeiT checkpoint?")


# --------------------------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------------------------
ARCHS: dict[str, dict[str, int]] = {
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},   # timm vit_base_patch16_224
    "deit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},  # timm deit_small_patch16_224
    "deit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},   # timm deit_tiny_patch16_224
    "vit_tiny_test": {"embed_dim": 64, "depth": 12, "num_heads": 2},  # CPU tests; depth 12 so 4/7/10 apply
}


def build_vit(
    arch: str,
    img_size: tuple[int, int] = (256, 128),
    stride: int = 16,
    weights: str | Path | None = None,
    keep_ratio: float | None = None,
    drop_path_rate: float = 0.0,
    **kwargs: object,
) -> VisionTransformer:
    """Build a registered ViT variant (16-px patches) and load ImageNet weights from a local file if named."""
    if arch not in ARCHS:
        raise KeyError(f"unknown ViT arch {arch!r}; choose one of {sorted(ARCHS)}")
    model = VisionTransformer(img_size=tuple(img_size), patch_size=16, stride=stride, keep_ratio=keep_ratio,
                              drop_path_rate=drop_path_rate, **ARCHS[arch], **kwargs)
    if weights and not is_random(weights):
        load_vit_weights(model, weights, what=arch)
    else:
        load_pretrained(model, weights, arch)  # random by choice (logged) or not chosen (the loud warning)
    return model


# --- the pretrain stage's ImageNet classifier (reid/engine/pretrain.py) -------------------------------------


class ViTClassifier(nn.Module):
    """ViT/DeiT trunk (class token) + `head`, timm's names."""

    def __init__(self, arch: str, img_size: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        self.vit = VisionTransformer(img_size=tuple(img_size), patch_size=16, stride=16, **ARCHS[arch])
        self.head = nn.Linear(self.vit.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(x))

    def official_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("vit."): v for k, v in self.state_dict().items()}


def imagenet_classifier(arch: str, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """A DeiT/ViT image classifier with timm's names (the pretrain stage)."""
    return ViTClassifier(arch, input_size, num_classes)
