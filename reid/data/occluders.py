"""NODA, SUREID's noise-occlusion data augmentation (Sec. III-C): paste real-world occluder images onto a batch.

Paper rules, as implemented:
- The batch is duplicated; the SECOND copy gets NODA (the first keeps the ordinary augmentation only). The
  duplication itself is done by the method (reid/methods/sureid.py); this module pastes.
- An occluder is drawn uniformly from the occluder set and augmented (random crop of 80-100 % per side, random
  horizontal flip, colour jitter of brightness/contrast/saturation).
- Following FED, its aspect ratio alpha = h / w decides the type: alpha > 2 is a vertical occluder, resized to
  (H, U[W/3, W/2]) and pasted at the left or right edge; otherwise a horizontal occluder, resized to
  (U[H/3, H/2], W) and pasted at the top or bottom edge (occlusions "at four locations ... one-third to half of
  the area"). The side is chosen with probability 1/2; each image of the copy is occluded with `prob` (1.0 in
  the paper: every image of the second copy).
- Works on already-normalised (ImageNet mean/std) batch tensors on any device: the occluder RGB is normalised
  the same way and alpha-blended (RGBA png; jpg/opaque images have alpha 1). Random numbers come from a CPU
  `torch.Generator`, so a seed reproduces the pasting on CPU and GPU alike.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGE_SUFFIXES", "jitter_colour", "load_occluders", "occluder_box", "paste_occluders"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_occluders(folder: str | Path, max_size: int = 128) -> list[torch.Tensor]:
    """Read every image of `folder` as a float (4, h, w) RGBA tensor in [0, 1], longest side <= max_size.

    A folder that is missing or holds no image is an error naming the folder (NODA has nothing to paste).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"NODA occluder folder not found: {folder} (set occluder_dir to a folder of "
                                "RGBA png / jpg occluder images; the synthetic world writes <root>/occluders/)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"NODA occluder folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [_read_rgba(p, max_size) for p in files]


def _read_rgba(path: Path, max_size: int) -> torch.Tensor:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"NODA: cannot decode occluder image {path}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    scale = max_size / max(img.shape[:2])
    if scale < 1.0:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if img.dtype == np.uint16:
        img = (img / 257.0).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0


def _uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def jitter_colour(rgb: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Scale brightness, contrast (around the mean grey) and saturation (around the per-pixel grey) of an RGB
    (3, h, w) image in [0, 1]; factors of 1 leave it unchanged."""
    grey_w = torch.tensor([0.299, 0.587, 0.114], device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    out = (rgb * brightness).clamp(0, 1)
    mean = (out * grey_w).sum(0).mean()
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    grey = (out * grey_w).sum(0, keepdim=True)
    return ((out - grey) * saturation + grey).clamp(0, 1)


def occluder_box(
    patch_hw: tuple[int, int], image_hw: tuple[int, int], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """Paper's placement rule: (y1, x1, y2, x2) of the pasted occluder for a patch of the given size."""
    (ph, pw), (h, w) = patch_hw, image_hw
    vertical = ph / max(pw, 1) > 2.0
    first_side = _uniform(gen) < 0.5
    if vertical:  # full height, width W/3..W/2, left or right edge
        ow = min(w, max(1, round(w * _uniform(gen, 1 / 3, 1 / 2))))
        x1 = 0 if first_side else w - ow
        return 0, x1, h, x1 + ow
    oh = min(h, max(1, round(h * _uniform(gen, 1 / 3, 1 / 2))))  # full width, height H/3..H/2, top or bottom
    y1 = 0 if first_side else h - oh
    return y1, 0, y1 + oh, w


def _augment(occ: torch.Tensor, gen: torch.Generator, crop_min: float, flip_p: float, jitter: float) -> torch.Tensor:
    """Random crop, horizontal flip and colour jitter of one RGBA occluder."""
    _, h, w = occ.shape
    ch, cw = max(1, round(h * _uniform(gen, crop_min, 1.0))), max(1, round(w * _uniform(gen, crop_min, 1.0)))
    y, x = round(_uniform(gen) * (h - ch)), round(_uniform(gen) * (w - cw))
    occ = occ[:, y:y + ch, x:x + cw]
    if _uniform(gen) < flip_p:
        occ = occ.flip(-1)
    if jitter > 0:
        factors = [_uniform(gen, 1 - jitter, 1 + jitter) for _ in range(3)]
        occ = torch.cat([jitter_colour(occ[:3], *factors), occ[3:]], dim=0)
    return occ


def paste_occluders(
    images: torch.Tensor,
    occluders: list[torch.Tensor],
    generator: torch.Generator,
    prob: float = 1.0,
    jitter: float = 0.2,
    crop_min: float = 0.8,
    flip_p: float = 0.5,
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN.tolist()),
    std: tuple[float, ...] = tuple(IMAGENET_STD.tolist()),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste one augmented occluder per image (with probability `prob`) onto normalised `images` (B, 3, H, W).

    Returns (new images, boxes (B, 4) long y1, x1, y2, x2; -1 where nothing was pasted, coverage (B, H, W): the
    pasted occluder's alpha, 0 elsewhere: what it hides). The input is not modified. Occluders may live on the
    images' device already (the method caches them there).
    """
    if not occluders:
        raise ValueError("paste_occluders: empty occluder list")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"paste_occluders: images must be (B, 3, H, W), got {tuple(images.shape)}")
    out = images.clone()
    h, w = images.shape[-2:]
    boxes = torch.full((images.shape[0], 4), -1, dtype=torch.long)
    cover = images.new_zeros(images.shape[0], h, w)
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(3, 1, 1)
    for b in range(images.shape[0]):
        if _uniform(generator) >= prob:
            continue
        occ = occluders[int(torch.randint(len(occluders), (), generator=generator))]
        occ = _augment(occ.to(images.device, images.dtype), generator, crop_min, flip_p, jitter)
        y1, x1, y2, x2 = occluder_box(tuple(occ.shape[-2:]), (h, w), generator)
        occ = F.interpolate(occ[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False,
                            antialias=True)[0].clamp(0, 1)
        alpha = occ[3:]
        region = out[b, :, y1:y2, x1:x2]
        out[b, :, y1:y2, x1:x2] = alpha * (occ[:3] - m) / s + (1 - alpha) * region
        boxes[b] = torch.tensor([y1, x1, y2, x2])
        cover[b, y1:y2, x1:x2] = alpha[0]
    return out, boxes, cover
