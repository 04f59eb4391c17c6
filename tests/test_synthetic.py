"""Tests of the synthetic worlds: layouts, ground truth, left/right semantics, determinism, cue structure."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data import synthetic as S
from reid.vocab import ARCFACE_TEMPLATE_112
from reid.data.render import (
    CANVAS_H,
    CANVAS_W,
    View,
    make_identity,
    make_outfit,
    render_face_hr,
    render_person,
)

CC_TRAIN = re.compile(r"^rgb/(train|val)/(\d{3})/([ABC])_cropped_rgb(\d{3})\.jpg$")
CC_TEST = re.compile(r"^rgb/test/([ABC])/(\d{3})/\1_cropped_rgb(\d{3})\.jpg$")
OCC_NAME = re.compile(r"^(bounding_box_train|query|bounding_box_test)/(\d{4})_c([1-8])_f(\d{7})\.jpg$")


@pytest.fixture(scope="module")
def cc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return S.generate_world("synthcc", tmp_path_factory.mktemp("w") / "synthcc", seed=3, scale=0.1, progress=False)


@pytest.fixture(scope="module")
def occ(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return S.generate_world("synthocc", tmp_path_factory.mktemp("w") / "synthocc", seed=3, scale=0.1, progress=False)


def _images(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_constants() -> None:
    assert len(S.LIP_LABELS) == 20 and S.LIP_LABELS[13] == "Face" and S.LIP_LABELS[14] == "Left-arm"
    assert len(S.COCO_KEYPOINTS) == 17 and S.COCO_KEYPOINTS[5] == "left_shoulder"
    assert S.ARCFACE_TEMPLATE_112.shape == (5, 2) and S.FACE_HR_SIZE >= 48


def test_synthcc_layout(cc: Path) -> None:
    imgs = _images(cc)
    marker = json.loads((cc / "WORLD.json").read_text())
    assert marker["world"] == "synthcc" and marker["schema_version"] == S.SCHEMA_VERSION
    assert marker["num_images"] == len(imgs)
    split_pids: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    cams: dict[tuple[str, int], set[str]] = {}
    for rel in imgs:
        m1, m2 = CC_TRAIN.match(rel), CC_TEST.match(rel)
        assert m1 or m2, rel
        split, pid, cam = (m1[1], int(m1[2]), m1[3]) if m1 else ("test", int(m2[2]), m2[1])
        assert m2 is None or rel.split("/")[2] == cam  # test: camera folder = file prefix
        split_pids[split].add(pid)
        cams.setdefault((split, pid), set()).add(cam)
        assert (cc / "groundtruth" / Path(rel).with_suffix(".npz")).is_file()
    assert not split_pids["train"] & split_pids["test"] and not split_pids["val"] & split_pids["test"]
    assert all(c == {"A", "B", "C"} for c in cams.values())
    for pid in split_pids["test"]:  # PRCC: C shows another outfit than A/B
        o = marker["identities"][str(pid)]["outfits"]
        assert o[0] != o[1]
    # clothes mislead: some test identity's C outfit is another test identity's A/B outfit
    test_o = {p: marker["identities"][str(p)]["outfits"] for p in split_pids["test"]}
    assert any(o[1] == q[0] for p, o in test_o.items() for r, q in test_o.items() if p != r)
    sizes = {cv2.imread(str(cc / r)).shape[:2] for r in imgs}
    assert (128, 64) in sizes and len(sizes) >= 2  # some cameras are saved at lower resolution


def test_synthocc_layout(occ: Path) -> None:
    imgs = _images(occ)
    rows = []
    for rel in imgs:
        m = OCC_NAME.match(rel)
        assert m, rel
        rows.append((m[1], int(m[2]), int(m[3]), rel))
    by = lambda f: {(p, c) for s, p, c, _ in rows if s == f}  # noqa: E731
    train, query, gallery = by("bounding_box_train"), by("query"), by("bounding_box_test")
    assert not {p for p, _ in train} & {p for p, _ in gallery}
    q_pids, g_pids = {p for p, _ in query}, {p for p, _ in gallery}
    assert q_pids < g_pids  # distractor identities exist only in the gallery
    for p, c in query:  # each query has a positive on another camera
        assert any(gp == p and gc != c for gp, gc in gallery)
    occl = {s: [bool(S.load_groundtruth(occ, r)["occluded"]) for s2, _, _, r in rows if s2 == s]
            for s in ("query", "bounding_box_test", "bounding_box_train")}
    assert all(occl["query"])
    assert 0 < np.mean(occl["bounding_box_train"]) < 0.6 and np.mean(occl["bounding_box_test"]) < 0.4
    train_pngs = sorted((occ / "occluders").glob("*.png"))
    test_pngs = sorted((occ / "occluders_test").glob("*.png"))
    assert len(train_pngs) + len(test_pngs) == S.N_OCCLUDERS + S.N_PEDESTRIANS and train_pngs and test_pngs
    assert sum("pedestrian" in p.name for p in train_pngs) == sum("pedestrian" in p.name for p in test_pngs) > 0
    rgba = cv2.imread(str(train_pngs[0]), cv2.IMREAD_UNCHANGED)
    assert rgba.ndim == 3 and rgba.shape[2] == 4 and rgba[..., 3].max() == 255
    train_bytes = {p.read_bytes() for p in train_pngs}
    assert not train_bytes & {p.read_bytes() for p in test_pngs}  # NODA's folder holds no test occluder


def test_train_and_test_images_are_occluded_by_disjoint_sprites(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test-set leakage: the sprites hiding query / gallery people never appear in training images (nor, via
    <root>/occluders/, in SUREID's NODA)."""
    world = S.World("synthocc", 0, 8, [1, 2])  # objects and other pedestrians (S.PEDESTRIAN_SHARE)
    drawn: dict[bool, set[int]] = {True: set(), False: set()}
    original = S.World._occlude

    def spy(self, pt, rng, pool):
        drawn[current] |= set(pool)
        return original(self, pt, rng, pool)

    monkeypatch.setattr(S.World, "_occlude", spy)
    for k in range(8):
        for current, rel in ((False, f"bounding_box_train/0001_c1_f000000{k}.jpg"),
                             (True, f"query/0001_c2_f000000{k}.jpg"),
                             (True, f"bounding_box_test/0002_c1_f000000{k}.jpg")):
            world.render(S.ImageSpec(rel, 1 if "0001" in rel else 2, 0, 0, True, (1, k, len(rel))))
    assert drawn[False] and drawn[True] and not drawn[False] & drawn[True]
    assert drawn[False] | drawn[True] == set(range(S.N_OCCLUDERS + S.N_PEDESTRIANS))  # both kinds, both splits
    assert S.ImageSpec("rgb/test/C/001/x.jpg", 1, 2, 0, False, (0,)).is_test
    assert not S.ImageSpec("rgb/train/001/x.jpg", 1, 0, 0, False, (0,)).is_test


