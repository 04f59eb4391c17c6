"""The synthetic worlds `synthcc` (PRCC layout, cloth-changing) and `synthocc` (Occluded-Duke layout).

Each image is rendered by `reid.data.render` on a 2x canvas, then occluded (maybe), downscaled to its camera's
resolution, lit, blurred and JPEG-encoded; its ground truth (docs/contracts.md "Synthetic ground truth") is
written beside it in the saved image frame. Every random draw comes from a numpy Generator seeded by
(seed, world, purpose, ids...), so a seed gives byte-identical files whatever the generation order.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from reid.vocab import ARCFACE_TEMPLATE_112, COCO_KEYPOINTS, LIP_LABELS
from reid.data.groundtruth import load_groundtruth, save_npz  # noqa: F401  (load_groundtruth: this module's API too)
from reid.data.render import (
    CANVAS_H,
    CANVAS_W,
    FACE_HR_SIZE,
    OCCLUDER_KINDS,
    OCCLUDER_MODE,
    BodyRender,
    Identity,
    Outfit,
    Painter,
    View,
    crop_background,
    make_identity,
    make_occluder,
    make_outfit,
    make_scene,
    place_occluder,
    render_face_hr,
    render_person,
)

__all__ = [
    "LIP_LABELS", "COCO_KEYPOINTS", "ARCFACE_TEMPLATE_112", "FACE_HR_SIZE", "WORLDS", "SCHEMA_VERSION",
    "generate_world", "load_groundtruth", "cue_rank1", "occlusion_stats", "world_checks", "add_arguments", "main",
]

SCHEMA_VERSION = 3  # 2: training and test images are occluded by disjoint sprite pools; 3: the occluder mask
# Each world's version (the synth stage's `renderer_version`): synthocc 4 = other pedestrians occlude too.
WORLD_VERSIONS = {"synthcc": SCHEMA_VERSION, "synthocc": 4}
N_PEDESTRIANS = 8  # bystanders that occlude synthocc's people (even ones the training images, odd ones the test)
PEDESTRIAN_SHARE = 0.5  # synthocc: share of occlusions by another pedestrian (the rest by the object sprites)
WORLDS = ("synthcc", "synthocc")
_WORLD_CODE = {"synthcc": 1, "synthocc": 2}
JPEG_QUALITY = 90
N_OCCLUDERS = 20
CLOTHES_LABELS = (1, 5, 6, 7, 9, 12, 18, 19)
DEFAULT_TEST_IDS = 20  # test identities at scale 1 (params.yaml raises it for the demo worlds: enough queries)
HAIR_LABEL = LIP_LABELS.index("Hair")
SKIN_LABELS = tuple(LIP_LABELS.index(n) for n in ("Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg"))
_NEAREST = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)

# purposes of the random streams (first entries of the seed sequence after seed and world)
_S_SCENE, _S_IDENT, _S_OUTFIT, _S_PLAN, _S_OCC, _S_IMAGE, _S_FACE, _S_PEDESTRIAN = range(8)


def _rng(seed: int, world: str, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _WORLD_CODE[world], *map(int, key)]))


# ----------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Camera:
    """A camera's viewpoint mix, saved resolutions (H, W), blur (sigma in saved pixels) and colour cast."""

    name: str
    index: int
    views: tuple[float, float, float, float]  # p(front), p(three-quarter), p(side), p(back)
    sizes: tuple[tuple[int, int], ...]
    blur: float
    cast: tuple[float, float, float]


@dataclass(frozen=True)
class ImageSpec:
    """One image to render: its relative path, identity, camera, outfit, whether to occlude, stream key."""

    rel: str
    pid: int
    cam: int
    outfit: int
    occlude: bool
    key: tuple[int, ...]

    @property
    def is_test(self) -> bool:
        """Query / gallery image (PRCC `rgb/test/`, Market-style `query/`, `bounding_box_test/`)."""
        return self.rel.startswith(("rgb/test/", "query/", "bounding_box_test/"))


CC_CAMERAS = (
    Camera("A", 0, (0.55, 0.3, 0.1, 0.05), ((128, 64),), 0.3, (1.0, 1.0, 1.0)),
    Camera("B", 1, (0.2, 0.2, 0.3, 0.3), ((96, 48),), 0.5, (1.06, 1.0, 0.9)),
    Camera("C", 2, (0.4, 0.3, 0.15, 0.15), ((128, 64), (64, 32)), 0.8, (0.92, 0.98, 1.08)),
)


