"""PGFL-KD: every equation against hand-computed values, flip/left-right consistency, model + method round trip."""

from __future__ import annotations

import math

import pytest
import torch

from reid.methods.pgfl_kd import (
    ABLATIONS,
    GROUP_FLIP_PAIRS,
    GROUP_NAMES,
    PAPER_TABLE6,
    PAPER_TABLE7,
    PGFLKD,
    PGFLNet,
    attentive_pool,
    consistent_loss,
    flip_coco_heatmaps,
    foreground_attention,
    fuse,
    group_heatmaps,
    merge_keypoint_groups,
    multi_part_contrastive_loss,
    part_features,
    part_positive_mask,
    pgfl_flops,
    resize_maps,
    spatial_softmax,
    map_support,
    visible_pool,
)

E = math.e


# --- keypoint groups ------------------------------------------------------------------------------------
def _tiny_heatmaps() -> torch.Tensor:
    hm = torch.zeros(1, 17, 2, 2)
    hm[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # nose
    hm[0, 1] = torch.tensor([[0.5, 2.0], [0.0, 0.0]])  # left eye (overlaps the nose at (0,0))
    hm[0, 7] = torch.tensor([[0.0, 0.0], [3.0, 0.0]])  # left elbow
    hm[0, 9] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # left wrist
    return hm


def test_merge_groups_max_and_sum() -> None:
    hm = _tiny_heatmaps()
    mx = merge_keypoint_groups(hm, "max")
    sm = merge_keypoint_groups(hm, "sum")
    assert mx.shape == (1, 8, 2, 2)
    # head = max(nose, left eye) = [[max(1,.5), 2], [0, 0]]; sum = [[1.5, 2], [0, 0]]
    assert torch.allclose(mx[0, GROUP_NAMES.index("head")], torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    assert torch.allclose(sm[0, 0], torch.tensor([[1.5, 2.0], [0.0, 0.0]]))
    # left lower arm = max(elbow, wrist) = [[0, 0], [3, 1]]; sum = [[0, 0], [4, 1]]
    assert torch.allclose(mx[0, 1], torch.tensor([[0.0, 0.0], [3.0, 1.0]]))
    assert torch.allclose(sm[0, 1], torch.tensor([[0.0, 0.0], [4.0, 1.0]]))
    assert mx[0, 2:].abs().sum() == 0  # no other joint is lit
    with pytest.raises(ValueError, match="keypoints.heatmaps"):
        merge_keypoint_groups(torch.zeros(1, 16, 2, 2))


def test_spatial_softmax_hand_value() -> None:
    # head map [[1, 2], [0, 0]]: e^1, e^2, e^0, e^0 over e + e^2 + 2 = 12.107338
    # -> [0.2245152, 0.6102957, 0.0825945, 0.0825945]
    h = group_heatmaps(_tiny_heatmaps(), (2, 2), "max", 1.0)
    expected = torch.tensor([[E, E**2], [1.0, 1.0]]) / (E + E**2 + 2)
    assert torch.allclose(h[0, 0], expected, atol=1e-6)
    assert torch.allclose(h[0, 0], torch.tensor([[0.2245152, 0.6102957], [0.0825945, 0.0825945]]), atol=1e-6)
    # an empty group (right knee) becomes uniform 1/4; every map sums to 1
    assert torch.allclose(h[0, 4], torch.full((2, 2), 0.25))
    assert torch.allclose(h.sum(dim=(2, 3)), torch.ones(1, 8))
    # temperature 2: [[1, 2], [0, 0]] / 2 -> e^.5, e^1, 1, 1 over (e^.5 + e + 2)
    h2 = spatial_softmax(torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]]), 2.0)
    z = math.exp(0.5) + E + 2
    assert torch.allclose(h2[0, 0], torch.tensor([[math.exp(0.5) / z, E / z], [1 / z, 1 / z]]), atol=1e-6)


