"""DeSKPro: each equation against a hand-computed value, model shapes/backward, embedding + distance with and
without faces (no NaN), the face teacher's cache, cached vs online teacher, and every Table 3 row by params."""

from __future__ import annotations

import math

import pytest
import torch

from reid.methods.deskpro import (
    ABLATIONS, CSA, PAPER_TABLE3, PRESETS, DeskPro, DeskProFaceTeacher, deskpro_distance, pick_view,
)
from reid.methods.deskpro_losses import (
    LIP_CLOTHING, apply_attention, attention_loss, ce_sum, deskpro_total, facial_knowledge_propagation,
    non_clothing_mask, triplet_sum,
)

torch.set_num_threads(1)  # the test machine's cores are shared; threads only add contention here
pytestmark = pytest.mark.filterwarnings("ignore:.*no pretrained weights:UserWarning")

B, C, H, W, S = 6, 3, 64, 32, 32  # batch, identities, body size, face size
TINY = {"width": "tiny", "face_size": S}


# --- equations ---------------------------------------------------------------------------------------------
def test_eq3_non_clothing_mask():
    # LIP: 0 background -> 1, 5 upper-clothes -> eps, 13 face -> 1, 9 pants -> eps
    labels = torch.tensor([[[0, 5], [13, 9]]])
    expected = torch.tensor([[[1.0, 0.1], [1.0, 0.1]]])
    assert torch.allclose(non_clothing_mask(labels, LIP_CLOTHING, 0.1), expected)


def test_eq4_attention_loss_with_epsilon_and_resize():
    # 4x4 labels -> 2x2 feature grid; each cell averages its 2x2 pixel block of Eq. 3's mask (eps = 0.1):
    #   top-left: three upper-clothes (0.1) + one face (1): (0.3 + 1) / 4 = 0.325
    #   top-right: background (1) -> 1.0;  bottom-left: pants (0.1) -> 0.1;  bottom-right: 2 pants + 2 arms -> 0.55
    labels = torch.tensor([[[5, 5, 0, 0], [5, 13, 0, 0], [9, 9, 9, 14], [9, 9, 9, 14]]])
    mask = non_clothing_mask(labels, LIP_CLOTHING, 0.1)
    attention = torch.tensor([[[[0.5, 0.8], [0.1, 0.55]]]])
    # squared errors: (0.5-0.325)^2 = 0.030625, (0.8-1)^2 = 0.04, 0, 0 -> mean = 0.070625 / 4 = 0.01765625
    assert attention_loss(attention, mask).item() == pytest.approx(0.01765625, abs=1e-7)


def test_eq1_eq2_csa_multiplies_a_sigmoid_map():
    csa = CSA(8, layers=1)
    with torch.no_grad():
        csa.conv2.weight.zero_()
        csa.conv2.bias.fill_(math.log(3.0))  # sigmoid(ln 3) = 3 / 4 everywhere
    f = torch.randn(2, 8, 4, 2)
    att = csa(f)
    assert att.shape == (2, 1, 4, 2) and torch.allclose(att, torch.full_like(att, 0.75))
    assert torch.allclose(apply_attention(f, att), 0.75 * f)


def test_eq5_kd_over_two_logit_pairs_with_tau_squared():
    """Two pairs, neither the mirror of the other (mirrored pairs give the same sum in either KL direction).
    tau = 2; the student is uniform in both pairs, p_s = [1/2, 1/2].
    pair 1: teacher/tau = [ln 3, 0] -> p_t = [3/4, 1/4]: KL(t||s) = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812
    pair 2: teacher/tau = [0, ln 4] -> p_t = [1/5, 4/5]: KL(t||s) = 0.2 ln 0.4 + 0.8 ln 1.6 = 0.192745
    L_fkp = tau^2 * (0.130812 + 0.192745) = 1.294227; the reversed KL would give 4 * (0.143841 + 0.223144) = 1.467938.
    """
    teacher = [torch.tensor([[2 * math.log(3.0), 0.0]]), torch.tensor([[0.0, 2 * math.log(4.0)]])]
    student = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    loss = facial_knowledge_propagation(student, teacher, 2.0).item()
    assert loss == pytest.approx(1.294227, abs=1e-5)
    assert loss != pytest.approx(1.467938, abs=1e-3)


