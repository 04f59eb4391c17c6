"""HRNet (Sun et al., 2019) in plain PyTorch, with the module names of the official pose code.

Why: two users need the same network. The `keypoints` teacher loads the official COCO checkpoint
`pose_hrnet_w32_256x192.pth` (leoxiaobin/deep-high-resolution-net.pytorch, a plain state dict) with strict key
checking, and ISP uses HRNet-W32 as a ReID backbone whose four branches are upsampled to 1/4 and concatenated
(`HRNetFeatureMap`, 32+64+128+256 = 480 channels for W32).

Parameter names follow the official layout: `conv1, bn1, conv2, bn2` (stem, stride 4), `layer1` (Bottleneck x4,
64 -> 256 channels), `transition{1,2,3}`, `stage{2,3,4}` (HighResolutionModules with `branches` and
`fuse_layers`) and `final_layer` (1x1 conv on the 1/4 branch). In the official pose net the last module of
stage 4 fuses only into the 1/4 branch (`multi_scale_output=False`), so its `fuse_layers` has a single row;
`HRNet(multi_scale_output=True)` builds the full fusion instead (the ImageNet/ISP layout), at the price of
keys that the pose checkpoint does not have.

Widths and depths are configurable so tests can build a tiny variant (`hrnet_tiny()`: width 8, one block and
one module per stage).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid.serialization import load_file

log = logging.getLogger(__name__)

BN_MOMENTUM = 0.1
NUM_BRANCHES = (2, 3, 4)  # branches in stage 2, 3, 4


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    """conv (no bias) + BN (+ ReLU): the unit of transitions and fusions (keys `.0` conv, `.1` BN)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _bn(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (`conv1, bn1, conv2, bn2[, downsample]`)."""

    expansion = 1

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, 1, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(cin, cout, 1, 1, relu=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block (`conv1..3, bn1..3[, downsample]`)."""

    expansion = 4

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(cin, cout, 1, 1, relu=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def _fuse_path(channels: Sequence[int], src: int, dst: int) -> nn.Module | None:
    """Path from branch `src` to branch `dst`: identity (None), 1x1 conv + nearest upsample, or strided 3x3s.

    Down paths are (dst - src)-long chains of stride-2 3x3 convs; all but the last keep the source width and end with
    ReLU; the last maps to the destination width without ReLU (the sum is activated afterwards).
    """
    if src == dst:
        return None
    if src > dst:
        return nn.Sequential(
            nn.Conv2d(channels[src], channels[dst], 1, 1, 0, bias=False),
            _bn(channels[dst]),
            nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest"),
        )
    steps = dst - src
    chain = [
        _conv_bn(channels[src], channels[dst] if k == steps - 1 else channels[src], 3, 2, relu=k < steps - 1)
        for k in range(steps)
    ]
    return nn.Sequential(*chain)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by all-to-all fusion (sum, then ReLU)."""

    def __init__(self, channels: Sequence[int], num_blocks: int, multi_scale_output: bool = True) -> None:
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(num_blocks)]) for c in channels
        )
        outputs = self.num_branches if multi_scale_output else 1
        self.fuse_layers = (
            nn.ModuleList(
                nn.ModuleList(_fuse_path(channels, j, i) for j in range(self.num_branches)) for i in range(outputs)
            )
            if self.num_branches > 1
            else None
        )
        self.relu = nn.ReLU(inplace=False)

    def forward_branches(self, xs: list[Tensor]) -> list[Tensor]:
        """Run each branch on its own input (before fusion)."""
        return [branch(x) for branch, x in zip(self.branches, xs)]

    def fuse(self, xs: list[Tensor]) -> list[Tensor]:
        """Sum every branch resampled to each output resolution; outputs = 1 or all branches."""
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            total = xs[i]
            for j, path in enumerate(row):
                if j != i:
                    total = total + path(xs[j])
            fused.append(self.relu(total))
        return fused

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return self.fuse(self.forward_branches(xs))


def _transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Adapt the previous stage's branches to the next stage: keep / re-width existing ones, add one by stride 2.

    A new branch i (i >= len(prev)) is made from the lowest-resolution previous branch through i+1-len(prev)
    stride-2 3x3 conv-BN-ReLU units (keys `transitionK.i.<unit>.{0,1}`).
    """
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            layers.append(None if prev[i] == c else _conv_bn(prev[i], c, 3, 1, relu=True))
        else:
            steps = i + 1 - len(prev)
            src = prev[-1]
            layers.append(
                nn.Sequential(*[_conv_bn(src, c if k == steps - 1 else src, 3, 2, relu=True) for k in range(steps)])
            )
    return nn.ModuleList(layers)


class HRNet(nn.Module):
    """HRNet with a pose head. `forward` -> heatmaps (N, num_joints, H/4, W/4); `forward_features` -> 4 maps.

    Args:
        width: channels of the 1/4 branch; branches are width * (1, 2, 4, 8) (W32: 32/64/128/256).
        num_joints: heatmap channels of `final_layer` (COCO: 17).
        num_modules: HighResolutionModules in stages 2, 3, 4 (official W32: 1, 4, 3).
        num_blocks: BasicBlocks per branch in every module (official: 4).
        stem_blocks: Bottlenecks in `layer1` (official: 4).
        stem_width: channels of the stem convs / Bottleneck planes in `layer1` (official: 64; layer1 -> 4x).
        multi_scale_output: fuse into all branches in the very last module (False in the official pose net).
        final_conv_kernel: kernel size of `final_layer` (official: 1).
    """

    def __init__(
        self,
        width: int = 32,
        num_joints: int = 17,
        num_modules: Sequence[int] = (1, 4, 3),
        num_blocks: int = 4,
        stem_blocks: int = 4,
        stem_width: int = 64,
        multi_scale_output: bool = False,
        final_conv_kernel: int = 1,
    ) -> None:
        super().__init__()
        if len(num_modules) != 3:
            raise ValueError(f"num_modules must give stages 2, 3, 4 (3 numbers), got {tuple(num_modules)}")
        self.width = width
        self.num_joints = num_joints
        self.multi_scale_output = multi_scale_output
        self.channels = tuple(width * 2**i for i in range(4))

        self.conv1 = nn.Conv2d(3, stem_width, 3, 2, 1, bias=False)
        self.bn1 = _bn(stem_width)
        self.conv2 = nn.Conv2d(stem_width, stem_width, 3, 2, 1, bias=False)
        self.bn2 = _bn(stem_width)
        self.relu = nn.ReLU(inplace=True)
        stem_out = stem_width * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            *[Bottleneck(stem_width if k == 0 else stem_out, stem_width) for k in range(stem_blocks)]
        )

        prev: tuple[int, ...] = (stem_out,)
        for stage, (branches, modules) in enumerate(zip(NUM_BRANCHES, num_modules), start=2):
            cur = self.channels[:branches]
            setattr(self, f"transition{stage - 1}", _transition(prev, cur))
            last_stage = stage == 4
            mods = [
                HighResolutionModule(cur, num_blocks, multi_scale_output or not (last_stage and m == modules - 1))
                for m in range(modules)
            ]
            setattr(self, f"stage{stage}", nn.Sequential(*mods))
            prev = cur

        self.final_layer = nn.Conv2d(self.channels[0], num_joints, final_conv_kernel, 1, final_conv_kernel // 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: conv weights N(0, 0.001), biases 0, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
        out = []
        for i, layer in enumerate(transition):
            src = xs[i] if i < len(xs) else xs[-1]
            out.append(src if layer is None else layer(src))
        return out

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The four stage-4 branch outputs at strides 4, 8, 16, 32 (channels width * 1, 2, 4, 8).

        With `multi_scale_output=False` (the pose layout) the last module fuses only into the 1/4 branch, so
        the 1/8..1/32 maps are that module's branch outputs before fusion; with True all four are fused.
        Input height and width must be multiples of 32 (the fusion upsamples by exact powers of two).
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"HRNet expects (N, 3, H, W) with H, W multiples of 32, got {tuple(x.shape)}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for stage in (2, 3, 4):
            xs = self._apply_transition(getattr(self, f"transition{stage - 1}"), xs)
            modules = list(getattr(self, f"stage{stage}"))
            for module in modules[:-1]:
                xs = module(xs)
            branch_out = modules[-1].forward_branches(xs)
            fused = modules[-1].fuse(branch_out)
            xs = fused + branch_out[len(fused):]
        return xs

    def forward(self, x: Tensor) -> Tensor:
        """Heatmaps (N, num_joints, H/4, W/4): `final_layer` on the fused 1/4 branch."""
        return self.final_layer(self.forward_features(x)[0])

    def load_pose_checkpoint(self, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
        """Load an official pose checkpoint; log missing/unexpected keys; strict -> error listing them.

        Accepts a plain state dict (the official files) or one wrapped in `state_dict` / with `module.`
        prefixes. Returns (missing, unexpected) key lists.
        """
        state = read_state_dict(path)
        own = self.state_dict()
        bad_shape = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                     for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad_shape:
            raise ValueError(f"{path}: {len(bad_shape)} tensors have the wrong shape for HRNet-W{self.width} "
                             f"(is it a W{self.width} checkpoint?): {bad_shape[:5]}")
        result = self.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if missing:
            log.warning("%s: %d missing keys (e.g. %s)", path, len(missing), missing[:5])
        if unexpected:
            log.warning("%s: %d unexpected keys (e.g. %s)", path, len(unexpected), unexpected[:5])
        if strict and (missing or unexpected):
            raise ValueError(
                f"{path} does not match HRNet(width={self.width}, multi_scale_output={self.multi_scale_output}): "
                f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
            )
        log.info("%s: loaded %d tensors into HRNet-W%d", path, len(state), self.width)
        return missing, unexpected


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict (unwrap `state_dict`, strip `module.`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"HRNet checkpoint not found: {path}. Weights are never downloaded: get pose_hrnet_w32_256x192.pth "
            "from the official deep-high-resolution-net.pytorch model zoo, place it there, or fix params.yaml."
        )
    obj = load_file(path, "HRNet checkpoint")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}


def upsample_concat(features: Sequence[Tensor], align_corners: bool = True) -> Tensor:
    """Bilinearly upsample every map to the first (largest) one's size and concatenate the channels.

    `align_corners=True` is ISP's official `cls_hrnet.py` (and HRNet's segmentation code): the corner pixels of
    a coarse branch land on the corner pixels of the fine one. False is PyTorch's default (half-pixel centres)."""
    size = features[0].shape[-2:]
    ups = [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=align_corners)
                           for f in features[1:]]
    return torch.cat(ups, dim=1)


# HRNet-Image-Classification's `incre_modules`: one Bottleneck per branch raising its channels to 4x these.
INCRE_HEAD_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)