def test_resize_area_then_bilinear() -> None:
    m = torch.arange(16.0).reshape(1, 1, 4, 4)
    # 4x4 -> 2x2 by area: top-left block (0, 1, 4, 5) mean 2.5, top-right (2, 3, 6, 7) mean 4.5, ...
    assert torch.allclose(resize_maps(m, (2, 2))[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert resize_maps(m, (8, 8)).shape == (1, 1, 8, 8)
    assert resize_maps(m, (4, 4)) is m


def _knee_heatmaps(h: int = 8, w: int = 4) -> torch.Tensor:
    """Person's left knee (COCO 13) at (y=5, x=3), right knee (14) at (5, 0): a frontal person's left is image right."""
    hm = torch.zeros(1, 17, h, w)
    hm[0, 13, 5, 3] = 1.0
    hm[0, 14, 5, 0] = 1.0
    return hm


def test_flip_swap_keeps_left_knee_group_on_persons_left_knee() -> None:
    """A frontal person's left knee appears on the image right. Mirroring makes the old right knee (x=0 -> x=3)
    the mirrored person's left knee, so after flip + COCO swap the left-knee group must again sit on the image
    right (x=3), exactly where a pose estimator run on the mirrored image would put it."""
    hm = _knee_heatmaps()
    flipped = flip_coco_heatmaps(hm)
    assert flipped[0, 13, 5, 3] == 1 and flipped[0, 13].sum() == 1  # left knee: still image right
    assert flipped[0, 14, 5, 0] == 1 and flipped[0, 14].sum() == 1  # right knee: still image left
    g = merge_keypoint_groups(flipped)
    left_knee, right_knee = GROUP_NAMES.index("left_knee"), GROUP_NAMES.index("right_knee")
    assert g[0, left_knee, 5, 3] == 1 and g[0, left_knee].sum() == 1
    assert g[0, right_knee, 5, 0] == 1 and g[0, right_knee].sum() == 1
    # without the swap the left-knee group would land on the image left: the swap is what keeps it right
    assert merge_keypoint_groups(torch.flip(hm, dims=[3]))[0, left_knee, 5, 0] == 1
    # equivariance: grouping the flipped+swapped heatmaps = flipping the groups and swapping symmetric groups
    rand = torch.rand(2, 17, 8, 4)
    perm = list(range(8))
    for a, b in GROUP_FLIP_PAIRS:
        perm[a], perm[b] = b, a
    lhs = group_heatmaps(flip_coco_heatmaps(rand), (4, 2))
    rhs = torch.flip(group_heatmaps(rand, (4, 2)), dims=[3])[:, perm]
    assert torch.allclose(lhs, rhs, atol=1e-6)


def test_dataset_heatmap_flip_matches_grouping() -> None:
    """The shared augmentation (reid.data.transforms.warp_heatmaps) flips + swaps exactly like our TTA helper."""
    transforms = pytest.importorskip("reid.data.transforms")
    hm = _knee_heatmaps().numpy()[0]
    geom = transforms.Geometry(out_hw=(8, 4), flip=True)
    warped = torch.from_numpy(transforms.warp_heatmaps(hm, geom, (8, 4)))[None]
    assert torch.allclose(warped, flip_coco_heatmaps(torch.from_numpy(hm)[None]), atol=1e-6)
    assert merge_keypoint_groups(warped)[0, GROUP_NAMES.index("left_knee"), 5, 3] == 1


# --- equations ------------------------------------------------------------------------------------------
def test_eq1_part_features() -> None:
    fmap = torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]])  # (1, c=2, h=1, w=2)
    groups = torch.tensor([[[[0.25, 0.75]]]])  # (1, K=1, 1, 2)
    # channel 0: mean(1*.25, 3*.75) = mean(.25, 2.25) = 1.25; channel 1: mean(.5, 3) = 1.75
    assert torch.allclose(part_features(fmap, groups), torch.tensor([[[1.25, 1.75]]]))


def test_eq2_eq3_foreground_attention_and_pooling() -> None:
    fmap = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # pixel 1 = (1, 0), pixel 2 = (0, 1)
    f_l = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # K = 2 parts -> f_L = (1, 0)
    # cosine: sims (1, 0) -> a = (e/(e+1), 1/(e+1)) = (0.7310586, 0.2689414)
    a = foreground_attention(fmap, f_l, "cosine")
    assert torch.allclose(a, torch.tensor([[[0.7310586, 0.2689414]]]), atol=1e-6)
    # Eq. 3: f_F = .7310586 * (1, 0) + .2689414 * (0, 1)
    assert torch.allclose(attentive_pool(fmap, a), torch.tensor([[0.7310586, 0.2689414]]), atol=1e-6)
    # dot product on a scaled map: pixel 1 = (2, 0) -> F.f_L = (2, 0) -> a = e^2/(e^2+1) = 0.8807971
    a_dot = foreground_attention(2 * fmap, f_l, "dot")
    assert torch.allclose(a_dot, torch.tensor([[[0.8807971, 0.1192029]]]), atol=1e-6)
    # cosine is scale-free: the scaled map gives the first attention again
    assert torch.allclose(foreground_attention(2 * fmap, f_l, "cosine"), a, atol=1e-6)


