"""Joint augmentation of an image and the dense teacher maps cached in its frame.

Every geometric step (resize to the input size, horizontal flip, zero-pad + random crop) is one affine map from
a source array's pixel grid to the output grid, so the image and each cached map (stored at its own resolution in
the image frame) are warped once with the *same* geometry. Flips also swap left/right semantics: LIP/ATR label
values and COCO keypoint channels. Random erasing blanks the image and the cached keypoint heatmaps (a pose
estimator would see no joint there); label maps keep their labels (the parsing of the unerased person).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from reid.vocab import COCO_FLIP_PAIRS, IMAGENET_MEAN, IMAGENET_STD, LABEL_FLIP_PAIRS


def flip_permutation(pairs: tuple[tuple[int, int], ...], n: int) -> np.ndarray:
    """Permutation p with p[i] = the index whose content moves to i after a flip."""
    perm = np.arange(n)
    for a, b in pairs:
        if a < n and b < n:
            perm[a], perm[b] = b, a
    return perm


@dataclass(frozen=True)
class Geometry:
    """One sample's augmentation: flip flag and the crop offset into the zero-padded, resized image."""

    out_hw: tuple[int, int]
    flip: bool = False
    pad: int = 0
    dx: int = 0
    dy: int = 0

    def matrix(self, src_hw: tuple[int, int], dst_hw: tuple[int, int] | None = None) -> np.ndarray:
        """2x3 affine from a source grid (src_hw, covering the whole image) to a destination grid (dst_hw).

        Pixel centres are aligned (the half-pixel convention), so maps at any resolution stay registered.
        """
        H, W = self.out_hw
        dst_h, dst_w = dst_hw or self.out_hw
        sh, sw = src_hw
        # source pixel -> resized image pixel
        ax, bx = W / sw, 0.5 * W / sw - 0.5
        ay, by = H / sh, 0.5 * H / sh - 0.5
        if self.flip:  # x -> W - 1 - x
            ax, bx = -ax, W - 1 - bx
        bx += self.pad - self.dx
        by += self.pad - self.dy
        # resized image pixel -> destination pixel
        kx, ky = dst_w / W, dst_h / H
        return np.array(
            [[ax * kx, 0.0, (bx + 0.5) * kx - 0.5], [0.0, ay * ky, (by + 0.5) * ky - 0.5]], dtype=np.float64
        )


def random_geometry(out_hw: tuple[int, int], flip_p: float, pad: int, gen: torch.Generator | None = None) -> Geometry:
    """Draw a flip and a crop offset with torch's RNG (seeded per DataLoader worker, so runs are reproducible)."""
    flip = bool(torch.rand((), generator=gen) < flip_p)
    dx = int(torch.randint(0, 2 * pad + 1, (), generator=gen)) if pad else 0
    dy = int(torch.randint(0, 2 * pad + 1, (), generator=gen)) if pad else 0
    return Geometry(out_hw, flip, pad, dx, dy)


