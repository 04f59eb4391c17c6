"""SUREID: hand-computed NPKD / ratio / Eq. 14 values, NODA pasting rules, tiny method train/embed, teacher cache."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.data.occluders import jitter_colour, load_occluders, occluder_box, paste_occluders
from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reid.pipeline import params as C
from reid import report
from reid.methods.base import METHODS
from reid.methods.sureid import (
    ABLATIONS,
    EVAL_ABLATIONS,
    EVAL_VARIANTS,
    PAPER_TABLES,
    SUREID,
    SUREIDTeacher,
    align_features,
    npkd_feature_loss,
    npkd_logit_kl,
    npkd_loss,
    pick_view,
    ratio_loss,
    sureid_objective,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*no pretrained weights.*")
TINY = {"arch": "vit_tiny_test", "img_size": (64, 32)}


# --- Eq. 9 ---------------------------------------------------------------------------------------------------
def test_ratio_loss_by_hand():
    # targets p = [0.5, 0.25]; stage-1 keep fractions: b0 3/4, b1 1/4; stage 2: b0 1/4, b1 0
    # b0: (0.5 - 0.75)^2 + (0.25 - 0.25)^2 = 0.0625; b1: (0.5 - 0.25)^2 + (0.25 - 0)^2 = 0.125; mean = 0.09375
    d1 = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    d2 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert float(ratio_loss([d1, d2], [0.5, 0.25])) == pytest.approx(0.09375)
    with pytest.raises(ValueError):
        ratio_loss([d1], [0.5, 0.25])


# --- Eq. 11-13 -----------------------------------------------------------------------------------------------
def test_npkd_logit_kl_at_temperature_by_hand():
    # teacher [ln 3, 0] -> p_t = [0.75, 0.25]; student [0, 0] -> p_s = [0.5, 0.5]
    # KL = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.75 * 0.405465 - 0.25 * 0.693147 = 0.130812
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(npkd_logit_kl(torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]]), 1.0)) == pytest.approx(kl)
    # T = 2 with teacher [2 ln 3, 0]: the same softened distributions, times T^2 = 4 -> 0.523248
    t2 = npkd_logit_kl(torch.zeros(1, 2), torch.tensor([[2 * math.log(3), 0.0]]), 2.0)
    assert float(t2) == pytest.approx(4 * kl)


def test_interpolation_teacher_8d_to_student_4d_by_hand():
    # linear, align_corners=False, 8 -> 4: output i samples x at 2i + 0.5 = mean of x[2i], x[2i+1]
    teacher = torch.arange(8.0).unsqueeze(0)
    torch.testing.assert_close(align_features(teacher, 4, "interp"), torch.tensor([[0.5, 2.5, 4.5, 6.5]]))
    torch.testing.assert_close(align_features(teacher, 4, "pool"), torch.tensor([[0.5, 2.5, 4.5, 6.5]]))
    # S-T direction, 4 -> 8: sample points 0.5 i - 0.25 clamped to [0, 3] on x = [0, 4, 8, 12]
    # -> [0, 1, 3, 5, 7, 9, 11, 12]
    up = align_features(torch.tensor([[0.0, 4.0, 8.0, 12.0]]), 8, "interp")
    torch.testing.assert_close(up, torch.tensor([[0.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 12.0]]))
    # equal dimensions (DeiT-S teacher and student): the identity in either direction, so s2t_interp == t2s_interp
    assert align_features(teacher, 8, "interp") is teacher
    # Eq. 13 feature term: f_s = [1, 2, 3, 4] vs I(f_t) = [0.5, 2.5, 4.5, 6.5]
    # diff [0.5, -0.5, -1.5, -2.5] -> 0.25 + 0.25 + 2.25 + 6.25 = 9.0
    f_s = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert float(npkd_feature_loss(f_s, align_features(teacher, 4), "sum")) == pytest.approx(9.0)
    # the default, DynamicViT's per-element reading: 9.0 / 4 channels
    assert float(npkd_feature_loss(f_s, align_features(teacher, 4))) == pytest.approx(2.25)
    with pytest.raises(ValueError, match="reduction"):
        npkd_feature_loss(f_s, f_s, "max")
    # Eq. 13: lambda * KL + l2 = 0.1 * 2 + 9 = 9.2
    assert float(npkd_loss(torch.tensor(2.0), torch.tensor(9.0), 0.1)) == pytest.approx(9.2)
    with pytest.raises(ValueError):
        align_features(teacher, 4, "linear")


def test_sureid_objective_eq14_by_hand():
    # alpha = 2, beta = 1, lambda = 0.1, lambda_ratio = 2, raw: id 1, tri 2, kl 3, feat 4, ratio 0.5
    # L = 2 * (0.1 * 3 + 4 + 2 * 0.5) + 1 * (1 + 2) = 2 * 5.3 + 3 = 13.6
    raw = {k: torch.tensor(v) for k, v in {"id": 1.0, "triplet": 2.0, "kd_kl": 3.0, "kd_feat": 4.0,
                                           "ratio": 0.5}.items()}
    terms = sureid_objective(raw, alpha=2.0, beta=1.0, kl_weight=0.1, ratio_weight=2.0)
    assert float(sum(terms.values())) == pytest.approx(13.6)
    assert float(terms["kd_kl"]) == pytest.approx(0.6)
    with pytest.raises(KeyError):
        sureid_objective({"other": torch.tensor(1.0)})


def test_pick_view_by_flip():
    views = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # row 0: (as is 1, mirrored 2); row 1: (3, 4)
    torch.testing.assert_close(pick_view(views, torch.tensor([True, False])), torch.tensor([[2.0], [3.0]]))
    with pytest.raises(ValueError, match="view axis"):
        pick_view(torch.zeros(2, 3, 1), torch.tensor([True, False]))


# --- NODA ----------------------------------------------------------------------------------------------------
def _write(path, rgba):
    cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def red(h, w, alpha=255):
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 0], img[..., 3] = 255, alpha
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


def test_load_occluders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_occluders(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no image"):
        load_occluders(tmp_path)
    _write(tmp_path / "a.png", np.full((300, 100, 4), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((40, 80, 3), 10, np.uint8))
    occ = load_occluders(tmp_path, max_size=150)
    assert [tuple(o.shape) for o in occ] == [(4, 150, 50), (4, 40, 80)]  # longest side capped; jpg gets alpha
    torch.testing.assert_close(occ[1][3], torch.ones(40, 80))


def test_occluder_box_rules():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        # aspect 60 / 10 = 6 > 2: vertical, full height, width in [W/3, W/2] = [10.7, 16] at the left/right edge
        y1, x1, y2, x2 = occluder_box((60, 10), (64, 32), gen)
        assert (y1, y2) == (0, 64) and 11 <= x2 - x1 <= 16 and (x1 == 0 or x2 == 32)
        # aspect 40 / 20 = 2 (not > 2): horizontal, full width, height in [H/3, H/2] = [21.3, 32], top/bottom
        y1, x1, y2, x2 = occluder_box((40, 20), (64, 32), gen)
        assert (x1, x2) == (0, 32) and 21 <= y2 - y1 <= 32 and (y1 == 0 or y2 == 64)


def test_paste_opaque_occluder_region_and_values():
    images = torch.zeros(6, 3, 64, 32)
    out, boxes, cover = paste_occluders(images, [red(40, 20)], torch.Generator().manual_seed(3), jitter=0.0,
                                        crop_min=1.0)
    red_norm = torch.tensor((np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD, dtype=torch.float32)
    assert torch.equal(images, torch.zeros(6, 3, 64, 32))  # input untouched
    for b, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        inside = torch.zeros(64, 32, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        torch.testing.assert_close(out[b][:, inside], red_norm[:, None].expand(3, int(inside.sum())))
        assert (out[b][:, ~inside] == 0).all()
        assert (cover[b][inside] > 0.99).all() and not cover[b][~inside].any()  # an opaque sprite: its box
    sides = {("top" if y1 == 0 else "bottom") for y1, _, _, _ in boxes.tolist()}
    assert sides == {"top", "bottom"}  # both sides drawn with this seed


def test_paste_probability_transparency_and_seed():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(200, 3, 16, 8)
    _, boxes, _ = paste_occluders(images, [red(8, 8)], gen, prob=0.5)
    frac = float((boxes[:, 0] >= 0).float().mean())
    assert 0.4 < frac < 0.6  # each image pasted with probability 1/2
    _, none, _ = paste_occluders(images[:5], [red(8, 8)], gen, prob=0.0)
    assert (none == -1).all()
    clear, _, cover = paste_occluders(images[:5], [red(8, 8, alpha=0)], gen)
    assert torch.equal(clear, images[:5]) and not cover.any()  # alpha 0: nothing visible, nothing covered
    a, ba, _ = paste_occluders(images[:8], [red(8, 8), red(30, 5)], torch.Generator().manual_seed(7))
    b, bb, _ = paste_occluders(images[:8], [red(8, 8), red(30, 5)], torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(ba, bb)


def test_jitter_colour_identity_and_brightness():
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(jitter_colour(rgb, 1.0, 1.0, 1.0), rgb)
    torch.testing.assert_close(jitter_colour(rgb, 0.5, 1.0, 1.0), rgb * 0.5)  # 0.1, 0.2, 0.3


# --- method ----------------------------------------------------------------------------------------------------
def _batch(num_classes=4, teacher_dim=128):
    torch.manual_seed(0)
    return {
        "image": torch.randn(4, 3, 64, 32),
        "pid": torch.tensor([0, 0, 1, 1]),
        "flipped": torch.tensor([False, True, False, True]),
        "vit_teacher.feat": torch.randn(4, 2, teacher_dim),
        "vit_teacher.logits": torch.randn(4, 2, num_classes),
    }


def test_registered():
    assert METHODS.get("sureid") is SUREID and METHODS.get("sureid_teacher") is SUREIDTeacher


def test_student_train_with_noda_backward_and_embed(tmp_path):
    _write(tmp_path / "occ.png", np.full((30, 20, 4), 255, np.uint8))
    method = SUREID(**TINY, occluder_dir=str(tmp_path), teacher_dim=128)
    model = method.build_model(4).train()
    losses = method.training_losses(model, _batch(), epoch=0)
    assert set(losses) == {"id", "triplet", "ratio", "kd_kl", "kd_feat"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.decision[0].out[-1].weight.grad is not None
    model.eval()
    with torch.no_grad():
        q = method.embed(model, _batch())
    assert q["feat"].shape == (4, 64)
    assert method.distance(q, q).shape == (4, 4)


@pytest.mark.parametrize("row", ["t4_vanilla", "t4_hts", "t6_s2t_linear", "t6_t2s_linear", "t6_s2t_interp"])
def test_ablation_rows_train(row):
    method = SUREID(**{**TINY, "teacher_dim": 128, "noda": False, **ABLATIONS[row]})
    model = method.build_model(4).train()
    losses = method.training_losses(model, _batch(), epoch=0)
    sum(losses.values()).backward()
    assert ("ratio" in losses) == method.hts and ("kd_feat" in losses) == method.npkd
    assert method.caches == ({"vit_teacher": ["feat", "logits"]} if method.npkd else {})


def test_ablations_cover_paper_tables():
    rows = {r for table in PAPER_TABLES.values() for r in table}
    assert rows == set(ABLATIONS) | set(EVAL_ABLATIONS) and not set(ABLATIONS) & set(EVAL_ABLATIONS)
    for row in ABLATIONS:  # every row constructs from params only (arch switch included)
        SUREID(**{**ABLATIONS[row], "occluder_dir": "x"})
    assert report.ablation_rows("sureid") == [  # paper order, then the test-time variants outside the tables
        *(r for table in PAPER_TABLES.values() for r in table), *EVAL_VARIANTS]


# What each reusing row means in the paper, as overrides of the full SUReID defaults.
_PAPER_MEANING = {"t5_p70": {"keep_ratio": 0.7}, "t6_t2s_interp": {"align": "interp", "align_direction": "t2s"},
                  "t7_suvit_wo_noda": {"noda": False}, "t7_sureid": {}}


@pytest.mark.parametrize("row", sorted(EVAL_ABLATIONS))
def test_rows_reusing_a_model_are_exactly_its_configuration(row):
    """t5_p70, t6_t2s_interp, t7_* reuse a Table IV row's model: the row as the paper means it must construct the
    same method as the row whose model it reuses (every setting, defaults included)."""
    base, test_time = EVAL_ABLATIONS[row]
    assert test_time == {}
    assert C.model_run(f"sureid--{row}--s1") == f"sureid--{base}--s1"

    def settings(method: SUREID) -> dict:
        return {k: v for k, v in vars(method).items() if k != "params" and not isinstance(v, torch.Generator)}

    meant = SUREID(**{**_PAPER_MEANING[row], "occluder_dir": "x"})
    reused = SUREID(**{**ABLATIONS[base], "occluder_dir": "x"})
    assert settings(meant) == settings(reused)
    assert PAPER_TABLES["V"]["t5_p70"]["throughput"] / PAPER_TABLES["IV"]["t4_vanilla"]["throughput"] == \
        pytest.approx(1.476, abs=1e-3)


def test_missing_teacher_or_occluders_are_clear_errors():
    method = SUREID(**TINY, noda=False, teacher_dim=128)
    model = method.build_model(4).train()
    batch = {k: v for k, v in _batch().items() if not k.startswith("vit_teacher")}
    with pytest.raises(KeyError, match="vit_teacher.feat"):
        method.training_losses(model, batch, 0)
    with pytest.raises(ValueError, match="3 classes but the student has 4"):
        method.training_losses(model, _batch(num_classes=3), 0)
    with pytest.raises(ValueError, match="occluder_dir"):
        SUREID(**TINY, teacher_dim=128).training_losses(model, _batch(), 0)


def test_noda_s_upper_bound_pastes_the_test_images_occluders(tmp_path):
    """Control `noda_test_pool`: NODA reads <occluder_dir>_test (the occluders of the query and gallery images);
    the learned rows read the training pool; NODA's claim declares it as its control."""
    from reid.methods.sureid import CONTROLS, SUREID as S

    train = SUREID(**TINY, teacher_dim=128, occluder_dir=str(tmp_path / "occluders"))
    test = SUREID(**TINY, teacher_dim=128, occluder_dir=str(tmp_path / "occluders"), **CONTROLS["noda_test_pool"])
    assert (train.occluder_dir, test.occluder_dir) == (str(tmp_path / "occluders"), str(tmp_path / "occluders_test"))
    with pytest.raises(FileNotFoundError, match="occluders_test"):
        test.occluders(torch.device("cpu"))
    with pytest.raises(ValueError, match="occluder_pool must be"):
        SUREID(**TINY, occluder_pool="val")
    noda = next(c for c in S.claims if c.name.startswith("NODA adds"))
    assert (noda.control, noda.rows) == ("noda_test_pool", ("t4_sureid", "t4_hts_npkd", "noda_test_pool"))


