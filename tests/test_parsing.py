"""Tests of the SCHP parsing teacher: geometry and decode against hand values, the pure-PyTorch AugmentCE2P with
official checkpoint keys, ONNX export, and the real runner on stand-in models."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid.teachers.base import MissingWeights, build_teacher
from reid.teachers.onnx_utils import ModelSignatureError
from reid.vocab import ATR_LABELS, LABEL_SETS, LIP_LABELS, PASCAL_LABELS, default_input_size
from reid.teachers.parsing import (
    bilinear_weights,
    decode_schp,
    decode_schp_reference,
    input_size_of,
    preprocess_schp,
    resize_labels,
    schp_affine,
    schp_affine_inverse,
    upsample_logits,
)
from reid.teachers.runner import run_teacher
from reid.teachers.schp_net import (
    adaptive_pool_matrix,
    build_schp,
    export_schp_onnx,
    load_schp_checkpoint,
    output_side,
)
from reid.teachers import schp_net
from reid.testing.parsing_gpen import (
    BrightnessSCHP,
    export_brightness_schp,
    onnx_export,
    save_official_style_checkpoint,
    write_dataset,
)


# --- geometry -------------------------------------------------------------------------------------------------
def test_schp_affine_hand_values() -> None:
    # w=3, h=5, S=5: side = max(2, 4) = 4, k = (5-1)/4 = 1, centre (1, 2) -> (2, 2): t = (2-1, 2-2) = (1, 0)
    np.testing.assert_allclose(schp_affine(3, 5, 5), [[1, 0, 1], [0, 1, 0]])
    # w=101, h=201, S=11: side 200, k = 10/200 = 0.05, centre (50, 100) -> (5, 5): t = (5-2.5, 5-5) = (2.5, 0)
    np.testing.assert_allclose(schp_affine(101, 201, 11), [[0.05, 0, 2.5], [0, 0.05, 0]])
    # square image of the input size: identity
    np.testing.assert_allclose(schp_affine(5, 5, 5), [[1, 0, 0], [0, 1, 0]])


def test_schp_affine_inverse_hand_values() -> None:
    # inverse of x' = 0.05 x + 2.5, y' = 0.05 y: x = 20 x' - 50, y = 20 y'
    np.testing.assert_allclose(schp_affine_inverse(101, 201, 11), [[20, 0, -50], [0, 20, 0]], atol=1e-9)
    assert input_size_of(schp_affine(37, 80, 473), 37, 80) == 473
    with pytest.raises(ValueError, match="at least 2 px"):
        schp_affine(1, 1, 473)


def test_preprocess_schp_hand_values() -> None:
    img = np.zeros((5, 3, 3), np.uint8)
    img[:] = (10, 20, 30)  # BGR
    x = preprocess_schp(img, 5)
    assert x.shape == (1, 3, 5, 5) and x.dtype == np.float32
    # the image lands on input columns 1..3 (t = (1, 0)); columns 0 and 4 are the zero border
    # B: (10/255 - 0.406)/0.225 = (0.039216 - 0.406)/0.225 = -1.630153
    # G: (20/255 - 0.456)/0.224 = (0.078431 - 0.456)/0.224 = -1.685574
    # R: (30/255 - 0.485)/0.229 = (0.117647 - 0.485)/0.229 = -1.604161
    np.testing.assert_allclose(x[0, :, 2, 2], [-1.630153, -1.685574, -1.604161], atol=1e-5)
    # border: (0 - mean)/std = -0.406/0.225, -0.456/0.224, -0.485/0.229 = -1.804444, -2.035714, -2.117904
    np.testing.assert_allclose(x[0, :, 2, 0], [-1.804444, -2.035714, -2.117904], atol=1e-5)
    np.testing.assert_allclose(x[0, :, 2, 4], x[0, :, 2, 0])


def test_upsample_logits_align_corners_hand_values() -> None:
    # align_corners=True keeps the corners; the middle is the average: 2x2 [[0,1],[2,3]] -> 3x3
    out = upsample_logits(np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32), 3)
    np.testing.assert_allclose(out[0].numpy(), [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])


def test_decode_schp_hand_values() -> None:
    # image w=3, h=5 sits on input columns 1..3 of a 5x5 input; class 1 wins on input columns >= 3
    logits = np.zeros((2, 5, 5), np.float32)
    logits[0] = 0.5
    logits[1, :, 3:] = 1.0
    labels = decode_schp(logits, schp_affine(3, 5, 5), 3, 5)
    # image column x <- input column x+1: columns 1, 2 -> class 0, column 3 -> class 1
    assert labels.dtype == np.uint8 and labels.shape == (5, 3)
    np.testing.assert_array_equal(labels, np.tile([0, 0, 1], (5, 1)))


def test_bilinear_weights_hand_values() -> None:
    # u = 0.5 x: x=0 -> u=0 (all on 0), x=1 -> u=0.5 (half/half), x=2 -> u=1 (all on 1)
    np.testing.assert_allclose(bilinear_weights(3, 2, 0.5, 0.0), [[1, 0], [0.5, 0.5], [0, 1]])
    # u = x + 0.5 on 2 inputs: x=1 -> u=1.5 reaches the missing input 2 (border 0): only 0.5 on input 1
    np.testing.assert_allclose(bilinear_weights(2, 2, 1.0, 0.5), [[0.5, 0.5], [0, 0.5]])


@pytest.mark.parametrize("w,h,size", [(64, 128, 473), (37, 80, 473), (300, 200, 512)])
def test_fast_decode_matches_official_reference(w: int, h: int, size: int) -> None:
    rng = np.random.default_rng(w)
    side = output_side(size)
    logits = F.avg_pool2d(torch.from_numpy(rng.standard_normal((1, 20, side, side)).astype(np.float32)) * 9, 3, 1, 1)[0]
    fast = decode_schp(logits, schp_affine(w, h, size), w, h)
    ref = decode_schp_reference(logits, schp_affine(w, h, size), w, h)
    assert fast.shape == (h, w) and (fast == ref).mean() > 0.999  # only OpenCV's 1/32-px weight rounding differs


def test_resize_labels_nearest() -> None:
    lab = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(resize_labels(lab, (4, 4)), np.kron(lab, np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(resize_labels(np.kron(lab, np.ones((2, 2), np.uint8)), (2, 2)), lab)


def test_label_sets() -> None:
    assert len(LIP_LABELS) == 20 and LIP_LABELS[13] == "Face" and LIP_LABELS[19] == "Right-shoe"
    assert len(ATR_LABELS) == 18 and ATR_LABELS[4] == "Upper-clothes" and ATR_LABELS[17] == "Scarf"
    assert len(PASCAL_LABELS) == 7 and PASCAL_LABELS[6] == "Lower Legs"
    assert set(LABEL_SETS) == {"lip", "atr", "pascal"}
    assert (default_input_size("lip"), default_input_size("atr"), default_input_size("pascal")) == (473, 512, 512)
    with pytest.raises(ValueError, match="unknown SCHP label set"):
        default_input_size("coco")


# --- the network ----------------------------------------------------------------------------------------------
def test_adaptive_pool_matrix_hand_values_and_torch_parity() -> None:
    # n=5 -> 2 bins: [floor(0), ceil(2.5)) = [0, 3) and [floor(2.5), ceil(5)) = [2, 5)
    np.testing.assert_allclose(adaptive_pool_matrix(5, 2).numpy(),
                               [[1 / 3, 1 / 3, 1 / 3, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]], atol=1e-7)
    x = torch.randn(1, 2, 32, 30)
    ref = F.adaptive_avg_pool2d(x, 6)
    mat = adaptive_pool_matrix(32, 6) @ x @ adaptive_pool_matrix(30, 6).t()
    torch.testing.assert_close(mat, ref)


def test_output_stride_and_shapes() -> None:
    assert output_side(473) == 119 and output_side(512) == 128  # 473 -> 237 -> 119; 512 -> 256 -> 128
    model = build_schp(20, "tiny").eval()
    with torch.no_grad():
        parsing, fusion, edge = model(torch.zeros(1, 3, 473, 473))
    assert parsing.shape == fusion.shape == (1, 20, 119, 119) and edge.shape == (1, 2, 119, 119)


def test_resnet101_uses_official_key_names_and_shapes() -> None:
    state = build_schp(20).state_dict()
    expected = {
        "conv3.weight": (128, 64, 3, 3),
        "layer3.22.bn3.running_var": (1024,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv2.weight": (512, 512, 3, 3),
        "context_encoding.stages.3.1.weight": (512, 2048, 1, 1),
        "context_encoding.bottleneck.0.weight": (512, 4096, 3, 3),  # 2048 + 4 x 512 in
        "edge.conv3.0.weight": (256, 1024, 1, 1),
        "edge.conv4.weight": (2, 256, 3, 3),
        "edge.conv5.weight": (2, 6, 1, 1),
        "decoder.conv2.0.weight": (48, 256, 1, 1),
        "decoder.conv3.0.weight": (256, 304, 1, 1),  # 256 + 48
        "decoder.conv3.3.running_mean": (256,),
        "decoder.conv4.bias": (20,),
        "fushion.0.weight": (256, 1024, 1, 1),  # decoder 256 + edge 3 x 256
        "fushion.3.weight": (20, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("layer1.3") or k.startswith("layer3.23") for k in state)  # 3-4-23-3 blocks
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                         "num_batches_tracked")))
    assert 66.5e6 < params < 67.0e6  # SCHP ResNet-101: ~66.7 M parameters


def test_load_official_style_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = tmp_path / "exp-schp-tiny-lip.pth"
    source = save_official_style_checkpoint(ckpt)
    model = build_schp(20, "tiny")
    with caplog.at_level(logging.INFO, logger=schp_net.__name__):
        report = load_schp_checkpoint(model, ckpt)
    assert report["unexpected"] == [] and report["missing"]
    assert all(k.endswith("num_batches_tracked") for k in report["missing"])
    assert "num_batches_tracked" in caplog.text
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), source(x)):
            torch.testing.assert_close(a, b)


def test_abn_scales_like_inplace_abn_hand_values() -> None:
    """InPlaceABN normalises with |weight| + eps: a negative weight scales like its absolute value."""
    layer = schp_net.ABN(2, "none").eval()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([-2.0, 0.5]))
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
        layer.running_mean.copy_(torch.tensor([1.0, 0.0]))
        layer.running_var.copy_(torch.tensor([4.0, 1.0]))
    x = torch.tensor([3.0, -2.0]).reshape(1, 2, 1, 1)
    y = layer(x).flatten()
    eps = layer.eps
    # channel 0: (3 - 1) / sqrt(4 + eps) * (2 + eps) + 1 ~= 3.0 (a plain BatchNorm2d gives -1.0)
    expected0 = 2.0 / (4.0 + eps) ** 0.5 * (2.0 + eps) + 1.0
    expected1 = -2.0 / (1.0 + eps) ** 0.5 * (0.5 + eps)
    torch.testing.assert_close(y, torch.tensor([expected0, expected1]))
    leaky = schp_net.ABN(1).eval()
    with torch.no_grad():
        leaky.weight.fill_(-1.0)
    torch.testing.assert_close(leaky(torch.full((1, 1, 1, 1), -3.0)).flatten(),
                               torch.tensor([-3.0 / (1 + leaky.eps) ** 0.5 * (1 + leaky.eps) * 0.01]))


def test_checkpoint_with_negated_norm_weights_parses_the_same(tmp_path: Path) -> None:
    """Real SCHP checkpoints may hold negative ABN weights; InPlaceABN ignores their sign, so must we."""
    ckpt = tmp_path / "lip.pth"
    save_official_style_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    inner = state["state_dict"] if "state_dict" in state else state
    flipped = dict(inner)
    model = build_schp(20, "tiny")
    abn_names = {n for n, m in model.named_modules() if isinstance(m, schp_net.ABN)}
    negated = 0
    for key, value in inner.items():
        name = key.removeprefix("module.").rsplit(".", 1)
        if name[0] in abn_names and name[1] == "weight":
            flipped[key] = -value
            negated += 1
    assert negated > 10
    neg_ckpt = tmp_path / "lip_negated.pth"
    torch.save({"state_dict": flipped} if "state_dict" in state else flipped, neg_ckpt)
    other = build_schp(20, "tiny")
    load_schp_checkpoint(model, ckpt)
    load_schp_checkpoint(other, neg_ckpt)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), other.eval()(x)):
            torch.testing.assert_close(a, b)


def test_checkpoint_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "lip.pth"
    save_official_style_checkpoint(ckpt)
    with pytest.raises(ValueError, match="fushion.3.weight"):
        load_schp_checkpoint(build_schp(18, "tiny"), ckpt)  # ATR head on a LIP checkpoint
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    state["module.extra.weight"] = torch.zeros(1)
    del state["module.conv1.weight"]
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing \['conv1.weight'\].*unexpected \['extra.weight'\]"):
        load_schp_checkpoint(build_schp(20, "tiny"), tmp_path / "bad.pth")


def test_export_schp_cli_signature_and_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    ckpt = tmp_path / "exp-schp-tiny-lip.pth"
    source = save_official_style_checkpoint(ckpt)
    parser = argparse.ArgumentParser()
    schp_net.add_arguments(parser)
    out = tmp_path / "parsing_lip.onnx"
    args = parser.parse_args(["--checkpoint", str(ckpt), "--label-set", "lip", "--out", str(out),
                              "--variant", "tiny"])
    assert schp_net.main(args) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [("input.1", ["batch", 3, 473, 473])]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [
        ("parsing", ["batch", 20, 119, 119]), ("fusion", ["batch", 20, 119, 119]), ("edge", ["batch", 2, 119, 119])]
    x = np.random.default_rng(0).standard_normal((2, 3, 473, 473)).astype(np.float32)
    got = sess.run(None, {"input.1": x})
    with torch.no_grad():
        ref = source(torch.from_numpy(x))
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    with pytest.raises(SystemExit, match="18"):
        schp_net.main(parser.parse_args(["--checkpoint", str(ckpt), "--label-set", "atr", "--out",
                                         str(tmp_path / "x.onnx"), "--variant", "tiny"]))


def test_export_at_512_with_non_dividing_psp_bins(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = build_schp(7, "tiny").eval()
    out = export_schp_onnx(model, tmp_path / "pascal.onnx", 512)  # layer4 32x32: bins 3 and 6 do not divide
    x = np.random.default_rng(1).standard_normal((1, 3, 512, 512)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input.1": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    assert got[1].shape == (1, 7, 128, 128)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)


# --- the teacher through the real runner -----------------------------------------------------------------------
def _person_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Dark images with a bright block (the 'person'); returns images and the block masks."""
    images, masks = [], []
    for i, (h, w) in enumerate([(64, 32), (48, 24), (40, 40), (64, 32)]):
        img = np.full((h, w, 3), 10, np.uint8)
        y0, x0 = 6 + 2 * i, 4 + i
        img[y0:h - 8, x0:w - 6] = 240
        mask = np.zeros((h, w), np.uint8)
        mask[y0:h - 8, x0:w - 6] = 1
        images.append(img)
        masks.append(mask)
    return images, masks


