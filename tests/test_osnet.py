"""OSNet-x1.0: torchreid's checkpoint key layout, strict reload through load_pretrained, shapes; LightMBN shapes."""

from __future__ import annotations

import logging

import pytest
import torch

from reid.models.lightmbn import LightMBN, drop_top_rows
from reid.models.osnet import OSNet, osnet_tiny, osnet_x1_0

torch.set_num_threads(1)  # the test machine's cores are shared; threads only add contention here


def _conv_bn(prefix: str, c_out: int, c_in: int, k: int = 1) -> dict[str, tuple[int, ...]]:
    """torchreid ConvLayer / Conv1x1 / Conv1x1Linear: `<p>.conv.weight` + `<p>.bn.*`."""
    return {
        f"{prefix}.conv.weight": (c_out, c_in, k, k),
        f"{prefix}.bn.weight": (c_out,), f"{prefix}.bn.bias": (c_out,),
        f"{prefix}.bn.running_mean": (c_out,), f"{prefix}.bn.running_var": (c_out,),
        f"{prefix}.bn.num_batches_tracked": (),
    }


def _light(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    """torchreid LightConv3x3: conv1 (1x1), conv2 (depth-wise 3x3), bn."""
    return {
        f"{prefix}.conv1.weight": (c, c, 1, 1), f"{prefix}.conv2.weight": (c, 1, 3, 3),
        f"{prefix}.bn.weight": (c,), f"{prefix}.bn.bias": (c,), f"{prefix}.bn.running_mean": (c,),
        f"{prefix}.bn.running_var": (c,), f"{prefix}.bn.num_batches_tracked": (),
    }


def _osblock(prefix: str, c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    mid = c_out // 4
    keys = _conv_bn(f"{prefix}.conv1", mid, c_in)
    keys.update(_light(f"{prefix}.conv2a", mid))
    for name, depth in (("conv2b", 2), ("conv2c", 3), ("conv2d", 4)):
        for i in range(depth):
            keys.update(_light(f"{prefix}.{name}.{i}", mid))
    keys.update({
        f"{prefix}.gate.fc1.weight": (mid // 16, mid, 1, 1), f"{prefix}.gate.fc1.bias": (mid // 16,),
        f"{prefix}.gate.fc2.weight": (mid, mid // 16, 1, 1), f"{prefix}.gate.fc2.bias": (mid,),
    })
    keys.update(_conv_bn(f"{prefix}.conv3", c_out, mid))
    if c_in != c_out:
        keys.update(_conv_bn(f"{prefix}.downsample", c_out, c_in))
    return keys


def reference_osnet_x1_0_keys() -> dict[str, tuple[int, ...]]:
    """The state dict of torchreid's osnet_x1_0 (num_classes=1000), derived from its architecture description:
    channels [64, 256, 384, 512], 2 OSBlocks per stage, transitions after conv2/conv3, fc 512 + BN1d, classifier."""
    keys = _conv_bn("conv1", 64, 3, 7)
    for stage, (c_in, c_out, transition) in {"conv2": (64, 256, True), "conv3": (256, 384, True),
                                             "conv4": (384, 512, False)}.items():
        keys.update(_osblock(f"{stage}.0", c_in, c_out))
        keys.update(_osblock(f"{stage}.1", c_out, c_out))
        if transition:
            keys.update(_conv_bn(f"{stage}.2.0", c_out, c_out))
    keys.update(_conv_bn("conv5", 512, 512))
    keys.update({
        "fc.0.weight": (512, 512), "fc.0.bias": (512,), "fc.1.weight": (512,), "fc.1.bias": (512,),
        "fc.1.running_mean": (512,), "fc.1.running_var": (512,), "fc.1.num_batches_tracked": (),
        "classifier.weight": (1000, 512), "classifier.bias": (1000,),
    })
    return keys


@pytest.fixture(scope="module")
def x1_0() -> OSNet:
    with pytest.warns(UserWarning, match="no pretrained weights"):
        return osnet_x1_0()


def test_key_names_and_shapes_match_torchreid(x1_0):
    ref = reference_osnet_x1_0_keys()
    own = {k: tuple(v.shape) for k, v in x1_0.state_dict().items()}
    assert sorted(own) == sorted(ref)
    assert own == ref
    # OSNet paper: 2.2 M parameters (trunk + 512-d fc, without the classifier)
    n = sum(p.numel() for name, p in x1_0.named_parameters() if not name.startswith("classifier"))
    assert round(n / 1e6, 1) == 2.2


def test_checkpoint_reload_is_strict_and_exact(x1_0, tmp_path, caplog):
    # a torchreid-style file: plain state dict, as `osnet_x1_0_imagenet.pth` is
    sd = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in x1_0.state_dict().items()}
    torch.save(sd, tmp_path / "osnet_x1_0_imagenet.pth")
    with caplog.at_level(logging.WARNING):
        model = osnet_x1_0(tmp_path / "osnet_x1_0_imagenet.pth")
    assert "missing keys" not in caplog.text and "unexpected keys" not in caplog.text
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    strict = OSNet()
    assert strict.load_state_dict(torch.load(tmp_path / "osnet_x1_0_imagenet.pth")) is not None


def test_wrapped_checkpoint_with_other_classifier_loads_trunk(x1_0, tmp_path, caplog):
    torch.save({"state_dict": {f"module.{k}": v for k, v in x1_0.state_dict().items()}}, tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING):
        model = osnet_x1_0(tmp_path / "w.pth", num_classes=7)
    assert "shape mismatch" in caplog.text  # only the 1000-way classifier is skipped
    assert torch.equal(model.conv4[1].conv3.conv.weight, x1_0.conv4[1].conv3.conv.weight)


def test_shapes_at_small_input(x1_0):
    x1_0.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert x1_0.featuremaps(x).shape == (2, 512, 4, 2)  # stride 16
        assert x1_0(x).shape == (2, 512)
        assert osnet_tiny().eval().featuremaps(x).shape == (2, 128, 4, 2)


def test_drop_top_rows_zeroes_the_most_active_rows():
    x = torch.zeros(1, 2, 3, 2)
    x[0, 0, 1, 0] = 5.0  # row 1 has the strongest activation
    x[0, 1, 2, 1] = 1.0  # row 2 weaker, row 0 empty
    out = drop_top_rows(x + 0.1, ratio=0.33)  # round(0.33 * 3) = 1 row dropped
    assert torch.all(out[0, :, 1] == 0) and torch.all(out[0, :, 0] > 0) and torch.all(out[0, :, 2] > 0)


def test_lightmbn_outputs_and_backward():
    with pytest.warns(UserWarning):
        mbn = LightMBN(num_classes=5)
    x = torch.randn(4, 3, 64, 32)
    assert mbn.forward_stem(x).shape == (4, 384, 8, 4)  # conv3[0]: 384 channels at 1/8
    out = mbn(x)
    assert len(out.logits) == 7 and all(z.shape == (4, 5) for z in out.logits)
    assert len(out.triplet) == 3 and all(f.shape == (4, 512) for f in out.triplet)
    assert out.embeddings.shape == (4, 7, 512)
    (sum(z.sum() for z in out.logits) + sum(f.sum() for f in out.triplet)).backward()
    assert mbn.stem[0].conv.weight.grad is not None and mbn.shared[0].weight.grad is not None
    for neck in mbn.necks:
        assert not neck.neck.bn.bias.requires_grad  # BNNeck: frozen BN bias
    mbn.eval()
    with torch.no_grad():
        assert mbn(x).embeddings.shape == (4, 7, 512)


def _identity_branches(mbn: LightMBN) -> LightMBN:
    """Replace the learned trunks by identities so that pooling can be checked on a hand-made map."""
    for name in ("global_trunk", "part_trunk", "channel_trunk", "drop_block"):
        setattr(mbn, name, torch.nn.Identity())
    return mbn


def test_lightmbn_branches_pool_as_the_reference():
    """global: average (f_glo) and max after drop-top (f_glo_drop); part: max (f_p0) and two average stripes;
    channel: average split into halves, each through the shared conv."""
    torch.manual_seed(0)
    mbn = _identity_branches(LightMBN(num_classes=3, width="tiny")).eval()
    c = mbn.necks[0].reduction.in_channels
    f = torch.zeros(1, c, 6, 2)
    f[0, :, 0, 0] = 9.0   # the strongest row (row 0) holds a 9
    f[0, :, 4, 1] = 3.0   # a weaker peak lower down
    f[0, :, 5, 0] = 1.0
    pooled = mbn.pooled_features(f)
    col = lambda t: t[0, :, 0, 0]  # noqa: E731
    torch.testing.assert_close(col(pooled[0]), torch.full((c,), 13.0 / 12))  # average over 12 cells
    torch.testing.assert_close(col(pooled[1]), torch.full((c,), 9.0))        # eval: no drop, max
    torch.testing.assert_close(col(pooled[2]), torch.full((c,), 9.0))        # part: global max
    torch.testing.assert_close(col(pooled[3]), torch.full((c,), 9.0 / 6))    # top stripe: rows 0-2 average
    torch.testing.assert_close(col(pooled[4]), torch.full((c,), 4.0 / 6))    # bottom stripe: rows 3-5
    half = c // 2
    avg = f.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(pooled[5], mbn.shared(avg[:, :half]))
    torch.testing.assert_close(pooled[6], mbn.shared(avg[:, half:]))
    # training: drop-top zeroes round(0.33 * 6) = 2 rows with the largest peak energy (rows 0 and 4), so the
    # drop path's max is the remaining 1; the average path still sees everything
    mbn.train()
    mbn.shared.eval()  # (batch statistics of one image are undefined; the shared conv is not under test here)
    pooled_train = mbn.pooled_features(f)
    torch.testing.assert_close(col(pooled_train[1]), torch.full((c,), 1.0))
    torch.testing.assert_close(col(pooled_train[0]), torch.full((c,), 13.0 / 12))


def test_lightmbn_triplet_set_is_the_pre_bn_glo_glo_drop_p0():
    torch.manual_seed(0)
    mbn = LightMBN(num_classes=3, width="tiny").eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        mbn.necks[0].neck.bn.running_mean.fill_(0.5)  # so that the BN visibly changes the feature
        out = mbn(x)
        pooled = mbn.pooled_features(mbn.forward_stem(x))
        heads = [neck(p) for neck, p in zip(mbn.necks, pooled)]
    assert len(out.triplet) == 3 and len(out.logits) == 7
    for got, idx in zip(out.triplet, (0, 1, 2)):  # glo, glo_drop, p0: the features before their BNNeck's BN
        torch.testing.assert_close(got, heads[idx][0])
    torch.testing.assert_close(out.embeddings, torch.stack([h[1] for h in heads], dim=1))
    assert not torch.allclose(out.triplet[0], heads[0][1])  # pre-BN, not the post-BN embedding
