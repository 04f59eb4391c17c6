"""ViT/DeiT backbone + HTS: hand-computed masked attention, decisions, keep counts, gathering, weight loading."""

from __future__ import annotations

import math

import pytest
import torch

from reid.models.vit import (
    ARCHS,
    VisionTransformer,
    adapt_vit_state_dict,
    build_vit,
    cls_attention_reweight,
    gumbel_keep_decision,
    keep_counts,
    load_vit_weights,
    masked_softmax_attention,
    resize_pos_embed,
    topk_keep,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*no pretrained weights.*")


def tiny(img_size=(64, 32), keep_ratio=0.7, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    return build_vit("vit_tiny_test", img_size, keep_ratio=keep_ratio, **kw)


# --- Eq. 4-6 -------------------------------------------------------------------------------------------------
def test_masked_softmax_uniform_logits_three_tokens():
    # logits all 0, policy D = [1, 1, 0] (token 2 dropped).
    # row 0: G = [1, 1, 0] -> [1/2, 1/2, 0]; row 1: same;
    # row 2 (the dropped token itself): G = [D_0, D_1, 1 (diagonal)] = [1, 1, 1] -> [1/3, 1/3, 1/3].
    attn = masked_softmax_attention(torch.zeros(1, 1, 3, 3), torch.tensor([[1.0, 1.0, 0.0]]), eps=0.0)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(attn[0, 0], expected)


def test_masked_softmax_nonuniform_logits():
    # every row has logits [0, ln 2, ln 3] -> exp = [1, 2, 3]; policy D = [1, 0, 1].
    # rows 0 and 2: G = [1, 0, 1] -> [1, 0, 3] / 4 = [0.25, 0, 0.75]; row 1: G = [1, 1, 1] -> [1, 2, 3] / 6.
    logits = torch.tensor([0.0, math.log(2), math.log(3)]).expand(1, 1, 3, 3)
    attn = masked_softmax_attention(logits, torch.tensor([[1.0, 0.0, 1.0]]), eps=0.0)
    expected = torch.tensor([[0.25, 0.0, 0.75], [1 / 6, 2 / 6, 3 / 6], [0.25, 0.0, 0.75]])
    torch.testing.assert_close(attn[0, 0], expected)
    # with DynamicViT's eps the result is within eps of the exact one and rows still sum to 1
    attn_eps = masked_softmax_attention(logits, torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(attn_eps[0, 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn_eps.sum(-1), torch.ones(1, 1, 3))


def test_masked_softmax_all_kept_equals_softmax():
    logits = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(masked_softmax_attention(logits, torch.ones(2, 5), eps=0.0), logits.softmax(-1))


def test_masked_softmax_rejects_bad_policy_shape():
    with pytest.raises(ValueError, match="policy shape"):
        masked_softmax_attention(torch.zeros(1, 1, 3, 3), torch.ones(1, 4))


# --- Eq. 2-3 -------------------------------------------------------------------------------------------------
def test_gumbel_decision_is_hard_cumulative_and_differentiable():
    # log pi strongly favouring "keep" (index 1) for tokens 0, 1 and "drop" for token 2; token 1 was dropped
    # at an earlier stage, so D^ = [1, 0, 0] whatever the Gumbel noise.
    logits = torch.tensor([[[-50.0, 0.0], [-50.0, 0.0], [0.0, -50.0]]], requires_grad=True)
    prev = torch.tensor([[1.0, 0.0, 1.0]])
    d = gumbel_keep_decision(torch.log_softmax(logits, -1), prev)
    torch.testing.assert_close(d.detach(), torch.tensor([[1.0, 0.0, 0.0]]))
    d.sum().backward()  # straight-through estimator: a gradient reaches the decision MLP
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_train_decisions_are_random_binary_and_monotone_eval_is_deterministic():
    model = tiny()
    x = torch.randn(2, 3, 64, 32)
    model.train()
    torch.manual_seed(1)
    _, out1 = model.forward_features(x)
    torch.manual_seed(2)
    _, out2 = model.forward_features(x)
    assert len(out1.decisions) == 3 and not out1.keep_index
    for a, b in zip(out1.decisions, out1.decisions[1:]):
        assert set(a.unique().tolist()) <= {0.0, 1.0}
        assert (b <= a).all()  # D^ <- D^ * D never revives a token
    assert any(not torch.equal(a, b) for a, b in zip(out1.decisions, out2.decisions))  # Gumbel noise
    model.eval()
    f1, e1 = model.forward_features(x)
    f2, e2 = model.forward_features(x)
    assert not e1.decisions
    torch.testing.assert_close(f1, f2)
    assert all(torch.equal(a, b) for a, b in zip(e1.keep_index, e2.keep_index))


# --- keep counts and gathering -------------------------------------------------------------------------------
def test_keep_counts_floor_rule():
    # N = 128, p = 0.7: 128 * 0.7 = 89.6 -> 89; 128 * 0.49 = 62.72 -> 62; 128 * 0.343 = 43.904 -> 43
    assert keep_counts(128, [0.7, 0.7**2, 0.7**3]) == [89, 62, 43]
    # p = 0.5: 64, 32, 16 exactly
    assert keep_counts(128, [0.5, 0.25, 0.125]) == [64, 32, 16]
    # N = 100: 0.7**2 * 100 = 48.999999... in floats; the slack gives 49, not 48
    assert keep_counts(100, [0.7, 0.7**2, 0.7**3]) == [70, 49, 34]
    assert keep_counts(4, [0.1]) == [1]  # never zero tokens


def test_topk_keep_gathers_best_scored_tokens_in_score_order():
    tokens = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    kept, index = topk_keep(tokens, scores, 2)
    assert index.tolist() == [[1, 3]]  # scores 0.9 then 0.7
    torch.testing.assert_close(kept, torch.tensor([[[1.0, 1.0], [3.0, 3.0]]]))
    with pytest.raises(ValueError):
        topk_keep(tokens, scores, 5)


def test_eval_really_removes_tokens_at_256x128():
    model = tiny(img_size=(256, 128)).eval()
    assert model.patch_embed.grid == (16, 8)
    lengths = {}
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, inp, out, i=i: lengths.__setitem__(i, inp[0].shape[1]))
    _, out = model.forward_features(torch.randn(2, 3, 256, 128))
    # 1 class token + 128, then 89 / 62 / 43 image tokens from blocks 3 / 6 / 9 (0-based) on
    assert [lengths[i] for i in range(12)] == [129] * 3 + [90] * 3 + [63] * 3 + [44] * 3
    assert [k.shape[1] for k in out.keep_index] == [89, 62, 43]
    for outer, inner in zip(out.keep_index, out.keep_index[1:]):  # later stages keep a subset
        for b in range(2):
            assert set(inner[b].tolist()) <= set(outer[b].tolist())


def test_overlapping_stride_grid():
    model = VisionTransformer(img_size=(256, 128), stride=12, embed_dim=32, depth=2, num_heads=2)
    # (256 - 16) // 12 + 1 = 21, (128 - 16) // 12 + 1 = 10
    assert model.patch_embed.grid == (21, 10) and model.pos_embed.shape[1] == 211
    assert model(torch.randn(1, 3, 256, 128)).shape == (1, 32)


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="built for"):
        tiny()(torch.randn(1, 3, 32, 32))


# --- Eq. 7-8 -------------------------------------------------------------------------------------------------
def test_cls_attention_reweight_by_hand():
    # x_cls = [1, 1], images [2, 0], [0, 4]; a = [0.25, 0.5]; lambda = 0.5
    # weighted = [0.5, 0], [0, 2]; pooled = [0.5, 2]
    # out: cls [1, 1] + 0.5 [0.5, 2] = [1.25, 2]; [2, 0] + 0.5 [0.5, 0] = [2.25, 0]; [0, 4] + 0.5 [0, 2] = [0, 5]
    x = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 4.0]]])
    out = cls_attention_reweight(x, torch.tensor([[0.25, 0.5]]), torch.tensor(0.5))
    torch.testing.assert_close(out, torch.tensor([[[1.25, 2.0], [2.25, 0.0], [0.0, 5.0]]]))