def test_feb_temperature_default_is_0_1_and_the_model_uses_it() -> None:
    """Eq. 2 at the default temperature 0.1: sims (1, 0) -> softmax(10, 0) = (e^10/(e^10+1), 1/(e^10+1)) =
    (0.9999546, 0.0000454) where temperature 1 gives (0.7310586, 0.2689414); the model passes its parameter to
    Eq. 2, the literal temperature is row `full_feb_t1`, and a model saved before the default changed loads with 1."""
    from reid.methods.base import method_from_record
    from reid.methods.pgfl_kd import EXTRA_ABLATIONS

    fmap = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    f_l = torch.tensor([[[1.0, 0.0]]])
    assert torch.allclose(foreground_attention(fmap, f_l, "cosine", 0.1), torch.tensor([[[0.9999546, 0.0000454]]]),
                          atol=1e-6)
    method = PGFLKD(backbone="resnet18")
    assert method.net_kwargs["feb_temperature"] == 0.1 and method.build_model(2).feb_temperature == 0.1
    assert EXTRA_ABLATIONS["full_feb_t1"] == {**ABLATIONS["full"], "feb_temperature": 1.0}
    assert method_from_record("pgfl_kd", {"backbone": "resnet18"}).net_kwargs["feb_temperature"] == 1.0


def test_eq4_consistent_loss_value_and_detached_teacher() -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = consistent_loss(student, teacher, "literal")
    # image 1: (1-3)^2 + (2-0)^2 = 8, image 2: 0 -> batch mean 4
    assert torch.isclose(loss, torch.tensor(4.0))
    loss.backward()
    # d/ds = 2 (s - t) / B = (-2, 2) for image 1; the teacher gets no gradient
    assert torch.allclose(student.grad, torch.tensor([[-2.0, 2.0], [0.0, 0.0]]))
    assert teacher.grad is None


def test_eq4_normalized_form_hand_value_bounded_and_zero_when_aligned() -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, -3.0]])
    teacher = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    # image 1: 2 - 2 cos = 2 - 2 * 3 / (sqrt(5) * 3) = 1.1055728; image 2: opposite directions -> 4
    loss = consistent_loss(student, teacher)  # default form
    assert torch.isclose(loss, torch.tensor((2 - 2 / math.sqrt(5) + 4.0) / 2), atol=1e-6)
    assert torch.isclose(consistent_loss(student, 7.0 * student), torch.tensor(0.0), atol=1e-6)
    big = torch.randn(16, 32) * 1e3
    assert float(consistent_loss(big, torch.randn(16, 32))) <= 4.0
    with pytest.raises(ValueError, match="cl_form"):
        consistent_loss(student, teacher, "cosine")


def test_literal_eq4_on_the_model_is_the_squared_norm_of_f_f() -> None:
    """Eq. 4 as printed, with f_E = f_F + f_G detached, is ||f_F||^2 whatever f_G is (no fixed point)."""
    torch.manual_seed(0)
    model = PGFLNet(4, backbone="resnet18").train()
    batch = _batch(b=4, h=64, w=32)
    out = model(batch["image"], batch["keypoints.heatmaps"])
    literal = consistent_loss(out["G"], out["E"], "literal").detach()
    assert torch.isclose(literal, out["F"].detach().pow(2).sum(dim=1).mean(), rtol=1e-4)
    bounded = consistent_loss(out["G"], out["E"]).detach()
    assert 0.0 <= bounded.item() <= 4.0 and bounded.item() < literal.item()


