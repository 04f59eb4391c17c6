"""ReIDDataset on the tiny synthetic world with a real oracle parsing cache: batch contract, image_field,
set_field, label maps, unreadable images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from reid.cache.h5 import CacheReader
from reid.data.dataset import ReIDDataset, label_maps
from reid.data.index import IndexRow, select
from reid.data.synthetic import load_groundtruth
from reid.data.transforms import FieldAugment, erase, normalize_rgb, random_translation


def _train_set(world, cache: Path, train: bool = True, **kw) -> ReIDDataset:
    positions = select(world.rows, "train")
    pids, clothes = label_maps(world.rows, positions)
    return ReIDDataset(world.rows, world.root, positions, (64, 32), train=train,
                       caches={"parsing": CacheReader(cache, index_path=world.index)}, fields=["parsing.labels"],
                       pid_labels=pids, clothes_labels=clothes, pad=4, **kw)


def test_batch_keys_dtypes_shapes(tiny_world, tiny_parsing_cache) -> None:
    ds = _train_set(tiny_world, tiny_parsing_cache)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False, num_workers=0)))
    assert set(batch) == {"image", "pid", "camid", "clothes", "index", "flipped", "parsing.labels"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, 64, 32)
    for key in ("pid", "camid", "clothes", "index"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (4,), key
    assert batch["flipped"].dtype == torch.bool and batch["flipped"].shape == (4,)
    labels = batch["parsing.labels"]
    assert labels.dtype == torch.int64 and labels.shape == (4, 64, 32)  # at the INPUT size, not the stored 32x16
    assert 0 <= int(labels.min()) and int(labels.max()) <= 19
    assert batch["index"].tolist() == select(tiny_world.rows, "train")[:4]
    assert set(batch["pid"].tolist()) <= set(range(4))  # 4 train identities relabelled 0..3


def test_test_transform_labels_follow_the_ground_truth(tiny_world, tiny_parsing_cache) -> None:
    ds = _train_set(tiny_world, tiny_parsing_cache, train=False)
    sample = ds[0]
    assert sample["flipped"] is False
    gt = load_groundtruth(tiny_world.root, tiny_world.rows[0].path)["parsing"]  # 128x64 image frame
    expected = cv2.resize(gt, (32, 64), interpolation=cv2.INTER_NEAREST)
    agree = (sample["parsing.labels"].numpy() == expected).mean()
    assert agree > 0.9, f"only {agree:.2%} of the pixels agree with the resized ground truth"


def test_label_maps_are_sorted_and_contiguous() -> None:
    rows = [IndexRow("a", 9, 0, "9", "train"), IndexRow("b", 3, 0, "3C", "train"), IndexRow("c", 3, 1, "3", "train"),
            IndexRow("d", 5, 0, "5", "query")]
    pids, clothes = label_maps(rows, [0, 1, 2])
    assert pids == {3: 0, 9: 1}
    assert clothes == {"3": 0, "3C": 1, "9": 2}


class _RGBReader:
    """Stand-in cache with one RGB field `crop` (S x S x 3 uint8): left half red, right half blue."""

    attrs: dict = {}
    kinds = {"crop": "image"}

    def __init__(self, n: int, size: int = 16) -> None:
        crop = np.zeros((size, size, 3), np.uint8)
        crop[:, : size // 2] = (255, 0, 0)
        crop[:, size // 2 :] = (0, 0, 255)
        self.crop, self.n = crop, n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"crop": self.crop}


def test_image_field_replaces_the_image_file(tiny_world) -> None:
    reader = _RGBReader(len(tiny_world.rows))
    ds = ReIDDataset(tiny_world.rows, tiny_world.root, [0, 1], (32, 32), train=False, caches={"faces": reader},
                     image_field="faces.crop")
    image = ds[0]["image"]
    # 16x16 -> 32x32 resize: the left 16 columns red, the right 16 blue (bilinear blends only at the seam).
    assert image.shape == (3, 32, 32)
    red = normalize_rgb(np.full((32, 32, 3), (255, 0, 0), np.uint8))
    blue = normalize_rgb(np.full((32, 32, 3), (0, 0, 255), np.uint8))
    assert torch.allclose(image[:, :, :15], red[:, :, :15])
    assert torch.allclose(image[:, :, 17:], blue[:, :, 17:])


def test_rgb_cache_field_is_mirrored_with_the_body(tiny_world) -> None:
    reader = _RGBReader(len(tiny_world.rows))
    ds = ReIDDataset(tiny_world.rows, tiny_world.root, [0], (64, 32), train=True, caches={"faces": reader},
                     fields=["faces.crop"], flip_p=1.0, pad=0, erasing_p=0.0)
    sample = ds[0]
    assert sample["flipped"] is True
    face = sample["faces.crop"]
    assert face.shape == (3, 16, 16)  # stored size, not the input size
    assert torch.equal(face, normalize_rgb(reader.crop[:, ::-1].copy()))  # blue now on the left


def test_set_field_overrides_the_cache(tiny_world, tiny_parsing_cache) -> None:
    ds = _train_set(tiny_world, tiny_parsing_cache, train=False)
    n = len(tiny_world.rows)
    ds.set_field("parsing.labels", np.full((n, 32, 16), 7, np.uint8), "labels")
    assert (ds[3]["parsing.labels"] == 7).all()
    ds.set_field("isp.labels", np.full((n, 8, 4), 2, np.uint8), "labels")  # a new field is added to the samples
    assert ds.fields[-1] == "isp.labels"
    assert (ds[0]["isp.labels"] == 2).all() and ds[0]["isp.labels"].shape == (64, 32)
    with pytest.raises(ValueError, match=rf"set_field\('parsing.labels'\): expected {n} rows, got 3"):
        ds.set_field("parsing.labels", np.zeros((3, 32, 16), np.uint8), "labels")


def test_missing_cache_is_an_error_naming_it(tiny_world) -> None:
    with pytest.raises(KeyError, match=r"fields need caches \['keypoints'\]"):
        ReIDDataset(tiny_world.rows, tiny_world.root, [0], (64, 32), train=False, fields=["keypoints.heatmaps"])


def test_unreadable_image_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    rows = [IndexRow("broken.jpg", 1, 0, "", "query"), IndexRow("missing.jpg", 1, 0, "", "query")]
    ds = ReIDDataset(rows, tmp_path, [0, 1], (64, 32), train=False)
    with pytest.raises(OSError, match=r"cannot decode image .*broken\.jpg"):
        ds[0]
    with pytest.raises(OSError, match=r"image not found: .*missing\.jpg"):
        ds[1]


def test_random_erasing_blanks_the_cached_heatmaps_where_it_blanks_the_image(tiny_world, tiny_parsing_cache) -> None:
    """A pose estimator would find no joint in an erased region, so the cached heat there must go too."""
    ds = _train_set(tiny_world, tiny_parsing_cache, erasing_p=1.0)
    n = len(tiny_world.rows)
    ds.set_field("keypoints.heatmaps", np.ones((n, 17, 32, 16), np.float32), "heatmaps")
    torch.manual_seed(3)
    sample = ds[0]
    heat = sample["keypoints.heatmaps"]  # at input / 4 = 16 x 8
    image_erased = (sample["image"] == 0).all(dim=0)  # the mean colour in all three channels
    assert image_erased.any() and heat.shape == (17, 16, 8)
    # a cell is erased iff the image pixel at its centre is; the other cells keep their (warped) heat
    centres = image_erased[2::4, 2::4]
    assert (heat[:, centres] == 0).all()
    inside = torch.zeros_like(centres)
    inside[1:-1, 1:-1] = True  # away from the zero padding of the crop
    assert (heat[:, ~centres & inside] > 0).all()


class _TwoFaceReader:
    """Stand-in for the faces + restored_faces caches: a raw crop and a restored face of different content."""

    attrs: dict = {}
    kinds = {"crop": "image", "restored": "image"}

    def __init__(self, size: int, seed: int) -> None:
        self.img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"crop": self.img, "restored": self.img}


def test_face_fields_are_translated_and_erased_jointly_in_training(tiny_world) -> None:
    """DeSKPro's reference augments the raw and the restored face with one flip / translation / erasing; so does
    `rgb_augment`, and only in training."""
    raw, restored = _TwoFaceReader(16, 0), _TwoFaceReader(16, 0)
    caches = {"faces": raw, "restored_faces": restored}
    fields = ["faces.crop", "restored_faces.restored"]
    ds = ReIDDataset(tiny_world.rows, tiny_world.root, list(range(8)), (64, 32), train=True, caches=caches,
                     fields=fields, flip_p=0.0, pad=0, erasing_p=1.0, rgb_augment=FieldAugment())
    torch.manual_seed(0)
    changed = 0
    fill = torch.tensor([0.4914, 0.4822, 0.4465])[:, None]  # the official RandomErasing's constants, per channel
    for i in range(8):
        sample = ds[i]
        assert torch.equal(sample["faces.crop"], sample["restored_faces.restored"])  # the same moves on both
        changed += int(not torch.equal(sample["faces.crop"], normalize_rgb(raw.img)))
        crop = sample["faces.crop"].flatten(1)
        assert (crop == fill).all(dim=0).any()  # erasing_p = 1: a rectangle holding the constants, channel by channel
    assert changed == 8
    plain = ReIDDataset(tiny_world.rows, tiny_world.root, [0], (64, 32), train=True, caches=caches, fields=fields,
                        flip_p=0.0, pad=0, erasing_p=1.0)
    assert torch.equal(plain[0]["faces.crop"], normalize_rgb(raw.img))  # without rgb_augment: untouched


def test_random_translation_enlarges_by_the_official_factor() -> None:
    """DeSKPro's official Random2DTranslation enlarges by 1.05 (torchreid's 1.125 is commented out there): a 64x32
    face becomes 67x34 (round(67.2), round(33.6)); 1.125 would give 72x36."""
    gen = torch.Generator().manual_seed(0)
    moves = [random_translation((64, 32), p=1.0, gen=gen) for _ in range(50)]
    assert {m[:2] for m in moves} == {(67, 34)}
    assert max(m[2] for m in moves) <= 3 and max(m[3] for m in moves) <= 2  # offsets stay inside the enlargement
    assert random_translation((64, 32), p=1.0, scale=1.125, gen=gen)[:2] == (72, 36)


def test_erase_writes_one_value_per_channel() -> None:
    img = torch.zeros(3, 4, 5)
    out = erase(img, (1, 2, 2, 3), (0.5, -1.0, 2.0))
    assert out[0, 1, 2] == 0.5 and out[1, 2, 4] == -1.0 and out[2, 1, 3] == 2.0
    assert out[:, 0].abs().sum() == 0 and out[:, :, :2].abs().sum() == 0  # outside the box: untouched
    with pytest.raises(ValueError, match="3-channel"):
        erase(img, (0, 0, 1, 1), (0.0,))


def test_rgb_moves_scale_to_a_field_of_another_size() -> None:
    from reid.data.dataset import _rescale_moves

    move, box = _rescale_moves(((16, 16), ((18, 18, 2, 1), (4, 8, 6, 2))), (32, 32))
    assert move == (36, 36, 4, 2) and box == (8, 16, 12, 4)
