"""faces teacher: SCRFD decode pieces against hand-computed values, alignment, and the stand-in detector end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.cache.h5 import CacheReader
from reid.data.index import IndexRow, write_index
from reid.teachers.base import MissingWeights, build_teacher
from reid.vocab import ARCFACE_TEMPLATE_112
from reid.teachers.faces import (
    Detections,
    FacesTeacher,
    anchor_centers,
    decode_scrfd,
    distance2bbox,
    distance2kps,
    letterbox_topleft,
    nms,
    norm_crop,
    pad_image,
    scrfd_blob,
    scrfd_layout,
    select_face,
    umeyama_similarity,
)
from reid.teachers.onnx_utils import ModelSignatureError
from reid.teachers.runner import run_teacher
from reid.testing.faces_pose import export_pose, export_scrfd


# --- pure functions ---------------------------------------------------------------------------------------
def test_anchor_centers_row_major_no_half_offset():
    got = anchor_centers(2, 3, 8, 2)
    # rows (y, x, anchor): y=0: x=0,0,8,8,16,16 ; y=1: same x at y=8; centres are x*8, y*8 (no +0.5)
    want = [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0], [0, 8], [0, 8], [8, 8], [8, 8], [16, 8], [16, 8]]
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_distance2bbox_and_kps():
    pts = np.array([[10.0, 20.0]])
    # (10-1, 20-2, 10+3, 20+4)
    np.testing.assert_array_equal(distance2bbox(pts, np.array([[1.0, 2, 3, 4]])), [[9, 18, 13, 24]])
    kps = distance2kps(pts, np.array([[1.0, -1, 0, 2, -3, 0, 0, 0, 5, 5]]))
    np.testing.assert_array_equal(kps, [[[11, 19], [10, 22], [7, 20], [10, 20], [15, 25]]])


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 6, 10, 16]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    # IoU(A,B) = 90 / (100+100-90) = 0.818 > 0.4 -> B suppressed; IoU(A,C) = 40 / 160 = 0.25 -> C kept
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [0, 2])
    # at IoU threshold 0.9 nothing is suppressed
    np.testing.assert_array_equal(nms(boxes, scores, 0.9), [0, 1, 2])
    assert nms(np.zeros((0, 4)), np.zeros(0)).shape == (0,)


def test_letterbox_topleft_by_hand():
    tall = np.full((100, 50, 3), 200, np.uint8)
    canvas, scale = letterbox_topleft(tall, [64, 64])
    # h/w = 2 > 1: new_h = 64, new_w = int(64 * 50 / 100) = 32, det_scale = 64 / 100
    assert canvas.shape == (64, 64, 3) and scale == pytest.approx(0.64)
    assert (canvas[:, :32] == 200).all() and (canvas[:, 32:] == 0).all()
    wide = np.full((50, 100, 3), 200, np.uint8)
    canvas, scale = letterbox_topleft(wide, [64, 64])
    # new_w = 64, new_h = int(64 * 50 / 100) = 32; det_scale = 32 / 50
    assert scale == pytest.approx(0.64) and (canvas[:32] == 200).all() and (canvas[32:] == 0).all()


def test_pad_and_blob():
    img = np.zeros((20, 10, 3), np.uint8)
    padded, margin = pad_image(img, 0.25)  # round(0.25 * 20) = 5 px on every side
    assert margin == 5 and padded.shape == (30, 20, 3)
    bgr = np.zeros((1, 1, 3), np.uint8)
    bgr[0, 0] = (255, 0, 127)  # B, G, R
    blob = scrfd_blob(bgr)
    # RGB order, (x - 127.5) / 128: R = -0.00390625, G = -0.99609375, B = 0.99609375
    np.testing.assert_allclose(blob[0, :, 0, 0], [-0.5 / 128, -127.5 / 128, 127.5 / 128])


def test_scrfd_layout_routing():
    assert scrfd_layout(9) == ((8, 16, 32), 2, True)
    assert scrfd_layout(6) == ((8, 16, 32), 2, False)
    assert scrfd_layout(15) == ((8, 16, 32, 64, 128), 1, True)
    assert scrfd_layout(10) == ((8, 16, 32, 64, 128), 1, False)
    with pytest.raises(ModelSignatureError, match="found 7"):
        scrfd_layout(7)


def _outputs_32x32() -> list[np.ndarray]:
    """Hand-made 9 outputs for a 32x32 input: rows 4*4*2, 2*2*2, 1*1*2 for strides 8, 16, 32."""
    rows = (32, 8, 2)
    scores = [np.zeros((r, 1), np.float32) for r in rows]
    boxes = [np.zeros((r, 4), np.float32) for r in rows]
    kps = [np.zeros((r, 10), np.float32) for r in rows]
    # stride 8, y=1, x=2, anchor 1 -> row (1*4 + 2)*2 + 1 = 13, centre (16, 8)
    scores[0][13] = 0.9
    boxes[0][13] = [1, 1, 2, 2]
    kps[0][13] = [0, 0, 1, 0, 0, 1, -1, 1, 1, 1]
    # stride 16, row 0, centre (0, 0)
    scores[1][0] = 0.5
    boxes[1][0] = [0.5, 0.5, 0.5, 0.5]
    scores[2][1] = 0.2  # below threshold
    return scores + boxes + kps


def test_decode_scrfd_by_hand():
    det = decode_scrfd(_outputs_32x32(), (32, 32), det_scale=2.0, thresh=0.3)
    np.testing.assert_allclose(det.scores, [0.9, 0.5])
    # box: centre (16, 8) -/+ (1, 1, 2, 2) * 8 = [8, 0, 32, 24] / 2 = [4, 0, 16, 12]
    # second: centre (0, 0) -/+ 0.5 * 16 = [-8, -8, 8, 8] / 2
    np.testing.assert_allclose(det.boxes, [[4, 0, 16, 12], [-4, -4, 4, 4]])
    # kps: (16, 8) + off * 8 = (16,8), (24,8), (16,16), (8,16), (24,16); / 2
    np.testing.assert_allclose(det.landmarks[0], [[8, 4], [12, 4], [8, 8], [4, 8], [12, 8]])


def test_decode_scrfd_rejects_wrong_row_count():
    outs = _outputs_32x32()
    with pytest.raises(ModelSignatureError, match="stride 8"):
        decode_scrfd(outs, (64, 64), 1.0, 0.3)


def test_select_face_upper_half():
    det = Detections(boxes=np.array([[0, 50, 10, 70], [0, 10, 10, 30]], np.float32),
                     scores=np.array([0.9, 0.6], np.float32), landmarks=None)
    # image 100 x 50: first centre y = 60 >= 50 (lower half) -> skipped; second centre y = 20 -> chosen
    assert select_face(det, (100, 50)) == 1
    assert select_face(det, (100, 50), upper_fraction=0.7) == 0
    assert select_face(Detections(np.zeros((0, 4)), np.zeros(0), None), (100, 50)) is None


def test_umeyama_similarity_by_hand():
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # dst = scale 2, rotation +90 deg ((x, y) -> (-y, x)), translation (3, 4)
    dst = np.array([[3.0, 4.0], [3.0, 6.0], [1.0, 4.0]])
    np.testing.assert_allclose(umeyama_similarity(src, dst), [[0, -2, 3], [2, 0, 4]], atol=1e-12)


def test_norm_crop_maps_landmarks_onto_template():
    img = np.zeros((300, 300, 3), np.uint8)
    lms = ARCFACE_TEMPLATE_112 * 0.5 + np.array([100.0, 150.0], np.float32)  # a half-size face at (100, 150)
    m = umeyama_similarity(lms, ARCFACE_TEMPLATE_112 * 2)
    # the fit is exact: each landmark lands on the 224-px template
    np.testing.assert_allclose(np.c_[lms, np.ones(5)] @ m.T, ARCFACE_TEMPLATE_112 * 2, atol=1e-4)
    dot = (128, 186)  # a dot near the nose (128.01, 185.87); scale 4 -> it must land at 4 * offset + template
    cv2.circle(img, dot, 2, (255, 255, 255), -1)
    crop = norm_crop(img, lms, 224)
    ys, xs = np.nonzero(crop[:, :, 0])
    want = m @ [dot[0], dot[1], 1.0]
    assert crop.shape == (224, 224, 3)
    assert abs(xs.mean() - want[0]) < 1 and abs(ys.mean() - want[1]) < 1


def test_norm_crop_matches_insightface():
    fa = pytest.importorskip("insightface.utils.face_align")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
    lms = ARCFACE_TEMPLATE_112 * 0.9 + np.array([20.0, 15.0], np.float32) + rng.normal(0, 1.0, (5, 2))
    mine = norm_crop(img, lms.astype(np.float32), 112).astype(int)
    theirs = fa.norm_crop(img, lms.astype(np.float32), 112).astype(int)
    assert np.abs(mine - theirs).mean() < 1.0


# --- the teacher through ONNX stand-ins --------------------------------------------------------------------
@pytest.fixture(scope="module")
def scrfd_onnx(tmp_path_factory) -> Path:
    return export_scrfd(tmp_path_factory.mktemp("scrfd") / "det_10g.onnx")


def _face_image(face: bool = True, at=(16, 16), size=16) -> np.ndarray:
    """128x64 black crop with a white square (the stand-in detector's 'face') whose top-left is `at`."""
    img = np.zeros((128, 64, 3), np.uint8)
    if face:
        img[at[1]:at[1] + size, at[0]:at[0] + size] = 255
    return img


def _run_direct(teacher: FacesTeacher, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    row = IndexRow("x.jpg", 1, 0, "", "train")
    return teacher.infer([teacher.load(img, row, Path(".")) for img in images])


def test_onnx_decode_end_to_end_by_hand(scrfd_onnx):
    teacher = build_teacher("faces", "onnx", scrfd_onnx, device="cpu", pad=0.5, det_size=[128, 128])
    out = _run_direct(teacher, [_face_image(), _face_image(face=False), _face_image(at=(16, 96))])
    # pad 0.5 -> margin 64 -> padded 256x192; letterbox into 128x128: det_scale = 128/256 = 0.5.
    # white square [16,32)^2 -> padded [80,96)^2 -> canvas [40,48)^2 = stride-8 cell (5, 5), centre (40, 40).
    # box on canvas (40 -/+ 8) = [32, 32, 48, 48] -> / 0.5 = [64, 64, 96, 96] -> - 64 = [0, 0, 32, 32]
    np.testing.assert_array_equal(out["has_face"], [1, 0, 0])  # third face is in the lower half: ignored
    np.testing.assert_allclose(out["box"][0], [0, 0, 32, 32], atol=1e-4)
    assert out["score"][0] > 0.99
    # keypoints: canvas (40, 40) + off * 8, / 0.5, - 64 -> (16, 16) + off * 16
    want = np.array([[16 - 8, 16 - 4], [16 + 8, 16 - 4], [16, 16 + 4], [16 - 6, 16 + 10], [16 + 6, 16 + 10]])
    np.testing.assert_allclose(out["landmarks"][0], want, atol=1e-4)
    assert out["crop"].shape == (3, 112, 112, 3) and out["crop"][0].any()
    assert np.isnan(out["box"][1]).all() and np.isnan(out["landmarks"][1]).all()
    assert out["score"][1] == 0 and not out["crop"][1].any()


def test_onnx_through_runner(scrfd_onnx, tmp_path):
    root = tmp_path / "data"
    rows = []
    for k, img in enumerate([_face_image(), _face_image(face=False), _face_image(at=(32, 0))]):
        rel = f"img_{k}.png"
        root.mkdir(exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        rows.append(IndexRow(rel, k, 0, "", "train"))
    index = write_index(rows, tmp_path / "index.csv")
    teacher = build_teacher("faces", "onnx", scrfd_onnx, device="cpu", pad=0.5, det_size=[128, 128])
    summary = run_teacher(teacher, index, root, tmp_path / "faces.h5", batch_size=2, workers=0, progress=False)
    assert summary["rows_computed"] == 3 and "CPUExecutionProvider" in summary["provenance"]["providers"]
    reader = CacheReader(tmp_path / "faces.h5", index)
    got = [reader[i] for i in range(3)]
    assert [int(g["has_face"]) for g in got] == [1, 0, 1]
    np.testing.assert_allclose(got[0]["box"], [0, 0, 32, 32], atol=1e-4)
    # square at (32, 0): padded [96,112) x [64,80) -> canvas [48,56) x [32,40) = cell (6, 4), centre (48, 32)
    # -> / 0.5 - 64 = (32, 0); box (32, 0) -/+ 16 = [16, -16, 48, 16] (centre y 0 is in the upper half)
    np.testing.assert_allclose(got[2]["box"], [16, -16, 48, 16], atol=1e-4)
    assert got[1]["crop"].sum() == 0 and np.isnan(got[1]["landmarks"]).all()


def test_missing_weights_and_wrong_signature(tmp_path):
    with pytest.raises(MissingWeights, match="teachers.faces.model"):
        build_teacher("faces", "onnx", tmp_path / "det_10g.onnx", device="cpu")
    pose = export_pose(tmp_path / "pose.onnx")
    teacher = build_teacher("faces", "onnx", pose, device="cpu")
    with pytest.raises(ModelSignatureError, match=r"expected inputs \['input.1'\]"):
        teacher.setup()
    with pytest.raises(ValueError, match="unknown params"):
        FacesTeacher("oracle", det_treshold=0.2)


def test_fields_and_provenance(scrfd_onnx):
    teacher = build_teacher("faces", "onnx", scrfd_onnx, device="cpu", crop_size=64)
    assert teacher.fields()["crop"] == ((64, 64, 3), "uint8", "image")
    assert teacher.fields()["has_face"] == ((), "uint8", "vector")
    assert teacher.cache_params()["det_thresh"] == 0.3 and teacher.cache_params()["det_size"] == [640, 640]


def test_oracle_reads_groundtruth(tmp_path):
    synthetic = pytest.importorskip("reid.data.synthetic")
    assert hasattr(synthetic, "load_groundtruth")
    root = tmp_path / "world"
    (root / "groundtruth").mkdir(parents=True)
    lms = (ARCFACE_TEMPLATE_112 * 0.2 + np.array([40.0, 10.0], np.float32)).astype(np.float32)
    np.savez(root / "groundtruth" / "a.npz", has_face=np.array(True), face_box=np.array([40, 10, 62, 34], np.float32),
             face_landmarks=lms)
    np.savez(root / "groundtruth" / "b.npz", has_face=np.array(False), face_box=np.full(4, np.nan, np.float32),
             face_landmarks=np.full((5, 2), np.nan, np.float32))
    teacher = build_teacher("faces", "oracle", None, device="cpu", crop_size=64)
    img = np.full((128, 64, 3), 90, np.uint8)
    items = [teacher.load(img, IndexRow(f"{n}.jpg", 1, 0, "", "train"), root) for n in ("a", "b")]
    out = teacher.infer(items)
    np.testing.assert_array_equal(out["has_face"], [1, 0])
    np.testing.assert_array_equal(out["score"], [1.0, 0.0])
    np.testing.assert_allclose(out["landmarks"][0], lms)
    np.testing.assert_allclose(out["box"][0], [40, 10, 62, 34])
    assert (out["crop"][0] == 90).all() and not out["crop"][1].any()  # face region lies inside the grey image
    assert teacher.provenance()["backend"] == "oracle"


def test_upscale_path_without_det_size(scrfd_onnx):
    teacher = build_teacher("faces", "onnx", scrfd_onnx, device="cpu", pad=0.0, det_size=None, upscale=2.0)
    item = teacher.load(_face_image(), IndexRow("x.jpg", 1, 0, "", "train"), Path("."))
    # 128x64 x 2 = 256x128, already multiples of 32; det_scale = 2
    assert item["blob"].shape == (1, 3, 256, 128) and item["det_scale"] == 2.0
    out = teacher.infer([item])
    # the square [16, 32)^2 becomes canvas [32, 64)^2: stride-8 cells x, y in 4..7 fire; boxes are +/- 4 px
    # (8 / det_scale) around centres (4..7) * 8 / 2 = 16..28 in the crop
    x1, y1, x2, y2 = out["box"][0]
    assert out["has_face"][0] == 1 and x2 - x1 == pytest.approx(8) and y2 - y1 == pytest.approx(8)
    assert 16 <= (x1 + x2) / 2 <= 28 and 16 <= (y1 + y2) / 2 <= 28