def test_eq5_multi_part_contrastive_with_symmetric_positives() -> None:
    # K = 3 parts of 1 channel each; parts 1 and 2 are a left/right pair. f_g = (1, 0, 2), f_p = (1, 2, 1).
    f_g = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    f_p = torch.tensor([[1.0, 2.0, 1.0]], requires_grad=True)
    pos = part_positive_mask(3, ((1, 2),))
    assert pos.tolist() == [[True, False, False], [False, True, True], [False, True, True]]
    # logits[i, j] = f_p,i * f_g,j:  i=0 -> (1, 0, 2); i=1 -> (2, 0, 4); i=2 -> (1, 0, 2)
    # i=0, P={0}:   log(e + 1 + e^2) - 1                 = 2.4076060 - 1         = 1.4076060
    # i=1, P={1,2}: log(e^2 + 1 + e^4) - log(1 + e^4)     = 4.1429316 - 4.0181499 = 0.1247817
    # i=2, P={1,2}: log(e + 1 + e^2) - log(1 + e^2)       = 2.4076060 - 2.1269280 = 0.2806780
    # sum = 1.8130657
    loss = multi_part_contrastive_loss(f_g, f_p, pos)
    assert torch.isclose(loss, torch.tensor(1.8130657), atol=1e-5)
    loss.backward()
    assert f_p.grad is None and f_g.grad is not None  # teacher (SAB) detached
    # without the symmetric positives: i=1 -> 4.1429316 - 0, i=2 -> 2.4076060 - 2 -> total 5.9581436
    plain = multi_part_contrastive_loss(f_g.detach(), f_p.detach(), part_positive_mask(3, ()))
    assert torch.isclose(plain, torch.tensor(5.9581436), atol=1e-5)
    # batch of two identical images: per-image sum, batch mean -> same value
    two = multi_part_contrastive_loss(f_g.detach().repeat(2, 1), f_p.detach().repeat(2, 1), pos)
    assert torch.isclose(two, torch.tensor(1.8130657), atol=1e-5)
    with pytest.raises(ValueError, match="split into K=3"):
        multi_part_contrastive_loss(torch.zeros(1, 4), torch.zeros(1, 4), pos)


def test_paper_positive_sets() -> None:
    pos = part_positive_mask(8)
    assert pos.sum(1).tolist() == [1, 2, 2, 2, 2, 2, 2, 1]  # head and torso have no counterpart
    assert pos[GROUP_NAMES.index("left_ankle"), GROUP_NAMES.index("right_ankle")]
    assert not pos[GROUP_NAMES.index("left_knee"), GROUP_NAMES.index("left_ankle")]


def test_eq6_fusion() -> None:
    # (1, 2) + (3, 4) = (4, 6)
    assert torch.equal(fuse(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])), torch.tensor([4.0, 6.0]))