def test_teacher_train_and_cache_outputs():
    teacher = SUREIDTeacher(**TINY)
    model = teacher.build_model(4).train()
    losses = teacher.training_losses(model, _batch(), 0)
    sum(losses.values()).backward()
    fields = teacher.cache_fields(4)
    assert fields == {"feat": ((2, 64), "float32", "vector"), "logits": ((2, 4), "float32", "vector")}
    batch = _batch()
    out = teacher.cache_outputs(model, batch)
    assert out["feat"].shape == (4, 2, 64) and out["logits"].shape == (4, 2, 4)
    with torch.no_grad():  # view 1 is the mirrored image
        mirrored = model.outputs(torch.flip(batch["image"], dims=[3]))
    torch.testing.assert_close(out["feat"][:, 1], mirrored["feat"])
    assert not model.training


# --- the positive control (keep_by=parsing) and the probe ----------------------------------------------------
def _person_batch() -> dict[str, torch.Tensor]:
    """64x32 image, 16x16 patches: 4x2 tokens in row-major order. Person pixels (label 5) cover token 0 fully,
    token 1 for 12 of 16 rows (0.75), token 2 for 8 rows (0.5), token 3 for 4 rows (0.25), the rest nothing."""
    labels = torch.zeros(2, 64, 32, dtype=torch.uint8)
    labels[:, 0:16, 0:16] = 5
    labels[:, 0:12, 16:32] = 5
    labels[:, 16:24, 0:16] = 5
    labels[:, 16:20, 16:32] = 5
    batch = _batch()
    return {**{k: v[:2] for k, v in batch.items()}, "parsing.labels": labels}