def test_eq5_direction_with_an_asymmetric_pair():
    """One pair whose two KL directions differ: KL(p_t || p_s) is Eq. 5 (teacher first), not KL(p_s || p_t).
    tau = 2; teacher/tau = [ln3, 0] -> p_t = [3/4, 1/4]; student uniform p_s = [1/2, 1/2]:
    KL(t||s) = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812 -> x tau^2 = 0.523248;
    KL(s||t) = 0.5 ln(2/3) + 0.5 ln 2 = 0.143841 -> 0.575364 (the wrong direction)."""
    teacher = [torch.tensor([[2 * math.log(3.0), 0.0]], requires_grad=True)]
    student = [torch.tensor([[0.0, 0.0]], requires_grad=True)]
    loss = facial_knowledge_propagation(student, teacher, 2.0)
    assert loss.item() == pytest.approx(0.523248, abs=1e-5)
    assert loss.item() != pytest.approx(0.575364, abs=1e-3)
    loss.backward()
    assert teacher[0].grad is None and student[0].grad.abs().sum() > 0  # only the student learns


def test_eq6_sums_over_the_sets():
    # CE without smoothing on uniform logits over 2 classes: ln 2 per set, 2 sets -> 2 ln 2
    logits = [torch.zeros(3, 2), torch.zeros(3, 2)]
    assert ce_sum(logits, torch.tensor([0, 1, 1]), 0.0).item() == pytest.approx(2 * math.log(2.0))
    # batch-hard triplet, margin 0.7, 1-d features 0, 1 (id 0) and 3, 5 (id 1):
    #   anchor 0: d_ap 1, d_an 3 -> 0;  anchor 1: d_ap 1, d_an 2 -> 0;  anchor 3: d_ap 2, d_an 2 -> 0.7;
    #   anchor 5: d_ap 2, d_an 4 -> 0;  mean 0.175 per set, 2 sets -> 0.35
    f = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    assert triplet_sum([f, f], torch.tensor([0, 0, 1, 1]), 0.7).item() == pytest.approx(0.35, abs=1e-5)


def test_eq7_total():
    # 7 * 0.1 + 1 + (0.8 * 2 + 0.2 * 3) + 4 = 0.7 + 1 + 2.2 + 4 = 7.9
    assert deskpro_total(0.1, 1.0, 2.0, 3.0, 4.0, lambda_att=7.0, alpha=0.8) == pytest.approx(7.9)


# --- batches -----------------------------------------------------------------------------------------------
def make_batch(num_classes: int = C, seed: int = 0, has_face: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    has = torch.tensor(has_face if has_face is not None else [1, 1, 0, 1, 1, 1], dtype=torch.uint8)
    crops = torch.randn(B, 3, S, S, generator=g) * has.view(-1, 1, 1, 1)
    return {
        "image": torch.randn(B, 3, H, W, generator=g),
        "pid": torch.tensor([0, 0, 1, 1, 2, 2]) % num_classes,
        "flipped": torch.tensor([True, False, False, True, False, True]),
        "parsing.labels": torch.randint(0, 20, (B, H, W), generator=g),
        "faces.crop": crops,
        "faces.has_face": has,
        "restored_faces.restored": torch.randn(B, 3, S, S, generator=g) * has.view(-1, 1, 1, 1),
        "face_teacher.logits": torch.randn(B, 2, 7, num_classes, generator=g),
    }


# --- model + training --------------------------------------------------------------------------------------
def test_full_model_shapes_and_backward_x1_0():
    method = DeskPro(face_size=S)
    model = method.build_model(C)
    batch = make_batch()
    batch["image"] = torch.randn(4, 3, 128, 64)
    batch = {k: v[:4] for k, v in batch.items()}
    out = model(batch["image"], batch["faces.crop"][:2])
    assert out.attention.shape == (4, 1, 16, 8)  # 1/8 of 128x64, 384-channel stem
    assert len(out.body.logits) == 7 and out.body.embeddings.shape == (4, 7, 512)
    assert out.face.embeddings.shape == (2, 7, 512)
    terms = method.training_losses(model, batch, epoch=0)
    assert set(terms) == {"ce_body", "triplet_body", "att", "ce_face", "triplet_face", "kd_face"}
    sum(terms.values()).backward()
    assert model.csa.conv1.weight.grad is not None and model.face.stem[0].conv.weight.grad is not None


def test_terms_sum_to_eq7():
    method = DeskPro(preset="celeb", **TINY)
    model = method.build_model(C)
    batch = make_batch()
    terms = method.training_losses(model, batch, 0)
    rows = batch["faces.has_face"].bool()
    out = model(batch["image"], batch["faces.crop"][rows])  # train mode is deterministic: same outputs again
    y = batch["pid"]
    l_att = attention_loss(out.attention, non_clothing_mask(batch["parsing.labels"], LIP_CLOTHING, 0.1))
    l_trip = triplet_sum(out.body.triplet, y) + triplet_sum(out.face.triplet, y[rows])
    teacher = list(pick_view(batch["face_teacher.logits"], batch["flipped"])[rows].unbind(1))
    l_fkp = facial_knowledge_propagation(out.face.logits, teacher, tau=5.0)
    total = deskpro_total(l_att, l_trip, l_fkp, ce_sum(out.face.logits, y[rows]), ce_sum(out.body.logits, y),
                          lambda_att=7.0, alpha=0.7)
    assert sum(terms.values()).item() == pytest.approx(total.item(), rel=1e-5)


def test_pick_view_follows_flipped():
    views = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3)
    picked = pick_view(views, torch.tensor([True, False]))
    assert torch.equal(picked[0], views[0, 1]) and torch.equal(picked[1], views[1, 0])