# --- model and method -----------------------------------------------------------------------------------
def _batch(b: int = 8, h: int = 128, w: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(b, 3, h, w, generator=g),
        "pid": torch.arange(b // 2).repeat_interleave(2),
        "keypoints.heatmaps": torch.rand(b, 17, h // 4, w // 4, generator=g),
        "flipped": torch.zeros(b, dtype=torch.bool),
    }


def test_full_method_losses_backward_embed_distance() -> None:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18")
    assert method.caches == {"keypoints": ["heatmaps"]} and method.test_caches == {}
    model = method.build_model(num_classes=4)
    batch = _batch()
    losses = method.training_losses(model, batch, epoch=0)
    assert set(losses) == {"reid_G", "reid_V", "reid_E", "mcl", "cl"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.sab.reducers[0][0].weight.grad is not None
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        q = method.embed(model, {"image": batch["image"][:3]})  # deployed f_G needs no heatmaps
        g = method.embed(model, {"image": batch["image"]})
        assert q["feat"].shape == (3, 512)
        d = method.distance(q, g)
    assert d.shape == (3, 8) and torch.allclose(d.diagonal()[:3], torch.zeros(3), atol=1e-5)


def test_mcl_does_not_train_the_sab_teacher() -> None:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18")
    model = method.build_model(num_classes=4)
    losses = method.training_losses(model, _batch(h=64, w=32), epoch=0)
    losses["mcl"].backward()
    assert all(p.grad is None for p in model.sab.parameters())
    assert model.backbone.stem[0].weight.grad is not None


@pytest.mark.parametrize("feature", ["P", "V", "F", "E"])
def test_pose_test_features_need_heatmaps(feature: str) -> None:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18", test_feature=feature)
    assert method.test_caches == {"keypoints": ["heatmaps"]}
    model = method.build_model(num_classes=4).eval()
    batch = _batch(b=4, h=64, w=32)
    with torch.no_grad():
        feat = method.embed(model, batch)["feat"]
    assert feat.shape == (4, 512) and torch.isfinite(feat).all()
    with pytest.raises(KeyError, match="keypoints.heatmaps"):
        method.embed(model, {"image": batch["image"]})


def test_ablation_rows_build_and_give_their_losses() -> None:
    expected = {
        "baseline": {"reid_G"},
        "sab": {"reid_G", "reid_P"},
        "sab_i": {"reid_G", "reid_V"},
        "sab_im": {"reid_G", "reid_V", "mcl"},
        "sab_im_feb": {"reid_G", "reid_V", "mcl", "reid_E"},
        "full": {"reid_G", "reid_V", "mcl", "reid_E", "cl"},
        "sab_cl": {"reid_G", "reid_V", "sab_cl", "reid_E", "cl"},
        "full_literal_cl": {"reid_G", "reid_V", "mcl", "reid_E", "cl"},
    }
    assert set(ABLATIONS) == set(expected)
    assert set(PAPER_TABLE6) | set(PAPER_TABLE7) <= set(ABLATIONS)
    batch = _batch(b=4, h=64, w=32)
    for row, overrides in ABLATIONS.items():
        torch.manual_seed(0)
        method = PGFLKD(backbone="resnet18", **overrides)
        model = method.build_model(num_classes=2)
        b = batch if method.caches else {k: v for k, v in batch.items() if k != "keypoints.heatmaps"}
        losses = method.training_losses(model, b, epoch=0)
        assert set(losses) == expected[row], row
        assert all(torch.isfinite(v) for v in losses.values()), row
    assert PGFLKD(backbone="resnet18", **ABLATIONS["baseline"]).caches == {}


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="test_feature"):
        PGFLKD(test_feature="X")
    with pytest.raises(ValueError, match="needs its branch"):
        PGFLKD(feb=False, consistent=False, test_feature="E")
    with pytest.raises(ValueError, match="sab_distill"):
        PGFLKD(sab_distill="kl")
    with pytest.raises(ValueError, match="backbone"):
        PGFLNet(2, backbone="vgg")


@pytest.mark.parametrize("overrides, target, literal", [
    (ABLATIONS["full"], "E", False),
    (ABLATIONS["full_literal_cl"], "E", True),
    ({**ABLATIONS["full"], "cl_target": "F"}, "F", False),
])
def test_cl_term_is_eq4_on_the_rows_features(overrides: dict, target: str, literal: bool) -> None:
    """The `cl` term each row trains with, recomputed from the model's own features: the literal row is
    lambda_cl * mean ||f_G - f_E||^2 on raw features (= ||f_F||^2 when f_E = f_F + f_G), the default the same on
    L2-normalised ones, and `cl_target: F` aims at f_F. A row that silently fell back to another form or target
    gives another number (the three differ by far more than the tolerance)."""
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18", **overrides)
    model = method.build_model(num_classes=2)
    batch = _batch(b=4, h=64, w=32)
    cl = method.training_losses(model, batch, epoch=0)["cl"].detach()
    out = model(batch["image"], batch["keypoints.heatmaps"].float())
    g, t = out["G"].detach().float(), out[target].detach().float()
    if not literal:
        g, t = torch.nn.functional.normalize(g, dim=1), torch.nn.functional.normalize(t, dim=1)
    expected = method.lambda_cl * (g - t).pow(2).sum(dim=1).mean()
    assert float(cl) == pytest.approx(float(expected), rel=1e-4)
    other = "F" if target == "E" else "E"
    wrong = method.lambda_cl * (g - out[other].detach().float()).pow(2).sum(dim=1).mean()
    assert abs(float(cl) - float(wrong)) > 1e-3 * max(float(cl), 1e-6)
    if literal:  # f_E = f_F + f_G, so the printed Eq. 4 is ||f_F||^2
        f_f = out["F"].detach().float()
        assert float(cl) == pytest.approx(float(method.lambda_cl * f_f.pow(2).sum(dim=1).mean()), rel=1e-3)


def test_flops_deployed_vs_pose_path() -> None:
    from reid.models.hrnet import hrnet_tiny

    model = PGFLNet(4, backbone="resnet18")
    res = pgfl_flops(model, (64, 32), pose_model=hrnet_tiny(), pose_input_size=(64, 64))
    assert 0 < res["deployed_G_gflops"] < res["pose_branches_gflops"] < res["pose_based_total_gflops"]
    assert model.training  # mode restored


@pytest.mark.slow
def test_resnet50_forward_backward() -> None:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet50")
    with pytest.warns(UserWarning, match="no pretrained weights"):
        model = method.build_model(num_classes=2)
    losses = method.training_losses(model, _batch(b=4, h=64, w=32), epoch=0)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 2048)


def test_extra_rows_and_softmax_flatness_claim() -> None:
    """The module docstring's numbers: a sigma-2 Gaussian joint at 96x32, pooled to 24x8, softmax T=1 vs 0.1."""
    from reid.methods.pgfl_kd import EXTRA_ABLATIONS

    for overrides in EXTRA_ABLATIONS.values():
        PGFLKD(backbone="resnet18", **overrides)
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(32.0), indexing="ij")
    hm = torch.zeros(1, 17, 96, 32)
    hm[0, 13] = torch.exp(-((y - 53) ** 2 + (x - 16) ** 2) / 8)  # left knee, sigma 2
    top9 = {t: group_heatmaps(hm, (24, 8), "max", t)[0, 3].flatten().topk(9).values.sum().item() for t in (1.0, 0.1)}
    assert top9[1.0] < 0.07 and top9[0.1] > 0.6