def test_token_coverage_by_hand():
    from reid.models.vit import token_coverage

    cover = token_coverage((_person_batch()["parsing.labels"] > 0).float(), 16, 16)
    assert cover[0].tolist() == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0]


def test_oracle_keeps_the_same_person_tokens_in_training_and_at_inference():
    """keep_ratio 0.5 on 8 tokens keeps 4, 2, 1: tokens {0..3}, {0, 1}, {0}. Training masks exactly those
    (hard, no Gumbel noise, no ratio loss); inference gathers the same indices; ties go to the earlier token."""
    method = SUREID(**TINY, keep_ratio=0.5, keep_by="parsing", npkd=False, noda=False)
    assert method.caches == {"parsing": ["labels"]} and method.test_caches == {"parsing": ["labels"]}
    batch = _person_batch()
    model = method.build_model(4)
    scores = method.keep_scores(model, batch)
    train = model.train().outputs(batch["image"], scores)["decisions"]
    assert [m[0].nonzero().flatten().tolist() for m in train] == [[0, 1, 2, 3], [0, 1], [0]]
    _, hts = model.eval().backbone.forward_features(batch["image"], scores)
    assert [sorted(i[0].tolist()) for i in hts.keep_index] == [[0, 1, 2, 3], [0, 1], [0]]
    losses = method.training_losses(model.train(), batch, epoch=0)
    assert "ratio" not in losses
    feat = method.embed(model.eval(), batch)["feat"]
    assert torch.equal(feat, model(batch["image"], scores))  # the test-time embedding keeps the same tokens
    with pytest.raises(ValueError, match="not a deployable model"):
        method.export_inputs((64, 32))
    with pytest.raises(ValueError, match="needs hts"):
        SUREID(**TINY, hts=False, keep_by="parsing")


