"""SUREID (Song, "A Deep Hierarchical Feature Sparse Framework for Occluded Person Re-Identification"):
a DeiT-S/ViT student with hierarchical token sparsification (HTS), distilled from a cached ViT teacher (NPKD),
trained on a batch doubled by noise-occlusion augmentation (NODA).

Two registered methods:
- `sureid_teacher`: ViT-B/16 + BNNeck trained with ID + triplet by the shared trainer (no HTS). Its
  `cache_outputs` writes, for every index row, the pre-BN class feature and the logits for the image as is
  (view 0) and mirrored (view 1) -> cache `vit_teacher` with fields `feat` (2, D) and `logits` (2, K).
- `sureid`: the student. Reads "vit_teacher.feat" / "vit_teacher.logits" and picks the view by `flipped`.

Cached-teacher approximation (stated, because the paper runs its teacher online on the augmented batch): the
teacher view is the test-transform image (resize only) or its mirror, so the student's random crop/padding, random
erasing and NODA occluders are NOT seen by the teacher. The flip is the one augmentation that changes which
side of the body a feature describes, so it is the one reproduced (2 views); crop offsets are a few pixels and
occlusions are exactly what the student should learn to ignore, so distilling the clean-image teacher output
into the occluded copy is the intended target of NPKD. Caching only these two views keeps the cache at
2 x (D + K) floats per row.

Equations (named functions below, each unit-tested by hand): Eq. 1-8 live in reid/models/vit.py
(`masked_softmax_attention`, `gumbel_keep_decision`, `cls_attention_reweight`, `topk_keep`); here Eq. 9
`ratio_loss`, Eq. 11-12 `npkd_logit_kl`, Eq. 13 `align_features` + `npkd_feature_loss` + `npkd_loss`, Eq. 14
`sureid_objective`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from reid.cache.h5 import Field
from reid.data.occluders import load_occluders, paste_occluders
from reid.methods.base import METHODS, Claim, Method, parsing_person
from reid.methods.losses import batch_hard_triplet, cross_entropy_label_smooth, kd_kl
from reid.models.heads import BNNeck
from reid.models.vit import ARCHS, DEFAULT_PRUNE_LAYERS, VisionTransformer, build_vit, token_coverage

__all__ = [
    "ABLATIONS",
    "CONTROLS",
    "EVAL_ABLATIONS",
    "EVAL_VARIANTS",
    "PAPER_TABLES",
    "SUREID",
    "SUREIDTeacher",
    "ViTReIDNet",
    "align_features",
    "npkd_feature_loss",
    "npkd_logit_kl",
    "npkd_loss",
    "pick_view",
    "ratio_loss",
    "sureid_objective",
]

TEACHER = "vit_teacher"  # cache name (= file stem cache/<dataset>/vit_teacher.h5)
ALIGN_MODES = ("interp", "pool", "linear")
ALIGN_DIRECTIONS = ("t2s", "s2t")
FEAT_REDUCTIONS = ("mean", "sum")  # NPKD's feature term: DynamicViT's per-element mean | Eq. 13 as printed
TEACHER_INITS = ("run", "pretrained")  # NPKD's teacher: trained from the student's own init | the pretrained one
KEEP_BY = ("learned", "parsing")  # HTS keep decisions: the decision MLPs (the paper) | person pixels (the control)


# --------------------------------------------------------------------------------------------------------------
# Equations
# --------------------------------------------------------------------------------------------------------------
def ratio_loss(decisions: list[torch.Tensor], ratios: list[float]) -> torch.Tensor:
    """Eq. 9: L_ratio = 1/B sum_b sum_j (p^j - 1/N sum_i D^_i^{b,j})^2 over the S pruning stages."""
    if len(decisions) != len(ratios):
        raise ValueError(f"ratio_loss: {len(decisions)} decision masks for {len(ratios)} target ratios")
    terms = [(r - d.float().mean(dim=1)).pow(2) for d, r in zip(decisions, ratios)]
    return torch.stack(terms, dim=1).sum(dim=1).mean()


def npkd_logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 11-12: KL(sigma(g^t / T) || sigma(g^s / T)), batch mean, times T^2 (Hinton's gradient scale; the
    paper uses T = 1 where the factor is 1)."""
    return kd_kl(student_logits, teacher_logits, temperature)


