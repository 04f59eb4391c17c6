"""Stand-in models and fixtures for the parsing (SCHP) and restored_faces (GPEN) teacher tests.

The stand-ins have exactly the real ONNX signatures (SCHP: `input.1` -> parsing, fusion, edge at stride 4;
GPEN: `input` -> `output`, 1x3xMxM) and behave predictably, so the tests can check geometry end to end:
- `BrightnessSCHP`: class 1 where the input pixel is bright, class 0 where dark (a stride-4 1x1 conv, so output
  pixel j sits on input pixel 4j, exactly what SCHP's align_corners upsampling assumes).
- `PassThroughGPEN`: returns its input (optionally with the red channel forced to -1, to test channel order).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn

from reid.cache.h5 import CacheWriter
from reid.data.index import IndexRow, index_sha256, read_index, write_index
from reid.teachers.schp_net import AugmentCE2P, build_schp, export_schp_onnx


class BrightnessSCHP(nn.Module):
    """SCHP-shaped stand-in: fusion logit 1 = sum of the normalised BGR values, logit 0 = 0, others -100."""

    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, num_classes, 1, stride=4)
        self.edge = nn.Conv2d(3, 2, 1, stride=4)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(-100.0)
            self.head.bias[0] = 0.0
            self.head.weight[1] = 1.0
            self.head.bias[1] = 0.0
            self.edge.weight.zero_()
            self.edge.bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fusion = self.head(x)
        return fusion * 0.5, fusion, self.edge(x)


def export_brightness_schp(path: Path, size: int = 473, num_classes: int = 20) -> Path:
    """The stand-in as ONNX with the common SCHP export signature (dynamic batch)."""
    return export_schp_onnx(BrightnessSCHP(num_classes).eval(), path, size)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and weights so a checkpoint round trip is a meaningful test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def save_official_style_checkpoint(path: Path, num_classes: int = 20, seed: int = 0) -> AugmentCE2P:
    """A tiny AugmentCE2P saved the way the official exp-schp-*.pth are: {'state_dict': {'module.<key>': ...}},
    without the `num_batches_tracked` buffers that InPlaceABN does not have. Returns the source model."""
    torch.manual_seed(seed)
    model = randomise_bn(build_schp(num_classes, "tiny"), seed).eval()
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 150}, path)
    return model


class PassThroughGPEN(nn.Module):
    """GPEN-shaped stand-in: output = input (RGB in [-1, 1]); `zero_red` forces channel 0 (R) to -1."""

    def __init__(self, zero_red: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for c in range(3):
                self.conv.weight[c, c, 1, 1] = 1.0
            if zero_red:
                self.conv.weight[0].zero_()
                self.conv.bias[0] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LatentGPEN(PassThroughGPEN):
    """Like PassThroughGPEN but with a second (latent-like) output first, as some exports may carry."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return x.mean(dim=(2, 3)), self.conv(x)


def onnx_export(model: nn.Module, path: Path, shape: tuple[int, ...], input_names: list[str],
                output_names: list[str], dynamic_axes: dict | None = None) -> Path:
    """Legacy (TorchScript) ONNX export of a stand-in, without its deprecation chatter."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (torch.zeros(*shape),), str(path), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    return path


def export_gpen(path: Path, size: int = 64, zero_red: bool = False, output_name: str = "output",
                input_name: str = "input", dynamic_batch: bool = False, latent_output: bool = False) -> Path:
    """Export the GPEN stand-in: `input` (1,3,M,M) -> `output` (1,3,M,M), fixed batch as community exports."""
    model = (LatentGPEN(zero_red) if latent_output else PassThroughGPEN(zero_red)).eval()
    outputs = ["latent", output_name] if latent_output else [output_name]
    dyn = {name: {0: "batch"} for name in [input_name, *outputs]} if dynamic_batch else None
    return onnx_export(model, path, (1, 3, size, size), [input_name], outputs, dyn)


# --- tiny datasets --------------------------------------------------------------------------------------------
def write_dataset(root: Path, images: Sequence[np.ndarray], split: str = "train") -> Path:
    """Write BGR images as PNGs under root/images and an index CSV; returns the index path."""
    rows = []
    for i, img in enumerate(images):
        rel = f"images/{i:04d}_c{i % 2}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        rows.append(IndexRow(rel, pid=i // 2, camid=i % 2, clothes="", split=split))
    return write_index(rows, root / "index.csv")


def smooth_texture(h: int, w: int, seed: int, sigma: float = 1.5) -> np.ndarray:
    """A smooth random BGR texture: detail at a few pixels, so misalignment shows while interpolation does not."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), sigma)
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-6) * 220 + 20
    return img.astype(np.uint8)


def write_faces_cache(out: Path, index_path: Path, root: Path, landmarks: Sequence[np.ndarray | None],
                      crop_size: int = 112) -> Path:
    """A `faces` cache as the faces teacher writes it: has_face, box, score, landmarks, ArcFace-aligned RGB crop.

    Crops are made with the faces teacher's own `norm_crop`, so they are exactly what that teacher stores.
    """
    from reid.teachers.faces import norm_crop

    rows = read_index(index_path)
    s = crop_size
    fields = {"has_face": ((), "uint8", "vector"), "box": ((4,), "float32", "vector"),
              "score": ((), "float32", "vector"), "landmarks": ((5, 2), "float32", "vector"),
              "crop": ((s, s, 3), "uint8", "image")}
    values: dict[str, list[np.ndarray]] = {k: [] for k in fields}
    for row, lms in zip(rows, landmarks):
        if lms is None:
            values["has_face"].append(np.uint8(0))
            values["box"].append(np.full(4, np.nan, np.float32))
            values["score"].append(np.float32(0))
            values["landmarks"].append(np.full((5, 2), np.nan, np.float32))
            values["crop"].append(np.zeros((s, s, 3), np.uint8))
            continue
        crop = norm_crop(cv2.imread(str(root / row.path)), lms, s)
        lo, hi = lms.min(0) - 4, lms.max(0) + 4
        values["has_face"].append(np.uint8(1))
        values["box"].append(np.array([lo[0], lo[1], hi[0], hi[1]], np.float32))
        values["score"].append(np.float32(0.9))
        values["landmarks"].append(np.asarray(lms, np.float32))
        values["crop"].append(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
    with CacheWriter(out, teacher="faces", backend="onnx", model_sha256="0" * 64, params={"crop_size": s},
                     index_sha256=index_sha256(index_path), paths=[r.path for r in rows], fields=fields) as writer:
        writer.write_rows(np.arange(len(rows)), {k: np.stack(v) for k, v in values.items()})
        return writer.finalize()