def test_runner_onnx_standin_writes_decoded_labels(tmp_path: Path) -> None:
    images, masks = _person_images()
    index = write_dataset(tmp_path / "ds", images)
    model = export_brightness_schp(tmp_path / "parsing_lip.onnx")
    teacher = build_teacher("parsing", "onnx", model, device="cpu", out_size=[32, 16])
    assert teacher.input_size == 473
    out = tmp_path / "cache" / "parsing.h5"
    summary = run_teacher(teacher, index, tmp_path / "ds", out, batch_size=3, workers=0, progress=False)
    assert summary["rows_computed"] == 4 and summary["provenance"]["providers"]
    with h5py.File(out, "r") as f:
        labels = f["labels"][()]
        assert labels.shape == (4, 32, 16) and labels.dtype == np.uint8
        assert f.attrs["teacher"] == "parsing" and f.attrs["backend"] == "onnx"
    for lab, mask in zip(labels, masks):
        expected = resize_labels(mask, (32, 16))
        assert set(np.unique(lab)) <= {0, 1}
        assert (lab == expected).mean() > 0.95  # only block-edge pixels may differ after two resamplings


def test_torch_backend_matches_onnx_export(tmp_path: Path) -> None:
    images, _ = _person_images()
    ckpt = tmp_path / "exp-schp-tiny-lip.pth"
    save_official_style_checkpoint(ckpt)
    onnx_path = export_schp_onnx(_loaded_tiny(ckpt), tmp_path / "tiny.onnx", 473)
    t_torch = build_teacher("parsing", "torch", ckpt, device="cpu", variant="tiny", out_size=[32, 16])
    t_onnx = build_teacher("parsing", "onnx", onnx_path, device="cpu", out_size=[32, 16])
    from reid.data.index import IndexRow

    row = IndexRow("x.png", 0, 0, "", "train")
    items_t = [t_torch.load(img, row, tmp_path) for img in images[:2]]
    items_o = [t_onnx.load(img, row, tmp_path) for img in images[:2]]
    a, b = t_torch.infer(items_t)["labels"], t_onnx.infer(items_o)["labels"]
    assert a.shape == (2, 32, 16) and (a == b).mean() > 0.99
    assert t_torch.cache_params()["variant"] == "tiny"