def _occ_cameras(seed: int) -> tuple[Camera, ...]:
    """The eight synthocc cameras: viewpoint mixes, resolutions and casts drawn once per seed."""
    sizes = (((128, 64),), ((128, 64),), ((96, 48),), ((128, 64),), ((64, 32), (96, 48)), ((128, 64),),
             ((96, 48),), ((128, 64), (64, 32)))
    cams = []
    for i in range(8):
        r = _rng(seed, "synthocc", _S_SCENE, 100 + i)
        views = r.dirichlet([2.0, 1.5, 1.0, 1.0])
        cams.append(Camera(str(i + 1), i, tuple(float(v) for v in views), sizes[i], float(r.uniform(0.2, 0.9)),
                           tuple(float(v) for v in r.uniform(0.9, 1.1, 3))))
    return tuple(cams)


def _counts(scale: float, base: int, minimum: int) -> int:
    return max(minimum, int(round(base * scale)))


def _outfit_pool_size(n_ids: int, n_test: int) -> int:
    """Fewer outfits than identities, so outfits repeat across people."""
    return max(n_test + 2, int(round(0.5 * n_ids)))


def _plan_synthcc(seed: int, scale: float, test_ids: int) -> tuple[list[ImageSpec], dict, int]:
    """PRCC: A and B show outfit 1, C outfit 2; test C outfits are often another test identity's A/B outfit."""
    n_train, n_val, n_test = _counts(scale, 40, 2), _counts(scale, 4, 1), _counts(scale, test_ids, 2)
    pids = list(range(1, n_train + n_val + n_test + 1))
    split_of = {p: "train" if p <= n_train else "val" if p <= n_train + n_val else "test" for p in pids}
    n_pool = _outfit_pool_size(len(pids), n_test)
    r = _rng(seed, "synthcc", _S_PLAN)
    test = [p for p in pids if split_of[p] == "test"]
    outfits: dict[int, tuple[int, int]] = {}
    first = r.permutation(n_pool)[: len(test)]
    swapped = r.permutation(len(test))[: max(2, int(round(0.6 * len(test))))]
    for i, p in enumerate(test):
        o1 = int(first[i])
        if i in swapped:  # C outfit = the A/B outfit of the next identity in the swap cycle
            j = int(swapped[(list(swapped).index(i) + 1) % len(swapped)])
            o2 = int(first[j])
        else:
            o2 = int(r.choice([o for o in range(n_pool) if o != o1]))
        outfits[p] = (o1, o2)
    for p in pids:
        if p not in outfits:
            o1, o2 = r.choice(n_pool, size=2, replace=False)
            outfits[p] = (int(o1), int(o2))
    per_cam = {"train": (8, 8, 8), "val": (4, 4, 4), "test": (6, 4, 4)}
    specs = []
    for p in pids:
        split = split_of[p]
        for cam in CC_CAMERAS:
            for n in range(1, per_cam[split][cam.index] + 1):
                name = f"{cam.name}_cropped_rgb{n:03d}.jpg"
                rel = f"rgb/test/{cam.name}/{p:03d}/{name}" if split == "test" else f"rgb/{split}/{p:03d}/{name}"
                occ = bool(_rng(seed, "synthcc", _S_PLAN, p, cam.index, n).random() < 0.05)
                specs.append(ImageSpec(rel, p, cam.index, outfits[p][cam.index == 2], occ, (p, cam.index, n)))
    meta = {"identities": {str(p): {"split": split_of[p], "outfits": list(outfits[p])} for p in pids},
            "outfit_pool": n_pool}
    return specs, meta, n_pool


