"""ISP method (reid/methods/isp.py) and the isp_labels teacher (reid/teachers/isp_labels.py).

Equations against hand-computed values; the model on tiny inputs; re-clustering through the real trainer; the
teacher end to end on a few generated images.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from reid.serialization import save_file
from reid.methods.isp import (
    ABLATIONS,
    ISP,
    PAPER_TABLE4,
    PAPER_TABLE5,
    aligned_distance,
    assign_parts_to_groups,
    downsample_labels,
    lip_to_parts,
    parsing_loss,
    part_iou,
    part_probabilities,
    part_visibility,
    pooled_representations,
)

LN3 = math.log(3.0)


# --- equations ----------------------------------------------------------------------------------------------
def test_eq5_part_probabilities() -> None:
    # logits (0, ln 3) -> softmax = (1, 3) / 4 = (0.25, 0.75)
    p = part_probabilities(torch.tensor([0.0, LN3]).view(1, 2, 1, 1))
    assert torch.allclose(p.flatten(), torch.tensor([0.25, 0.75]))


def test_eq2_gap_part_foreground_global() -> None:
    # C=1, two pixels with M_g = 2 and 4; K=3 probabilities: pixel 0 (0.5, 0.25, 0.25), pixel 1 (0, 1, 0)
    # F_1 = (0.25*2 + 1*4)/2 = 2.25; F_2 = (0.25*2 + 0*4)/2 = 0.25; F_f = F_1 + F_2 = 2.5; F_g = (2+4)/2 = 3
    fmap = torch.tensor([2.0, 4.0]).view(1, 1, 1, 2)
    probs = torch.tensor([[0.5, 0.0], [0.25, 1.0], [0.25, 0.0]]).view(1, 3, 1, 2)
    parts, fore, glob = pooled_representations(fmap, probs)
    assert torch.allclose(parts.flatten(), torch.tensor([2.25, 0.25]))
    assert float(fore) == pytest.approx(2.5) and float(glob) == pytest.approx(3.0)


def test_eq6_parsing_loss() -> None:
    # pixel 0 logits (0, 0), label 0: -log 0.5 = 0.693147; pixel 1 logits (ln 3, 0), label 0: -log 0.75 = 0.287682
    # mean over pixels = 0.490415
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0]]).view(1, 2, 1, 2)
    assert float(parsing_loss(logits, torch.zeros(1, 1, 2, dtype=torch.long))) == pytest.approx(0.490415, abs=1e-6)


def test_eq8_visibility() -> None:
    # K=4, argmax map holds parts 0, 1, 3 -> l_1 = 1, l_2 = 0, l_3 = 1
    winners = torch.tensor([[0, 1], [3, 3]])
    logits = torch.nn.functional.one_hot(winners, 4).permute(2, 0, 1)[None].float()
    assert part_visibility(logits).tolist() == [[1.0, 0.0, 1.0]]


def test_eq10_aligned_distance_two_by_two() -> None:
    # K-1 = 2 parts, C = 2.
    # q0: parts (1,0),(0,1) vis 1,1 global (1,0) fore (1,0); q1: parts (1,0),(1,0) vis 1,0 global (0,1) fore (1,1)
    # g0: parts (1,0),(1,0) vis 1,1 global (1,0) fore (0,1); g1: parts (0,1),(0,1) vis 0,1 global (1,1) fore (1,0)
    # d(q0,g0): d1 = 0, d2 = 1 (orthogonal), d_g = 0, d_f = 1 -> (0+1+0+1)/(2+2) = 0.5
    # d(q0,g1): only part 2 shared, d2 = 0; d_g = 1 - 1/sqrt2 = 0.292893; d_f = 0 -> 0.292893/3 = 0.097631
    # d(q1,g0): only part 1 shared, d1 = 0; d_g = 1; d_f = 1 - 1/sqrt2 -> 1.292893/3 = 0.430964
    # d(q1,g1): nothing shared -> (d_g + d_f)/2 = (0.292893 + 0.292893)/2 = 0.292893
    q = {"parts": torch.tensor([[[1.0, 0], [0, 1]], [[1, 0], [1, 0]]]), "visibility": torch.tensor([[1.0, 1], [1, 0]]),
         "global": torch.tensor([[1.0, 0], [0, 1]]), "foreground": torch.tensor([[1.0, 0], [1, 1]])}
    g = {"parts": torch.tensor([[[1.0, 0], [1, 0]], [[0, 1], [0, 1]]]), "visibility": torch.tensor([[1.0, 1], [0, 1]]),
         "global": torch.tensor([[1.0, 0], [1, 1]]), "foreground": torch.tensor([[0.0, 1], [1, 0]])}
    expected = torch.tensor([[0.5, 0.097631], [0.430964, 0.292893]])
    assert torch.allclose(aligned_distance(q, g, "eq10"), expected, atol=1e-6)
    # The official arm_eval_func: global ++ foreground compared by one cosine, denominator shared + 1.
    # gf: q0 (1,0,1,0), q1 (0,1,1,1); g0 (1,0,0,1), g1 (1,1,1,0).
    # (q0,g0): cos = 1/2 -> d_gf = 0.5; (0 + 1 + 0.5)/3 = 0.5
    # (q0,g1): cos = 2/(sqrt2 sqrt3) = 0.816497 -> 0.183503; (0 + 0.183503)/2 = 0.091752
    # (q1,g0): cos = 1/(sqrt3 sqrt2) = 0.408248 -> 0.591752; (0 + 0.591752)/2 = 0.295876
    # (q1,g1): cos = 2/3 -> 0.333333; nothing shared: 0.333333 / 1
    official = torch.tensor([[0.5, 0.091752], [0.295876, 0.333333]])
    assert torch.allclose(aligned_distance(q, g), official, atol=1e-6)
    assert torch.allclose(ISP(backbone="hrnet_tiny", reduce_dim=2).distance(q, g), official, atol=1e-6)
    assert torch.allclose(ISP(backbone="hrnet_tiny", reduce_dim=2, arm_form="eq10").distance(q, g), expected,
                          atol=1e-6)
    # the official code ranks by the similarity (sum o (1 + cos_k)/2 + (1 + cos_gf)/2) / (sum o + 1) = 1 - d/2
    with pytest.raises(ValueError, match="arm_form"):
        aligned_distance(q, g, "paper")


def test_downsample_labels_takes_cell_centres() -> None:
    # 4x4 -> 2x2: rows/cols floor((i + 0.5) * 2) = 1, 3
    labels = torch.arange(16).view(1, 4, 4)
    assert downsample_labels(labels, (2, 2)).tolist() == [[[5, 7], [13, 15]]]


def test_lip_to_parts_k7() -> None:
    # hair -> head 1, upper-clothes -> 2, left arm -> 3, pants -> 4, left leg -> 5, right shoe -> 6, background -> 0
    lip = torch.tensor([[2, 5, 14, 9, 16, 19, 0]])
    assert lip_to_parts(lip, 7).tolist() == [[1, 2, 3, 4, 5, 6, 0]]


def test_part_iou_table3_groups_by_hand() -> None:
    # 8 pixels. LIP: face, hair, upper-clothes, pants, pants, left-shoe, bg, bg
    # ISP:          1,    1,    2,             3,     3,     3,         0,  1
    # votes: part 1 -> head 2 (bg 1) -> head; part 2 -> upper clothes = "other" -> no group;
    #        part 3 -> legs 2, shoes 1 -> legs
    # foreground: truth 6 px, pred 7 px (incl. pixel 7), inter 6 -> 6/7; head: {0,1} vs {0,1,7} -> 2/3
    # legs: {3,4} vs {3,4,5} -> 2/3; shoes: {5} vs {} -> 0
    gt = np.array([[[13, 2, 5, 9, 9, 18, 0, 0]]])
    pred = np.array([[[1, 1, 2, 3, 3, 3, 0, 1]]])
    assert assign_parts_to_groups(pred, gt) == {"head": [1], "legs": [3], "shoes": []}
    iou = part_iou(pred, gt)
    assert iou == pytest.approx({"foreground": 6 / 7, "head": 2 / 3, "legs": 2 / 3, "shoes": 0.0})


def test_part_iou_resamples_predictions_to_the_parsing_size() -> None:
    pred = np.array([[[1], [0]]], dtype=np.uint8)           # 2x1: top part 1, bottom background
    gt = np.array([[[13], [13], [0], [0]]], dtype=np.uint8)  # 4x1: face on the top half
    assert part_iou(pred, gt)["foreground"] == pytest.approx(1.0)


def test_official_table3_metric_by_hand() -> None:
    """The reference's miou.py: per group the mean of the group's and its complement's IoU, fixed part labels.
    8 pixels. LIP row 0: face, face, upper-clothes, bg; row 1: pants, pants, left-shoe, bg.
    K = 6 parts row 0: 1, 0, 2, 0; row 1: 4, 4, 5, 5.
    foreground: truth 6 px, pred 6 px, both 5 -> 5/7; complement: truth 2, pred 2, both 1 -> 1/3; mean 11/21.
    head (part 1): {0,1} vs {0} -> 1/2; complement 6 vs 7, both 6 -> 6/7; mean 19/28.
    legs (part 4): {4,5} vs {4,5} -> 1, complement 1 -> 1. shoes (part 5): {6} vs {6,7} -> 1/2, 6/7 -> 19/28.
    K = 7: legs = parts 4, 5 -> {4,5} vs {4..7}: 1/2, complement 4/6 -> 7/12; shoes = part 6 (none): 0, 7/8."""
    from reid.methods.isp import binary_mean_iou, official_part_iou

    gt = np.array([[[13, 13, 5, 0], [9, 9, 18, 0]]], dtype=np.uint8)
    pred = np.array([[[1, 0, 2, 0], [4, 4, 5, 5]]], dtype=np.uint8)
    assert official_part_iou(pred, gt, 6) == pytest.approx(
        {"foreground": 11 / 21, "head": 19 / 28, "legs": 1.0, "shoes": 19 / 28})
    k7 = official_part_iou(pred, gt, 7)
    assert k7["legs"] == pytest.approx(7 / 12) and k7["shoes"] == pytest.approx(7 / 16)
    assert set(official_part_iou(pred, gt, 5)) == {"foreground"}  # detailed groups only for K = 6, 7
    # the calibration floor: all background scores (0 + 2/8) / 2 on the foreground
    assert official_part_iou(np.zeros_like(pred), gt, 6)["foreground"] == pytest.approx(0.125)
    assert binary_mean_iou(np.zeros(4, bool), np.zeros(4, bool)) == pytest.approx(0.5)  # empty class -> 0 / max(1, 0)
    # the ground truth is resized (nearest) to the label grid: a 4x8 map of the same layout gives the same numbers
    big = np.repeat(np.repeat(gt, 2, axis=1), 2, axis=2)
    assert official_part_iou(pred, big, 6) == pytest.approx(official_part_iou(pred, gt, 6))


def test_probe_scores_each_images_predicted_parts_with_the_official_metric() -> None:
    """Image 0 predicts the hand-computed layout of the test above (K = 6); image 1 predicts all background, so
    it scores the calibration floor. A probe that pooled the two images would give neither number."""
    from reid.methods.isp import ISP

    gt = np.array([[[13, 13, 5, 0], [9, 9, 18, 0]]] * 2, dtype=np.uint8)
    pred = np.array([[[1, 0, 2, 0], [4, 4, 5, 5]], [[0, 0, 0, 0], [0, 0, 0, 0]]])

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"part_logits": torch.nn.functional.one_hot(torch.from_numpy(pred), 6).permute(0, 3, 1, 2).float()}

    stats = ISP(num_parts=6).probe(Fixed(), {"image": torch.zeros(2, 3, 8, 16),
                                             "parsing.labels": torch.from_numpy(gt)})
    assert stats["pred_foreground_iou"].tolist() == pytest.approx([11 / 21, 0.125])
    assert stats["pred_head_iou"].tolist() == pytest.approx([19 / 28, (0 + 6 / 8) / 2])
    assert stats["pred_legs_iou"][0] == pytest.approx(1.0)
    assert stats["floor_head_iou"].tolist() == pytest.approx([0.375, 0.375])  # image 1 predicts the floor
    assert stats["floor_foreground_iou"].tolist() == pytest.approx(stats["pred_foreground_iou"][1:].tolist() * 2)
    assert stats["pred_foreground_share"].tolist() == pytest.approx([6 / 8, 0.0])
    assert stats["parsing_foreground_share"].tolist() == pytest.approx([6 / 8, 6 / 8])
    assert ISP(num_parts=6).probe(Fixed(), {"image": torch.zeros(2, 3, 8, 16)}) == {}


# --- model and method ---------------------------------------------------------------------------------------
def _batch(K: int, b: int = 8, h: int = 64, w: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(b, 3, h, w, generator=g), "pid": torch.arange(b) // 2,
            "isp_labels.labels": torch.randint(0, K, (b, h, w), generator=g),
            "parsing.labels": torch.randint(0, 20, (b, h, w), generator=g)}


@pytest.mark.parametrize("semantics", ["learned", "parsing"])
def test_training_losses_backward_embed_distance(semantics: str) -> None:
    torch.manual_seed(0)
    method = ISP(backbone="hrnet_tiny", num_parts=5, reduce_dim=16, semantics=semantics, initial="cache")
    assert method.caches == ({"isp_labels": ["labels"]} if semantics == "learned" else {"parsing": ["labels"]})
    assert ISP(backbone="hrnet_tiny", num_parts=5).caches == {}  # default: the first round clusters the model
    model = method.build_model(num_classes=4)
    model.train()
    losses = method.training_losses(model, _batch(5), epoch=0)
    assert set(losses) == {"part_id", "part_triplet", "fore_id", "fore_triplet", "global_id", "global_triplet",
                           "parsing"}
    sum(losses.values()).backward()
    assert model.part_classifier.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        feats = method.embed(model, {"image": torch.randn(3, 3, 64, 32)})
    assert feats["parts"].shape == (3, 4, 16) and feats["visibility"].shape == (3, 4)
    assert feats["global"].shape == (3, 16) and feats["foreground"].shape == (3, 16)
    for matching in ("aligned", "concat", "global"):
        method.matching = matching
        d = method.distance(feats, feats)
        assert d.shape == (3, 3) and torch.allclose(torch.diagonal(d), torch.zeros(3), atol=1e-5)


def test_oracle_test_parts_pool_the_ground_truth_parts_and_their_visibility() -> None:
    """test_parts=oracle (the Table 2 control): each part feature is M_g averaged over the cells the ground truth
    gives that part (then its BNNeck), visibility is the ground truth's, and the parsing cache is read at test time."""
    torch.manual_seed(0)
    method = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=16, semantics="parsing", test_parts="oracle")
    assert method.test_caches == {"parsing": ["labels"]} and ISP(backbone="hrnet_tiny").test_caches == {}
    model = method.build_model(num_classes=4).eval()
    images = torch.randn(2, 3, 64, 32)
    parsing = torch.zeros(2, 64, 32, dtype=torch.uint8)
    parsing[0, :16] = 2    # hair -> part 1 (head), top quarter of image 0
    parsing[0, 16:40] = 5  # upper clothes -> part 2; image 0 shows no lower body (part 3 hidden)
    parsing[1, 40:] = 9    # pants -> part 3 only, on image 1
    with torch.no_grad():
        feats = method.embed(model, {"image": images, "parsing.labels": parsing})
        fmap = model.feature_map(images)  # (2, 16, 16, 8): a cell is 4 x 4 pixels
    assert feats["visibility"].tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    raw = torch.zeros(2, 3, 16)
    raw[0, 0] = fmap[0, :, :4].sum(dim=(1, 2)) / 128   # GAP over all 16 x 8 cells of the part's masked map
    raw[0, 1] = fmap[0, :, 4:10].sum(dim=(1, 2)) / 128
    raw[1, 2] = fmap[1, :, 10:].sum(dim=(1, 2)) / 128
    want = model.neck_part(raw.flatten(1))[1].view(2, 3, 16)
    assert torch.allclose(feats["parts"], want, atol=1e-5)
    learned = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=16, semantics="parsing")
    with torch.no_grad():
        assert not torch.allclose(learned.embed(model, {"image": images})["parts"], want, atol=1e-3)
    with pytest.raises(KeyError, match="parsing.labels"):
        method.embed(model, {"image": images})
    with pytest.raises(ValueError, match="test_parts must be"):
        ISP(test_parts="parsing")