def test_noda_cuts_the_pasted_occluder_out_of_the_oracles_person_mask(tmp_path):
    """An opaque occluder pasted on every second copy: the copy's person mask is the original minus the sprite."""
    occ = np.zeros((20, 10, 4), np.uint8)
    occ[..., 0], occ[..., 3] = 255, 255
    cv2.imwrite(str(tmp_path / "o.png"), occ)
    method = SUREID(**TINY, keep_by="parsing", npkd=False, occluder_dir=str(tmp_path), noda_jitter=0.0)
    batch = _person_batch()
    doubled = method._double_with_noda(batch)
    person = (batch["parsing.labels"] > 0).float()
    assert torch.equal(doubled["person"][:2], person)
    hidden = person - doubled["person"][2:]
    assert hidden.min() >= 0 and hidden.sum() > 0  # the occluder removed person pixels, added none


def test_probe_reports_the_person_share_of_dropped_tokens_by_stage():
    """With the oracle keep (deterministic) on the layout above: all tokens 2.5 / 8; stage 1 drops tokens 4-7
    (share 0), stage 2 drops 2, 3 ((0.5 + 0.25) / 2), stage 3 drops 1 (0.75); token 0 is kept (1.0)."""
    method = SUREID(**TINY, keep_ratio=0.5, keep_by="parsing", npkd=False, noda=False)
    assert method.probe_caches == {"parsing": ["labels"]}
    stats = method.probe(method.build_model(4).eval(), _person_batch())
    expect = {"person_share_all_tokens": 0.3125, "person_share_dropped_stage1": 0.0,
              "person_share_dropped_stage2": 0.375, "person_share_dropped_stage3": 0.75,
              "person_share_kept_final": 1.0}
    assert {k: v.tolist() for k, v in stats.items()} == {k: [pytest.approx(v)] * 2 for k, v in expect.items()}
    # the world's occluder mask over token 4 and the lower half of token 2 (rows 24-31, beside the person's 16-23):
    # coverage [0, 0, .5, 0, 1, 0, 0, 0]: all 1.5 / 8; stage 1 drops 4-7 (0.25), stage 2 drops 2, 3 (0.25),
    # stage 3 drops 1 (0), token 0 is kept (0)
    assert method.probe_groundtruth == ("occluder",)
    occluder = torch.zeros(2, 64, 32, dtype=torch.uint8)
    occluder[:, 32:48, 0:16] = 1
    occluder[:, 24:32, 0:16] = 1
    stats = method.probe(method.build_model(4).eval(), {**_person_batch(), "groundtruth.occluder": occluder})
    expect.update({"occluder_share_all_tokens": 0.1875, "occluder_share_dropped_stage1": 0.25,
                   "occluder_share_dropped_stage2": 0.25, "occluder_share_dropped_stage3": 0.0,
                   "occluder_share_kept_final": 0.0})
    assert {k: v.tolist() for k, v in stats.items()} == {k: [pytest.approx(v)] * 2 for k, v in expect.items()}
    learned = SUREID(**TINY, npkd=False, noda=False)
    assert set(learned.probe(learned.build_model(4).eval(), _person_batch())) == {
        k for k in expect if k.startswith("person")}
    vanilla = SUREID(**TINY, hts=False, npkd=False, noda=False)
    assert vanilla.probe_caches == {} and vanilla.probe_groundtruth == ()
    assert vanilla.probe(vanilla.build_model(4).eval(), _person_batch()) == {}