def _plan_synthocc(seed: int, scale: float, test_ids: int) -> tuple[list[ImageSpec], dict, int]:
    """Occluded-Duke: one outfit per identity, all queries occluded, ~10% gallery and ~30% train occluded.
    `test_ids` query identities (3 occluded queries and 8 gallery images each) and half as many gallery-only
    distractors."""
    n_train, n_query = _counts(scale, 40, 2), _counts(scale, test_ids, 2)
    n_distr = _counts(scale, test_ids / 2, 1)
    pids = list(range(1, n_train + n_query + n_distr + 1))
    role = {p: "train" if p <= n_train else "query" if p <= n_train + n_query else "distractor" for p in pids}
    n_pool = _outfit_pool_size(len(pids), 0)
    r = _rng(seed, "synthocc", _S_PLAN)
    outfit = {p: int(r.integers(n_pool)) for p in pids}
    specs: list[ImageSpec] = []
    for p in pids:
        rp = _rng(seed, "synthocc", _S_PLAN, p)
        cams = [int(c) for c in rp.choice(8, size=int(rp.integers(4, 7)), replace=False)]
        frame0 = {c: int(rp.integers(0, 9_000_000)) for c in cams}
        counter = {c: 0 for c in cams}
        jobs: list[tuple[str, int, bool]] = []
        if role[p] == "train":
            jobs = [("bounding_box_train", cams[i % len(cams)], bool(rp.random() < 0.3)) for i in range(16)]
        else:
            gal = [cams[i % len(cams)] for i in range(8)]  # >= 4 distinct cameras in the gallery
            jobs = [("bounding_box_test", c, bool(rp.random() < 0.1)) for c in gal]
            if role[p] == "query":
                jobs += [("query", int(rp.choice(cams)), True) for _ in range(3)]
        for folder, c, occ in jobs:
            counter[c] += 1
            frame = frame0[c] + 41 * counter[c]
            rel = f"{folder}/{p:04d}_c{c + 1}_f{frame:07d}.jpg"
            specs.append(ImageSpec(rel, p, c, outfit[p], occ, (p, c, counter[c])))
    meta = {"identities": {str(p): {"split": role[p], "outfits": [outfit[p]]} for p in pids}, "outfit_pool": n_pool}
    return specs, meta, n_pool


# ----------------------------------------------------------------------------------------------- rendering


_VIEW_NAMES = ("front", "three_quarter", "side", "back")


def sample_view(ident: Identity, cam: Camera, rng: np.random.Generator) -> View:
    """Yaw from the camera's viewpoint mix, scale and placement jitter, arm and leg angles."""
    kind = _VIEW_NAMES[int(rng.choice(4, p=np.asarray(cam.views) / sum(cam.views)))]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    yaw = {"front": rng.uniform(-12, 12), "three_quarter": sign * rng.uniform(24, 38),
           "side": sign * rng.uniform(70, 105), "back": 180 + rng.uniform(-15, 15)}[kind]
    size = ident.height * rng.uniform(0.93, 1.05) * CANVAS_H
    top = rng.uniform(2, max(3.0, CANVAS_H - size - 2)) if rng.random() > 0.05 else rng.uniform(4, 0.12 * CANVAS_H)
    walking = kind in ("side", "three_quarter") or rng.random() < 0.3
    stride = rng.uniform(8, 24) if walking else rng.uniform(0, 5)
    return View(yaw=float(yaw), cx=float(CANVAS_W / 2 + rng.uniform(-6, 6)), top=float(top), size=float(size),
                arm_abd=(float(rng.uniform(4, 14)), float(rng.uniform(4, 14))),
                arm_swing=float(stride * rng.uniform(0.8, 1.4)), elbow=float(rng.uniform(0, 25)), stride=float(stride))


