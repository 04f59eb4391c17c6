"""Pure-PyTorch SCHP (AugmentCE2P) that loads the official `exp-schp-*.pth` checkpoints without InPlaceABN.

Provenance: Li et al., "Self-Correction for Human Parsing" (TPAMI 2020), GoGoDuck912/Self-Correction-Human-Parsing,
`networks/AugmentCE2P.py`. Only facts are taken from it (module names, channel sizes, block layout); this file is
an independent implementation. The official code normalises with `InPlaceABNSync`, a compiled CUDA extension that
fails to build on many setups; here every ABN is a plain `BatchNorm2d` (same `weight`, `bias`, `running_mean`,
`running_var` keys) followed by its activation: identity for the backbone BNs (they are followed by ReLU in the
block) and leaky ReLU 0.01 everywhere else. Module names follow the checkpoint exactly, including the upstream
spelling `fushion`.

Architecture (ResNet-101: blocks 3-4-23-3): a 3-conv stem (first stride 2) + stride-2 max-pool; layer4 uses
dilation 2 instead of stride (output stride 8); a PSP context module (bins 1, 2, 3, 6); a decoder that fuses the
context with layer1 features; an edge branch on layer1-3; a fusion head on [decoder features, edge features].
Forward returns `(parsing, fusion, edge)` logits at stride 4 (119x119 for a 473 input): the order of the common
ONNX export (`input.1` -> parsing, fusion, edge). The labels are decoded from `fusion`.

Also the `export-schp` CLI verb: official checkpoint -> ONNX with the common export signature.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from reid.serialization import load_file

__all__ = [
    "SCHPConfig",
    "SCHP_RESNET101",
    "SCHP_TINY",
    "AugmentCE2P",
    "build_schp",
    "output_side",
    "abn",
    "adaptive_pool_matrix",
    "strip_module_prefix",
    "load_schp_checkpoint",
    "export_schp_onnx",
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAMES",
    "add_arguments",
    "main",
]

log = logging.getLogger(__name__)

ONNX_INPUT_NAME = "input.1"
ONNX_OUTPUT_NAMES = ("parsing", "fusion", "edge")
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class SCHPConfig:
    """Depth and widths of AugmentCE2P; the defaults are the official ResNet-101 model."""

    layers: tuple[int, int, int, int] = (3, 4, 23, 3)
    stem_width: int = 64  # stem convs: 3 -> w -> w -> 2w
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths; block output = 4 x planes
    psp_width: int = 512  # PSP stage and bottleneck width
    head_width: int = 256  # decoder / edge / fusion width
    skip_width: int = 48  # decoder's reduced layer1 features
    psp_bins: tuple[int, ...] = (1, 2, 3, 6)
    edge_classes: int = 2


SCHP_RESNET101 = SCHPConfig()
SCHP_TINY = SCHPConfig(layers=(1, 1, 1, 1), stem_width=4, planes=(4, 4, 8, 8), psp_width=8, head_width=8,
                       skip_width=4)


class ABN(nn.BatchNorm2d):
    """BatchNorm2d + activation, a drop-in for InPlaceABN(Sync) in inference ('none' or 'leaky_relu').

    InPlaceABN scales by |weight| + eps, not by the raw weight (its kernels need a positive scale to invert the
    activation in the backward pass), in training and inference alike; a checkpoint with a negative norm weight
    therefore normalises differently from a plain BatchNorm2d. `abn_scale` is that scale.
    """

    def __init__(self, num_features: int, activation: str = "leaky_relu", slope: float = LEAKY_SLOPE) -> None:
        super().__init__(num_features)
        if activation not in ("leaky_relu", "none"):
            raise ValueError(f"ABN activation must be 'leaky_relu' or 'none', got {activation!r}")
        self.activation = activation
        self.slope = slope

    def abn_scale(self) -> torch.Tensor:
        """InPlaceABN's effective scale: |weight| + eps."""
        return self.weight.abs() + self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or self.running_mean is None
        x = F.batch_norm(
            x, None if use_batch else self.running_mean, None if use_batch else self.running_var,
            self.abn_scale(), self.bias, use_batch, self.momentum or 0.0, self.eps,
        )
        return F.leaky_relu(x, self.slope) if self.activation == "leaky_relu" else x


def abn(num_features: int, activation: str = "leaky_relu") -> ABN:
    """An activated batch norm (leaky ReLU 0.01 by default, as InPlaceABNSync)."""
    return ABN(num_features, activation)


def conv_bn(cin: int, cout: int, kernel: int = 1, padding: int = 0) -> nn.Sequential:
    """conv (no bias) + leaky ABN: keys `<name>.0.weight`, `<name>.1.{weight,bias,running_*}`."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), abn(cout))


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) averaging matrix with PyTorch's adaptive-pool bins [floor(i n/m), ceil((i+1) n/m)).

    Used at ONNX export time: the TorchScript exporter only handles adaptive pooling when n_out divides n_in,
    which fails at a 512 input (layer4 is 32x32; bins 3 and 6).
    """
    mat = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil
        mat[i, start:end] = 1.0 / (end - start)
    return mat