def test_parsing_loss_weight_is_alpha() -> None:
    torch.manual_seed(0)
    a = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=8, alpha=0.1)
    b = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=8, alpha=1.0)
    model = a.build_model(4).train()
    batch = _batch(4)
    torch.manual_seed(1)
    la = a.training_losses(model, batch, 0)["parsing"]
    torch.manual_seed(1)
    lb = b.training_losses(model, batch, 0)["parsing"]
    assert float(la.detach()) == pytest.approx(0.1 * float(lb.detach()), rel=1e-4)


def test_labels_with_a_larger_k_are_refused() -> None:
    method = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=8)
    model = method.build_model(4).train()
    with pytest.raises(ValueError, match="num_parts"):
        method.training_losses(model, _batch(7), 0)


def test_resnet50_backbone_is_upsampled_to_a_quarter() -> None:
    from reid.models.isp_backbones import build_feature_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_feature_backbone("resnet50", None).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 32)).shape == (1, 2048, 16, 8)


def test_recluster_schedule() -> None:
    m = ISP(backbone="hrnet_tiny", period=2, recluster_until=7, initial="cache")
    assert [e for e in range(10) if m.should_recluster(e)] == [2, 4, 6]
    assert not ISP(backbone="hrnet_tiny", semantics="parsing").should_recluster(2)
    from_model = ISP(backbone="hrnet_tiny", initial="model", period=2)
    assert from_model.caches == {} and [e for e in range(5) if from_model.should_recluster(e)] == [0, 2, 4]