def _to_saved(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """Canvas pixel coordinates -> saved-image pixel coordinates (pixel centres at integers)."""
    s = np.array([w / CANVAS_W, h / CANVAS_H], np.float32)
    return (xy + 0.5) * s - 0.5


class World:
    """Everything shared by the images of one world: identities, outfits, scenes, occluders, cameras."""

    def __init__(self, world: str, seed: int, n_pool: int, pids: Iterable[int],
                 pedestrians: float | None = None) -> None:
        if pedestrians is None:
            pedestrians = PEDESTRIAN_SHARE if world == "synthocc" else 0.0
        if not 0.0 <= pedestrians <= 1.0 or (pedestrians and world != "synthocc"):
            raise ValueError(f"pedestrians must be a share in [0, 1] and only synthocc has them, got {pedestrians} "
                             f"for {world}")
        self.world, self.seed, self.pedestrian_share = world, seed, float(pedestrians)
        self.cameras = CC_CAMERAS if world == "synthcc" else _occ_cameras(seed)
        self.identities = {p: make_identity(p, _rng(seed, world, _S_IDENT, p)) for p in pids}
        self.outfits: list[Outfit] = [make_outfit(_rng(seed, world, _S_OUTFIT, i)) for i in range(n_pool)]
        self.scenes = [make_scene(_rng(seed, world, _S_SCENE, c.index)) for c in self.cameras]
        self.occluders: list[tuple[str, np.ndarray]] = []
        for j in range(N_OCCLUDERS):
            kind = OCCLUDER_KINDS[j % len(OCCLUDER_KINDS)]
            self.occluders.append((kind, make_occluder(kind, _rng(seed, world, _S_OCC, j))))
        # Other pedestrians (synthocc, Occluded-Duke's commonest occluder): bystanders of their own identities and
        # outfits, cut out of a rendered view; they carry person-like colours into whatever a feature pools.
        if self.pedestrian_share > 0:
            for j in range(N_PEDESTRIANS):
                self.occluders.append(("pedestrian", self._pedestrian_sprite(j)))
        # Disjoint pools: training images (and NODA, which reads <root>/occluders/) never see the objects or the
        # pedestrians that occlude the test images (written to <root>/occluders_test/ for reference only).
        self.occluder_pools = {split: [j for j in range(N_OCCLUDERS) if occluder_split(j) == split]
                               for split in ("train", "test")}
        self.pedestrian_pools = {split: [N_OCCLUDERS + j for j in range(N_PEDESTRIANS) if occluder_split(j) == split]
                                 for split in ("train", "test")} if self.pedestrian_share > 0 else {}

    def _pedestrian_sprite(self, j: int) -> np.ndarray:
        """Bystander j (an identity and outfit of no image's person) in a random view, as an RGBA cut-out."""
        rng = _rng(self.seed, self.world, _S_PEDESTRIAN, j)
        ident = make_identity(100_000 + j, rng)
        outfit = make_outfit(rng)
        view = sample_view(ident, self.cameras[j % len(self.cameras)], rng)
        face = render_face_hr(ident, rng) if abs(view.yaw) <= 40 else None
        body = render_person(ident, outfit, view, np.zeros((CANVAS_H, CANVAS_W, 3), np.float32), rng, face)
        alpha = (body.painter.lab > 0).astype(np.uint8)
        ys, xs = np.nonzero(alpha)
        crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        rgba = np.dstack([np.clip(body.painter.img, 0, 255)[crop], alpha[crop].astype(np.float32) * 255])
        return rgba.astype(np.uint8)

    def render(self, spec: ImageSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Render one image: BGR uint8 in its saved size and its ground truth in that frame."""
        rng = _rng(self.seed, self.world, _S_IMAGE, *spec.key)
        cam, ident = self.cameras[spec.cam], self.identities[spec.pid]
        view = sample_view(ident, cam, rng)
        bg = crop_background(self.scenes[spec.cam], rng)
        face = None
        if abs(view.yaw) <= 40:
            face = render_face_hr(ident, _rng(self.seed, self.world, _S_FACE, *spec.key))
        body = render_person(ident, self.outfits[spec.outfit], view, bg, rng, face)
        pt, kps = body.painter, body.keypoints.copy()
        has_face = face is not None and _face_inside(body.face_landmarks, body.face_mask)
        occluded, alpha, by_person = False, None, False
        if spec.occlude:
            split = "test" if spec.is_test else "train"
            by_person = bool(self.pedestrian_pools) and bool(rng.random() < self.pedestrian_share)
            alpha = self._occlude(pt, rng, (self.pedestrian_pools if by_person else self.occluder_pools)[split])
            occluded = True
            vis = kps[:, 2] == 2
            ki = np.clip(np.round(kps[:, :2]).astype(int), 0, [CANVAS_W - 1, CANVAS_H - 1])
            kps[vis & (alpha[ki[:, 1], ki[:, 0]] > 0.5), 2] = 1
            if has_face:
                li = np.clip(np.round(body.face_landmarks).astype(int), 0, [CANVAS_W - 1, CANVAS_H - 1])
                covered = alpha[body.face_mask].mean() if body.face_mask.any() else 1.0
                if covered > 0.25 or (alpha[li[:, 1], li[:, 0]] > 0.5).any():
                    has_face = False
        h, w = cam.sizes[int(rng.integers(len(cam.sizes)))]
        img = cv2.resize(pt.img, (w, h), interpolation=cv2.INTER_AREA)
        lab = cv2.resize(pt.lab, (w, h), interpolation=_NEAREST)
        img = _camera_effects(img, cam, rng)
        occ = np.zeros((h, w), np.uint8) if alpha is None else (cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
                                                                   > 0.5).astype(np.uint8)
        gt = _groundtruth(lab, kps, body, face, has_face, occluded, occ, h, w)
        if self.pedestrian_pools:  # worlds with pedestrian occluders say which kind hid the person
            gt["occluder_person"] = np.array(by_person)
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR), gt

    def _occlude(self, pt: Painter, rng: np.random.Generator, pool: list[int]) -> np.ndarray:
        """Paste an occluder of `pool` over 15-70% of the person; returns its canvas alpha."""
        fg = pt.lab > 0
        j = pool[int(rng.integers(len(pool)))]
        kind, sprite = self.occluders[j]
        mode = "person" if kind == "pedestrian" else OCCLUDER_MODE[kind]
        for _ in range(8):
            layer = place_occluder(sprite, mode, rng)
            cover = (layer[..., 3] > 0.5)[fg].mean() if fg.any() else 0.0
            if 0.15 <= cover <= 0.7:
                break
        a = layer[..., 3]
        pt.img[:] = pt.img * (1 - a[..., None]) + layer[..., :3] * a[..., None]
        pt.lab[a > 0.5] = 0
        pt.part[a > 0.5] = 0
        return a


def _face_inside(lm: np.ndarray | None, mask: np.ndarray | None) -> bool:
    if lm is None or mask is None or not mask.any():
        return False
    ys, xs = np.nonzero(mask)
    return bool(xs.min() > 0 and ys.min() > 0 and xs.max() < CANVAS_W - 1 and ys.max() < CANVAS_H - 1)


def _camera_effects(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Colour cast, exposure, blur and sensor noise in the saved frame -> uint8 RGB."""
    img = img * np.asarray(cam.cast, np.float32) * np.float32(rng.uniform(0.8, 1.15))
    sigma = rng.uniform(0.0, cam.blur)
    if sigma > 0.15:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = img + rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _groundtruth(lab: np.ndarray, kps: np.ndarray, body: BodyRender, face: tuple[np.ndarray, np.ndarray] | None,
                 has_face: bool, occluded: bool, occluder: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """Ground-truth arrays in the saved frame (docs/contracts.md); `occluder` (h, w) uint8 is 1 where the pasted
    occluder hides the scene (its pixels are background in the parsing)."""
    k = np.zeros((17, 3), np.float32)
    xy = _to_saved(kps[:, :2], h, w)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1) & (kps[:, 2] > 0)
    k[inside, :2] = xy[inside]
    k[inside, 2] = kps[inside, 2]
    box = np.full(4, np.nan, np.float32)
    lms = np.full((5, 2), np.nan, np.float32)
    face_hr = np.zeros((FACE_HR_SIZE, FACE_HR_SIZE, 3), np.uint8)
    if has_face:
        ys, xs = np.nonzero(body.face_mask)
        corners = _to_saved(np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float32), h, w)
        box = np.clip(corners.reshape(4), 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)
        lms = _to_saved(body.face_landmarks, h, w).astype(np.float32)
        face_hr = face[0]
    return {"parsing": lab.astype(np.uint8), "has_face": np.array(has_face), "face_box": box,
            "face_landmarks": lms, "keypoints": k, "face_hr": face_hr, "occluded": np.array(occluded),
            "occluder": occluder}


# ----------------------------------------------------------------------------------------------- I/O


def _write_jpg(path: Path, bgr: np.ndarray) -> None:
    ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"JPEG encoding failed for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(enc.tobytes())


def occluder_split(j: int) -> str:
    """Which images sprite j may occlude: even sprites the training split, odd ones the test split (every kind
    appears in both pools, as 20 sprites cycle through 7 kinds)."""
    return "train" if j % 2 == 0 else "test"


def _write_occluders(world: World, root: Path) -> list[str]:
    """Training sprites to <root>/occluders/ (NODA's default source), test sprites to <root>/occluders_test/."""
    names = []
    for j, (kind, rgba) in enumerate(world.occluders):
        folder = "occluders" if occluder_split(j) == "train" else "occluders_test"
        (root / folder).mkdir(parents=True, exist_ok=True)
        name = f"{folder}/{j:02d}_{kind}.png"
        ok, enc = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if not ok:
            raise OSError(f"PNG encoding failed for {root / name}")
        (root / name).write_bytes(enc.tobytes())
        names.append(name)
    return names


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "WORLD.json").is_file():
        raise FileExistsError(f"refusing to overwrite {out}: it is not empty and holds no WORLD.json marker of a "
                              "previous synthetic world; remove it or pick another --out")