def _loaded_tiny(ckpt: Path) -> torch.nn.Module:
    model = build_schp(20, "tiny")
    load_schp_checkpoint(model, ckpt)
    return model.eval()


def test_onnx_signature_errors(tmp_path: Path) -> None:
    import torch.nn as nn

    bad = tmp_path / "bad.onnx"
    onnx_export(nn.Conv2d(3, 20, 1, stride=4), bad, (1, 3, 473, 473), ["x"], ["y"])
    with pytest.raises(ModelSignatureError, match=r"expected inputs \['input.1'\], found \['x'\]"):
        build_teacher("parsing", "onnx", bad, device="cpu")
    lip = export_brightness_schp(tmp_path / "lip.onnx")
    with pytest.raises(ModelSignatureError, match="20 classes but the label set needs 18"):
        build_teacher("parsing", "onnx", lip, device="cpu", label_set="atr")
    with pytest.raises(ValueError, match="params input_size=512"):
        build_teacher("parsing", "onnx", lip, device="cpu", input_size=512)
    with pytest.raises(MissingWeights, match="exp-schp"):
        build_teacher("parsing", "onnx", tmp_path / "nope.onnx", device="cpu")


def test_ailia_style_input_name_accepted(tmp_path: Path) -> None:
    model = tmp_path / "resnet-lip.onnx"
    onnx_export(BrightnessSCHP(), model, (1, 3, 473, 473), ["img"], ["a", "b", "c"])
    teacher = build_teacher("parsing", "onnx", model, device="cpu", out_size=[16, 8])
    from reid.data.index import IndexRow

    img = np.full((32, 16, 3), 250, np.uint8)  # all bright -> all class 1
    labels = teacher.infer([teacher.load(img, IndexRow("a.png", 0, 0, "", "train"), tmp_path)])["labels"]
    assert (labels == 1).all()