@pytest.mark.parametrize("world", ["cc", "occ"])
def test_groundtruth_consistency(world: str, request: pytest.FixtureRequest) -> None:
    root: Path = request.getfixturevalue(world)
    n_face = n_occ = 0
    for rel in _images(root):
        img = cv2.imread(str(root / rel))
        gt = S.load_groundtruth(root, rel)
        h, w = img.shape[:2]
        assert gt["parsing"].shape == (h, w) and gt["parsing"].dtype == np.uint8 and gt["parsing"].max() <= 19
        assert gt["has_face"].shape == () and gt["has_face"].dtype == bool and gt["occluded"].dtype == bool
        assert gt["face_hr"].shape == (S.FACE_HR_SIZE, S.FACE_HR_SIZE, 3) and gt["face_hr"].dtype == np.uint8
        kp = gt["keypoints"]
        assert kp.shape == (17, 3) and kp.dtype == np.float32
        vis = kp[:, 2] > 0
        assert set(np.unique(kp[:, 2])) <= {0.0, 1.0, 2.0} and not kp[~vis].any()
        assert (kp[vis, 0] >= 0).all() and (kp[vis, 0] <= w - 1).all() and (kp[vis, 1] <= h - 1).all()
        for x, y in kp[kp[:, 2] == 2, :2]:  # visible keypoints lie on the person
            xi, yi = int(round(x)), int(round(y))
            assert gt["parsing"][max(0, yi - 1) : yi + 2, max(0, xi - 1) : xi + 2].any(), (rel, x, y)
        if gt["has_face"]:
            n_face += 1
            x1, y1, x2, y2 = gt["face_box"]
            assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1, rel
            lm = gt["face_landmarks"]
            assert lm.shape == (5, 2) and np.isfinite(lm).all()
            assert (lm[:, 0] >= x1 - 1).all() and (lm[:, 0] <= x2 + 1).all() and (lm[:, 1] <= y2 + 1).all()
            assert lm[0, 0] < lm[1, 0] and lm[2, 1] < lm[3, 1]  # eyes left-to-right, nose above mouth
            assert gt["face_hr"].any() and (gt["parsing"] == 13).any()
        else:
            assert np.isnan(gt["face_box"]).all() and np.isnan(gt["face_landmarks"]).all()
            assert not gt["face_hr"].any()
        occ = gt["occluder"]
        assert occ.shape == (h, w) and occ.dtype == np.uint8 and set(np.unique(occ)) <= {0, 1}
        if gt["occluded"]:
            assert (gt["parsing"] == 0).mean() > 0.3
            n_occ += 1
            assert occ.any(), rel
            # the occluder hides the person: its pixels are background in the parsing (up to the resampling of
            # the two maps' edges), and the joints it covers are marked hidden
            assert (gt["parsing"][occ == 1] == 0).mean() > 0.9, rel
        else:
            assert not occ.any()
    assert n_face > 0 and n_occ > 0