def test_npkd_defaults_to_the_per_element_feature_loss_and_old_records_keep_the_sum() -> None:
    """New runs distil with DynamicViT's per-element mean; a model.pt saved before `kd_feat_reduction` existed was
    trained with Eq. 13's sum and is rebuilt that way. The sum-reading rows select it explicitly."""
    from reid.methods.base import method_from_record
    from reid.methods.sureid import CONTROLS, VARIANTS

    assert SUREID(**SUREID.tiny_params).kd_feat_reduction == "mean"
    assert method_from_record("sureid", dict(SUREID.tiny_params)).kd_feat_reduction == "sum"
    assert VARIANTS["t4_hts_npkd_sum"]["kd_feat_reduction"] == CONTROLS["strong_teacher_npkd_sum"]["kd_feat_reduction"]
    assert VARIANTS["t4_hts_npkd_sum"]["kd_feat_reduction"] == "sum"
    with pytest.raises(ValueError, match="kd_feat_reduction"):
        SUREID(**SUREID.tiny_params, kd_feat_reduction="max")


def test_the_class_token_reweighting_is_deployed_as_the_paper_says() -> None:
    """Sec. III-A: Eq. 7-8 in training only. SUREID's default deploys without it (the network it builds says so),
    the `reweight_at_test` row reuses t4_sureid's model with it, and a model saved before the parameter existed
    (which deployed it) loads as it was evaluated."""
    from reid.methods.base import method_from_record

    method = SUREID(occluder_dir="x")
    assert method.cls_reweight_at_test is False
    net = method.build_model(num_classes=3)
    assert net.backbone.cls_reweight and net.backbone.reweight_at_test is False
    assert EVAL_VARIANTS["reweight_at_test"] == ("t4_sureid", {"cls_reweight_at_test": True})
    assert method_from_record("sureid", {"occluder_dir": "x"}).cls_reweight_at_test is True


