"""Tiny stand-in ONNX models with the real signatures of det_10g (SCRFD) and HRNet-W32 COCO, for tests.

Their outputs are controlled by the image: they "see" bright (white) regions, so a test that paints a white
block at a known place knows where the face / the joints must be decoded, end to end through the real
preprocessing, ONNX Runtime, decode and the runner.

- `StandInSCRFD`: input `input.1` (1, 3, H, W) dynamic H, W; nine 2-D outputs, scores (L_s, 1) for strides
  8, 16, 32, then boxes (L_s, 4), then keypoints (L_s, 10), 2 anchors per location, rows in (y, x, anchor)
  order. Score = sigmoid(40 (mean brightness of the stride-8 cell - 0.8)): ~1 on a cell that is white in the
  blob's [-1, 1] range, ~0 elsewhere; strides 16 and 32 never fire. Every box is the anchor centre -/+
  `BOX_DIST` strides; keypoints are the anchor centre + `KPS_OFFSETS` strides.
- `StandInPose`: input `input` (N, 3, 256, 192) -> `output` (N, 17, 64, 48): every joint's heatmap is the
  4x4-pooled brightness of the (ImageNet-normalised) input, smoothed by a 5x5 Gaussian, so all joints peak at
  a white blob.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BOX_DIST = (1.0, 1.0, 1.0, 1.0)  # l, t, r, b in strides
KPS_OFFSETS = ((-0.5, -0.25), (0.5, -0.25), (0.0, 0.25), (-0.375, 0.625), (0.375, 0.625))  # in strides
STRIDES = (8, 16, 32)
ANCHORS = 2


class StandInSCRFD(nn.Module):
    """det_10g-shaped detector that fires on white stride-8 cells (see module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dist", torch.tensor(BOX_DIST).view(1, 4))
        self.register_buffer("kps", torch.tensor(KPS_OFFSETS).view(1, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gray = x.mean(1, keepdim=True)
        scores, boxes, kps = [], [], []
        for stride in STRIDES:
            cell = F.avg_pool2d(gray, stride, stride)
            logit = 40.0 * (cell - 0.8) if stride == 8 else cell * 0.0 - 20.0
            score = torch.sigmoid(logit).repeat(1, ANCHORS, 1, 1).permute(0, 2, 3, 1).reshape(-1, 1)
            scores.append(score)
            boxes.append(score * 0.0 + self.dist)
            kps.append(score * 0.0 + self.kps)
        return (*scores, *boxes, *kps)


def _gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).view(1, 1, size, size)


class StandInPose(nn.Module):
    """HRNet-W32-COCO-shaped keypoint net whose 17 heatmaps all peak at the brightest blob."""

    def __init__(self, num_joints: int = 17) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.register_buffer("kernel", _gaussian_kernel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = F.relu(F.avg_pool2d(x.mean(1, keepdim=True), 4, 4) - 1.0)  # white ~ 2.2 after ImageNet norm
        heat = F.conv2d(bright, self.kernel, padding=2)
        return heat.repeat(1, self.num_joints, 1, 1)


def export_scrfd(path: str | Path) -> Path:
    """Write the SCRFD stand-in (input `input.1`, 9 outputs, dynamic H, W; batch fixed at 1 like det_10g)."""
    path = Path(path)
    names = [f"out{i}" for i in range(9)]
    axes = {"input.1": {2: "h", 3: "w"}} | {n: {0: f"rows_{n}"} for n in names}
    torch.onnx.export(StandInSCRFD().eval(), torch.zeros(1, 3, 64, 64), str(path), input_names=["input.1"],
                      output_names=names, dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def export_pose(path: str | Path, dynamic_batch: bool = True, input_name: str = "input") -> Path:
    """Write the HRNet stand-in (`input` (N,3,256,192) -> `output` (N,17,64,48))."""
    path = Path(path)
    axes = {input_name: {0: "n"}, "output": {0: "n"}} if dynamic_batch else None
    torch.onnx.export(StandInPose().eval(), torch.zeros(1, 3, 256, 192), str(path), input_names=[input_name],
                      output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path
