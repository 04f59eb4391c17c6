"""Joint augmentation: the affine of one Geometry, registration of image and maps at different resolutions,
left/right semantics on flip, and random erasing touching the image only."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.data.dataset import ReIDDataset
from reid.data.index import IndexRow
from reid.data.transforms import (
    Geometry,
    flip_permutation,
    normalize_rgb,
    random_erasing,
    warp,
    warp_heatmaps,
    warp_labels,
)
from reid.vocab import COCO_FLIP_PAIRS, LABEL_FLIP_PAIRS


def test_matrix_flip_pad_crop_same_size_by_hand() -> None:
    # Source 4x2 (H x W) -> output 4x2, flip, pad 1, crop offset dx=0, dy=2.
    # No resize: a = W/sw = 1, b = 0.5*1 - 0.5 = 0 (x and y).
    # Flip: x -> W-1-x = 1 - x, so a_x = -1, b_x = 1.
    # Pad then crop: x += pad - dx = +1, y += pad - dy = -1.
    # => x' = 2 - x, y' = y - 1.
    m = Geometry((4, 2), flip=True, pad=1, dx=0, dy=2).matrix((4, 2))
    np.testing.assert_allclose(m, [[-1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])


def test_matrix_resize_half_resolution_destination_by_hand() -> None:
    # Source 8x4 -> network input 4x2 -> destination grid 2x1 (half the input), no flip/pad.
    # src -> input: a = 2/4 = 0.5, b = 0.5*0.5 - 0.5 = -0.25 (both axes: 4/8 = 2/4).
    # input -> dst: k = 1/2; x'' = (x' + 0.5) * 0.5 - 0.5 => a = 0.25, b = (-0.25 + 0.5)*0.5 - 0.5 = -0.375.
    # Check: source pixel centre 1.5 (between pixels 1 and 2, the centre of the first 4-pixel cell) -> 0.
    m = Geometry((4, 2)).matrix((8, 4), (2, 1))
    np.testing.assert_allclose(m, [[0.25, 0.0, -0.375], [0.0, 0.25, -0.375]])
    assert m[0, 0] * 1.5 + m[0, 2] == pytest.approx(0.0)


def test_matrix_warps_a_4x2_array_as_computed() -> None:
    # x' = 2 - x, y' = y - 1 (first test): output (y', x') reads source (y'+1, 2-x').
    # x'=0 reads x=2 (outside the source, zero padding); x'=1 reads x=1; row y'=3 reads y=4 (outside).
    src = np.arange(1, 9, dtype=np.float32).reshape(4, 2)  # [[1,2],[3,4],[5,6],[7,8]]
    out = warp(src, Geometry((4, 2), flip=True, pad=1, dx=0, dy=2))
    np.testing.assert_array_equal(out, [[0, 4], [0, 6], [0, 8], [0, 0]])


def test_bright_pixel_image_and_half_resolution_labels_stay_registered() -> None:
    # Image 64x32; label map at half resolution 32x16 in the same frame. Label pixel (10, 3) covers image
    # pixels rows 20-21, cols 6-7. Geometry: flip, pad 4, crop dx=1, dy=6, output 64x32.
    # Flip: cols 6,7 -> 31-6=25, 31-7=24; then x' = x + pad - dx = x + 3 -> cols 27, 28.
    # Rows: y' = y + pad - dy = y - 2 -> rows 18, 19.
    img = np.zeros((64, 32, 3), np.uint8)
    img[20:22, 6:8] = 255
    labels = np.zeros((32, 16), np.uint8)
    labels[10, 3] = 5  # Upper-clothes: not a left/right class
    geom = Geometry((64, 32), flip=True, pad=4, dx=1, dy=6)
    out_img = warp(img, geom)
    out_lab = warp_labels(labels, geom, (64, 32))
    bright = np.argwhere(out_img[:, :, 0] > 0)
    assert sorted(map(tuple, bright)) == [(18, 27), (18, 28), (19, 27), (19, 28)]
    assert (out_img[18:20, 27:29] == 255).all()
    np.testing.assert_array_equal(np.argwhere(out_lab == 5), bright)
    assert set(np.unique(out_lab)) == {0, 5}


def test_lip_left_right_labels_swap_on_flip_only() -> None:
    labels = np.array([[14, 15, 16, 17, 18, 19, 5, 0]], np.uint8)
    flipped = warp_labels(labels, Geometry((1, 8), flip=True), (1, 8))
    # Mirror reverses columns: [0, 5, 19, 18, 17, 16, 15, 14]; swap 14<->15, 16<->17, 18<->19:
    np.testing.assert_array_equal(flipped, [[0, 5, 18, 19, 16, 17, 14, 15]])
    plain = warp_labels(labels, Geometry((1, 8)), (1, 8))
    np.testing.assert_array_equal(plain, labels)
    assert LABEL_FLIP_PAIRS["lip"] == ((14, 15), (16, 17), (18, 19))


def test_coco_heatmap_channels_swap_on_flip() -> None:
    # Input 64x32, heatmaps 16x8 (a quarter). With a flip and no pad the map is x' = 7 - x:
    # src->input a = 32/8 = 4, b = 1.5; flip: a = -4, b = 31 - 1.5 = 29.5; input->dst k = 1/4:
    # a = -1, b = (29.5 + 0.5)/4 - 0.5 = 7.
    heat = np.zeros((17, 16, 8), np.float16)
    heat[5, 3, 1] = 1.0  # left shoulder
    heat[0, 2, 2] = 0.5  # nose: no partner
    out = warp_heatmaps(heat, Geometry((64, 32), flip=True), (16, 8))
    assert out.dtype == np.float32 and out.shape == (17, 16, 8)
    assert out[6, 3, 6] == pytest.approx(1.0)  # now the right shoulder, mirrored column 7 - 1
    assert out[5].max() == 0.0
    assert out[0, 2, 5] == pytest.approx(0.5)
    assert out.sum() == pytest.approx(1.5)
    perm = flip_permutation(COCO_FLIP_PAIRS, 17)
    assert perm[0] == 0 and perm[1] == 2 and perm[2] == 1 and perm[15] == 16 and perm[16] == 15


def test_random_erasing_erases_one_rectangle_to_zero() -> None:
    img = torch.ones(3, 32, 16)
    gen = torch.Generator().manual_seed(3)
    out = random_erasing(img, p=1.0, gen=gen)
    zero = (out == 0).all(dim=0)
    ys, xs = torch.nonzero(zero, as_tuple=True)
    assert len(ys) > 0
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    assert int(zero.sum()) == h * w  # one filled rectangle
    assert 0.02 * 32 * 16 * 0.5 <= h * w <= 0.4 * 32 * 16 * 1.5  # area drawn in [0.02, 0.4] (rounding slack)
    assert torch.equal(out[:, ~zero], img[:, ~zero])
    assert torch.equal(img, torch.ones(3, 32, 16))  # input untouched
    assert torch.equal(random_erasing(img, p=0.0), img)


class _MemoryReader:
    """A cache reader stand-in: row -> {'labels': map}, LIP provenance."""

    attrs = {"params": {"label_set": "lip"}}
    kinds = {"labels": "labels"}

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"labels": self.labels[i]}


def test_dataset_erasing_touches_the_image_not_the_labels(tmp_path: Path) -> None:
    rgb = np.full((64, 32, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb)
    labels = np.full((1, 32, 16), 5, np.uint8)
    rows = [IndexRow("a.png", 1, 0, "1", "train")]

    def sample(erasing_p: float) -> dict:
        ds = ReIDDataset(rows, tmp_path, [0], (64, 32), train=True, caches={"parsing": _MemoryReader(labels)},
                         fields=["parsing.labels"], flip_p=0.5, pad=0, erasing_p=erasing_p)
        torch.manual_seed(11)  # the same geometry draw for both samples
        return ds[0]

    plain, erased = sample(0.0), sample(1.0)
    assert torch.equal(plain["parsing.labels"], erased["parsing.labels"])
    assert (erased["parsing.labels"] == 5).all()
    assert torch.equal(plain["image"], normalize_rgb(rgb))
    changed = (plain["image"] != erased["image"]).any(dim=0)
    assert changed.any()
    assert (erased["image"][:, changed] == 0).all()


def test_upsampling_keeps_the_border_colour_and_padding_is_black() -> None:
    # 32x16 -> 64x32 (2x): output pixel 0 samples source x = (0 + 0.5)/2 - 0.5 = -0.25, inside the image frame
    # [-0.5, 15.5]: it must read the edge colour (200), not a blend with black (0.75*200 = 150).
    img = np.full((32, 16, 3), 200, np.uint8)
    np.testing.assert_array_equal(warp(img, Geometry((64, 32))), np.full((64, 32, 3), 200, np.uint8))
    # pad 2, crop at (0, 0): the first 2 rows and columns are padding (0), the rest is the image.
    padded = warp(img, Geometry((64, 32), pad=2, dx=0, dy=0))
    assert (padded[:2] == 0).all() and (padded[:, :2] == 0).all()
    assert (padded[2:, 2:] == 200).all()


def test_erase_heatmaps_hand_cells() -> None:
    from reid.data.transforms import erase_heatmaps

    hm = np.arange(1, 9, dtype=np.float32).reshape(1, 4, 2)  # 4x2 cells over a 16x8 image: centres y 2,6,10,14; x 2,6
    out = erase_heatmaps(hm, (4, 0, 8, 4), (16, 8))  # rows 4..11, columns 0..3 -> cells (1,0) and (2,0)
    assert out[0].tolist() == [[1, 2], [0, 4], [0, 6], [7, 8]]
    assert hm[0, 1, 0] == 3  # the input is not modified


def test_normalize_rgb_is_the_imagenet_formula_per_channel() -> None:
    """One pixel (255, 0, 128) -> ((1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128/255 - 0.406) / 0.225), channel
    first; the table lookup gives exactly the bits of the float32 formula on every level."""
    import numpy as np
    import torch

    from reid.data.transforms import normalize_rgb

    x = normalize_rgb(np.array([[[255, 0, 128]]], np.uint8))
    assert x.shape == (3, 1, 1) and x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [(1 - 0.485) / 0.229, -0.456 / 0.224, (128 / 255 - 0.406) / 0.225],
                               rtol=1e-6)
    levels = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=1)[None]  # (1, 256, 3): every level, each channel
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    formula = ((levels.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(2, 0, 1)
    assert np.array_equal(normalize_rgb(levels).numpy(), formula)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        normalize_rgb(np.zeros((4, 4, 3), np.float32))