def test_ablation_rows_are_params_and_tables_cover_them() -> None:
    for name, overrides in ABLATIONS.items():
        ISP(backbone="hrnet_tiny", **overrides)
    assert set(PAPER_TABLE4) == {"k4", "k5", "k6", "k7", "k8"}
    assert PAPER_TABLE4["k7"]["duke_map"] == 80.0 and PAPER_TABLE5["extra_info"]["market_map"] == 87.7
    with pytest.raises(ValueError, match="semantics"):
        ISP(semantics="sam")


# --- teacher + trainer end to end ----------------------------------------------------------------------------
def _tiny_world(root: Path) -> Path:
    """3 train ids x 4 images, 2 query + 2 gallery images; 64x32 people: dark background, bright body bands."""
    from reid.data.index import IndexRow, sort_rows, write_index

    rows, rng = [], np.random.default_rng(0)
    plan = [("train", pid, k) for pid in (1, 2, 3) for k in range(4)] + [("query", 7, 0), ("query", 8, 0),
                                                                         ("gallery", 7, 1), ("gallery", 8, 1)]
    for split, pid, k in plan:
        img = rng.integers(0, 30, (64, 32, 3)).astype(np.uint8)
        colours = rng.integers(120, 255, (3, 3))
        img[4:20, 8:24], img[20:44, 6:26], img[44:60, 9:23] = colours[0], colours[1], colours[2]
        rel = f"{split}/{pid:04d}_c{k}_{k}.jpg"
        (root / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        rows.append(IndexRow(rel, pid, k % 2, "", split))
    return write_index(sort_rows(rows), root / "index.csv")


@pytest.mark.slow
def test_teacher_cache_then_training_reclusters(tmp_path: Path) -> None:
    from reid.cache.h5 import CacheReader
    from reid.data.index import read_index
    from reid.engine.trainer import TrainConfig, Trainer
    from reid.teachers.base import build_teacher

    index = _tiny_world(tmp_path)
    rows = read_index(index)
    out = tmp_path / "cache" / "isp_labels.h5"
    teacher = build_teacher("isp_labels", "torch", None, "cpu", backbone="hrnet_tiny", num_parts=4,
                            input_size=[64, 32], chunk_images=5)
    with pytest.raises(RuntimeError, match="per-batch"):
        teacher.infer([])
    with pytest.warns(UserWarning, match="RANDOMLY"):
        summary = teacher.build_cache(index, tmp_path, out, batch_size=4, workers=0, progress=False)
    assert summary["rows_clustered"] == 12 and summary["rows_written"] == 12
    reader = CacheReader(out, index_path=index)
    labels = reader.read("labels", np.arange(len(rows)))
    assert labels.shape == (16, 16, 8) and labels.dtype == np.uint8 and labels.max() <= 3
    train = np.array([r.split == "train" for r in rows])
    assert labels[train].max() > 0 and labels[~train].max() == 0
    assert reader.attrs["params"]["label_set"] == "isp" and reader.attrs["params"]["num_parts"] == 4

    # the same labels again on a second run (deterministic); a fresh cache file
    again = tmp_path / "cache" / "again.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_teacher("isp_labels", "torch", None, "cpu", backbone="hrnet_tiny", num_parts=4, input_size=[64, 32],
                      chunk_images=100).build_cache(index, tmp_path, again, batch_size=3, workers=0, progress=False)
    assert np.array_equal(CacheReader(again, index_path=index).read("labels", np.arange(len(rows))), labels)

    torch.manual_seed(0)
    method = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=8, period=1, cluster_batch_size=4,
                 labels_dir=str(tmp_path / "rounds"))
    cfg = TrainConfig(epochs=2, batch_p=2, batch_k=2, input_size=(64, 32), workers=0, device="cpu", amp=False,
                      warmup_epochs=0, pad=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(method, rows, tmp_path, {"isp_labels": reader}, tmp_path / "run", cfg)
        trainer.fit()
    assert (tmp_path / "rounds" / "labels_epoch001.npy").is_file()
    assert method.labels is not None and method.labels.shape == (16, 16, 8) and method.labels_epoch == 1
    assert method.labels[~train].max() == 0 and method.labels[train].max() > 0
    assert "isp_labels.labels" in trainer.train_set.overrides
    # a finished run removes checkpoint.pt; model.pt carries the same method state
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["method_state"]
    assert np.array_equal(state["labels"], method.labels)

    # resume: a new method instance gets the labels back and hands them to the dataset before training
    resumed = ISP(backbone="hrnet_tiny", num_parts=4, reduce_dim=8, period=5)
    resumed.load_extra_state(state)

    class _Set:
        def __init__(self) -> None:
            self.got: dict[str, np.ndarray] = {}

        def set_field(self, name: str, values: np.ndarray, kind: str) -> None:
            self.got[name] = values

    fake = type("T", (), {"train_set": _Set()})()
    resumed.on_epoch_start(fake, 2)
    assert np.array_equal(fake.train_set.got["isp_labels.labels"], method.labels)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_teacher_resume_after_a_crash_gives_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.teachers.isp_labels import ISPLabelsTeacher

    index = _tiny_world(tmp_path)
    kw = dict(workers=0, batch_size=2, progress=False)

    def build_isp_labels(*args: Any, **run: Any) -> dict:
        teacher = ISPLabelsTeacher("torch", None, "cpu", backbone="hrnet_tiny", num_parts=4, input_size=[64, 32],
                                   chunk_images=3)
        return teacher.build_cache(*args, **run)

    whole = tmp_path / "whole.h5"
    build_isp_labels(index, tmp_path, whole, **kw)

    real, calls = ISPLabelsTeacher.extract, {"n": 0}

    def flaky(self: ISPLabelsTeacher, items: list) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(self, items)

    monkeypatch.setattr(ISPLabelsTeacher, "extract", flaky)
    crashed = tmp_path / "crashed.h5"
    with pytest.raises(KeyboardInterrupt):
        build_isp_labels(index, tmp_path, crashed, **kw)
    assert not crashed.exists() and crashed.with_name("crashed.h5.tmp").exists()
    monkeypatch.setattr(ISPLabelsTeacher, "extract", real)
    summary = build_isp_labels(index, tmp_path, crashed, **kw)
    assert summary["rows_resumed"] > 0 and summary["rows_clustered"] < 12
    assert crashed.read_bytes() == whole.read_bytes()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_initial_model_clusters_before_the_first_step_without_a_cache(tmp_path: Path) -> None:
    from reid.data.index import read_index
    from reid.engine.trainer import TrainConfig, Trainer

    index = _tiny_world(tmp_path)
    rows = read_index(index)
    torch.manual_seed(0)
    method = ISP(backbone="hrnet_tiny", num_parts=5, reduce_dim=8, initial="model", period=10)
    cfg = TrainConfig(epochs=1, batch_p=2, batch_k=2, input_size=(64, 32), workers=0, device="cpu", amp=False,
                      warmup_epochs=0, pad=2)
    trainer = Trainer(method, rows, tmp_path, {}, tmp_path / "run", cfg)
    trainer.fit()
    assert method.labels_epoch == 0 and method.labels.shape == (16, 16, 8) and method.labels.max() <= 4
    assert "isp_labels.labels" in trainer.train_set.overrides


def test_isp_iou_verb_on_npy_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import argparse
    import json

    from reid.cache.h5 import CacheWriter
    from reid.data.index import index_sha256, read_index
    from reid.engine.isp_iou import add_iou_arguments, iou_main

    index = _tiny_world(tmp_path)
    rows = read_index(index)
    n = len(rows)
    # parsing: face on rows 0-7, pants on rows 16-23 of a 32x16 map; ISP labels (16x8): part 1 on rows 0-3,
    # part 2 on rows 8-11 -> the same regions at half resolution: IoU 1 for foreground, head and legs
    lip = np.zeros((n, 32, 16), dtype=np.uint8)
    lip[:, 0:8, 4:12], lip[:, 16:24, 4:12] = 13, 9
    isp = np.zeros((n, 16, 8), dtype=np.uint8)
    isp[:, 0:4, 2:6], isp[:, 8:12, 2:6] = 1, 2
    parsing = tmp_path / "parsing.h5"
    with CacheWriter(parsing, teacher="parsing", backend="oracle", model_sha256="", params={"label_set": "lip"},
                     index_sha256=index_sha256(index), paths=[r.path for r in rows],
                     fields={"labels": ((32, 16), "uint8", "labels")}) as w:
        w.write_rows(np.arange(n), {"labels": lip})
        w.finalize()
    np.save(tmp_path / "labels_epoch001.npy", isp)
    parser = argparse.ArgumentParser()
    add_iou_arguments(parser)
    args = parser.parse_args(["--index", str(index), "--parsing", str(parsing), "--labels",
                              str(tmp_path / "labels_epoch001.npy"), "--split", "train"])
    assert iou_main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == 12 and result["assignment"] == {"head": [1], "legs": [2], "shoes": []}
    assert result["iou"]["foreground"] == pytest.approx(1.0) and result["iou"]["head"] == pytest.approx(1.0)
    assert result["iou"]["legs"] == pytest.approx(1.0) and math.isnan(result["iou"]["shoes"])
    assert result["num_parts"] == 3  # not recorded with a .npy: one more than the largest label
    assert set(result["official_iou"]) == {"foreground"} and result["official_iou"]["foreground"] == pytest.approx(1.0)
    assert result["official_iou_all_background"]["foreground"] < 1.0
    # the same labels as a model.pt's last clustering round (method_state) give the same answer
    save_file({"method_state": {"labels": torch.from_numpy(isp), "labels_epoch": 1}}, tmp_path / "model.pt")
    args.labels = tmp_path / "model.pt"
    assert iou_main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["iou"] == result["iou"] and again["assignment"] == result["assignment"]
    save_file({"method_state": {}}, tmp_path / "other.pt")
    args.labels = tmp_path / "other.pt"
    with pytest.raises(SystemExit, match="no pseudo labels in method_state"):
        iou_main(args)


def test_cpu_backbone_has_hrnet_w18_small_topology() -> None:
    """The synthetic worlds' ISP backbone: HRNet-W18-small-v2 widths (18/36/72/144 -> 270 channels at 1/4)."""
    from reid.models.isp_backbones import build_feature_backbone

    net = build_feature_backbone("hrnet_w18_small")
    assert net.out_channels == 18 + 36 + 72 + 144
    assert 3.5e6 < sum(p.numel() for p in net.parameters()) < 4.5e6
    with pytest.raises(ValueError, match="choose hrnet_w32, hrnet_w18_small, resnet50 or hrnet_tiny"):
        build_feature_backbone("hrnet_w48")


# --- official-code architecture: incre_modules and the spatial attention ------------------------------------
def test_spatial_attention_multiplies_the_feature_map() -> None:
    from reid.methods.isp import ISPNet, SpatialAttention

    torch.manual_seed(0)
    net = ISPNet(3, num_parts=4, backbone="hrnet_tiny", reduce_dim=8, incre_modules=False).eval()
    assert isinstance(net.attention, SpatialAttention)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        mask = net.attention(net.reduce(net.backbone(x)))
        assert mask.shape == (2, 1, 16, 8) and bool(((mask > 0) & (mask < 1)).all())
        net.attention.scale[0].weight.zero_()  # sigmoid(BN(0)) = sigmoid(0) = 1/2 everywhere
        torch.testing.assert_close(net.feature_map(x), 0.5 * net.reduce(net.backbone(x)))
    plain = ISPNet(3, num_parts=4, backbone="hrnet_tiny", reduce_dim=8, spatial_attention=False)
    assert plain.attention is None


def _official_incre_modules(branch_channels: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The `incre_modules.*` keys and shapes of an HRNet-Image-Classification checkpoint, written from its
    cls_hrnet.py (`_make_head`: head channels 32/64/128/256; `_make_layer(Bottleneck, C, head, 1)`: one Bottleneck
    with a 1x1 conv + BN downsample to 4 x head), not from this project's module."""
    keys: dict[str, tuple[int, ...]] = {}
    for i, (c, h) in enumerate(zip(branch_channels, (32, 64, 128, 256))):
        p = f"incre_modules.{i}.0."
        keys[p + "conv1.weight"] = (h, c, 1, 1)
        keys[p + "conv2.weight"] = (h, h, 3, 3)
        keys[p + "conv3.weight"] = (4 * h, h, 1, 1)
        keys[p + "downsample.0.weight"] = (4 * h, c, 1, 1)
        for bn, n in (("bn1", h), ("bn2", h), ("bn3", 4 * h), ("downsample.1", 4 * h)):
            for t in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{p}{bn}.{t}"] = (n,)
    return keys


def test_incre_modules_have_the_official_keys_and_shapes_for_hrnet_w32() -> None:
    from reid.models.hrnet import HRNetFeatureMap

    net = HRNetFeatureMap(width=32, incre_modules=True)
    own = {f"incre_modules.{k}": tuple(v.shape) for k, v in net.incre_modules.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert own == _official_incre_modules((32, 64, 128, 256))
    assert net.out_channels == 1920  # 128 + 256 + 512 + 1024, the official cls_head's input


def test_incre_modules_load_from_an_official_layout_checkpoint(tmp_path: Path) -> None:
    """The incre_modules tensors of a checkpoint in the official key layout (built from the key list above, with
    no `num_batches_tracked`, which checkpoints saved by older PyTorch lack) load into the same places."""
    from reid.models.isp_backbones import build_feature_backbone
    from reid.models.hrnet import HRNetFeatureMap, HRNET_TINY

    torch.manual_seed(0)
    trunk = HRNetFeatureMap(**HRNET_TINY).body.state_dict()
    official = {k: torch.randn(shape) for k, shape in _official_incre_modules((8, 16, 32, 64)).items()}
    for k in official:
        if k.endswith("running_var"):
            official[k] = official[k].abs() + 0.5
    ckpt = tmp_path / "hrnet_imagenet.pth"
    torch.save({**trunk, **official}, ckpt)
    loaded = build_feature_backbone("hrnet_tiny", str(ckpt), incre_modules=True)
    state = loaded.incre_modules.state_dict()
    for key, value in official.items():
        assert torch.equal(state[key.removeprefix("incre_modules.")], value), key
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert loaded.eval()(x).shape == (1, 1920, 16, 8)
    assert build_feature_backbone("hrnet_tiny", str(ckpt)).out_channels == sum(loaded.body.channels)
    broken = {**trunk, **{k: v for k, v in official.items() if "conv3" not in k}}
    torch.save(broken, ckpt)
    with pytest.raises(ValueError, match="incre_modules do not match"):
        build_feature_backbone("hrnet_tiny", str(ckpt), incre_modules=True)


@pytest.mark.parametrize("dataset", ["synthocc", "occluded_duke", "market1501"])
def test_the_first_round_clusters_the_initialised_network_by_default(dataset: str) -> None:
    """Paper and reference: the first pseudo labels come from the initialised network at epoch 0 (`initial:
    model`), not from the isp_labels cache; the class default and every dataset's resolved params say so."""
    from reid.pipeline import params as C

    assert ISP().initial == "model"
    method = C.run_method(C.load_params(Path(__file__).resolve().parents[1] / "params.yaml"), dataset, "isp")
    assert method.initial == "model" and "isp_labels" not in C.cache_names(method)


def test_a_model_saved_before_align_corners_existed_is_rebuilt_as_it_was_trained() -> None:
    """New ISP runs upsample the HRNet branches with align_corners=True (the official code); a record without the
    parameter (a model.pt from before it existed) rebuilds with False, the upsampling it was trained with."""
    from reid.methods.base import method_from_record

    tiny = {"backbone": "hrnet_tiny", "reduce_dim": 8, "incre_modules": False}
    assert ISP(**tiny).align_corners is True and ISP(**tiny).arm_form == "official"
    old = method_from_record("isp", tiny)
    assert old.align_corners is False and old.arm_form == "eq10"  # and was evaluated with Eq. 10 as printed
    assert old.build_model(3).backbone.align_corners is False
    assert method_from_record("isp", {**tiny, "align_corners": True}).align_corners is True