def test_fewer_than_two_faces_skips_the_face_terms():
    method = DeskPro(**TINY)
    model = method.build_model(C)
    terms = method.training_losses(model, make_batch(has_face=[0, 0, 1, 0, 0, 0]), 0)
    assert set(terms) == {"ce_body", "triplet_body", "att"}


# --- inference ---------------------------------------------------------------------------------------------
def test_embed_and_distance_with_and_without_faces():
    method = DeskPro(**TINY)
    model = method.build_model(C).eval()
    batch = make_batch(has_face=[1, 0, 1, 0, 0, 1])
    feats = method.embed(model, batch)
    assert feats["body"].shape == (B, 7, 512) and feats["face"].shape == (B, 7, 512)
    assert torch.allclose(feats["body"].norm(dim=2), torch.ones(B, 7), atol=1e-5)  # each chunk unit-norm
    assert torch.all(feats["face"][1] == 0) and torch.all(feats["face"][[0, 2, 5]].norm(dim=2) > 0.99)
    d = method.distance(feats, feats)
    assert torch.isfinite(d).all()
    body_cos = torch.einsum("ikd,jkd->ij", feats["body"], feats["body"]) / 7
    face_cos = torch.einsum("ikd,jkd->ij", feats["face"], feats["face"]) / 7
    # query 1 has no face: body stream only, against every gallery image
    assert torch.allclose(d[1], 1 - body_cos[1], atol=1e-5)
    # query 0 has a face: 14 chunks against every gallery image; gallery 3 has none, so its face term is query 0's
    # mean face cosine over the gallery faces (images 0, 2, 5)
    assert d[0, 2].item() == pytest.approx(1 - (body_cos[0, 2] + face_cos[0, 2]).item() / 2, abs=1e-5)
    stand_in = face_cos[0, [0, 2, 5]].mean()
    assert d[0, 3].item() == pytest.approx(1 - (body_cos[0, 3] + stand_in).item() / 2, abs=1e-5)
    assert d[0, 0].item() == pytest.approx(0.0, abs=1e-5)


def _unit(*v: float) -> list[float]:
    x = torch.tensor(v)
    return (x / x.norm()).tolist()