def test_reweight_lambda_learns_in_training_only():
    model = tiny().train()
    feat, _ = model.forward_features(torch.randn(2, 3, 64, 32))
    (feat * torch.randn_like(feat)).sum().backward()  # (a plain sum after LayerNorm has zero gradient)
    assert model.reweight_lambda.grad is not None and model.reweight_lambda.grad.abs() > 0
    assert float(model.reweight_lambda.detach()) == pytest.approx(0.5)


def test_train_and_eval_compute_the_same_feature_at_keep_ratio_1():
    """With every token kept, the training path (masks, Eq. 7-8) and the deployed path (top-k, Eq. 7-8) must give
    one feature: the BNNeck is fitted in training to what inference deploys."""
    torch.manual_seed(0)
    model = tiny(keep_ratio=1.0)
    with torch.no_grad():
        model.reweight_lambda.fill_(0.8)
        for dec in model.decision:  # make every Gumbel draw "keep" (index 1)
            dec.out[-1].weight.zero_()
            dec.out[-1].bias.copy_(torch.tensor([-50.0, 50.0]))
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        train_feat, side = model.train().forward_features(x)
        assert all(bool((d == 1).all()) for d in side.decisions)
        eval_feat, _ = model.eval().forward_features(x)
    torch.testing.assert_close(eval_feat, train_feat, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        model.reweight_lambda.zero_()
        unweighted = model.forward_features(x)[0]
    assert not torch.allclose(unweighted, eval_feat, atol=1e-3)  # the reweighting really acts at inference


def test_reweight_at_test_false_deploys_the_unweighted_feature():
    """Sec. III-A's reading: Eq. 7-8 in training only. The deployed feature is the network without the reweighting
    (equal to lambda = 0), while training still reweights; the default deploys it reweighted."""
    torch.manual_seed(0)
    paper = tiny(reweight_at_test=False)
    default = tiny()
    default.load_state_dict(paper.state_dict())
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        paper.reweight_lambda.fill_(0.8)
        default.reweight_lambda.fill_(0.8)
        deployed = paper.eval()(x)
        reweighted = default.eval()(x)
        default.reweight_lambda.zero_()
        unweighted = default(x)
    torch.testing.assert_close(deployed, unweighted, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(deployed, reweighted, atol=1e-3)
    paper.train()
    feat, _ = paper.forward_features(x)
    (feat * torch.randn_like(feat)).sum().backward()
    assert paper.reweight_lambda.grad is not None and paper.reweight_lambda.grad.abs() > 0  # trained all the same


# --- forward / backward ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_ratio", [None, 0.7])
def test_tiny_forward_backward_train_and_eval(keep_ratio):
    model = tiny(keep_ratio=keep_ratio)
    x = torch.randn(2, 3, 64, 32)
    model.train()
    feat, _ = model.forward_features(x)
    assert feat.shape == (2, 64)
    feat.pow(2).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("decision.")]
    if keep_ratio:
        assert grads and all(g is not None for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 64)


def test_archs_are_timm_sized():
    assert ARCHS["vit_base"] == {"embed_dim": 768, "depth": 12, "num_heads": 12}
    assert ARCHS["deit_small"] == {"embed_dim": 384, "depth": 12, "num_heads": 6}
    assert ARCHS["deit_tiny"] == {"embed_dim": 192, "depth": 12, "num_heads": 3}


# --- ImageNet weights ----------------------------------------------------------------------------------------
def test_resize_pos_embed_keeps_class_entry_and_constant_grid():
    pe = torch.cat([torch.full((1, 1, 4), 7.0), torch.full((1, 196, 4), 2.0)], dim=1)
    out = resize_pos_embed(pe, (16, 8))
    assert out.shape == (1, 129, 4)
    torch.testing.assert_close(out[:, 0], torch.full((1, 4), 7.0))
    torch.testing.assert_close(out[:, 1:], torch.full((1, 128, 4), 2.0))  # bicubic keeps a constant field


@pytest.mark.parametrize("distilled", [False, True])
def test_load_timm_style_imagenet_checkpoint(tmp_path, distilled):
    # an ImageNet-style checkpoint: 224x224 (14x14 grid), a 1000-class head, optionally DeiT's dist token
    src = VisionTransformer(img_size=(224, 224), embed_dim=64, depth=12, num_heads=2)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(1000, 64), torch.randn(1000)
    if distilled:
        state["dist_token"] = torch.randn(1, 1, 64)
        state["head_dist.weight"] = torch.randn(1000, 64)
        state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], torch.randn(1, 1, 64), state["pos_embed"][:, 1:]], 1)
    path = tmp_path / "deit.pth"
    torch.save({"model": state}, path)
    model = build_vit("vit_tiny_test", (256, 128), weights=path, keep_ratio=0.7)
    torch.testing.assert_close(model.blocks[5].attn.qkv.weight, src.blocks[5].attn.qkv.weight)
    torch.testing.assert_close(model.patch_embed.proj.weight, src.patch_embed.proj.weight)
    torch.testing.assert_close(model.pos_embed[:, 0], src.pos_embed[:, 0])  # the class position survives
    assert model.pos_embed.shape == (1, 129, 64)
    assert set(adapt_vit_state_dict(state, model)) == set(src.state_dict())


def test_load_wrong_architecture_is_a_clear_error(tmp_path):
    src = VisionTransformer(img_size=(224, 224), embed_dim=32, depth=2, num_heads=2)
    path = tmp_path / "other.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError, match="pos_embed"):
        load_vit_weights(tiny(), path)
    with pytest.raises(FileNotFoundError):
        load_vit_weights(tiny(), tmp_path / "missing.pth")
