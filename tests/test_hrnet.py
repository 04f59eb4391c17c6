"""HRNet: official key layout (strict reload of a full W32 state dict), tiny-variant shapes, ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reid.models.hrnet import (
    HRNET_TINY,
    HRNet,
    HRNetFeatureMap,
    hrnet_tiny,
    hrnet_w32,
    read_state_dict,
    upsample_concat,
)


@pytest.fixture(scope="module")
def w32_checkpoint(tmp_path_factory) -> Path:
    """A plain state dict of the full W32 pose net, saved like the official `pose_hrnet_w32_256x192.pth`."""
    path = tmp_path_factory.mktemp("hrnet") / "pose_hrnet_w32_256x192.pth"
    torch.save(hrnet_w32().state_dict(), path)
    return path


def test_w32_official_layout():
    sd = hrnet_w32().state_dict()
    # official W32 pose net: 28.5 M parameters (HRNet paper, Table 1)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(buffers))
    assert round(n_params / 1e6, 1) == 28.5
    for key in (
        "conv1.weight", "bn2.running_var", "layer1.0.downsample.0.weight", "layer1.3.conv3.weight",
        "transition1.0.0.weight", "transition1.1.0.0.weight", "transition2.2.0.0.weight", "transition3.3.0.1.bias",
        "stage2.0.branches.1.3.conv2.weight", "stage3.3.fuse_layers.2.0.1.0.weight",
        "stage4.2.fuse_layers.0.3.0.weight", "final_layer.weight", "final_layer.bias",
    ):
        assert key in sd, key
    assert sd["final_layer.weight"].shape == (17, 32, 1, 1)
    # the last module fuses only into the 1/4 branch in the pose net
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in sd)
    assert any(k.startswith("stage4.1.fuse_layers.3.") for k in sd)


def test_w32_strict_reload(w32_checkpoint):
    model = hrnet_w32()
    missing, unexpected = model.load_pose_checkpoint(w32_checkpoint)
    assert missing == [] and unexpected == []
    ref = read_state_dict(w32_checkpoint)
    key = "stage3.1.branches.2.0.conv1.weight"
    assert torch.equal(model.state_dict()[key], ref[key])


def test_reload_wrapped_and_prefixed(tmp_path):
    model = hrnet_tiny()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "w.pth")
    assert hrnet_tiny().load_pose_checkpoint(tmp_path / "w.pth") == ([], [])


def test_multiscale_layout_reports_missing_keys(tmp_path):
    torch.save(hrnet_tiny().state_dict(), tmp_path / "pose.pth")
    full = hrnet_tiny(multi_scale_output=True)
    with pytest.raises(ValueError, match="missing keys"):
        full.load_pose_checkpoint(tmp_path / "pose.pth")
    missing, unexpected = full.load_pose_checkpoint(tmp_path / "pose.pth", strict=False)
    assert missing and all(k.startswith("stage4.0.fuse_layers.") for k in missing) and unexpected == []


def test_wrong_width_and_missing_file(tmp_path):
    torch.save(hrnet_tiny().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="wrong shape"):
        hrnet_tiny(width=16).load_pose_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        hrnet_tiny().load_pose_checkpoint(tmp_path / "absent.pth")


def test_tiny_shapes_and_features():
    torch.manual_seed(0)
    model = hrnet_tiny().eval()
    x = torch.randn(2, 3, 64, 32)
    feats = model.forward_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 8), (2, 16, 8, 4), (2, 32, 4, 2), (2, 64, 2, 1)]
    assert model(x).shape == (2, 17, 16, 8)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 48))


def test_feature_map_channels():
    fmap = HRNetFeatureMap(**HRNET_TINY).eval()
    out = fmap(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 8 + 16 + 32 + 64, 16, 8) and fmap.out_channels == 120
    assert HRNetFeatureMap(width=32).out_channels == 480  # 32 + 64 + 128 + 256


def test_upsample_concat_by_hand():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.full((1, 1, 1, 1), 3.0)  # a constant 1x1 map upsamples to a constant 2x2 map of 3
    out = upsample_concat([a, b])
    assert out.shape == (1, 2, 2, 2) and torch.all(out[0, 1] == 3.0) and torch.all(out[0, 0] == 0)


def test_tiny_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = hrnet_tiny()
    for p in model.parameters():  # official init (std 0.001) gives near-zero outputs; make the check meaningful
        torch.nn.init.normal_(p, std=0.2)
    model.eval()
    x = torch.randn(1, 3, 64, 32)
    path = tmp_path / "tiny_hrnet.onnx"
    torch.onnx.export(model, x, str(path), input_names=["input"], output_names=["output"], opset_version=17,
                      dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (1, 17, 16, 8)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_reid_feature_map_from_scratch_tells_images_apart_in_eval_mode() -> None:
    """A ReID backbone trained from scratch needs a He init: the pose init N(0, 0.001) embeds every image at ~0."""
    torch.manual_seed(0)
    net = HRNetFeatureMap(**HRNET_TINY).eval()
    with torch.no_grad():
        feats = net(torch.randn(4, 3, 64, 32))
    assert feats.shape == (4, net.out_channels, 16, 8)
    assert feats.std(0).mean() > 0.1


def test_upsample_concat_aligns_corners_as_the_official_isp_code():
    """A 2x2 branch upsampled to 4x4, by hand: align_corners=True (ISP's cls_hrnet.py) maps the corners onto the
    corners, so a row [0, 2] becomes 0, 2/3, 4/3, 2; PyTorch's default (False, half-pixel centres) gives 0, 0.5,
    1.5, 2."""
    fine = torch.zeros(1, 1, 4, 4)
    coarse = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]]]])
    row = upsample_concat([fine, coarse])[0, 1, 0]
    assert torch.allclose(row, torch.tensor([0.0, 2 / 3, 4 / 3, 2.0]))
    shifted = upsample_concat([fine, coarse], align_corners=False)[0, 1, 0]
    assert torch.allclose(shifted, torch.tensor([0.0, 0.5, 1.5, 2.0]))


def test_feature_map_align_corners_switch():
    """HRNetFeatureMap passes its align_corners to the branch upsampling (official default True)."""
    torch.manual_seed(0)
    net = HRNetFeatureMap(**HRNET_TINY).eval()
    assert net.align_corners is True
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        on = net(x)
        net.align_corners = False
        off = net(x)
    c0 = net.body.channels[0]
    assert torch.equal(on[:, :c0], off[:, :c0])  # the full-resolution branch is not resampled
    assert not torch.allclose(on[:, c0:], off[:, c0:])