def align_features(x: torch.Tensor, dim: int, mode: str = "interp") -> torch.Tensor:
    """The non-parametric projector I(.) of Eq. 13: resize a (B, D) feature to (B, dim) along the channel axis.

    `interp`: 1-D linear interpolation (align_corners=False), so halving 768 -> 384 averages neighbour pairs;
    `pool`: adaptive average pooling (Table VI's pooling alternative). The learned `linear` alternative is a
    module of the student network (ViTReIDNet.align_proj), not this function.
    """
    if x.shape[1] == dim:
        return x
    if mode == "interp":
        return F.interpolate(x.unsqueeze(1), size=dim, mode="linear", align_corners=False).squeeze(1)
    if mode == "pool":
        return F.adaptive_avg_pool1d(x.unsqueeze(1), dim).squeeze(1)
    raise ValueError(f"align_features: mode {mode!r} is not non-parametric; choose 'interp' or 'pool'")


def npkd_feature_loss(student_feat: torch.Tensor, target_feat: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 13 feature term, averaged over the batch. `mean` (default): the per-element mean squared error of
    DynamicViT's token distillation, the code SUREID's HTS follows (SUREID has no public code); `sum`:
    ||f^s - I(f^t)||_2^2 as printed, D times larger: a D = 384 DeiT-S feature starts at ~170 against ReID losses
    of ~8 and drowns them (docs/results.md, "NPKD against a stronger teacher")."""
    if student_feat.shape != target_feat.shape:
        raise ValueError(f"npkd_feature_loss: shapes {tuple(student_feat.shape)} vs {tuple(target_feat.shape)}")
    if reduction not in FEAT_REDUCTIONS:
        raise ValueError(f"npkd_feature_loss: reduction must be one of {FEAT_REDUCTIONS}, got {reduction!r}")
    squared = (student_feat.float() - target_feat.float()).pow(2)
    return squared.sum(dim=1).mean() if reduction == "sum" else squared.mean()


def npkd_loss(kl: torch.Tensor, feat_l2: torch.Tensor, kl_weight: float = 0.1) -> torch.Tensor:
    """Eq. 13: L_KLD = lambda * L_KL + ||f^s - I(f^t)||^2 (lambda = 0.1 in the paper)."""
    return kl_weight * kl + feat_l2


def sureid_objective(
    terms: dict[str, torch.Tensor],
    alpha: float = 1.0,
    beta: float = 1.0,
    kl_weight: float = 0.1,
    ratio_weight: float = 2.0,
    feat_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Eq. 14 as weighted terms (their sum is the total):
    L = alpha * (L_KD + lambda_ratio * L_ratio) + beta * (L_cls + L_tri), with L_KD = Eq. 13.

    `terms` holds the raw losses present: "id", "triplet", optional "kd_kl", "kd_feat", "ratio".
    """
    scale = {"id": beta, "triplet": beta, "kd_kl": alpha * kl_weight, "kd_feat": alpha * feat_weight,
             "ratio": alpha * ratio_weight}
    unknown = set(terms) - set(scale)
    if unknown:
        raise KeyError(f"sureid_objective: unknown loss terms {sorted(unknown)}")
    return {k: scale[k] * v for k, v in terms.items()}


def pick_view(views: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Select view 1 (mirrored) where the student image was flipped, else view 0, from (B, 2, ...) cached rows."""
    if views.ndim < 2 or views.shape[1] != 2:
        raise ValueError(f"cached teacher output must be (B, 2, ...) with a view axis, got {tuple(views.shape)}")
    idx = flipped.to(device=views.device, dtype=torch.long)
    return views[torch.arange(views.shape[0], device=views.device), idx]


# --------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------
class ViTReIDNet(nn.Module):
    """ViT trunk -> class token -> BNNeck (Eq. 10: g = W BN(f)). Train: dict(feat, logits, decisions);
    eval: the post-BN feature (`test_feat="bn"`) or the pre-BN one."""

    def __init__(self, backbone: VisionTransformer, num_classes: int, test_feat: str = "bn",
                 align_proj: nn.Module | None = None) -> None:
        super().__init__()
        if test_feat not in ("bn", "pre"):
            raise ValueError(f"test_feat must be 'bn' or 'pre', got {test_feat!r}")
        self.backbone, self.test_feat = backbone, test_feat
        self.neck = BNNeck(backbone.out_dim, num_classes)
        self.align_proj = align_proj  # Table VI's learned linear alignment (absent for the paper's setting)

    def outputs(self, images: torch.Tensor, keep_scores: torch.Tensor | None = None) -> dict[str, Any]:
        feat, hts = self.backbone.forward_features(images, keep_scores)
        feat, bn_feat, logits = self.neck(feat)
        return {"feat": feat, "bn_feat": bn_feat, "logits": logits, "decisions": hts.decisions,
                "keep_index": hts.keep_index}

    def forward(self, images: torch.Tensor, keep_scores: torch.Tensor | None = None) -> dict[str, Any] | torch.Tensor:
        if self.training:
            return self.outputs(images, keep_scores)
        feat, _ = self.backbone.forward_features(images, keep_scores)
        return self.neck.bn(feat) if self.test_feat == "bn" else feat


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / compiled wrappers


class _ViTMethod(Method):
    """Shared parameters and helpers of the teacher and the student."""

    def _weights_for(self, arch: str) -> str | None:
        """The `<arch>_weights` parameter (ImageNet file, pretrain stand-in or `random`); None for test archs."""
        return getattr(self, f"{arch}_weights", None)

    def backbone_weights(self) -> dict[str, str]:
        return {f"{self.arch}_weights": self.arch} if hasattr(self, f"{self.arch}_weights") else {}

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Post-BN class feature; flip TTA (sum) only when `flip_test` (the paper does not use it)."""
        if self.flip_test:
            return super().embed(model, batch)
        return {"feat": model(batch["image"])}

    def _id_triplet(self, out: dict[str, Any], pid: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"id": cross_entropy_label_smooth(out["logits"], pid, self.label_smooth),
                "triplet": batch_hard_triplet(out["feat"], pid, self.triplet_margin)}


# --------------------------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------------------------
@METHODS.register()
class SUREIDTeacher(_ViTMethod):
    """The ViT teacher (paper: ViT-B/16 trained on the same dataset); ID + triplet, no HTS."""

    name = "sureid_teacher"
    tiny_params = {"arch": "vit_tiny_test", "img_size": [64, 32]}
    provides_cache = TEACHER

    def __init__(
        self,
        arch: str = "vit_base",
        vit_base_weights: str | None = None,
        deit_small_weights: str | None = None,
        deit_tiny_weights: str | None = None,
        img_size: tuple[int, int] | list[int] = (256, 128),
        patch_stride: int = 16,
        drop_path_rate: float = 0.1,
        label_smooth: float = 0.1,
        triplet_margin: float = 0.3,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        test_feat: str = "bn",
        flip_test: bool = False,
    ) -> None:
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if arch not in ARCHS:
            raise KeyError(f"sureid_teacher: unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        self.arch, self.img_size, self.patch_stride = arch, tuple(img_size), patch_stride
        self.vit_base_weights, self.deit_small_weights = vit_base_weights, deit_small_weights
        self.deit_tiny_weights = deit_tiny_weights
        self.drop_path_rate, self.label_smooth, self.triplet_margin = drop_path_rate, label_smooth, triplet_margin
        self.id_weight, self.triplet_weight = id_weight, triplet_weight
        self.test_feat, self.flip_test = test_feat, flip_test

    def build_model(self, num_classes: int) -> nn.Module:
        backbone = build_vit(self.arch, self.img_size, self.patch_stride, self._weights_for(self.arch),
                             keep_ratio=None, drop_path_rate=self.drop_path_rate)
        return ViTReIDNet(backbone, num_classes, self.test_feat)

    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        raw = self._id_triplet(model(batch["image"]), batch["pid"])
        return {"id": self.id_weight * raw["id"], "triplet": self.triplet_weight * raw["triplet"]}

    def cache_fields(self, num_classes: int) -> dict[str, Field]:
        """Per row: pre-BN class feature and logits, view 0 = as is, view 1 = mirrored."""
        dim = ARCHS[self.arch]["embed_dim"]
        return {"feat": Field((2, dim), "float32", "vector"), "logits": Field((2, num_classes), "float32", "vector")}

    @torch.no_grad()
    def cache_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        net = _unwrap(model)
        net.eval()
        images = batch["image"]
        plain, mirror = net.outputs(images), net.outputs(torch.flip(images, dims=[3]))
        return {key: torch.stack([plain[key], mirror[key]], dim=1).float().cpu() for key in ("feat", "logits")}


# --------------------------------------------------------------------------------------------------------------
# Student
# --------------------------------------------------------------------------------------------------------------
@METHODS.register()
class SUREID(_ViTMethod):
    """HTS student + NPKD from the cached teacher + NODA; Eq. 14 objective.

    Switches for the ablations: `hts` (Table IV/VII), `keep_ratio` (Table V), `npkd`, `align` and
    `align_direction` (Table VI), `noda` (Table IV/VII). Without NPKD the teacher cache is not read.
    """

    name = "sureid"
    tiny_params = {"arch": "vit_tiny_test", "img_size": [64, 32], "teacher_dim": 64}
    caches = {TEACHER: ["feat", "logits"]}
    # models saved before these parameters existed distilled that way and deployed the reweighting
    record_defaults = {"kd_feat_reduction": "sum", "cls_reweight_at_test": True}

    def __init__(
        self,
        arch: str = "deit_small",
        deit_small_weights: str | None = None,
        vit_base_weights: str | None = None,
        deit_tiny_weights: str | None = None,
        img_size: tuple[int, int] | list[int] = (256, 128),
        patch_stride: int = 16,
        drop_path_rate: float = 0.1,
        hts: bool = True,
        keep_ratio: float = 0.7,
        prune_layers: tuple[int, ...] | list[int] = DEFAULT_PRUNE_LAYERS,
        cls_reweight: bool = True,
        cls_reweight_at_test: bool = False,
        gumbel_tau: float = 1.0,
        keep_by: str = "learned",
        npkd: bool = True,
        kd_temperature: float = 1.0,
        kd_logit_weight: float = 0.1,
        kd_feat_weight: float = 1.0,
        kd_feat_reduction: str = "mean",
        align: str = "interp",
        align_direction: str = "t2s",
        teacher_dim: int = 768,
        teacher_init: str = "run",
        noda: bool = True,
        occluder_dir: str | None = None,
        occluder_pool: str = "train",
        noda_prob: float = 1.0,
        noda_jitter: float = 0.2,
        noda_seed: int = 0,
        occluder_max_size: int = 128,
        alpha: float = 1.0,
        beta: float = 1.0,
        ratio_weight: float = 2.0,
        label_smooth: float = 0.1,
        triplet_margin: float = 0.3,
        test_feat: str = "bn",
        flip_test: bool = False,
    ) -> None:
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if arch not in ARCHS:
            raise KeyError(f"sureid: unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        if keep_by not in KEEP_BY:
            raise ValueError(f"sureid: keep_by must be one of {KEEP_BY}, got {keep_by!r}")
        if keep_by == "parsing" and not hts:
            raise ValueError("sureid: keep_by=parsing chooses which tokens HTS keeps: it needs hts: true")
        if kd_feat_reduction not in FEAT_REDUCTIONS:
            raise ValueError(f"sureid: kd_feat_reduction must be one of {FEAT_REDUCTIONS}, got {kd_feat_reduction!r}")
        if teacher_init not in TEACHER_INITS:
            raise ValueError(f"sureid: teacher_init must be one of {TEACHER_INITS}, got {teacher_init!r}")
        if align not in ALIGN_MODES or align_direction not in ALIGN_DIRECTIONS:
            raise ValueError(f"sureid: align must be in {ALIGN_MODES} and align_direction in {ALIGN_DIRECTIONS}, "
                             f"got {align!r}, {align_direction!r}")
        self.arch, self.img_size, self.patch_stride = arch, tuple(img_size), patch_stride
        self.deit_small_weights, self.vit_base_weights = deit_small_weights, vit_base_weights
        self.deit_tiny_weights = deit_tiny_weights
        self.drop_path_rate, self.hts, self.keep_ratio = drop_path_rate, hts, keep_ratio
        self.prune_layers, self.cls_reweight, self.gumbel_tau = tuple(prune_layers), cls_reweight, gumbel_tau
        self.cls_reweight_at_test = cls_reweight_at_test
        self.keep_by = keep_by
        self.npkd, self.kd_temperature = npkd, kd_temperature
        self.kd_logit_weight, self.kd_feat_weight = kd_logit_weight, kd_feat_weight
        self.kd_feat_reduction = kd_feat_reduction
        self.align, self.align_direction, self.teacher_dim = align, align_direction, teacher_dim
        if occluder_pool not in ("train", "test"):
            raise ValueError(f"sureid: occluder_pool must be train (occluder_dir) or test (its sibling "
                             f"<occluder_dir>_test: the test images' occluders, an upper bound), got {occluder_pool!r}")
        if occluder_pool == "test" and occluder_dir:  # the synthetic worlds' layout: occluders/ and occluders_test/
            occluder_dir = str(Path(occluder_dir).with_name(Path(occluder_dir).name + "_test"))
        self.noda, self.occluder_dir, self.noda_prob, self.noda_jitter = noda, occluder_dir, noda_prob, noda_jitter
        self.occluder_max_size = occluder_max_size
        self.alpha, self.beta, self.ratio_weight = alpha, beta, ratio_weight
        self.label_smooth, self.triplet_margin = label_smooth, triplet_margin
        self.test_feat, self.flip_test = test_feat, flip_test
        self.caches = {TEACHER: ["feat", "logits"]} if npkd else {}  # instance override: no teacher needed
        self.teacher_pretrained = True if teacher_init == "pretrained" else None  # read by reid.pipeline.layout
        if keep_by == "parsing":  # the oracle reads the person mask in training and at test time
            self.caches = {**self.caches, "parsing": ["labels"]}
            self.test_caches = {"parsing": ["labels"]}
        self.probe_caches = {"parsing": ["labels"]} if hts else {}
        self.probe_groundtruth = ("occluder",) if hts else ()
        self._noda_gen = torch.Generator().manual_seed(noda_seed)
        self._occluders: dict[str, list[torch.Tensor]] = {}

    # --- model ---------------------------------------------------------------------------------------------
    def build_model(self, num_classes: int) -> nn.Module:
        backbone = build_vit(
            self.arch, self.img_size, self.patch_stride, self._weights_for(self.arch),
            keep_ratio=self.keep_ratio if self.hts else None, drop_path_rate=self.drop_path_rate,
            prune_layers=self.prune_layers, cls_reweight=self.cls_reweight, gumbel_tau=self.gumbel_tau,
            reweight_at_test=self.cls_reweight_at_test,
        )
        proj = None
        if self.npkd and self.align == "linear":
            s_dim = backbone.out_dim
            proj = (nn.Linear(self.teacher_dim, s_dim) if self.align_direction == "t2s"
                    else nn.Linear(s_dim, self.teacher_dim))
        return ViTReIDNet(backbone, num_classes, self.test_feat, proj)

    # --- NODA ----------------------------------------------------------------------------------------------
    def occluders(self, device: torch.device) -> list[torch.Tensor]:
        """The occluder set, read once and kept on `device` (errors name the folder)."""
        key = str(device)
        if key not in self._occluders:
            if not self.occluder_dir:
                raise ValueError("sureid: noda=True needs occluder_dir (a folder of occluder images, e.g. "
                                 "<synthetic world root>/occluders); set noda: false to train without NODA")
            cpu = load_occluders(self.occluder_dir, self.occluder_max_size)
            self._occluders[key] = [o.to(device) for o in cpu]
        return self._occluders[key]

    def _double_with_noda(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Paper: the batch is duplicated; the second copy gets NODA. Labels/teacher targets are repeated."""
        images = batch["image"]
        occluded, _, cover = paste_occluders(images, self.occluders(images.device), self._noda_gen,
                                             prob=self.noda_prob, jitter=self.noda_jitter)
        out = {"image": torch.cat([images, occluded]), "pid": batch["pid"].repeat(2),
               "flipped": batch["flipped"].repeat(2)}
        for key in (f"{TEACHER}.feat", f"{TEACHER}.logits"):
            if key in batch:
                out[key] = torch.cat([batch[key], batch[key]])
        if "parsing.labels" in batch:  # the person mask of the occluded copy loses what the occluder covers
            person = self.person_mask(batch)
            out["person"] = torch.cat([person, person * (1 - cover)])
        return out

    # --- the oracle control (keep_by=parsing) ------------------------------------------------------------------
    def person_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H, W) 1 on person pixels (any non-background parsing label) at the image size; a batch that NODA
        doubled carries its own ("person": the occluded copy's mask has the pasted occluder cut out)."""
        if "person" in batch:
            return batch["person"]
        person = parsing_person(batch, "sureid (keep_by=parsing)")[:, None]
        size = tuple(batch["image"].shape[-2:])
        if tuple(person.shape[-2:]) != size:
            person = F.interpolate(person, size=size, mode="nearest")
        return person[:, 0]

    @staticmethod
    def mask_coverage(model: nn.Module, mask: torch.Tensor) -> torch.Tensor:
        """(B, N) share of `mask`'s pixels (B, H, W) in every patch token of `model`'s patch embedding."""
        embed = _unwrap(model).backbone.patch_embed
        return token_coverage(mask, embed.proj.kernel_size[0], embed.proj.stride[0])

    def person_coverage(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) share of person pixels of every patch token."""
        return self.mask_coverage(model, self.person_mask(batch))

    def keep_scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The oracle's keep score of every token: its share of person pixels; None for the learned HTS."""
        return self.person_coverage(model, batch) if self.keep_by == "parsing" else None

    # --- inference and diagnostics ----------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The post-BN class feature (flip TTA when `flip_test`); the oracle keeps tokens by the person mask,
        mirrored with the image."""
        if self.keep_by == "learned":
            return super().embed(model, batch)
        image = batch["image"]
        feat = model(image, self.keep_scores(model, batch))
        if self.flip_test:
            mirrored = {"image": torch.flip(image, dims=[3]), "person": torch.flip(self.person_mask(batch), dims=[2])}
            feat = feat + model(mirrored["image"], self.keep_scores(model, mirrored))
        return {"feat": feat}

    def export_inputs(self, input_size: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], str]]:
        if self.keep_by == "parsing":
            raise ValueError("sureid keep_by=parsing is a positive control that reads the ground-truth parsing at "
                             "test time: it is not a deployable model and is not exported")
        return super().export_inputs(input_size)

    @torch.no_grad()
    def probe(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Which tokens HTS drops, per image: the person share (parsing labels > 0) of all tokens, of the tokens
        dropped at each stage and of those kept to the end; on a synthetic world also the occluder share (its
        ground-truth occluder mask). Dropping occluders and background first puts the dropped person share below
        the all-token share and the dropped occluder share above it; a decision blind to both leaves them equal."""
        net = _unwrap(model)
        if not self.hts or "parsing.labels" not in batch:
            return {}
        cover = {"person": self.person_coverage(model, batch)}
        if "groundtruth.occluder" in batch:
            cover["occluder"] = self.mask_coverage(model, batch["groundtruth.occluder"].float())
        _, hts = net.backbone.forward_features(batch["image"], cover["person"] if self.keep_by == "parsing" else None)
        out = {f"{what}_share_all_tokens": c.mean(1) for what, c in cover.items()}
        kept_before = torch.ones_like(cover["person"], dtype=torch.bool)
        for s, index in enumerate(hts.keep_index, start=1):
            kept = torch.zeros_like(kept_before).scatter_(1, index, True)
            dropped = kept_before & ~kept
            for what, c in cover.items():
                out[f"{what}_share_dropped_stage{s}"] = (c * dropped).sum(1) / dropped.sum(1).clamp_min(1)
            kept_before = kept
        for what, c in cover.items():
            out[f"{what}_share_kept_final"] = (c * kept_before).sum(1) / kept_before.sum(1).clamp_min(1)
        return out

    # --- training ------------------------------------------------------------------------------------------
    def _teacher_targets(self, batch: dict[str, torch.Tensor], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        for key in (f"{TEACHER}.feat", f"{TEACHER}.logits"):
            if key not in batch:
                raise KeyError(f"sureid: batch lacks {key!r}; run the teacher-outputs rule for cache "
                               f"{TEACHER!r} (made by method sureid_teacher) or set npkd: false")
        feat_t = pick_view(batch[f"{TEACHER}.feat"].float(), batch["flipped"])
        logits_t = pick_view(batch[f"{TEACHER}.logits"].float(), batch["flipped"])
        if logits_t.shape[1] != num_classes:
            raise ValueError(f"{TEACHER}.logits has {logits_t.shape[1]} classes but the student has "
                             f"{num_classes}: the teacher was trained on a different training split")
        if feat_t.shape[1] != self.teacher_dim and self.align == "linear":
            raise ValueError(f"{TEACHER}.feat is {feat_t.shape[1]}-d but teacher_dim = {self.teacher_dim}")
        return feat_t, logits_t

    def _feature_pair(self, net: ViTReIDNet, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring student and teacher features to a common dimension (Table VI: direction x method)."""
        if self.align == "linear":
            return (f_s, net.align_proj(f_t)) if self.align_direction == "t2s" else (net.align_proj(f_s), f_t)
        if self.align_direction == "t2s":
            return f_s, align_features(f_t, f_s.shape[1], self.align)
        return align_features(f_s, f_t.shape[1], self.align), f_t

    def training_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        if self.noda:
            batch = self._double_with_noda(batch)
        net = _unwrap(model)
        out = model(batch["image"], self.keep_scores(model, batch))
        raw = self._id_triplet(out, batch["pid"])
        if self.hts and self.keep_by == "learned":  # the oracle keeps exactly floor(N p^s): nothing to learn
            raw["ratio"] = ratio_loss(out["decisions"], net.backbone.ratios)
        if self.npkd:
            feat_t, logits_t = self._teacher_targets(batch, out["logits"].shape[1])
            f_s, f_t = self._feature_pair(net, out["feat"], feat_t)
            raw["kd_kl"] = npkd_logit_kl(out["logits"], logits_t, self.kd_temperature)
            raw["kd_feat"] = npkd_feature_loss(f_s, f_t, self.kd_feat_reduction)
        return sureid_objective(raw, self.alpha, self.beta, self.kd_logit_weight, self.ratio_weight,
                                self.kd_feat_weight)


# --------------------------------------------------------------------------------------------------------------
# Ablations (param overrides of `sureid`) and the paper's numbers (Occluded-DukeMTMC)
# --------------------------------------------------------------------------------------------------------------
_BASELINE = {"hts": False, "npkd": False, "noda": False}
ABLATIONS: dict[str, dict[str, Any]] = {
    # Table IV: components (DeiT-S student)
    "t4_vanilla": dict(_BASELINE),
    "t4_hts": {"hts": True, "npkd": False, "noda": False},
    "t4_hts_npkd": {"hts": True, "npkd": True, "noda": False},
    "t4_sureid": {},
    # Table V: keep ratio p (stages keep p, p^2, p^3); p = 0.7 is `t4_sureid` (below)
    **{f"t5_p{round(p * 100)}": {"keep_ratio": p} for p in (0.5, 0.6, 0.8, 0.9)},
    # Table VI: feature alignment of NPKD; t2s interp is `t4_sureid` (below)
    "t6_s2t_linear": {"align": "linear", "align_direction": "s2t"},
    "t6_t2s_linear": {"align": "linear", "align_direction": "t2s"},
    "t6_s2t_interp": {"align": "interp", "align_direction": "s2t"},
    # Table VII: NODA. The paper's "Vanilla ViT" rows (61.9 R1) differ from Table IV's vanilla DeiT (57.6), so
    # they are read as a ViT-B/16 backbone; the SUViT/SUReID rows are the DeiT-S student of Table IV.
    "t7_vanilla_vit": {**_BASELINE, "arch": "vit_base"},
    "t7_vanilla_vit_noda": {"hts": False, "npkd": False, "noda": True, "arch": "vit_base"},
}
# Positive control (not in the paper's tables): SUREID whose HTS keeps tokens by their share of ground-truth person
# pixels (the parsing cache; NODA's pasted occluders cut out) in training and at test time.
CONTROLS: dict[str, dict[str, Any]] = {
    "oracle_hts": {"keep_by": "parsing"},
    # NPKD's control: HTS + NPKD distilled from the pretrained DeiT-S teacher whatever the student's init. From
    # scratch that teacher is stronger than the student (as the paper's ViT-B is), so this row shows whether the
    # distillation path can transfer what a better teacher knows; under `--pretrained` it is `t4_hts_npkd` itself.
    "strong_teacher_npkd": {"hts": True, "npkd": True, "noda": False, "teacher_init": "pretrained"},
    # the same with Eq. 13's feature term as printed (see npkd_feature_loss)
    "strong_teacher_npkd_sum": {"hts": True, "npkd": True, "noda": False, "teacher_init": "pretrained",
                                "kd_feat_reduction": "sum"},
    # NODA's control, an upper bound: SUREID whose NODA pastes the very occluders of the test images (a synthetic
    # world's occluders_test/, other pedestrians included) instead of the training pool. The learned NODA cannot
    # do better; if this cannot beat HTS + NPKD either, the world cannot show what NODA adds.
    "noda_test_pool": {"occluder_pool": "test"},
}
# Rows outside the paper's tables that are not controls: the learned form under the paper's printed reading.
VARIANTS: dict[str, dict[str, Any]] = {"t4_hts_npkd_sum": {**ABLATIONS["t4_hts_npkd"], "kd_feat_reduction": "sum"}}
# Rows of Tables V-VII that are the very configuration of a Table IV row: they reuse its model (same seed), so the
# same network is not trained again (see reid.pipeline.params.model_run).
EVAL_ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "t5_p70": ("t4_sureid", {}),
    "t6_t2s_interp": ("t4_sureid", {}),
    "t7_suvit_wo_noda": ("t4_hts_npkd", {}),
    "t7_sureid": ("t4_sureid", {}),
}
# Test-time variants outside the tables. The default follows Sec. III-A: the class-token reweighting (Eq. 7-8) in
# training only; this row deploys the same model with it (docs/methods.md: the measurement behind the default).
EVAL_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "reweight_at_test": ("t4_sureid", {"cls_reweight_at_test": True}),
}

PAPER_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "IV": {
        "t4_vanilla": {"throughput": 1074, "R1": 57.6, "mAP": 49.2},
        "t4_hts": {"throughput": 1585, "R1": 55.6, "mAP": 46.7},
        "t4_hts_npkd": {"throughput": 1585, "R1": 64.8, "mAP": 53.2},
        "t4_sureid": {"throughput": 1585, "R1": 65.8, "mAP": 54.9},
    },
    "V": {
        "t5_p50": {"throughput": 2269, "R1": 64.2, "mAP": 53.2},
        "t5_p60": {"throughput": 1843, "R1": 65.6, "mAP": 54.2},
        "t5_p70": {"throughput": 1585, "R1": 65.8, "mAP": 54.9},
        "t5_p80": {"throughput": 1392, "R1": 65.5, "mAP": 55.3},
        "t5_p90": {"throughput": 1279, "R1": 65.9, "mAP": 55.7},
    },
    "VI": {
        "t6_s2t_linear": {"R1": 56.6, "mAP": 46.7},
        "t6_t2s_linear": {"R1": 57.2, "mAP": 47.1},
        "t6_s2t_interp": {"R1": 64.3, "mAP": 53.3},
        "t6_t2s_interp": {"R1": 65.8, "mAP": 54.9},
    },
    "VII": {
        "t7_vanilla_vit": {"R1": 61.9, "mAP": 54.0},
        "t7_vanilla_vit_noda": {"R1": 61.1, "mAP": 51.6},
        "t7_suvit_wo_noda": {"R1": 64.8, "mAP": 53.2},
        "t7_sureid": {"R1": 65.8, "mAP": 54.9},
    },
}

# The tables are defined after the class (they name its parameters); the METHODS registry reads them from it.
SUREID.ablations = ABLATIONS
SUREID.extra_ablations = {**CONTROLS, **VARIANTS}
SUREID.eval_ablations = {**EVAL_ABLATIONS, **EVAL_VARIANTS}
# Under --pretrained the NPKD control's teacher is the run's own (pretrained) teacher: it is t4_hts_npkd's network.
SUREID.same_model_pretrained = {"strong_teacher_npkd": "t4_hts_npkd", "strong_teacher_npkd_sum": "t4_hts_npkd_sum"}
SUREID.paper_tables = PAPER_TABLES
SUREID.claims = (  # Table IV (Occluded-Duke, Market rule)
    # Decided from scratch too: only there is the control's teacher (the pretrained one) better than the student's
    # own; under --pretrained the control is the learned row itself (same_model_pretrained).
    Claim("NPKD recovers what HTS loses (Table IV)", "t4_hts_npkd", "t4_hts", "standard",
          control="strong_teacher_npkd", inits=("scratch", "pretrained")),
    Claim("NPKD recovers what HTS loses, Eq. 13's feature term as printed (Table IV, summed over channels)",
          "t4_hts_npkd_sum", "t4_hts", "standard", control="strong_teacher_npkd_sum", inits=("scratch", "pretrained")),
    Claim("NODA adds to HTS + NPKD (Table IV)", "t4_sureid", "t4_hts_npkd", "standard", control="noda_test_pool"),
    Claim("SUREID beats the vanilla DeiT-S (Table IV)", "t4_sureid", "t4_vanilla", "standard", control="oracle_hts"),
    # Table V: keeping more tokens costs speed and buys accuracy (paper: p = 0.9 vs 0.5, mAP 55.7 vs 53.2)
    Claim("keeping 90% of tokens per stage beats keeping 50% (Table V)", "t5_p90", "t5_p50", "standard"),
    # Table VI: NPKD's token alignment, teacher-to-student interpolation (= t4_sureid) vs a learned linear map
    Claim("interpolation beats linear alignment in NPKD (Table VI, t2s)", "t4_sureid", "t6_t2s_linear", "standard"),
    # Table VII's SUVIT claim is Table IV's "NODA adds to HTS + NPKD" (rows t7_sureid / t7_suvit_wo_noda are those
    # models). Its vanilla ViT-B claim (NODA alone costs 2.4 mAP) is not declared: the pretrain stage has no ViT-B
    # stand-in (86 M parameters, ~4x the DeiT-S compute per image), so its `--pretrained` rows would start from
    # random weights under a pretrained name, and `python -m reid claims` cannot restrict a claim to one init.
)
