"""Tests of the GPEN restored_faces teacher: pre/post-processing and geometry against hand values, and the real
runner on a pass-through GPEN stand-in, checking that `restored` is pixel-aligned with `faces.crop`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import numpy as np
import pytest
import torch

from reid.data.index import read_index, write_index
from reid.teachers.base import MissingWeights, build_teacher
from reid.teachers.faces import arcface_template, umeyama_similarity
from reid.teachers.onnx_utils import ModelSignatureError
from reid.teachers.restored_faces import (
    GPEN_512,
    affine_scale,
    compose_affine,
    gpen_template,
    pick_image_output,
    postprocess_gpen,
    preprocess_gpen,
    similarity_transform,
    warp_face_back,
)
from reid.teachers.runner import run_teacher
from reid.testing.parsing_gpen import export_gpen, smooth_texture, write_dataset, write_faces_cache

CROP = 112


# --- pure functions -------------------------------------------------------------------------------------------
def test_similarity_transform_hand_values() -> None:
    # rotation +90 deg, scale 2, translation (3, 4): (x, y) -> (3 - 2y, 4 + 2x)
    src = np.array([[0, 0], [1, 0], [0, 1]], float)
    dst = np.array([[3, 4], [3, 6], [1, 4]], float)
    np.testing.assert_allclose(similarity_transform(src, dst), [[0, -2, 3], [2, 0, 4]], atol=1e-12)
    # a mirrored target cannot be reached by a similarity: the fit stays a proper rotation (det > 0)
    mirrored = src * [-1, 1]
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.zeros((5, 2)), np.ones((5, 2)))


def test_similarity_transform_agrees_with_faces_teacher() -> None:
    rng = np.random.default_rng(0)
    lms = arcface_template(112) * 0.3 + rng.normal(0, 0.5, (5, 2)) + [20, 10]
    np.testing.assert_allclose(similarity_transform(lms, gpen_template(512)),
                               umeyama_similarity(lms, gpen_template(512)), atol=1e-9)


def test_gpen_template_scaling() -> None:
    # the 512 reference points scaled by 256/512: (202.0, 242.9) -> (101.0, 121.45)
    np.testing.assert_allclose(gpen_template(256)[0], [101.0, 121.45])
    np.testing.assert_allclose(gpen_template(512), GPEN_512)


def test_preprocess_gpen_hand_values() -> None:
    face = np.zeros((2, 2, 3), np.uint8)
    face[:] = (0, 128, 255)  # B, G, R
    x = preprocess_gpen(face, 2)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    # RGB order: R = (255/255 - 0.5)/0.5 = 1, G = (128/255 - 0.5)/0.5 = 0.003922, B = (0 - 0.5)/0.5 = -1
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 0.003922, -1.0], atol=1e-5)
    assert preprocess_gpen(np.zeros((5, 7, 3), np.uint8), 4).shape == (1, 3, 4, 4)  # resized to the model size


def test_postprocess_gpen_hand_values() -> None:
    out = np.zeros((1, 3, 1, 3), np.float32)  # RGB, three pixels
    out[0, :, 0, 0] = (1.0, 0.0, -1.0)
    out[0, :, 0, 1] = (1.4, -3.0, 0.5)
    bgr = postprocess_gpen(out)
    assert bgr.shape == (1, 3, 3) and bgr.dtype == np.uint8
    # pixel 0: B = (-1*0.5+0.5)*255 = 0, G = 0.5*255 = 127.5 -> 127 (truncated), R = 1*255 = 255
    np.testing.assert_array_equal(bgr[0, 0], [0, 127, 255])
    # pixel 1: B = 0.75*255 = 191.25 -> 191, G = -1 -> clip 0, R = 1.2 -> clip 255
    np.testing.assert_array_equal(bgr[0, 1], [191, 0, 255])


def test_compose_and_scale() -> None:
    a = np.array([[2.0, 0, 1], [0, 2.0, 0]])
    b = np.array([[1.0, 0, 3], [0, 1.0, -1]])
    # a(b(x)) = 2 (x + (3, -1)) + (1, 0) = 2x + (7, -2)
    np.testing.assert_allclose(compose_affine(a, b), [[2, 0, 7], [0, 2, -2]])
    # rotation 90 deg, scale 3: det = 9 -> scale 3
    assert affine_scale(np.array([[0, -3.0, 5], [3.0, 0, 1]])) == pytest.approx(3.0)


def test_warp_face_back_keeps_geometry_when_shrinking() -> None:
    face = np.zeros((64, 64, 3), np.uint8)
    face[16:48, 16:48] = 200  # bright square centred at 31.5
    back = np.array([[0.25, 0, 2.0], [0, 0.25, 2.0]])  # shrinks 4x: area-resize path
    out = warp_face_back(face, back, 16).astype(float)[:, :, 0]
    ys, xs = np.mgrid[:16, :16]
    # expected centre: 0.25 * 31.5 + 2 = 9.875 in both axes
    assert (out * xs).sum() / out.sum() == pytest.approx(9.875, abs=0.05)
    assert (out * ys).sum() / out.sum() == pytest.approx(9.875, abs=0.05)
    assert out[10, 10] == pytest.approx(200, abs=1)


def test_pick_image_output() -> None:
    o = lambda name, shape: SimpleNamespace(name=name, shape=shape)  # noqa: E731
    assert pick_image_output([o("latent", [1, 14, 512]), o("output", [1, 3, 512, 512])]) == 1
    assert pick_image_output([o("1021", [1, 3, 512, 512]), o("1022", [1, 14, 512])]) == 0
    with pytest.raises(ValueError, match="cannot tell"):
        pick_image_output([o("a", [1, 3, 64, 64]), o("b", [1, 3, 64, 64])])


# --- the teacher through the real runner -----------------------------------------------------------------------
def _landmarks(scale: float, offset: tuple[float, float]) -> np.ndarray:
    return arcface_template(112).astype(np.float64) * scale + offset


@pytest.fixture()
def faces_world(tmp_path: Path) -> dict:
    """Three textured images; faces in rows 0 and 2 (landmarks known), none in row 1; a faces cache."""
    root = tmp_path / "ds"
    images = [smooth_texture(96, 64, seed, sigma=2.0) for seed in range(3)]
    index = write_dataset(root, images)
    lms = [_landmarks(0.3, (15.0, 8.0)), None, _landmarks(0.35, (10.0, 12.0))]
    faces = write_faces_cache(tmp_path / "cache" / "faces.h5", index, root, lms, CROP)
    with h5py.File(faces, "r") as f:
        crops = f["crop"][()]
    return {"root": root, "index": index, "faces": faces, "crops": crops, "tmp": tmp_path}


def _run(world: dict, model: Path | None, backend: str = "onnx", name: str = "restored_faces.h5", **params):
    teacher = build_teacher("restored_faces", backend, model, device="cpu", faces_cache=str(world["faces"]), **params)
    out = world["tmp"] / "cache" / name
    summary = run_teacher(teacher, world["index"], world["root"], out, batch_size=2, workers=0, progress=False)
    with h5py.File(out, "r") as f:
        return summary, f["has_face"][()], f["restored"][()], dict(f.attrs)


def _mad(a: np.ndarray, b: np.ndarray, margin: int = 16) -> float:
    """Mean absolute difference of G and B over the crop interior."""
    m = slice(margin, CROP - margin)
    return float(np.abs(a[m, m, 1:].astype(float) - b[m, m, 1:].astype(float)).mean())


@pytest.mark.parametrize("align_source", ["image", "crop"])
def test_runner_gpen_standin_restored_is_aligned_with_crop(faces_world: dict, align_source: str) -> None:
    model = export_gpen(faces_world["tmp"] / "gpen_bfr_64.onnx", size=64, zero_red=True)
    summary, has_face, restored, attrs = _run(faces_world, model, align_source=align_source)
    crops = faces_world["crops"]
    assert summary["rows_computed"] == 3 and summary["provenance"]["providers"]
    np.testing.assert_array_equal(has_face, [1, 0, 1])
    assert restored.shape == (3, CROP, CROP, 3) and restored.dtype == np.uint8
    assert not restored[1].any()  # no face: zeros, row kept
    assert not restored[[0, 2], :, :, 0].any()  # stand-in forces R to -1: channel order RGB kept end to end
    for i in (0, 2):
        aligned = _mad(restored[i], crops[i])
        shifted = _mad(restored[i], np.roll(crops[i], 3, axis=1))  # 3 crop px ~ 1 image px
        # measured: aligned ~0.5-0.6 grey levels, shifted ~6.5
        assert aligned < 2.0 and aligned < 0.25 * shifted, (i, aligned, shifted)
    params = json.loads(attrs["params"])
    assert params["align_source"] == align_source and params["model_size"] == 64 and params["crop_size"] == CROP
    assert len(params["faces_cache_sha256"]) == 64 and "faces.h5" not in attrs["params"]  # content, not path


def test_dynamic_batch_gpen_gives_same_result(faces_world: dict) -> None:
    fixed = export_gpen(faces_world["tmp"] / "fixed.onnx", size=64)
    dynamic = export_gpen(faces_world["tmp"] / "dynamic.onnx", size=64, dynamic_batch=True)
    _, _, a, _ = _run(faces_world, fixed, name="a.h5")
    _, _, b, _ = _run(faces_world, dynamic, name="b.h5")
    np.testing.assert_array_equal(a, b)


def test_gpen_export_with_latent_output_is_accepted(faces_world: dict) -> None:
    plain = export_gpen(faces_world["tmp"] / "plain.onnx", size=64)
    with_latent = export_gpen(faces_world["tmp"] / "latent.onnx", size=64, latent_output=True)
    _, _, a, _ = _run(faces_world, plain, name="a.h5")
    _, _, b, _ = _run(faces_world, with_latent, name="b.h5")
    np.testing.assert_array_equal(a, b)


def test_faces_cache_must_match_index(faces_world: dict, tmp_path: Path) -> None:
    rows = read_index(faces_world["index"])
    renamed = [type(r)(r.path.replace("0000", "9999"), r.pid, r.camid, r.clothes, r.split) for r in rows]
    bad_index = write_index(renamed, tmp_path / "bad.csv")
    teacher = build_teacher("restored_faces", "oracle", None, device="cpu", faces_cache=str(faces_world["faces"]))
    with pytest.raises(ValueError, match="not aligned with this index"):
        run_teacher(teacher, bad_index, faces_world["root"], tmp_path / "x.h5", workers=0, progress=False)


def test_configuration_errors(faces_world: dict) -> None:
    tmp = faces_world["tmp"]
    with pytest.raises(ValueError, match="faces_cache"):
        build_teacher("restored_faces", "oracle", None, device="cpu")
    with pytest.raises(MissingWeights, match="GPEN"):
        build_teacher("restored_faces", "onnx", tmp / "nope.onnx", device="cpu", faces_cache=str(faces_world["faces"]))
    wrong = export_gpen(tmp / "wrong.onnx", size=64, input_name="x")
    with pytest.raises(ModelSignatureError, match=r"expected inputs \['input'\], found \['x'\]"):
        build_teacher("restored_faces", "onnx", wrong, device="cpu", faces_cache=str(faces_world["faces"]))
    ok = export_gpen(tmp / "ok.onnx", size=64)
    with pytest.raises(ValueError, match="model_size=512"):
        build_teacher("restored_faces", "onnx", ok, device="cpu", faces_cache=str(faces_world["faces"]),
                      model_size=512)
    with pytest.raises(ValueError, match="align_source"):
        build_teacher("restored_faces", "onnx", ok, device="cpu", faces_cache=str(faces_world["faces"]),
                      align_source="box")


def test_oracle_serves_face_hr(faces_world: dict) -> None:
    root = faces_world["root"]
    rng = np.random.default_rng(5)
    hr = {}
    for i, row in enumerate(read_index(faces_world["index"])):
        gt = root / "groundtruth" / Path(row.path).with_suffix(".npz")
        gt.parent.mkdir(parents=True, exist_ok=True)
        has = i == 0  # row 2: the faces cache has a face but the world rendered none -> no clean face
        hr[i] = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) if has else np.zeros((64, 64, 3), np.uint8)
        np.savez(gt, parsing=np.zeros((96, 64), np.uint8), has_face=np.bool_(has),
                 face_box=np.full(4, np.nan, np.float32), face_landmarks=np.full((5, 2), np.nan, np.float32),
                 keypoints=np.zeros((17, 3), np.float32), face_hr=hr[i], occluded=np.bool_(False))
    _, has_face, restored, attrs = _run(faces_world, None, backend="oracle")
    np.testing.assert_array_equal(has_face, [1, 0, 0])
    np.testing.assert_array_equal(restored[0], cv2.resize(hr[0], (CROP, CROP), interpolation=cv2.INTER_CUBIC))
    assert not restored[1:].any()
    assert attrs["backend"] == "oracle" and attrs["model_sha256"] == ""


def test_oracle_needs_groundtruth(faces_world: dict) -> None:
    with pytest.raises(FileNotFoundError, match="groundtruth"):
        _run(faces_world, None, backend="oracle")


def test_torch_standin_is_identity() -> None:
    from reid.testing.parsing_gpen import PassThroughGPEN

    x = torch.rand(1, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(PassThroughGPEN()(x), x)