def test_distance_ranks_one_query_on_one_scale_hand_values():
    """1 chunk per stream, 2-d. Query q (face) against g0 (face), g1 (no face), g2 (face).
    body cos: q.g0 = 0.6, q.g1 = 0.8, q.g2 = 0.0; face cos: q.g0 = 1.0, q.g2 = -0.5.
    mean rule: g1's face stand-in = (1.0 - 0.5) / 2 = 0.25 -> sims (0.6 + 1)/2 = 0.8, (0.8 + 0.25)/2 = 0.525,
    (0 - 0.5)/2 = -0.25 -> d = 0.2, 0.475, 1.25 -> ranking g0, g1, g2.
    zero rule: g1 -> (0.8 + 0)/2 = 0.4 -> d = 0.6. The old mixed rule gave g1 body only: d = 0.2, a tie with g0.
    A face-less query (q2) ranks by body only: d = 1 - body cos."""
    q_body = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    g_body = torch.tensor([[_unit(0.6, 0.8)], [_unit(0.8, 0.6)], [[0.0, 1.0]]])
    q_face = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    g_face = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [_unit(-0.5, 0.8660254)]])
    q = {"body": q_body, "face": q_face, "has_face": torch.tensor([1.0, 0.0])}
    g = {"body": g_body, "face": g_face, "has_face": torch.tensor([1.0, 0.0, 1.0])}
    d = deskpro_distance(q, g)
    torch.testing.assert_close(d[0], torch.tensor([0.2, 0.475, 1.25]), atol=1e-5, rtol=0)
    assert d[0].argsort().tolist() == [0, 1, 2]
    torch.testing.assert_close(deskpro_distance(q, g, "zero")[0], torch.tensor([0.2, 0.6, 1.25]), atol=1e-5, rtol=0)
    torch.testing.assert_close(d[1], torch.tensor([0.2, 0.4, 0.0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="missing_face"):
        deskpro_distance(q, g, "skip")


def test_no_face_anywhere_gives_no_nan():
    method = DeskPro(**TINY)
    model = method.build_model(C).eval()
    feats = method.embed(model, make_batch(has_face=[0] * B))
    assert torch.isfinite(feats["face"]).all() and torch.isfinite(method.distance(feats, feats)).all()


def test_face_only_distance_is_defined_for_face_less_pairs():
    q = {"face": torch.nn.functional.normalize(torch.randn(2, 7, 4), dim=2), "has_face": torch.tensor([1.0, 0.0])}
    d = deskpro_distance(q, q)
    assert torch.isfinite(d).all()
    # query 0 has a face; gallery 1 has none: the stand-in is query 0's mean face cosine over gallery faces = 1
    assert d[0, 1].item() == pytest.approx(0.0, abs=1e-6) and d[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert d[1].tolist() == [1.0, 1.0]  # a face-less query of a face-only model ties everywhere


# --- face teacher, cache, online ---------------------------------------------------------------------------
def teacher_setup():
    teacher_method = DeskProFaceTeacher(width="tiny", logits_dtype="float32")
    teacher = teacher_method.build_model(C)
    teacher_method.training_losses(teacher, {"image": torch.randn(4, 3, S, S), "pid": torch.tensor([0, 0, 1, 1])}, 0)
    return teacher_method, teacher.eval()


def test_face_teacher_cache_outputs():
    teacher_method, teacher = teacher_setup()
    assert teacher_method.image_field == "restored_faces.restored" and teacher_method.require_field == "faces.has_face"
    assert DeskProFaceTeacher().cache_fields(C) == {"logits": ((2, 7, C), "float16", "vector")}
    batch = make_batch()
    out = teacher_method.cache_outputs(teacher, {"image": batch["restored_faces.restored"],
                                                  "faces.has_face": batch["faces.has_face"]})
    logits = out["logits"]
    assert logits.shape == (B, 2, 7, C) and logits.dtype == torch.float32
    with torch.no_grad():
        mirrored = torch.stack(teacher(torch.flip(batch["restored_faces.restored"], dims=[3])).logits, dim=1)
    assert torch.allclose(logits[0, 1], mirrored[0], atol=1e-5)  # view 1 = the mirrored face
    assert torch.all(logits[2] == 0)  # no face in row 2


def test_online_teacher_equals_cached_teacher(tmp_path):
    teacher_method, teacher = teacher_setup()
    batch = make_batch()
    restored = batch["restored_faces.restored"]
    batch["face_teacher.logits"] = teacher_method.cache_outputs(teacher, {"image": restored})["logits"]
    # the online path sees the restored face mirrored with the body, as the dataset delivers it
    flip = batch["flipped"].view(-1, 1, 1, 1)
    batch["restored_faces.restored"] = torch.where(flip, torch.flip(restored, dims=[3]), restored)
    # saved like the trainer's final model file (state dict under "state_dict" beside metadata)
    torch.save({"state_dict": teacher.state_dict(), "num_classes": C}, tmp_path / "teacher.pth")

    cached = DeskPro(**TINY)
    online = DeskPro(online_teacher=True, face_teacher_model=str(tmp_path / "teacher.pth"), **TINY)
    assert "face_teacher" in cached.caches and "restored_faces" in online.caches
    assert "face_teacher" not in online.caches
    rows = batch["faces.has_face"].bool()
    a = cached.teacher_logits(batch, rows, C)
    b = online.teacher_logits(batch, rows, C)  # loaded from the file, strict
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
    model = cached.build_model(C)
    torch.manual_seed(0)
    la = cached.training_losses(model, batch, 0)["kd_face"]
    lb = online.training_losses(model, batch, 0)["kd_face"]
    # logits agree to 1e-5 (flip of the restored face vs of its logits: different float sums), so the KL agrees
    # to ~1e-8 absolute; relative to a loss of ~1e-3 that is 1e-5, too tight a bound to state
    assert la.item() == pytest.approx(lb.item(), rel=1e-4, abs=1e-7)
    # the frozen teacher is never part of the student's model / checkpoint
    assert online._teacher is not None and not any(p.requires_grad for p in online._teacher.parameters())
    assert set(online.build_model(C).state_dict()) == set(model.state_dict())


def test_online_teacher_refuses_a_wrong_checkpoint(tmp_path):
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    method = DeskPro(online_teacher=True, face_teacher_model=str(tmp_path / "bad.pth"), **TINY)
    with pytest.raises(ValueError, match="bad.pth"):
        method.teacher_logits(make_batch(), torch.ones(B, dtype=torch.bool), C)


# --- params, presets, ablations ----------------------------------------------------------------------------
def test_presets_and_overrides():
    m = DeskPro(preset="celeb")
    assert (m.epsilon, m.lambda_att, m.tau, m.alpha) == (0.1, 7.0, 5.0, 0.7)
    m = DeskPro(preset="prcc", alpha=0.5)
    assert (m.tau, m.alpha) == (1.0, 0.5)
    assert PRESETS["prcc"] == {"epsilon": 0.1, "lambda_att": 7.0, "tau": 1.0, "alpha": 0.8}
    with pytest.raises(ValueError, match="online_teacher"):
        DeskPro(online_teacher=True)
    with pytest.raises(ValueError, match="no stream"):
        DeskPro(use_body=False, use_csa=False, use_att_loss=False, face_stream="none")


@pytest.mark.parametrize("row", sorted(ABLATIONS))
def test_every_table3_row_trains_and_embeds(row):
    assert set(PAPER_TABLE3[row]) == {"R-1", "mAP"}
    method = DeskPro(**ABLATIONS[row], **TINY)
    model = method.build_model(C)
    batch = make_batch()
    if method.require_field:  # face-only rows: the dataset keeps only rows with a face
        batch = {k: v[batch["faces.has_face"].bool()] for k, v in batch.items()}
    for teacher, fields in method.caches.items():
        assert all(f"{teacher}.{f}" in batch for f in fields)
    terms = method.training_losses(model, batch, 0)
    sum(terms.values()).backward()
    assert ("att" in terms) == ABLATIONS[row]["use_att_loss"]
    assert ("kd_face" in terms) == (ABLATIONS[row]["face_stream"] == "student_kd")
    assert (model.csa is not None) == ABLATIONS[row]["use_csa"]
    feats = method.embed(model.eval(), batch)
    assert torch.isfinite(method.distance(feats, feats)).all()
    assert ("face" in feats) == (ABLATIONS[row]["face_stream"] != "none")
    assert set(PAPER_TABLE3) == set(ABLATIONS)


# --- positive control: CSA's attention = the ground-truth mask (issue 14) -----------------------------------
def test_oracle_csa_control_attends_with_the_mirrored_ground_truth_mask():
    """Row `oracle_csa`: no CSA module; the stem features are multiplied by Eq. 3's mask of the parsing labels,
    area-averaged to the feature grid (Eq. 4's resize), in training and at test time, and flip TTA mirrors the
    mask with the image. Left half clothing (upper-clothes, label 5), right half face (13): attention 0.1 | 1."""
    from reid.methods.deskpro import CONTROLS

    method = DeskPro(**{**CONTROLS["oracle_csa"], **TINY})
    assert method.caches == {"parsing": ["labels"]} and method.test_caches == {"parsing": ["labels"]}
    model = method.build_model(C).eval()
    assert model.csa is None
    batch = make_batch()
    labels = torch.full((B, H, W), 13)
    labels[:, :, : W // 2] = 5
    batch["parsing.labels"] = labels
    out = model(batch["image"], None, method._oracle_mask(batch))
    grid = out.attention[0, 0]
    assert torch.allclose(grid[:, : grid.shape[1] // 2], torch.tensor(0.1)) and torch.allclose(
        grid[:, grid.shape[1] // 2:], torch.tensor(1.0))
    emb = method.embed(model, batch)["body"]
    mask = method._oracle_mask(batch)
    by_hand = model(batch["image"], None, mask).body.embeddings + model(
        torch.flip(batch["image"], dims=[3]), None, torch.flip(mask, dims=[2])).body.embeddings
    unmirrored = model(batch["image"], None, mask).body.embeddings + model(
        torch.flip(batch["image"], dims=[3]), None, mask).body.embeddings
    from reid.methods.deskpro import normalised_chunks

    assert torch.allclose(emb, normalised_chunks(by_hand), atol=1e-5)
    assert not torch.allclose(emb, normalised_chunks(unmirrored), atol=1e-3)  # the mask really is mirrored
    terms = method.training_losses(model.train(), batch, 0)
    assert set(terms) == {"ce_body", "triplet_body"}
    with pytest.raises(ValueError, match="not a deployable model"):
        method.export_inputs((H, W))
    with pytest.raises(ValueError, match="csa_source=oracle replaces the CSA module"):
        DeskPro(csa_source="oracle", use_csa=True, **TINY)


def test_probe_measures_attention_against_the_parsing_mask():
    """The oracle control's attention IS the mask: correlation 1, attention 0.1 on clothing cells and 1 on the
    non-clothing body; a learned CSA at initialisation is not correlated like that; row 1 has no attention."""
    from reid.methods.deskpro import CONTROLS

    batch = make_batch()
    labels = torch.zeros((B, H, W), dtype=torch.long)
    labels[:, 8:40, 4:28] = 5  # upper clothes
    labels[:, 0:8, 8:24] = 13  # face
    labels[:, 40:64, 6:26] = 16  # a leg
    batch["parsing.labels"] = labels
    oracle = DeskPro(**{**CONTROLS["oracle_csa"], **TINY})
    stats = oracle.probe(oracle.build_model(C).eval(), batch)
    assert torch.allclose(stats["attention_mask_corr"], torch.ones(B), atol=1e-5)
    assert torch.all(stats["attention_on_clothing"] < 0.2) and torch.all(stats["attention_on_non_clothing_body"] > 0.9)
    learned = DeskPro(**{**ABLATIONS["model3_csa_att"], **TINY})
    corr = learned.probe(learned.build_model(C).eval(), batch)["attention_mask_corr"]
    assert corr.abs().max() < 0.99
    plain = DeskPro(**{**ABLATIONS["model1_baseline"], **TINY})
    assert plain.probe(plain.build_model(C).eval(), batch) == {}


@pytest.mark.parametrize("row", ["model4_student_flip", "model5_student_kd_flip"])
def test_flip_only_rows_train_on_unmoved_faces(row: str) -> None:
    """Rows 4-5 with `face_augment: false`: the dataset only flips the face crops (which the cache's two teacher
    views cover), never translates or erases them (the trainer hands `rgb_field_augment` to the dataset as
    `rgb_augment`); otherwise the row equals the paper's row it mirrors."""
    from reid.methods.deskpro import FACE_FLIP_ONLY
    from reid.pipeline import params as C

    mirrored = row.replace("_flip", "")
    assert C.ablation_overrides("deskpro", row) == {**ABLATIONS[mirrored], "face_augment": False}
    assert DeskPro(**{**C.ablation_overrides("deskpro", row), **TINY}).rgb_field_augment is None
    assert DeskPro(**{**ABLATIONS[mirrored], **TINY}).rgb_field_augment is not None
    assert set(FACE_FLIP_ONLY) == {"model4_student_flip", "model5_student_kd_flip"}


def test_face_augmentation_defaults_are_the_official_transforms() -> None:
    """The official data/transforms.py enlarges by 1.05 and erases with (0.4914, 0.4822, 0.4465) written into the
    normalised tensor; a model.pt saved before the parameters existed was trained with 1.125 and a zero fill."""
    from reid.data.transforms import FieldAugment
    from reid.methods.base import method_from_record

    assert DeskPro(**TINY).rgb_field_augment == FieldAugment(1.05, (0.4914, 0.4822, 0.4465))
    assert DeskPro(**TINY, face_erase_fill="zero").rgb_field_augment.erase_fill == (0.0, 0.0, 0.0)
    old = method_from_record("deskpro", TINY)
    assert old.rgb_field_augment == FieldAugment(1.125, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="face_erase_fill"):
        DeskPro(**TINY, face_erase_fill="grey")