def _render(yaw: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    ident, outfit = make_identity(1, rng), make_outfit(rng)
    # short sleeves and shorts, so arm and leg skin (LIP 14-17) are visible
    outfit = replace(outfit, upper=replace(outfit.upper, kind="tee"), lower=replace(outfit.lower, kind="shorts"))
    view = View(yaw=yaw, cx=64.0, top=10.0, size=220.0, arm_abd=(12.0, 12.0), arm_swing=0.0, elbow=0.0, stride=4.0)
    bg = np.full((CANVAS_H, CANVAS_W, 3), 100, np.float32)
    face = render_face_hr(ident, rng) if abs(yaw) < 40 else None
    return render_person(ident, outfit, view, bg, rng, face)


@pytest.mark.parametrize("yaw,left_on_right", [(0.0, True), (180.0, False)])
def test_left_right_semantics(yaw: float, left_on_right: bool) -> None:
    """On a front view the person's left limbs (LIP 14/16/18, COCO left_*) appear on the image's right."""
    for seed in range(3):
        body = _render(yaw, seed)
        lab = body.painter.lab
        for left, right in ((14, 15), (16, 17), (18, 19)):
            xl, xr = np.nonzero(lab == left)[1].mean(), np.nonzero(lab == right)[1].mean()
            assert (xl > xr) == left_on_right, (yaw, left, right)
        kp = body.keypoints
        for i in (5, 9, 11, 15):  # left shoulder, wrist, hip, ankle vs the right ones
            assert (kp[i, 0] > kp[i + 1, 0]) == left_on_right
        assert (kp[0, 2] == 2) == left_on_right  # the nose is visible only from the front
        assert (body.face_landmarks is not None) == left_on_right


def test_face_hr_is_aligned_to_template() -> None:
    """The pupils (darkest pixels) of the HR face sit on the template's eye points."""
    face, alpha = render_face_hr(make_identity(5, np.random.default_rng(5)), np.random.default_rng(6))
    assert face.shape == (S.FACE_HR_SIZE, S.FACE_HR_SIZE, 3) and alpha.max() > 0.99
    gray = face.astype(np.float32).sum(-1)
    tpl = ARCFACE_TEMPLATE_112 * S.FACE_HR_SIZE / 112.0
    for x, y in tpl[:2]:
        xi, yi = int(round(x)), int(round(y))
        win = gray[yi - 3 : yi + 4, xi - 3 : xi + 4]
        dy, dx = np.unravel_index(np.argmin(win), win.shape)
        assert abs(dx - 3) <= 1 and abs(dy - 3) <= 1


def test_face_landmarks_follow_warp() -> None:
    """Body landmarks of a frontal face are the template scaled onto the head: same shape, eye line level."""
    body = _render(0.0, 1)
    lm, tpl = body.face_landmarks, ARCFACE_TEMPLATE_112
    ratio = (lm[1, 0] - lm[0, 0]) / (tpl[1, 0] - tpl[0, 0])
    assert 0.05 < ratio < 0.4
    assert np.allclose((lm[3] - lm[0]) / ratio, tpl[3] - tpl[0], atol=0.5 / ratio + 6)
    assert body.painter.lab[int(round(lm[2, 1])), int(round(lm[2, 0]))] == 13  # nose on the Face label


def test_determinism_overwrite_and_cli(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    S.generate_world("synthcc", a, seed=7, scale=0.05, progress=False)
    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    args = parser.parse_args(["--world", "synthcc", "--out", str(b), "--seed", "7", "--scale", "0.05", "--no-progress"])
    assert S.main(args) == 0
    (b / "rgb" / "train" / "stray.txt").write_text("x")
    assert S.main(args) == 0  # a previous complete output (WORLD.json) may be replaced
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 100
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert not (tmp_path / "b.tmp").exists() and not (tmp_path / "b.old").exists()
    spec = S._plan_synthcc(7, 0.05, S.DEFAULT_TEST_IDS)[0][0]
    other = S.World("synthcc", 8, 4, [spec.pid]).render(spec)[0]
    same = S.World("synthcc", 7, S._plan_synthcc(7, 0.05, S.DEFAULT_TEST_IDS)[2], [spec.pid]).render(spec)[0]
    assert np.array_equal(cv2.imdecode(np.frombuffer((a / spec.rel).read_bytes(), np.uint8), cv2.IMREAD_COLOR),
                          cv2.imdecode(cv2.imencode(".jpg", same, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR))
    assert not np.array_equal(same, other)  # another seed, another world


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        S.generate_world("synthcc", out, scale=0.05, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown synthetic world"):
        S.generate_world("market", tmp_path / "x", progress=False)


def test_load_groundtruth_missing_names_file(cc: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"groundtruth/rgb/train/999/A_cropped_rgb001\.npz"):
        S.load_groundtruth(cc, "rgb/train/999/A_cropped_rgb001.jpg")


def test_biometric_is_cast_invariant_and_ignores_region_edges() -> None:
    """The oracle hair-to-skin cue: a camera's per-channel cast and exposure cancel, the one-pixel rim where hair
    meets background (mixed colours after resizing and JPEG) does not move it, and it is the log ratio by hand."""
    lab = np.zeros((24, 12), np.uint8)
    lab[2:8, 2:10] = S.HAIR_LABEL
    lab[8:20, 2:10] = S.LIP_LABELS.index("Face")
    rgb = np.zeros((24, 12, 3), np.float32)
    rgb[lab == S.HAIR_LABEL] = (59, 39, 19)      # +1 inside _biometric: 60, 40, 20
    rgb[8:20, 2:10] = (199, 159, 119)            # skin: 200, 160, 120
    rim = rgb.copy()
    rim[2, 2:10] = rim[2:8, 2] = (250, 250, 250)  # the hair region's outer rim, bright background bleeding in
    want = np.log(np.array([60 / 200, 40 / 160, 20 / 120], np.float32))

    def feat(img: np.ndarray) -> np.ndarray:
        return S._biometric(cv2.cvtColor(np.round(img).astype(np.uint8), cv2.COLOR_RGB2BGR), lab)

    np.testing.assert_allclose(feat(rgb), want, atol=1e-6)
    np.testing.assert_allclose(feat(rim), want, atol=1e-6)  # a mean over the whole mask would move by ~0.3
    cast = np.array([1.2, 1.0, 0.8], np.float32)
    np.testing.assert_allclose(feat((rgb + 1) * cast - 1), want, atol=0.02)  # rounding to uint8 only
    no_hair = np.where(lab == S.HAIR_LABEL, 0, lab).astype(np.uint8)
    np.testing.assert_array_equal(S._biometric(cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR), no_hair), 0.0)


@pytest.mark.slow
def test_clothes_mislead_faces_identify(tmp_path: Path) -> None:
    """Colour histograms of clothes find the person within an outfit (B->A) and fail across outfits (C->A);
    a descriptor of the clean HR face identifies across outfits; the face cropped from the body much less."""
    root = S.generate_world("synthcc", tmp_path / "cc", seed=0, scale=0.3, progress=False)
    r = S.world_checks(root)
    assert r["clothes_B->A"] >= 0.9
    assert r["clothes_C->A"] <= 0.35
    # the body-level biometric (hair/face colour ratio, cast-invariant) survives the change of clothes and camera
    # (6 test identities: chance 0.17; 0.55 on the default world's 20)
    assert r["biometric_C->A"] >= 0.5 and r["biometric_C->A"] > r["clothes_C->A"] + 0.3
    assert r["face_hr_C->A"] >= 0.9
    assert r["face_lr_C->A"] < r["face_hr_C->A"]


def test_occlusion_self_checks_match_the_occluded_duke_protocol(occ: Path) -> None:
    """Every query occluded, few gallery images, some training images; the occluders hide legs more than heads
    (as Occluded-Duke's cars and bikes do), and the hidden joints are marked (visibility 1)."""
    r = S.world_checks(occ)
    assert r["occluded_share_query"] == 1.0
    assert r["occluded_share_bounding_box_test"] <= 0.2
    assert 0.1 <= r["occluded_share_bounding_box_train"] <= 0.5
    assert r["query_legs_joints_hidden"] > r["query_head_joints_hidden"]
    assert r["query_legs_joints_hidden"] >= 0.3


def test_other_pedestrians_occlude_synthocc_and_corrupt_a_global_pool_more_than_objects(occ: Path) -> None:
    """The renderer's self-check (occlusion_feature_check): oracle colour features pooled over the visible person
    find the occluded queries' identities more often than ones pooled over the person and its occluder; another
    pedestrian (person-like colours) corrupts the global pool more than an object does. Both kinds occur."""
    kinds = [bool(S.load_groundtruth(occ, p.relative_to(occ).as_posix())["occluder_person"])
             for p in sorted((occ / "query").glob("*.jpg"))]
    assert 0 < sum(kinds) < len(kinds)
    r = S.occlusion_feature_check(occ)
    assert r["occluded_queries_person"] + r["occluded_queries_object"] == r["occluded_queries_all"] == len(kinds)
    assert r["oracle_gap_all"] == r["oracle_rank1_visible_all"] - r["oracle_rank1_global_all"]
    assert r["oracle_gap_all"] > 0
    with pytest.raises(ValueError, match="only synthocc"):
        S.World("synthcc", 0, 8, [1], pedestrians=0.5)
    world = json.loads((occ / "WORLD.json").read_text())
    assert (world["schema_version"], world["pedestrians"]) == (S.WORLD_VERSIONS["synthocc"], S.PEDESTRIAN_SHARE)


def test_synth_check_on_an_existing_world_only_checks(occ: Path, capsys: pytest.CaptureFixture) -> None:
    """`reid synth --check` with the settings of the world already at --out prints the self-checks without
    rendering it again."""
    import argparse

    before = (occ / "WORLD.json").stat().st_mtime_ns
    args = argparse.Namespace(world="synthocc", out=str(occ), seed=3, scale=0.1, no_progress=True, check=True)
    assert S.main(args) == 0
    out = capsys.readouterr().out
    assert "share occluded_share_query: 1.000" in out and "query_legs_joints_hidden" in out
    assert (occ / "WORLD.json").stat().st_mtime_ns == before


def test_test_ids_sets_the_number_of_queries_independently_of_training(tmp_path: Path) -> None:
    """`test_ids` (at scale 1) decides the test split's size and so the number of queries; the training split
    keeps its size. synthocc: 3 occluded queries per query identity, half as many distractor identities."""
    small = S.generate_world("synthocc", tmp_path / "a", seed=1, scale=0.1, progress=False)
    large = S.generate_world("synthocc", tmp_path / "b", seed=1, scale=0.1, progress=False, test_ids=60)
    a, b = (json.loads((w / "WORLD.json").read_text()) for w in (small, large))
    assert b["test_ids"] == 60 and a["test_ids"] == S.DEFAULT_TEST_IDS
    assert a["counts"]["query"] == 3 * 2 and b["counts"]["query"] == 3 * 6  # max(2, round(0.1 x ids))
    assert a["counts"]["bounding_box_train"] == b["counts"]["bounding_box_train"]
    assert b["counts"]["bounding_box_test"] == 8 * (6 + 3)
    with pytest.raises(ValueError, match="test_ids must be a positive integer"):
        S.generate_world("synthcc", tmp_path / "c", scale=0.1, progress=False, test_ids=0)