class HRNetFeatureMap(nn.Module):
    """ReID backbone: HRNet branches upsampled to 1/4 and concatenated (W32: 480 channels at H/4 x W/4).

    Built with `multi_scale_output=True` by default so every branch is fused (ISP's layout); the pose head is
    not used. With `incre_modules=True` each branch first passes through the ImageNet classifier's
    `incre_modules` Bottleneck (channels C, 2C, 4C, 8C -> 128, 256, 512, 1024; 1920 in all), as ISP's official
    `cls_hrnet.py` does before its 1x1 reduction; their weights load from the same ImageNet checkpoint
    (`load_incre_modules`). `align_corners` of the branch upsampling: True as ISP's official code (see
    `upsample_concat`). `out_channels` tells heads what to expect.
    """

    def __init__(self, width: int = 32, multi_scale_output: bool = True, incre_modules: bool = False,
                 align_corners: bool = True, **kwargs) -> None:
        super().__init__()
        self.body = HRNet(width=width, multi_scale_output=multi_scale_output, **kwargs)
        self.align_corners = align_corners
        if incre_modules:
            heads = INCRE_HEAD_CHANNELS[: len(self.body.channels)]
            self.incre_modules: nn.ModuleList | None = nn.ModuleList(
                nn.Sequential(Bottleneck(c, h)) for c, h in zip(self.body.channels, heads))
            self.out_channels = sum(h * Bottleneck.expansion for h in heads)
        else:
            self.incre_modules = None
            self.out_channels = sum(self.body.channels)
        self.reset_parameters()

    def load_incre_modules(self, state: dict[str, Tensor], source: str) -> int:
        """Load `incre_modules.*` tensors of an ImageNet HRNet checkpoint; returns how many; warns when absent."""
        if self.incre_modules is None:
            return 0
        own = {k.removeprefix("incre_modules."): v for k, v in state.items() if k.startswith("incre_modules.")}
        if not own:
            log.warning("%s has no incre_modules.* tensors (a pose checkpoint?): ISP's incre_modules start random",
                        source)
            return 0
        missing, unexpected = self.incre_modules.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # older PyTorch did not save it
        if missing or unexpected:
            raise ValueError(f"{source}: incre_modules do not match this HRNet ({len(missing)} missing e.g. "
                             f"{missing[:3]}, {len(unexpected)} unexpected e.g. {unexpected[:3]})")
        return len(own)

    def reset_parameters(self) -> None:
        """He (fan-out) initialisation, as HRNet's ImageNet classification training starts from.

        The pose network's N(0, 0.001) init suits a heatmap regressor fine-tuned from ImageNet, but a ReID
        backbone trained from scratch with it gives activations ~1e-10 at eval time (BN running stats start at
        0/1), so every image embeds to nearly the same point. Loaded weights replace this init anyway.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = self.body.forward_features(x)
        if self.incre_modules is not None:
            features = [m(f) for m, f in zip(self.incre_modules, features)]
        return upsample_concat(features, self.align_corners)


def hrnet_w32(**kwargs) -> HRNet:
    """The official HRNet-W32 pose configuration (COCO 256x192 / 384x288 checkpoints)."""
    return HRNet(width=32, **kwargs)


# Topologies besides the official W32 (HRNet's defaults), as HRNet / HRNetFeatureMap keywords.
HRNET_TINY: dict[str, Any] = dict(width=8, num_modules=(1, 1, 1), num_blocks=1, stem_blocks=1, stem_width=8)
# HRNet-W18-small-v2 (HRNet-Image-Classification): widths 18/36/72/144, stage modules 1/3/2, 2 blocks per branch.
HRNET_W18_SMALL: dict[str, Any] = dict(width=18, num_modules=(1, 3, 2), num_blocks=2, stem_blocks=2, stem_width=64)


def hrnet_tiny(**kwargs) -> HRNet:
    """A few-thousand-parameter HRNet for tests and stand-in models (same topology, tiny widths/depths)."""
    return HRNet(**{**HRNET_TINY, **kwargs})


def hrnet_w32_reid_features(x: Tensor, model: HRNet) -> Tensor:
    """Convenience: the 480-channel 1/4-resolution concatenated feature map of a (W32) HRNet for input x."""
    return upsample_concat(model.forward_features(x))


# --- the pretrain stage's ImageNet classifier (reid/engine/pretrain.py) -------------------------------------


class HRNetClassifier(nn.Module):
    """HRNet trunk with the ImageNet classifier's incre_modules; each branch pooled, concatenated, classified.

    The official head goes on through downsamp_modules and a 2048-channel final_layer; ISP never loads those
    (it reads the trunk and incre_modules), so a linear layer on the pooled incre features stands in for them.
    """

    def __init__(self, topology: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.net = HRNetFeatureMap(**topology, incre_modules=True)
        self.classifier = nn.Linear(self.net.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [m(f) for m, f in zip(self.net.incre_modules, self.net.body.forward_features(x))]
        return self.classifier(torch.cat([F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats], dim=1))

    def official_state(self) -> dict[str, torch.Tensor]:
        """HRNet-Image-Classification names: trunk keys at top level, incre_modules.*, classifier.*."""
        state = {k.removeprefix("net.body."): v for k, v in self.state_dict().items() if k.startswith("net.body.")}
        state = {k: v for k, v in state.items() if not k.startswith("final_layer")}  # the pose head: not ImageNet's
        state.update({k.removeprefix("net."): v for k, v in self.state_dict().items() if k.startswith("net.incre")})
        state.update({k: v for k, v in self.state_dict().items() if k.startswith("classifier.")})
        return state


def imagenet_classifier(arch: str, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """`hrnet_w18_small`'s image classifier in HRNet-Image-Classification's layout (the pretrain stage)."""
    topologies = {"hrnet_w18_small": HRNET_W18_SMALL}
    if arch not in topologies:
        raise KeyError(f"no HRNet ImageNet classifier {arch!r} (known: {', '.join(topologies)})")
    return HRNetClassifier(topologies[arch], num_classes)