def test_the_npkd_control_under_pretrained_reuses_t4_hts_npkds_model() -> None:
    """Under --pretrained, `strong_teacher_npkd` (teacher: the pretrained one) trains exactly `t4_hts_npkd`'s
    network (teacher: the run's own, i.e. the pretrained one): same parameters but `teacher_init`, same caches.
    The pipeline trains it once; from scratch the two differ (another teacher) and both train."""
    from reid.pipeline import layout as D

    cfg = C.load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    control, row = "sureid--strong_teacher_npkd--pretrained--s1", "sureid--t4_hts_npkd--pretrained--s1"
    assert C.model_run(control) == row and C.model_run("sureid--strong_teacher_npkd--s1") == \
        "sureid--strong_teacher_npkd--s1"
    a, b = C.stage_train(cfg, "synthocc", control)[0], C.stage_train(cfg, "synthocc", row)[0]
    assert {k: v for k, v in a["method_params"].items() if k != "teacher_init"} == \
        {k: v for k, v in b["method_params"].items() if k != "teacher_init"}
    assert a["train_cfg"] == b["train_cfg"]
    assert D.train_deps(cfg, "synthocc", control) == D.train_deps(cfg, "synthocc", row)
    scratch = "sureid--strong_teacher_npkd--s1", "sureid--t4_hts_npkd--s1"
    assert D.train_deps(cfg, "synthocc", scratch[0]) != D.train_deps(cfg, "synthocc", scratch[1])