def test_oracle_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LIP labels only"):
        build_teacher("parsing", "oracle", None, device="cpu", label_set="atr")
    images, _ = _person_images()
    index = write_dataset(tmp_path / "real", images[:1])
    teacher = build_teacher("parsing", "oracle", None, device="cpu")
    assert teacher.needs_image is False and teacher.model_sha256 == ""
    with pytest.raises(FileNotFoundError, match="groundtruth"):
        run_teacher(teacher, index, tmp_path / "real", tmp_path / "p.h5", workers=0, progress=False)


def test_oracle_reads_groundtruth(tmp_path: Path) -> None:
    synthetic = pytest.importorskip("reid.data.synthetic")
    if not hasattr(synthetic, "load_groundtruth"):
        pytest.skip("reid.data.synthetic.load_groundtruth not available yet")
    images, masks = _person_images()
    root = tmp_path / "synth"
    index = write_dataset(root, images)
    from reid.data.index import read_index

    for row, mask in zip(read_index(index), masks):
        gt = root / "groundtruth" / Path(row.path).with_suffix(".npz")
        gt.parent.mkdir(parents=True, exist_ok=True)
        np.savez(gt, parsing=(mask * 5).astype(np.uint8), has_face=np.bool_(False),
                 face_box=np.full(4, np.nan, np.float32), face_landmarks=np.full((5, 2), np.nan, np.float32),
                 keypoints=np.zeros((17, 3), np.float32), face_hr=np.zeros((64, 64, 3), np.uint8),
                 occluded=np.bool_(False))
    teacher = build_teacher("parsing", "oracle", None, device="cpu", out_size=[32, 16])
    out = tmp_path / "parsing.h5"
    run_teacher(teacher, index, root, out, workers=0, progress=False)
    with h5py.File(out, "r") as f:
        labels = f["labels"][()]
        assert f.attrs["backend"] == "oracle"
    for lab, mask in zip(labels, masks):
        np.testing.assert_array_equal(lab, resize_labels(mask * 5, (32, 16)))
