"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019), written here.

Parameter names follow torchreid's `torchreid/models/osnet.py` so that the ImageNet checkpoint users already have
(`osnet_x1_0_imagenet.pth`, a plain state dict with a 1000-way classifier) loads into `OSNet` with no missing or
unexpected key. Nothing is downloaded: the file is named in params.yaml, and `osnet_x1_0(weights=None)` warns that
it starts from random weights.

Key layout (x1.0: channels [64, 256, 384, 512], two OS blocks per stage):
    conv1.{conv,bn}                          7x7/2 stem, then a 3x3/2 max pool (no parameters)
    conv{2,3}.{0,1}.<OSBlock>, conv{2,3}.2.0.{conv,bn}   two OS blocks, then 1x1 conv + 2x2 average pool
    conv4.{0,1}.<OSBlock>                    two OS blocks, no down-sampling
    conv5.{conv,bn}                          1x1 conv
    fc.0 (Linear 512->512), fc.1 (BatchNorm1d), classifier (Linear 512->num_classes)
OSBlock: conv1 (1x1), conv2a / conv2b.{0,1} / conv2c.{0..2} / conv2d.{0..3} (LightConv3x3 = conv1 1x1, conv2
depth-wise 3x3, bn), gate.{fc1,fc2} (shared unified aggregation gate, with biases), conv3 (1x1 linear),
downsample (1x1 linear, only when the channel count changes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from reid.models.resnet import load_pretrained

__all__ = ["OSBlock", "OSNet", "osnet_x1_0", "osnet_width", "osnet_tiny", "OSNET_X1_0_CHANNELS", "OSNET_WIDTHS"]

OSNET_X1_0_CHANNELS = (64, 256, 384, 512)


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, optional ReLU (torchreid's ConvLayer / Conv1x1 / Conv1x1Linear)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0, relu: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.use_relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.use_relu else x


class LightConv3x3(nn.Module):
    """Lite 3x3: a linear point-wise conv, then a depth-wise 3x3 conv, BN and ReLU (OSNet paper, Fig. 3)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv2(self.conv1(x))), inplace=True)


class ChannelGate(nn.Module):
    """Unified aggregation gate: a tiny MLP on the pooled stream produces per-channel sigmoid weights."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)), inplace=True))
        return x * torch.sigmoid(w)


class OSBlock(nn.Module):
    """Omni-scale residual block: 4 streams of 1..4 stacked lite 3x3 convs, fused by one shared channel gate."""

    STREAMS = ("conv2a", "conv2b", "conv2c", "conv2d")

    def __init__(self, c_in: int, c_out: int, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = c_out // bottleneck_reduction
        self.conv1 = ConvBN(c_in, mid, 1)
        for depth, name in enumerate(self.STREAMS, start=1):
            layers = [LightConv3x3(mid, mid) for _ in range(depth)]
            setattr(self, name, layers[0] if depth == 1 else nn.Sequential(*layers))
        self.gate = ChannelGate(mid)
        self.conv3 = ConvBN(mid, c_out, 1, relu=False)
        self.downsample = ConvBN(c_in, c_out, 1, relu=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        fused = sum(self.gate(getattr(self, name)(x1)) for name in self.STREAMS)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(fused) + identity)


def _stage(c_in: int, c_out: int, blocks: int, reduce: bool) -> nn.Sequential:
    """`blocks` OS blocks, then (when `reduce`) a 1x1 conv + 2x2 average pool transition (key `<stage>.<n>.0`)."""
    layers: list[nn.Module] = [OSBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks)]
    if reduce:
        layers.append(nn.Sequential(ConvBN(c_out, c_out, 1), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    """OSNet trunk with torchreid's ImageNet head (fc 512 + classifier) so its checkpoint loads strictly.

    `featuremaps(x)` is the trunk (stride 16, `channels[3]` channels); `forward` returns the fc feature in eval
    and the classifier logits in training, as the ImageNet model did. ReID users take the pieces they need.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        channels: tuple[int, int, int, int] = OSNET_X1_0_CHANNELS,
        blocks: tuple[int, int, int] = (2, 2, 2),
        feature_dim: int = 512,
    ) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.conv1 = ConvBN(3, channels[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(channels[0], channels[1], blocks[0], reduce=True)
        self.conv3 = _stage(channels[1], channels[2], blocks[1], reduce=True)
        self.conv4 = _stage(channels[2], channels[3], blocks[2], reduce=False)
        self.conv5 = ConvBN(channels[3], channels[3], 1)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)
        init_osnet_weights(self)

    def featuremaps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.maxpool(self.conv1(x)))
        return self.conv5(self.conv4(self.conv3(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.fc(self.global_avgpool(self.featuremaps(x)).flatten(1))
        return self.classifier(v) if self.training else v


def init_osnet_weights(module: nn.Module) -> None:
    """He init (fan-out) for convs, unit/zero BN, N(0, 0.01) linears: OSNet's initialisation without weights."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def osnet_x1_0(weights: str | Path | None = None, num_classes: int = 1000) -> OSNet:
    """OSNet-x1.0 (2.2 M trunk parameters); `weights` is a local `osnet_x1_0_imagenet.pth` (torchreid layout).

    With `weights=None` a warning says the model starts from random initialisation. The classifier is skipped
    when `num_classes` differs from the checkpoint's (shape mismatch, logged).
    """
    model = OSNet(num_classes=num_classes)
    load_pretrained(model, weights, "OSNet-x1.0")
    return model


# torchreid's width variants (each has an ImageNet checkpoint there: osnet_x0_75_imagenet.pth, ...).
OSNET_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}


def osnet_width(width: str, weights: str | Path | None = None, num_classes: int = 1000) -> OSNet:
    """OSNet of a torchreid width multiplier (x1_0, x0_75, x0_5, x0_25), optionally with its local weights."""
    if width not in OSNET_WIDTHS:
        raise ValueError(f"OSNet: unknown width '{width}' (expected one of {sorted(OSNET_WIDTHS)})")
    channels = OSNET_WIDTHS[width]
    model = OSNet(num_classes=num_classes, channels=channels, feature_dim=512)
    load_pretrained(model, weights, f"OSNet-{width}")
    return model


def osnet_tiny(num_classes: int = 10) -> OSNet:
    """A narrow OSNet (x0.25 widths) with the same layout, for fast CPU tests; never loads weights."""
    return OSNet(num_classes=num_classes, channels=(16, 64, 96, 128), feature_dim=128)


def imagenet_classifier(arch: str, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """`osnet_<width>`'s image classifier with torchreid's names, logits in training (the pretrain stage)."""
    return osnet_width(arch.removeprefix("osnet_"), weights=None, num_classes=num_classes)