def test_mcl_is_stable_for_large_features() -> None:
    # raw dot products of 400 overflow float32 exp() (limit ~88); the logsumexp form stays finite
    f = torch.full((2, 8 * 4), 10.0)  # logits 10*10*4 = 400
    loss = multi_part_contrastive_loss(f, f, part_positive_mask(8))
    # all logits equal -> per part -log(|P(i)| / 8): 2 * log 8 + 6 * log 4 = 12.4766
    assert torch.isclose(loss, torch.tensor(2 * math.log(8) + 6 * math.log(4)), atol=1e-4)


def test_map_support_hand_values() -> None:
    uniform = torch.full((1, 2, 2), 0.25)
    one_hot = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    skewed = torch.tensor([[[0.5, 0.3], [0.2, 0.0]]])
    got = {name: map_support(torch.cat([uniform, one_hot, skewed]), top=1) for name in ("x",)}["x"]
    # 1 / sum p^2: 1 / (4 * 0.0625) = 4, 1, 1 / (0.25 + 0.09 + 0.04) = 2.6315789
    torch.testing.assert_close(got["effective_cells"], torch.tensor([4.0, 1.0, 1 / 0.38]))
    torch.testing.assert_close(got["support_fraction"], torch.tensor([1.0, 0.25, 1 / 1.52]))
    torch.testing.assert_close(got["top_mass"], torch.tensor([0.25, 1.0, 0.5]))


def test_default_group_map_of_a_peaked_joint_holds_most_of_its_mass() -> None:
    """A sigma-2 joint on the 32x16 heatmap of a 128x64 input, grouped onto F's 8x4 grid (ResNet last stride 1):
    at the default temperature the best 4 of 32 cells hold most of the mass; at T = 1 they hold ~1/8 (flat)."""
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(16.0), indexing="ij")
    hm = torch.zeros(1, 17, 32, 16)
    hm[0, 14] = torch.exp(-((y - 21) ** 2 + (x - 6) ** 2) / 8)  # right knee
    default = map_support(group_heatmaps(hm, (8, 4)))["top_mass"][0, GROUP_NAMES.index("right_knee")]
    flat = map_support(group_heatmaps(hm, (8, 4), temperature=1.0))["top_mass"][0, GROUP_NAMES.index("right_knee")]
    assert float(default) > 0.5 and float(flat) < 0.2
    assert PGFLNet(2, backbone="resnet18").heatmap_temperature == 0.1