def generate_world(world: str, out: str | Path, seed: int = 0, scale: float = 1.0, progress: bool = True,
                   test_ids: int = DEFAULT_TEST_IDS, pedestrians: float | None = None) -> Path:
    """Render a whole world into `out` (built in `<out>.tmp`, then renamed); returns `out`.

    `scale` multiplies every identity count; `test_ids` is the number of test identities at scale 1 (synthcc:
    14 test images each, 4 cross-clothes and 4 same-clothes queries; synthocc: 3 queries each): what decides
    how finely two methods can be told apart, independently of the training split's size. `pedestrians` (synthocc
    only; default PEDESTRIAN_SHARE) is the share of occlusions by another pedestrian rather than an object."""
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; known: {', '.join(WORLDS)}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if int(test_ids) < 1:
        raise ValueError(f"test_ids must be a positive integer, got {test_ids}")
    out = Path(out)
    _check_target(out)
    specs, meta, n_pool = (_plan_synthcc if world == "synthcc" else _plan_synthocc)(seed, scale, int(test_ids))
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    w = World(world, seed, n_pool, sorted({s.pid for s in specs}), pedestrians)
    occ_names = _write_occluders(w, tmp)
    items = specs
    if progress:
        from tqdm import tqdm

        items = tqdm(specs, desc=f"synth {world}", unit="img", file=sys.stderr,
                     mininterval=0.1 if sys.stderr.isatty() else 30.0)
    counts: dict[str, int] = {}
    for spec in items:
        bgr, gt = w.render(spec)
        _write_jpg(tmp / spec.rel, bgr)
        save_npz(tmp / "groundtruth" / Path(spec.rel).with_suffix(".npz"), gt)
        folder = spec.rel.split("/")[1] if world == "synthcc" else spec.rel.split("/")[0]
        folder = f"test_{spec.rel.split('/')[2]}" if folder == "test" else folder
        counts[folder] = counts.get(folder, 0) + 1
    extra = {"pedestrians": w.pedestrian_share} if world == "synthocc" else {}
    marker = {"schema_version": WORLD_VERSIONS[world], **extra, "world": world, "seed": seed, "scale": scale, "test_ids": int(test_ids),
              "counts": dict(sorted(counts.items())), "num_images": len(specs), "face_hr_size": FACE_HR_SIZE,
              "occluders": occ_names, "lip_labels": list(LIP_LABELS), "coco_keypoints": list(COCO_KEYPOINTS),
              "cameras": [c.name for c in w.cameras], **meta}
    (tmp / "WORLD.json").write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