class AdaptiveAvgPool(nn.Module):
    """Adaptive average pooling that exports to ONNX for any bin count (two matmuls with constant matrices)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return F.adaptive_avg_pool2d(x, self.size)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph = adaptive_pool_matrix(h, self.size).to(x)
        pw = adaptive_pool_matrix(w, self.size).to(x)
        return torch.matmul(torch.matmul(ph, x), pw.t())


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3x3 conv); BNs without activation, ReLU applied here."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = abn(planes, "none")
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = abn(planes, "none")
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = abn(cout, "none")
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class PSPModule(nn.Module):
    """Pyramid pooling: per bin pool -> 1x1 conv -> ABN, upsample, concat with input, 3x3 conv -> ABN."""

    def __init__(self, cin: int, width: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(b), nn.Conv2d(cin, width, 1, bias=False), abn(width)) for b in bins
        )
        self.bottleneck = conv_bn(cin + len(bins) * width, width, kernel=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        priors = [_up(stage(x), size) for stage in self.stages] + [x]
        return self.bottleneck(torch.cat(priors, 1))


class EdgeModule(nn.Module):
    """Edge branch on layer1-3: shared 3x3 edge classifier per level, 1x1 fuse; returns (edge, edge features)."""

    def __init__(self, cins: tuple[int, int, int], width: int, classes: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cins[0], width)
        self.conv2 = conv_bn(cins[1], width)
        self.conv3 = conv_bn(cins[2], width)
        self.conv4 = nn.Conv2d(width, classes, 3, padding=1, bias=True)
        self.conv5 = nn.Conv2d(classes * 3, classes, 1, bias=True)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = (x1.shape[-2], x1.shape[-1])
        feats = [self.conv1(x1), self.conv2(x2), self.conv3(x3)]
        edges = [self.conv4(f) for f in feats]
        feats = [feats[0]] + [_up(f, size) for f in feats[1:]]
        edges = [edges[0]] + [_up(e, size) for e in edges[1:]]
        return self.conv5(torch.cat(edges, 1)), torch.cat(feats, 1)


class DecoderModule(nn.Module):
    """Parsing decoder: context (upsampled to layer1 size) + reduced layer1 features -> logits and features."""

    def __init__(self, context: int, low: int, width: int, skip: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(context, width)
        self.conv2 = conv_bn(low, skip)
        self.conv3 = nn.Sequential(
            nn.Conv2d(width + skip, width, 1, bias=False), abn(width),
            nn.Conv2d(width, width, 1, bias=False), abn(width),
        )
        self.conv4 = nn.Conv2d(width, num_classes, 1, bias=True)

    def forward(self, xt: torch.Tensor, xl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xt = _up(self.conv1(xt), (xl.shape[-2], xl.shape[-1]))
        x = self.conv3(torch.cat([xt, self.conv2(xl)], 1))
        return self.conv4(x), x


class AugmentCE2P(nn.Module):
    """SCHP's network; `forward(x) -> (parsing, fusion, edge)` logits at stride 4."""

    def __init__(self, num_classes: int, cfg: SCHPConfig = SCHP_RESNET101) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cfg = cfg
        w = cfg.stem_width
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False)
        self.bn1 = abn(w, "none")
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = abn(w, "none")
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = abn(2 * w, "none")
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin = 2 * w
        p = cfg.planes
        self.layer1 = self._make_layer(p[0], cfg.layers[0])
        self.layer2 = self._make_layer(p[1], cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(p[2], cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(p[3], cfg.layers[3], dilation=2)
        e = Bottleneck.expansion
        self.context_encoding = PSPModule(p[3] * e, cfg.psp_width, cfg.psp_bins)
        self.edge = EdgeModule((p[0] * e, p[1] * e, p[2] * e), cfg.head_width, cfg.edge_classes)
        self.decoder = DecoderModule(cfg.psp_width, p[0] * e, cfg.head_width, cfg.skip_width, num_classes)
        self.fushion = nn.Sequential(  # upstream spelling, kept for checkpoint keys
            nn.Conv2d(4 * cfg.head_width, cfg.head_width, 1, bias=False), abn(cfg.head_width),
            nn.Dropout2d(0.1), nn.Conv2d(cfg.head_width, num_classes, 1, bias=True),
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        cout = planes * Bottleneck.expansion
        down = None
        if stride != 1 or self._cin != cout:
            down = nn.Sequential(nn.Conv2d(self._cin, cout, 1, stride=stride, bias=False), abn(cout, "none"))
        layers = [Bottleneck(self._cin, planes, stride, dilation, down)]
        self._cin = cout
        layers += [Bottleneck(cout, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x1 = self.layer1(self.maxpool(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        parsing, parsing_fea = self.decoder(self.context_encoding(x4), x1)
        edge, edge_fea = self.edge(x1, x2, x3)
        fusion = self.fushion(torch.cat([parsing_fea, edge_fea], 1))
        return parsing, fusion, edge


def output_side(size: int) -> int:
    """Side of the stride-4 logits for a square input: stride-2 conv then stride-2 max-pool (473 -> 119)."""
    after_conv = (size - 1) // 2 + 1
    return (after_conv - 1) // 2 + 1


def build_schp(num_classes: int, variant: str = "resnet101") -> AugmentCE2P:
    """Factory: `resnet101` (the official model) or `tiny` (for CPU tests)."""
    cfgs = {"resnet101": SCHP_RESNET101, "tiny": SCHP_TINY}
    if variant not in cfgs:
        raise ValueError(f"unknown SCHP variant {variant!r}; known: {sorted(cfgs)}")
    return AugmentCE2P(num_classes, cfgs[variant])


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DataParallel `module.` prefix that every key of the official checkpoints carries."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _unwrap_checkpoint(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return obj["state_dict"]
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: not an SCHP checkpoint (expected a dict with a 'state_dict' entry or a state dict)")


def load_schp_checkpoint(model: AugmentCE2P, path: str | Path) -> dict[str, list[str]]:
    """Load an official `exp-schp-*.pth` into `model`; returns and logs the missing/unexpected keys.

    ABN has no `num_batches_tracked`: those buffers are expected to be missing and are kept from the model (they
    do not affect inference). Any other missing or unexpected key, or a shape mismatch, is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SCHP checkpoint not found: {path}")
    state = strip_module_prefix(_unwrap_checkpoint(load_file(path, "SCHP checkpoint"), path))
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    bn_counters = [k for k in missing if k.endswith("num_batches_tracked")]
    other_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bn_counters:
        log.info("%s: %d BatchNorm num_batches_tracked buffers absent (ABN has none): kept at default",
                 path.name, len(bn_counters))
    if other_missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint keys do not match AugmentCE2P(num_classes={model.num_classes}): "
            f"missing {other_missing[:10]}{' ...' if len(other_missing) > 10 else ''} ({len(other_missing)}), "
            f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})"
        )
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: shape mismatch (wrong label set or variant?): " + "; ".join(bad[:5]))
    result = model.load_state_dict({**{k: own[k] for k in bn_counters}, **state}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return {"missing": missing, "unexpected": unexpected}


def num_classes_in_checkpoint(path: str | Path) -> int:
    """The class count of a checkpoint, read from its fusion classifier (`fushion.3.bias`)."""
    path = Path(path)
    state = strip_module_prefix(_unwrap_checkpoint(load_file(path, "SCHP checkpoint"), path))
    if "fushion.3.bias" not in state:
        raise ValueError(f"{path}: no 'fushion.3.bias' key: not an AugmentCE2P checkpoint")
    return int(state["fushion.3.bias"].shape[0])


def export_schp_onnx(model: nn.Module, out: str | Path, size: int, opset: int = 17) -> Path:
    """Export to ONNX: input `input.1` (N,3,size,size), outputs parsing, fusion, edge; dynamic batch.

    Works for any module whose forward returns the three logits in that order (AugmentCE2P, test stand-ins).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dummy = torch.zeros(1, 3, size, size)
    dyn = {name: {0: "batch"} for name in (ONNX_INPUT_NAME, *ONNX_OUTPUT_NAMES)}
    tmp = out.with_name(out.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (no onnxscript dependency) is deprecated but exact for this static graph;
        # the tracer warns about the constant pooling matrices, which are constant by design (fixed input size)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (dummy,), str(tmp), input_names=[ONNX_INPUT_NAME],
                          output_names=list(ONNX_OUTPUT_NAMES), dynamic_axes=dyn, opset_version=opset,
                          dynamo=False)
    tmp.replace(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`export-schp`: official SCHP checkpoint -> ONNX with the common signature."""
    parser.add_argument("--checkpoint", required=True, help="official exp-schp-*.pth (or a plain state dict)")
    parser.add_argument("--label-set", default="lip", choices=("lip", "atr", "pascal"),
                        help="the label set the checkpoint was trained on (LIP 20, ATR 18, Pascal-Person-Part 7)")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--size", type=int, default=None, help="input size (default 473 LIP, 512 ATR/Pascal)")
    parser.add_argument("--variant", default="resnet101", choices=("resnet101", "tiny"),
                        help="the network: the official ResNet-101 SCHP, or the tiny one of the tests")
    parser.add_argument("--opset", type=int, default=17)


def main(args: argparse.Namespace) -> int:
    """Build the network for the label set, load the checkpoint, export; prints the resulting signature."""
    from reid.vocab import LABEL_SETS, default_input_size

    num_classes = len(LABEL_SETS[args.label_set])
    found = num_classes_in_checkpoint(args.checkpoint)
    if found != num_classes:
        raise SystemExit(f"{args.checkpoint}: has {found} classes but --label-set {args.label_set} needs "
                         f"{num_classes}")
    model = build_schp(num_classes, args.variant)
    load_schp_checkpoint(model, args.checkpoint)
    size = args.size or default_input_size(args.label_set)
    out = export_schp_onnx(model, args.out, size, args.opset)
    side = output_side(size)
    print(f"wrote {out}: input {ONNX_INPUT_NAME} (N,3,{size},{size}) -> parsing (N,{num_classes},{side},{side}), "
          f"fusion (N,{num_classes},{side},{side}), edge (N,2,{side},{side})")
    return 0