def test_table8_rows_compare_every_feature_before_any_bnneck() -> None:
    from reid.methods.pgfl_kd import EVAL_ABLATIONS

    table8 = {k: v for k, v in EVAL_ABLATIONS.items() if k.startswith("test_")}
    assert set(table8) == {f"test_{f}" for f in "GPVFE"}
    assert all(row == "full" and ov["test_neck"] is False for row, ov in table8.values())
    # the pose claims' control is compared with the baseline's f_G taken the same way (before its BNNeck)
    assert EVAL_ABLATIONS["baseline_raw"] == ("baseline", {"test_neck": False})
    assert EVAL_ABLATIONS["visible_pool"] == ("full", {"test_pool": "parsing", "test_neck": False})
    controls = [c for c in PGFLKD.claims if c.control == "visible_pool"]
    assert [c.better for c in controls] == ["sab", "full"]
    assert all(c.control_worse == "baseline_raw" for c in controls)
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18", test_feature="G", test_neck=False, flip_test=False)
    model = method.build_model(num_classes=4).eval()
    batch = _batch(b=3, h=64, w=32)
    with torch.no_grad():
        raw = method.embed(model, batch)["feat"]
        out = model(batch["image"], batch["keypoints.heatmaps"])
        deployed = PGFLKD(backbone="resnet18", flip_test=False).embed(model, batch)["feat"]
        e_raw = PGFLKD(backbone="resnet18", test_feature="E", test_neck=False, flip_test=False).embed(model, batch)
    torch.testing.assert_close(raw, out["G"])
    torch.testing.assert_close(deployed, out["G_bn"])
    torch.testing.assert_close(e_raw["feat"], out["E"])


def test_probe_reports_group_map_and_feb_support() -> None:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18")
    assert method.probe_caches == {"keypoints": ["heatmaps"]}
    model = method.build_model(num_classes=4).eval()
    stats = method.probe(model, _batch(b=3, h=64, w=32))
    for key in ("group_map_effective_cells", "group_map_top_mass", "feb_attention_effective_cells",
                "part_feature_pairwise_cos", "F_cos_to_G", "group_map_top_mass/head"):
        assert stats[key].shape == (3,) and torch.isfinite(stats[key]).all(), key
    assert (stats["group_map_top_mass"] <= 1.0 + 1e-6).all()
    assert PGFLKD(backbone="resnet18", **ABLATIONS["baseline"]).probe(model, {}) == {}


def test_visible_pool_weights_cells_by_their_share_of_person_pixels() -> None:
    # a 2x2 map, one channel: cells 1, 2 / 3, 4. The person covers all of the top-left cell's 4 pixels, half of
    # the top-right cell's and one of the bottom-left cell's, none of the bottom-right (4x4 image, 2x2 pixels a
    # cell): weights 1, 1/2, 1/4, 0 -> (1 + 2/2 + 3/4) / (1 + 1/2 + 1/4) = 2.75 / 1.75.
    fmap = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    person = torch.zeros(1, 4, 4)
    person[0, :2, :2] = 1
    person[0, :2, 2] = 1
    person[0, 2, 0] = 1
    torch.testing.assert_close(visible_pool(fmap, person), torch.tensor([[2.75 / 1.75]]))
    # the plain average over all cells (f_G) is 2.5: the control differs from f_G where the person is not visible
    assert fmap.mean() == 2.5
    # an image with no person pixel falls back to f_G
    torch.testing.assert_close(visible_pool(fmap, torch.zeros(1, 4, 4)), torch.tensor([[2.5]]))


def test_visible_pool_row_reads_the_parsing_and_is_not_exported() -> None:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18", test_pool="parsing", test_neck=False)
    assert method.test_caches == {"parsing": ["labels"]}
    model = method.build_model(num_classes=4).eval()
    batch = _batch(b=3, h=64, w=32)
    labels = torch.zeros(3, 64, 32, dtype=torch.long)
    labels[:, :40, 4:20] = 5  # the person's upper left; an occluder (label 0) covers the rest
    with torch.no_grad():
        feat = method.embed(model, {"image": batch["image"], "parsing.labels": labels})["feat"]
        fmap, fmap_m = model.backbone(batch["image"]), model.backbone(torch.flip(batch["image"], dims=[3]))
        person = (labels > 0).float()
        expected = visible_pool(fmap, person) + visible_pool(fmap_m, torch.flip(person, dims=[2]))
        plain = fmap.mean(dim=(2, 3)) + fmap_m.mean(dim=(2, 3))
    torch.testing.assert_close(feat, expected)
    assert not torch.allclose(feat, plain)
    with pytest.raises(KeyError, match="parsing.labels"):
        method.embed(model, {"image": batch["image"]})
    with pytest.raises(ValueError, match="not exported"):
        method.export_inputs((64, 32))
    with pytest.raises(ValueError, match="test_neck=False"):
        PGFLKD(test_pool="parsing")
    with pytest.raises(ValueError, match="test_pool"):
        PGFLKD(test_pool="visible")