# ----------------------------------------------------------------------------------------------- diagnostics


def _clothes_hist(img_bgr: np.ndarray, parsing: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2HSV)
    mask = np.isin(parsing, CLOTHES_LABELS).astype(np.uint8)
    h = cv2.calcHist([hsv], [0, 1, 2], mask, [12, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return h / max(h.sum(), 1.0)


def _face_desc(face: np.ndarray) -> np.ndarray:
    d = cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    d -= d.mean()
    return d / max(float(np.linalg.norm(d)), 1e-6)


def _face_from_body(img_bgr: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """The aligned face an ideal detector would crop from the body image itself (no restoration)."""
    M, _ = cv2.estimateAffinePartial2D(lms, ARCFACE_TEMPLATE_112 * FACE_HR_SIZE / 112.0)
    return cv2.warpAffine(cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB), M, (FACE_HR_SIZE, FACE_HR_SIZE),
                          flags=cv2.INTER_LINEAR)


def _robust_mean(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Per-channel median of the mask's interior (eroded by one pixel where that leaves any): the pixels on a
    region's edge mix with their neighbours after resizing, blur and JPEG, and shading darkens a few more."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    mask = inner if inner.sum() > 3 else mask
    return np.median(rgb[mask], 0) if mask.sum() > 3 else None


def _biometric(img_bgr: np.ndarray, parsing: np.ndarray) -> np.ndarray:
    """Per-channel log ratio of the hair colour to the skin colour (robust means over the ground-truth hair and
    skin: face, neck, arms, legs): non-clothing pixels only, and a camera's per-channel colour cast and exposure
    cancel in the ratio. Bald or hidden hair gives 0; no visible skin gives the hair against mid-grey."""
    rgb = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) + 1.0
    skin = _robust_mean(rgb, np.isin(parsing, SKIN_LABELS))
    skin = np.full(3, 128.0, np.float32) if skin is None else skin
    hair = _robust_mean(rgb, parsing == HAIR_LABEL)
    return np.log((skin if hair is None else hair) / skin).astype(np.float32)


def _rank1(q: np.ndarray, qp: Sequence[int], g: np.ndarray, gp: Sequence[int], sim: str) -> float:
    if len(q) == 0 or len(g) == 0:
        return float("nan")
    if sim == "euclidean":
        s = -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    else:
        s = np.sqrt(q) @ np.sqrt(g).T if sim == "bhattacharyya" else q @ g.T
    return float(np.mean(np.asarray(gp)[np.argmax(s, axis=1)] == np.asarray(qp)))


def cue_rank1(root: str | Path) -> dict[str, float]:
    """Rank-1 of oracle cues on a synthcc test split (queries B = same clothes, C = other clothes; gallery A).

    Shows the world is built as intended: clothes histograms identify within an outfit and mislead across
    outfits; the body-level biometric (hair-to-skin colour ratio on the ground-truth parsing, cast-invariant)
    identifies across outfits, so a method that attends to non-clothing pixels has something to find; the clean
    HR face identifies across outfits, the face cropped from the low-resolution body image much less.
    """
    root = Path(root)
    data: dict[str, list] = {c: [] for c in "ABC"}
    for cam in "ABC":
        for p in sorted((root / "rgb" / "test" / cam).glob("*/*.jpg")):
            rel = p.relative_to(root).as_posix()
            gt = load_groundtruth(root, rel)
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            data[cam].append((int(p.parent.name), img, gt))
    if not data["A"]:
        raise FileNotFoundError(f"no synthcc test images under {root / 'rgb' / 'test' / 'A'}")

    def feats(cam: str, kind: str) -> tuple[np.ndarray, list[int]]:
        rows, pids = [], []
        for pid, img, gt in data[cam]:
            if kind == "clothes":
                rows.append(_clothes_hist(img, gt["parsing"]))
            elif kind == "biometric":
                rows.append(_biometric(img, gt["parsing"]))
            elif bool(gt["has_face"]):
                rows.append(_face_desc(gt["face_hr"] if kind == "face_hr" else _face_from_body(img, gt["face_landmarks"])))
            else:
                continue
            pids.append(pid)
        return np.array(rows, np.float32), pids

    out = {}
    for kind, sim in (("clothes", "bhattacharyya"), ("biometric", "euclidean"), ("face_hr", "cos"),
                      ("face_lr", "cos")):
        g, gp = feats("A", kind)
        for qc in "BC":
            q, qp = feats(qc, kind)
            out[f"{kind}_{qc}->A"] = _rank1(q, qp, g, gp, sim)
    return out


JOINT_GROUPS = {"head": range(0, 5), "arms": range(5, 11), "legs": range(11, 17)}  # COCO-17


def occlusion_stats(root: str | Path) -> dict[str, float]:
    """How a synthocc world occludes, from its ground truth: share of occluded images per folder, and among
    occluded query images the share of labelled joints behind the occluder (visibility 1) per body group.

    Occluded-Duke's protocol: every query occluded, few gallery images; occluders (cars, bikes, other people)
    mostly hide the legs and one side. The oracle keypoint heatmaps of those joints peak at their score 0.5.
    """
    root = Path(root)
    out: dict[str, float] = {}
    hidden = {g: [0, 0] for g in JOINT_GROUPS}
    for folder in ("query", "bounding_box_test", "bounding_box_train"):
        files = sorted((root / folder).glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"no synthocc images under {root / folder}")
        occluded = 0
        for f in files:
            gt = load_groundtruth(root, f.relative_to(root).as_posix())
            if not bool(gt["occluded"]):
                continue
            occluded += 1
            if folder == "query":
                v = gt["keypoints"][:, 2]
                for g, idx in JOINT_GROUPS.items():
                    sel = v[list(idx)]
                    hidden[g][0] += int((sel == 1).sum())
                    hidden[g][1] += int((sel > 0).sum())
        out[f"occluded_share_{folder}"] = occluded / len(files)
    for g, (h, n) in hidden.items():
        out[f"query_{g}_joints_hidden"] = h / max(n, 1)
    return out


def _hsv_hist(img_bgr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], mask.astype(np.uint8), [12, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return h / max(h.sum(), 1.0)


def occlusion_feature_check(root: str | Path) -> dict[str, float]:
    """How much occlusion corrupts a pooled feature, from oracle features on a synthocc test split: rank-1 of the
    occluded queries against the gallery with a colour histogram pooled over the visible person only (what
    visible-part pooling can reach) and over the person plus the occluder in front of it (what a global pool
    sees when it cannot tell them apart), by occluder kind (another pedestrian | an object).

    The gap (visible minus global) is what the occluded-ReID methods exploit; a world whose gap is near zero
    cannot show their effect, whatever a learned model does."""
    root = Path(root)

    def load(folder: str) -> list[tuple[int, np.ndarray, np.ndarray, bool, bool]]:
        out = []
        for f in sorted((root / folder).glob("*.jpg")):
            gt = load_groundtruth(root, f.relative_to(root).as_posix())
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            vis = gt["parsing"] > 0
            out.append((int(f.name.split("_")[0]), _hsv_hist(img, vis), _hsv_hist(img, vis | (gt["occluder"] > 0)),
                        bool(gt["occluded"]), bool(gt.get("occluder_person", False))))
        if not out:
            raise FileNotFoundError(f"no synthocc images under {root / folder}")
        return out

    gallery, queries = load("bounding_box_test"), [q for q in load("query") if q[3]]
    gp = [g[0] for g in gallery]
    out: dict[str, float] = {}
    for kind, keep in (("all", lambda q: True), ("person", lambda q: q[4]), ("object", lambda q: not q[4])):
        sel = [q for q in queries if keep(q)]
        out[f"occluded_queries_{kind}"] = float(len(sel))
        for i, pool in ((1, "visible"), (2, "global")):  # nan where no query has this kind of occluder
            feats = np.array([q[i] for q in sel]) if sel else np.zeros((0, 1), np.float32)
            out[f"oracle_rank1_{pool}_{kind}"] = _rank1(feats, [q[0] for q in sel],
                                                        np.array([g[i] for g in gallery]), gp, "bhattacharyya")
        out[f"oracle_gap_{kind}"] = out[f"oracle_rank1_visible_{kind}"] - out[f"oracle_rank1_global_{kind}"]
    return out


def world_checks(root: str | Path) -> dict[str, float]:
    """The renderer's self-checks for the world at `root` (read from its WORLD.json): cue rank-1 (synthcc) or
    occlusion statistics (synthocc). `python -m reid synth --check` prints them; tests assert them."""
    world = json.loads((Path(root) / "WORLD.json").read_text())["world"]
    return cue_rank1(root) if world == "synthcc" else {**occlusion_stats(root), **occlusion_feature_check(root)}


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI verb `synth`: render a synthetic world."""
    parser.add_argument("--world", required=True, choices=WORLDS, help="which synthetic world")
    parser.add_argument("--out", required=True, help="output directory (the dataset root)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the identity counts")
    parser.add_argument("--test-ids", type=int, default=DEFAULT_TEST_IDS,
                        help="test identities at scale 1 (queries: synthcc 4 per protocol each, synthocc 3 each)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--check", action="store_true",
                        help="print the world's self-checks (synthcc: oracle cue rank-1; synthocc: occlusion "
                             "statistics); with an existing world at --out and the same settings, only checks")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    marker = out / "WORLD.json"
    test_ids = getattr(args, "test_ids", DEFAULT_TEST_IDS)
    wanted = {"world": args.world, "seed": args.seed, "scale": args.scale, "test_ids": test_ids}
    found = json.loads(marker.read_text()) if marker.is_file() else {}
    same = {k: found.get(k, DEFAULT_TEST_IDS if k == "test_ids" else None) for k in wanted} == wanted
    if not (args.check and same):
        out = generate_world(args.world, args.out, seed=args.seed, scale=args.scale, progress=not args.no_progress,
                             test_ids=test_ids)
    info = json.loads((out / "WORLD.json").read_text())
    print(f"{args.world}: {info['num_images']} images in {out} ({info['counts']})")
    if args.check:
        label = "rank-1" if args.world == "synthcc" else "share"
        for k, v in world_checks(out).items():
            print(f"  {label} {k}: {v:.3f}")
    return 0
