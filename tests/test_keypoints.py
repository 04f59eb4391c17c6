"""keypoints teacher: HRNet affine, decode and flip pieces against hand-computed values; backends end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.cache.h5 import CacheReader
from reid.data.index import IndexRow, write_index
from reid.models.hrnet import hrnet_tiny
from reid.teachers.base import MissingWeights, build_teacher
from reid.teachers.keypoints import (
    COCO_FLIP_PAIRS,
    apply_affine,
    decode_heatmaps,
    flip_back,
    flip_test_average,
    get_max_preds,
    heatmaps_to_image_frame,
    hrnet_box_affine,
    hrnet_center_scale,
    invert_affine,
    oracle_scores,
    preprocess_hrnet,
    refine_quarter_offset,
    render_gaussian_heatmaps,
    shift_right,
)
from reid.teachers.onnx_utils import ModelSignatureError
from reid.teachers.runner import run_teacher
from reid.testing.faces_pose import export_pose, export_scrfd

CROP = (0, 0, 128, 256)  # a whole 256x128 person crop as (x1, y1, x2, y2)


# --- geometry ---------------------------------------------------------------------------------------------
def test_center_scale_by_hand():
    c, s = hrnet_center_scale(CROP)
    # centre (64, 128); w = 128 < 0.75 * 256 = 192 -> w = 192; scale = (192, 256) / 200 * 1.25 = (1.2, 1.6)
    np.testing.assert_allclose(c, [64, 128])
    np.testing.assert_allclose(s, [1.2, 1.6])
    c, s = hrnet_center_scale((0, 0, 300, 100))
    # w = 300 > 0.75 * 100 -> h = 300 / 0.75 = 400; scale = (300, 400) / 200 * 1.25 = (1.875, 2.5)
    np.testing.assert_allclose(c, [150, 50])
    np.testing.assert_allclose(s, [1.875, 2.5])


def test_box_affine_and_inverse_by_hand():
    m = hrnet_box_affine(CROP)
    # s = 192 / (1.2 * 200) = 0.8; t = (96 - 0.8 * 64, 128 - 0.8 * 128) = (44.8, 25.6)
    np.testing.assert_allclose(m, [[0.8, 0, 44.8], [0, 0.8, 25.6]])
    # the crop centre (64, 128) goes to the input centre (96, 128); the corner (0, 0) to (44.8, 25.6)
    np.testing.assert_allclose(apply_affine(m, np.array([[64, 128], [0, 0]])), [[96, 128], [44.8, 25.6]])
    # inverse: x = (x' - 44.8) / 0.8 -> [[1.25, 0, -56], [0, 1.25, -32]]
    np.testing.assert_allclose(invert_affine(m), [[1.25, 0, -56], [0, 1.25, -32]])
    m = hrnet_box_affine((0, 0, 300, 100))
    # s = 192 / 375 = 0.512; t = (96 - 0.512 * 150, 128 - 0.512 * 50) = (19.2, 102.4)
    np.testing.assert_allclose(m, [[0.512, 0, 19.2], [0, 0.512, 102.4]])
    # heatmap frame 48x64: s = 48 / 240 = 0.2, t = (24 - 12.8, 32 - 25.6) = (11.2, 6.4)
    np.testing.assert_allclose(hrnet_box_affine(CROP, out=(48, 64)), [[0.2, 0, 11.2], [0, 0.2, 6.4]])


def test_preprocess_hrnet_by_hand():
    img = np.zeros((256, 128, 3), np.uint8)
    img[:, :] = (0, 0, 255)  # pure red in BGR
    x, m = preprocess_hrnet(img)
    assert x.shape == (3, 256, 192) and x.dtype == np.float32
    # inside the warped crop (x' in [44.8, 147.2]): R = (1 - 0.485) / 0.229, G = (0 - 0.456) / 0.224
    np.testing.assert_allclose(x[:, 128, 96], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-5)
    # the black border left of x' = 44.8: every channel is (0 - mean) / std
    np.testing.assert_allclose(x[:, 128, 10], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-5)
    np.testing.assert_allclose(m, hrnet_box_affine(CROP))


# --- decode -----------------------------------------------------------------------------------------------
def test_get_max_preds_by_hand():
    hm = np.zeros((1, 2, 3, 4), np.float32)
    hm[0, 0, 1, 2] = 5.0  # peak at x = 2, y = 1
    hm[0, 1] = -1.0  # no positive peak -> coordinate (0, 0) as in the official code
    coords, maxvals = get_max_preds(hm)
    np.testing.assert_array_equal(coords[0], [[2, 1], [0, 0]])
    np.testing.assert_array_equal(maxvals[0], [5, -1])


def test_refine_quarter_offset_by_hand():
    hm = np.zeros((1, 2, 3, 4), np.float32)
    hm[0, 0, 1, 1] = 9  # peak (1, 1); right neighbour 3 > left 1 -> x + 0.25; down 2 < up 4 -> y - 0.25
    hm[0, 0, 1, 2], hm[0, 0, 1, 0], hm[0, 0, 2, 1], hm[0, 0, 0, 1] = 3, 1, 2, 4
    hm[0, 1, 1, 0] = 9  # peak on the left border -> unchanged
    hm[0, 1, 1, 1] = 5
    coords = np.array([[[1, 1], [0, 1]]], np.float32)
    np.testing.assert_allclose(refine_quarter_offset(coords, hm)[0], [[1.25, 0.75], [0, 1]])


def test_flip_back_and_shift_by_hand():
    hm = np.zeros((1, 17, 1, 3), np.float32)
    for j in range(17):
        hm[0, j, 0, 0] = j + 1  # a spike in the left column with value j + 1
    out = flip_back(hm)
    # mirrored: the spike moves to the right column; channel 1 (left eye) takes channel 2's map (value 3)
    np.testing.assert_array_equal(out[0, 0, 0], [0, 0, 1])
    np.testing.assert_array_equal(out[0, 1, 0], [0, 0, 3])
    np.testing.assert_array_equal(out[0, 2, 0], [0, 0, 2])
    np.testing.assert_array_equal(out[0, 16, 0], [0, 0, 16])
    assert len(COCO_FLIP_PAIRS) == 8 and (15, 16) in COCO_FLIP_PAIRS
    row = np.array([[[[1.0, 2.0, 3.0]]]])
    np.testing.assert_array_equal(shift_right(row), [[[[1, 1, 2]]]])  # column 0 keeps its value
    # average of plain [0, 4, 0] and mirrored [0, 0, 4] flipped back [4, 0, 0] shifted [4, 4, 0]: [2, 4, 0]
    plain = np.zeros((1, 17, 1, 3)); plain[0, 0, 0, 1] = 4
    mirrored = np.zeros((1, 17, 1, 3)); mirrored[0, 0, 0, 2] = 4
    np.testing.assert_array_equal(flip_test_average(plain, mirrored)[0, 0, 0], [2, 4, 0])


def test_decode_heatmaps_by_hand():
    hm = np.zeros((1, 1, 64, 48), np.float32)
    hm[0, 0, 32, 24] = 1.0
    hm[0, 0, 32, 25] = 0.5  # higher right neighbour -> x = 24.25
    m = hrnet_box_affine(CROP, out=(48, 64))  # [[0.2, 0, 11.2], [0, 0.2, 6.4]]
    coords, scores = decode_heatmaps(hm, [m])
    # image x = (24.25 - 11.2) / 0.2 = 65.25, y = (32 - 6.4) / 0.2 = 128
    np.testing.assert_allclose(coords[0, 0], [65.25, 128.0], atol=1e-4)
    assert scores[0, 0] == 1.0


def test_heatmaps_to_image_frame():
    m = hrnet_box_affine(CROP, out=(48, 64))
    ones = heatmaps_to_image_frame(np.ones((1, 64, 48), np.float32), m, (256, 128), (64, 32))
    # grid (i, j) -> image (4j, 4i) -> heatmap (0.2*4j + 11.2, 0.2*4i + 6.4) in [11.2, 36] x [6.4, 57.6]: inside
    assert ones.shape == (1, 64, 32) and np.allclose(ones, 1.0)
    peak = np.zeros((1, 64, 48), np.float32)
    peak[0, 32, 24] = 1.0  # heatmap (24, 32) -> image (64, 128) -> grid (16, 32)
    warped = heatmaps_to_image_frame(peak, m, (256, 128), (64, 32))
    assert np.unravel_index(warped[0].argmax(), warped[0].shape) == (32, 16)


def test_render_gaussian_and_oracle_scores():
    kps = np.array([[64, 128, 2], [10, 10, 0]], np.float32)
    maps = render_gaussian_heatmaps(kps, (256, 128), (64, 32), sigma=2.0)
    # image (64, 128) -> grid (16, 32): value 1 there, exp(-1 / 8) = 0.8825 one grid pixel away
    assert maps[0, 32, 16] == pytest.approx(1.0)
    assert maps[0, 32, 17] == pytest.approx(np.exp(-1 / 8), rel=1e-5)
    assert not maps[1].any()  # v = 0: no heatmap
    np.testing.assert_array_equal(oracle_scores(np.array([2, 1, 0])), [1.0, 0.5, 0.0])


# --- backends ---------------------------------------------------------------------------------------------
def _blob_image(x: int = 30, y: int = 96) -> np.ndarray:
    """256x128 black crop with an 8x8 white blob (the stand-in net's joints) at top-left (x, y)."""
    img = np.zeros((256, 128, 3), np.uint8)
    img[y:y + 8, x:x + 8] = 255
    return img


def _direct(teacher, images):
    row = IndexRow("x.png", 1, 0, "", "train")
    return teacher.infer([teacher.load(img, row, Path(".")) for img in images])


@pytest.fixture(scope="module")
def pose_onnx(tmp_path_factory) -> Path:
    return export_pose(tmp_path_factory.mktemp("pose") / "hrnet_w32.onnx")


@pytest.mark.parametrize("flip", [False, True])
def test_onnx_standin_finds_the_blob(pose_onnx, flip):
    teacher = build_teacher("keypoints", "onnx", pose_onnx, device="cpu", flip_test=flip)
    out = _direct(teacher, [_blob_image(), _blob_image(80, 40)])
    assert out["heatmaps"].shape == (2, 17, 64, 32) and out["heatmaps"].dtype == np.float16
    # blob pixels 30..37 x 96..103: centre (33.5, 99.5); one heatmap pixel = 5 image pixels
    np.testing.assert_allclose(out["coords"][0], np.tile([33.5, 99.5], (17, 1)), atol=2.5)
    np.testing.assert_allclose(out["coords"][1], np.tile([83.5, 43.5], (17, 1)), atol=2.5)
    # the image-frame heatmap peaks at the blob too: grid = image / 4 -> (8.4, 24.9)
    i, j = np.unravel_index(out["heatmaps"][0, 0].astype(np.float32).argmax(), (64, 32))
    assert abs(j - 33.5 / 4) <= 1.5 and abs(i - 99.5 / 4) <= 1.5
    assert (out["scores"] > 0).all()


def test_onnx_fixed_batch_through_runner(tmp_path):
    model = export_pose(tmp_path / "fixed.onnx", dynamic_batch=False)
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for k, (x, y) in enumerate([(30, 96), (80, 40), (60, 200)]):
        cv2.imwrite(str(root / f"{k}.png"), _blob_image(x, y))
        rows.append(IndexRow(f"{k}.png", k, 0, "", "train"))
    index = write_index(rows, tmp_path / "index.csv")
    teacher = build_teacher("keypoints", "onnx", model, device="cpu", flip_test=False)
    summary = run_teacher(teacher, index, root, tmp_path / "kp.h5", batch_size=2, workers=0, progress=False)
    assert summary["rows_computed"] == 3
    reader = CacheReader(tmp_path / "kp.h5", index)
    got = reader[2]
    assert got["heatmaps"].shape == (17, 64, 32) and got["coords"].shape == (17, 2) and got["scores"].shape == (17,)
    np.testing.assert_allclose(got["coords"][5], [63.5, 203.5], atol=2.5)


def test_torch_backend_matches_onnx_export(tmp_path):
    """The tiny HRNet through the torch backend (checkpoint) and through its ONNX export gives the same answer."""
    torch.manual_seed(0)
    net = hrnet_tiny()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net.eval()
    ckpt = tmp_path / "pose_tiny.pth"
    torch.save(net.state_dict(), ckpt)
    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 256, 192), str(onnx_path), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
                      opset_version=17, dynamo=False)
    images = [_blob_image(), _blob_image(80, 40)]
    via_torch = _direct(build_teacher("keypoints", "torch", ckpt, device="cpu", arch="tiny"), images)
    via_onnx = _direct(build_teacher("keypoints", "onnx", onnx_path, device="cpu"), images)
    np.testing.assert_allclose(via_torch["scores"], via_onnx["scores"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(via_torch["heatmaps"].astype(np.float32), via_onnx["heatmaps"].astype(np.float32),
                               atol=2e-3 * float(np.abs(via_onnx["heatmaps"]).max()) + 1e-3)
    # random-weight heatmaps have near-ties: float noise may move an argmax by one cell (5 px) for a joint or two
    same = np.abs(via_torch["coords"] - via_onnx["coords"]).max(axis=-1) < 0.3
    assert same.mean() >= 0.9


def test_errors(tmp_path, pose_onnx):
    with pytest.raises(MissingWeights, match="pose_hrnet_w32_256x192.pth"):
        build_teacher("keypoints", "torch", tmp_path / "absent.pth", device="cpu")
    scrfd = export_scrfd(tmp_path / "det.onnx")
    with pytest.raises(ModelSignatureError, match=r"expected inputs \['input'\]"):
        build_teacher("keypoints", "onnx", scrfd, device="cpu").setup()
    with pytest.raises(ModelSignatureError, match="input_size"):
        build_teacher("keypoints", "onnx", pose_onnx, device="cpu", input_size=[384, 288]).setup()
    with pytest.raises(ValueError, match=r"keypoints parameters.flip: unknown parameter of teacher keypoints "
                                         r"\(did you mean flip_test\?\)"):
        build_teacher("keypoints", "oracle", None, device="cpu", flip=True)


def test_oracle_reads_groundtruth(tmp_path):
    synthetic = pytest.importorskip("reid.data.synthetic")
    assert hasattr(synthetic, "load_groundtruth")
    root = tmp_path / "world"
    (root / "groundtruth").mkdir(parents=True)
    kps = np.zeros((17, 3), np.float32)
    kps[0] = (64, 40, 2)
    kps[5] = (40, 80, 1)
    np.savez(root / "groundtruth" / "a.npz", keypoints=kps)
    teacher = build_teacher("keypoints", "oracle", None, device="cpu")
    out = teacher.infer([teacher.load(np.zeros((256, 128, 3), np.uint8), IndexRow("a.jpg", 1, 0, "", "train"), root)])
    assert out["scores"][0, 0] == 1.0 and out["scores"][0, 5] == 0.5 and out["scores"][0, 1] == 0.0
    np.testing.assert_array_equal(out["coords"][0, 0], [64, 40])
    # nose (64, 40) -> grid (16, 10) is the peak of heatmap 0
    assert np.unravel_index(out["heatmaps"][0, 0].astype(np.float32).argmax(), (64, 32)) == (10, 16)
    assert not out["heatmaps"][0, 1].any()
    # each map peaks at its joint's score: the occluded left shoulder (v=1) is there but weak, as HRNet gives it
    # (40, 80) -> grid (10, 20): an exact grid point, so the Gaussian's peak value is reached
    assert float(out["heatmaps"][0, 0].max()) == 1.0
    assert float(out["heatmaps"][0, 5].max()) == 0.5
    assert np.unravel_index(out["heatmaps"][0, 5].astype(np.float32).argmax(), (64, 32)) == (20, 10)