def warp(arr: np.ndarray, geom: Geometry, dst_hw: tuple[int, int] | None = None, nearest: bool = False) -> np.ndarray:
    """Warp an HxW[xC] array with `geom`; outside the source is 0 (background label, zero heat, black pixels)."""
    dst_h, dst_w = dst_hw or geom.out_hw
    m = geom.matrix(arr.shape[:2], (dst_h, dst_w))
    if nearest:
        return cv2.warpAffine(arr, m, (dst_w, dst_h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    # Bilinear: replicate the edge so that upsampling does not blend the image's own border pixels with black
    # (a dark 1-pixel frame), then zero what lies outside the source (the padding) with a nearest-warped mask.
    out = cv2.warpAffine(arr, m, (dst_w, dst_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones(arr.shape[:2], np.uint8), m, (dst_w, dst_h), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out[inside == 0] = 0
    return out


def warp_labels(labels: np.ndarray, geom: Geometry, dst_hw: tuple[int, int], label_set: str = "lip") -> np.ndarray:
    """Warp a label map (nearest) and swap left/right classes when flipped."""
    out = warp(labels, geom, dst_hw, nearest=True)
    if geom.flip:
        pairs = LABEL_FLIP_PAIRS.get(label_set, ())
        if pairs:
            lut = flip_permutation(pairs, 256).astype(labels.dtype)
            out = lut[out]
    return out


def warp_heatmaps(heatmaps: np.ndarray, geom: Geometry, dst_hw: tuple[int, int]) -> np.ndarray:
    """Warp CxHxW heatmaps (bilinear) and swap COCO left/right channels when flipped."""
    hwc = np.ascontiguousarray(heatmaps.astype(np.float32).transpose(1, 2, 0))
    out = warp(hwc, geom, dst_hw)
    if out.ndim == 2:
        out = out[:, :, None]
    out = out.transpose(2, 0, 1)
    if geom.flip:
        out = out[flip_permutation(COCO_FLIP_PAIRS, out.shape[0])]
    return np.ascontiguousarray(out)


def resize_images(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Normalised image batches (B, 3, h, w) to (B, 3, H, W): bilinear, antialiased when shrinking; unchanged when
    the size already matches (DeSKPro's face crops to the face stream, exported graphs' fixed inputs)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = x.shape[-1] > hw[1] or x.shape[-2] > hw[0]
    return torch.nn.functional.interpolate(x.float(), size=tuple(hw), mode="bilinear", align_corners=False,
                                           antialias=shrink)


# (3, 256): the normalised value of every uint8 level per channel, computed with the arithmetic of the formula
# ((v / 255 - mean) / std in float32), so the table lookup gives the same bits as evaluating it per pixel
_NORMALISED_LEVELS = np.ascontiguousarray(
    ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD).T)


def normalize_rgb(img_rgb_uint8: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float, ImageNet mean/std: one table lookup per channel (2.4x faster than the
    arithmetic on every pixel, the largest per-image cost of the training loader; same values)."""
    if img_rgb_uint8.dtype != np.uint8 or img_rgb_uint8.ndim != 3 or img_rgb_uint8.shape[2] != 3:
        raise ValueError(f"normalize_rgb: expected an HxWx3 uint8 image, got {img_rgb_uint8.dtype} "
                         f"{img_rgb_uint8.shape}")
    out = np.empty((3, *img_rgb_uint8.shape[:2]), np.float32)
    for c in range(3):
        np.take(_NORMALISED_LEVELS[c], img_rgb_uint8[:, :, c], out=out[c])
    return torch.from_numpy(out)


def erasing_box(
    hw: tuple[int, int],
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: float = 0.3,
    gen: torch.Generator | None = None,
) -> tuple[int, int, int, int] | None:
    """Zhong et al. random erasing: draw the rectangle (y, x, h, w) to erase on an (H, W) image, or None."""
    if float(torch.rand((), generator=gen)) >= p:
        return None
    h, w = hw
    for _ in range(100):
        target = float(torch.empty(()).uniform_(*area, generator=gen)) * h * w
        aspect = float(torch.empty(()).uniform_(ratio, 1.0 / ratio, generator=gen))
        eh, ew = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < eh < h and 0 < ew < w:
            y = int(torch.randint(0, h - eh + 1, (), generator=gen))
            x = int(torch.randint(0, w - ew + 1, (), generator=gen))
            return y, x, eh, ew
    return None


def random_erasing(
    img: torch.Tensor,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: float = 0.3,
    gen: torch.Generator | None = None,
    fill: tuple[float, ...] = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """Zhong et al. random erasing on a normalised CxHxW tensor (default fill 0 = the mean colour)."""
    box = erasing_box(tuple(img.shape[-2:]), p, area, ratio, gen)
    return img if box is None else erase(img.clone(), box, fill)


def erase(img: torch.Tensor, box: tuple[int, int, int, int], fill: tuple[float, ...] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Write `fill[c]` into channel c of the rectangle `box` (y, x, h, w) of a CxHxW tensor, in place."""
    if len(fill) != img.shape[0]:
        raise ValueError(f"erase: {len(fill)} fill values for a {img.shape[0]}-channel image")
    y, x, eh, ew = box
    img[:, y : y + eh, x : x + ew] = torch.tensor(fill, dtype=img.dtype)[:, None, None]
    return img


def erase_heatmaps(heatmaps: np.ndarray, box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Zero CxhxW heatmap cells whose centre lies in the image rectangle `box` (y, x, h, w) that was erased.

    Why: a pose estimator run on the erased image would find no joint there; leaving the cached heat would tell
    the network where a hidden joint is, which no test image can.
    """
    y, x, eh, ew = box
    H, W = image_hw
    h, w = heatmaps.shape[-2:]
    centre_y = (np.arange(h) + 0.5) * H / h
    centre_x = (np.arange(w) + 0.5) * W / w
    rows = (centre_y >= y) & (centre_y < y + eh)
    cols = (centre_x >= x) & (centre_x < x + ew)
    out = heatmaps.copy()
    out[..., rows[:, None] & cols[None, :]] = 0
    return out


# DeSKPro's official transforms (data/transforms.py): Random2DTranslation enlarges by 1.05 (torchreid's 1.125 is
# commented out there), and RandomErasing writes these per-channel constants into the *normalised* tensor.
REFERENCE_TRANSLATE_SCALE = 1.05
REFERENCE_ERASE_FILL = (0.4914, 0.4822, 0.4465)


@dataclass(frozen=True)
class FieldAugment:
    """How training augments cached RGB fields (face crops), drawn once per sample for every such field:
    Random2DTranslation enlarging by `scale`, then random erasing that writes `erase_fill` (one value per channel,
    in normalised units: 0 is the ImageNet mean colour) into the box."""

    scale: float = REFERENCE_TRANSLATE_SCALE
    erase_fill: tuple[float, float, float] = REFERENCE_ERASE_FILL


def random_translation(hw: tuple[int, int], p: float = 0.5, scale: float = REFERENCE_TRANSLATE_SCALE,
                       gen: torch.Generator | None = None) -> tuple[int, int, int, int] | None:
    """Random2DTranslation (torchreid, used by DeSKPro's reference for faces): with probability p, enlarge an
    (h, w) image to (round(h * scale), round(w * scale)) and crop (y, x, h, w) back at a random offset; None
    otherwise. Returns (new_h, new_w, y, x)."""
    if float(torch.rand((), generator=gen)) >= p:
        return None
    h, w = hw
    nh, nw = int(round(h * scale)), int(round(w * scale))
    y = int(torch.randint(0, nh - h + 1, (), generator=gen))
    x = int(torch.randint(0, nw - w + 1, (), generator=gen))
    return nh, nw, y, x


def apply_translation(img: np.ndarray, move: tuple[int, int, int, int]) -> np.ndarray:
    """Enlarge (bilinear) and crop an HxWx3 image as `random_translation` drew it."""
    nh, nw, y, x = move
    h, w = img.shape[:2]
    big = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[y : y + h, x : x + w])