@pytest.mark.parametrize("world", ["synthcc", "synthocc"])
def test_the_synthetic_worlds_distil_a_deit_s_teacher_into_a_deit_tiny_student(world: str) -> None:
    """The paper distils a ViT-B (768-d) into a DeiT-S (384-d); the worlds keep that 2:1 relation at half the width
    (DeiT-S teacher, DeiT-Tiny student), so NPKD's interpolation really resizes the teacher feature (Table VI's
    comparison is not identity vs a learned map), both inits start from their own stand-in, and the interpolated
    teacher feature is the average of neighbour channel pairs."""
    from reid.models.vit import ARCHS as VIT

    cfg = C.load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    student = C.stage_train(cfg, world, "sureid--pretrained--s0")[0]["method_params"]
    teacher = C.stage_train(cfg, world, "sureid_teacher--pretrained")[0]["method_params"]
    assert student["arch"] == "deit_tiny" and teacher["arch"] == "deit_small"
    assert student["teacher_dim"] == VIT["deit_small"]["embed_dim"] == 2 * VIT["deit_tiny"]["embed_dim"]
    assert student["deit_tiny_weights"] == "models/pretrain/deit_tiny.pth"
    assert teacher["deit_small_weights"] == "models/pretrain/deit_small.pth"
    assert C.stage_train(cfg, world, "sureid--s0")[0]["method_params"]["deit_tiny_weights"] == "random"
    method = METHODS.get("sureid")(**{**student, "deit_tiny_weights": "random", "occluder_dir": None,
                                      "noda": False, "img_size": (32, 16)})
    assert method.backbone_weights() == {"deit_tiny_weights": "deit_tiny"}
    net = method.build_model(num_classes=5)
    f_t = torch.arange(384, dtype=torch.float32).repeat(2, 1)
    f_s, f_t2 = method._feature_pair(net, torch.zeros(2, 192), f_t)
    assert f_s.shape == f_t2.shape == (2, 192)
    assert torch.allclose(f_t2[0, :3], torch.tensor([0.5, 2.5, 4.5]))  # (0 + 1) / 2, (2 + 3) / 2, (4 + 5) / 2
