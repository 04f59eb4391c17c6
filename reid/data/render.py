"""Procedural renderer of the synthetic people: identities, outfits, faces, bodies, backgrounds, occluders.

Everything is drawn on a 2x "canvas" (256 x 128, RGB float) with a parallel LIP label map and a part-id map
(for keypoint self-occlusion); `reid.data.synthetic` downsamples it to each camera's saved resolution.
Coordinates follow OpenCV: pixel centres sit at integer positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from reid.vocab import ARCFACE_TEMPLATE_112, COCO_KEYPOINTS  # ARCFACE: specs/teachers.md section 2

FACE_HR_SIZE = 64
CANVAS_H, CANVAS_W = 256, 128

# LIP label ids used below.
HAT, HAIR, UPPER, DRESS, COAT, PANTS, SKIRT, FACE = 1, 2, 5, 6, 7, 9, 12, 13
ARM = {+1: 14, -1: 15}  # person's left (+1) / right (-1)
LEG = {+1: 16, -1: 17}
SHOE = {+1: 18, -1: 19}
# Part ids for keypoint self-occlusion tests.
P_TORSO, P_HEAD = 1, 6
P_ARM = {+1: 2, -1: 3}
P_LEG = {+1: 4, -1: 5}

SKIN_TONES = np.array([(250, 222, 196), (238, 196, 166), (222, 172, 136), (196, 140, 100), (160, 104, 72),
                       (122, 80, 54), (92, 60, 42)], np.float32)
HAIR_COLOURS = np.array([(22, 20, 20), (58, 38, 26), (104, 68, 40), (196, 160, 96), (150, 66, 32),
                         (140, 140, 140), (226, 220, 204)], np.float32)
EYE_COLOURS = np.array([(84, 50, 24), (46, 98, 180), (58, 136, 70), (120, 124, 132), (24, 22, 22),
                        (150, 110, 40), (120, 56, 140)], np.float32)
CLOTH_COLOURS = np.array([(200, 30, 35), (30, 60, 170), (35, 140, 60), (235, 200, 40), (240, 240, 235),
                          (25, 25, 28), (120, 120, 125), (240, 120, 30), (130, 40, 150), (90, 190, 220),
                          (110, 70, 40), (230, 130, 170), (20, 40, 80), (140, 160, 60), (180, 150, 110),
                          (100, 20, 30)], np.float32)
HAIR_STYLES = ("short", "long", "bald", "ponytail", "bun", "curly")
PATTERNS = ("plain", "stripes", "checks", "logo")


# ----------------------------------------------------------------------------------------------- traits


@dataclass(frozen=True)
class FaceTraits:
    """Identity detail legible only at face resolution (marks, eye colour, brows, nose, mouth, beard)."""

    eye_colour: tuple[float, float, float]
    brow_thick: float
    brow_tilt: float
    brow_gap: float
    nose_width: float
    nose_kind: int
    lip_colour: tuple[float, float, float]
    lip_thick: float
    marks: tuple[tuple[float, float, float], ...]  # (x, y, radius) in 112-template coordinates
    beard: str
    face_width: float
    chin: float


@dataclass(frozen=True)
class Identity:
    """Stable biometric traits of one person (proportions in units of body height)."""

    pid: int
    height: float
    head: float
    shoulder: float
    hip: float
    leg: float
    arm_thick: float
    leg_thick: float
    skin: tuple[float, float, float]
    hair_colour: tuple[float, float, float]
    hair_style: str
    face: FaceTraits


@dataclass(frozen=True)
class Garment:
    """One clothing item: kind, colours and pattern (period in units of body height)."""

    kind: str
    colour: tuple[float, float, float]
    colour2: tuple[float, float, float]
    pattern: str
    period: float
    logo: int = 0


@dataclass(frozen=True)
class Outfit:
    """An outfit from the shared pool: upper, lower, shoes and an optional hat."""

    upper: Garment
    lower: Garment
    shoes: Garment
    hat: Garment | None


@dataclass(frozen=True)
class View:
    """Per-image pose: yaw in degrees (0 = facing the camera), placement on the canvas and limb angles."""

    yaw: float
    cx: float
    top: float
    size: float
    arm_abd: tuple[float, float]
    arm_swing: float
    elbow: float
    stride: float


def _rgb(a: np.ndarray) -> tuple[float, float, float]:
    a = np.clip(a, 0, 255)
    return (float(a[0]), float(a[1]), float(a[2]))


def _jitter(rng: np.random.Generator, c: np.ndarray, amount: float) -> tuple[float, float, float]:
    return _rgb(c + rng.normal(0.0, amount, 3))


def make_identity(pid: int, rng: np.random.Generator) -> Identity:
    """Sample the stable traits of identity `pid`."""
    n_marks = int(rng.integers(1, 5))
    marks = tuple(
        (float(rng.choice([rng.uniform(28, 44), rng.uniform(68, 84), rng.uniform(44, 68)])),
         float(rng.uniform(36, 100)), float(rng.uniform(1.6, 3.2)))
        for _ in range(n_marks)
    )
    face = FaceTraits(
        eye_colour=_jitter(rng, EYE_COLOURS[rng.integers(len(EYE_COLOURS))], 8),
        brow_thick=float(rng.uniform(1.5, 4.5)),
        brow_tilt=float(rng.uniform(-12, 12)),
        brow_gap=float(rng.uniform(5, 10)),
        nose_width=float(rng.uniform(5, 11)),
        nose_kind=int(rng.integers(3)),
        lip_colour=_rgb(np.array([150, 60, 60]) + rng.normal(0, 25, 3)),
        lip_thick=float(rng.uniform(2, 5)),
        marks=marks,
        beard=str(rng.choice(["none", "none", "none", "moustache", "beard", "goatee"])),
        face_width=float(rng.uniform(29, 36)),
        chin=float(rng.uniform(40, 48)),
    )
    return Identity(
        pid=pid,
        height=float(rng.uniform(0.80, 0.94)),
        head=float(rng.uniform(0.125, 0.15)),
        shoulder=float(rng.uniform(0.22, 0.30)),
        hip=float(rng.uniform(0.16, 0.22)),
        leg=float(rng.uniform(0.45, 0.52)),
        arm_thick=float(rng.uniform(0.042, 0.056)),
        leg_thick=float(rng.uniform(0.058, 0.076)),
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 6),
        hair_colour=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 6),
        hair_style=str(rng.choice(HAIR_STYLES)),
        face=face,
    )


def _garment(rng: np.random.Generator, kind: str, allow_logo: bool) -> Garment:
    i, j = rng.choice(len(CLOTH_COLOURS), size=2, replace=False)
    patterns = PATTERNS if allow_logo else PATTERNS[:3]
    probs = np.array([0.5, 0.2, 0.15, 0.15][: len(patterns)])
    return Garment(kind=kind, colour=_jitter(rng, CLOTH_COLOURS[i], 10), colour2=_jitter(rng, CLOTH_COLOURS[j], 10),
                   pattern=str(rng.choice(patterns, p=probs / probs.sum())), period=float(rng.uniform(0.03, 0.06)),
                   logo=int(rng.integers(3)))


def make_outfit(rng: np.random.Generator) -> Outfit:
    """Sample one outfit of the shared pool."""
    upper = _garment(rng, str(rng.choice(["tee", "longsleeve", "tank", "coat"], p=[0.35, 0.3, 0.1, 0.25])), True)
    lower = _garment(rng, str(rng.choice(["pants", "shorts", "skirt", "dress"], p=[0.55, 0.2, 0.15, 0.1])), False)
    shoes = _garment(rng, "shoes", False)
    shoes = Garment("shoes", shoes.colour, shoes.colour2, "plain", 0.0)
    hat = None
    if rng.random() < 0.15:
        hat = _garment(rng, "hat", False)
        hat = Garment("hat", hat.colour, hat.colour2, "plain", 0.0)
    return Outfit(upper, lower, shoes, hat)


# ----------------------------------------------------------------------------------------------- painter


def _ipt(p: tuple[float, float] | np.ndarray) -> tuple[int, int]:
    """Float point -> OpenCV fixed-point (shift=4) integer point."""
    return (int(round(float(p[0]) * 16)), int(round(float(p[1]) * 16)))


@dataclass
class Painter:
    """Canvas image + LIP labels + part ids, painted in back-to-front order."""

    img: np.ndarray
    lab: np.ndarray = field(init=False)
    part: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lab = np.zeros(self.img.shape[:2], np.uint8)
        self.part = np.zeros(self.img.shape[:2], np.uint8)

    def blank(self) -> np.ndarray:
        return np.zeros(self.lab.shape, np.uint8)

    def capsule(self, pts: list[np.ndarray], thick: float) -> np.ndarray:
        m = self.blank()
        t = max(1, int(round(thick)))
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(m, _ipt(a), _ipt(b), 1, t, cv2.LINE_8, 4)
        return m.astype(bool)

    def poly(self, pts: list[tuple[float, float]] | np.ndarray) -> np.ndarray:
        m = self.blank()
        cv2.fillPoly(m, [np.array([_ipt(p) for p in pts], np.int32)], 1, cv2.LINE_8, 4)
        return m.astype(bool)

    def ellipse(self, c: tuple[float, float], ax: tuple[float, float], angle: float = 0.0) -> np.ndarray:
        m = self.blank()
        cv2.ellipse(m, _ipt(c), _ipt((max(ax[0], 0.5), max(ax[1], 0.5))), angle, 0, 360, 1, -1, cv2.LINE_8, 4)
        return m.astype(bool)

    def paint(self, mask: np.ndarray, fill: np.ndarray | tuple[float, float, float], label: int, part: int) -> None:
        fill = np.asarray(fill, np.float32)
        self.img[mask] = fill[mask] if fill.ndim == 3 else fill
        self.lab[mask] = label
        self.part[mask] = part


def garment_texture(g: Garment, shape: tuple[int, int], cx: float, y0: float, unit: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Full-canvas texture of a garment; pattern phase is anchored on the body (cx, y0) and scales with it."""
    h, w = shape
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = g.colour
    p = max(2.0, g.period * unit)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if g.pattern == "stripes":
        tex[((yy - y0) / p) % 1.0 < 0.45] = g.colour2
    elif g.pattern == "checks":
        tex[(np.floor((xx - cx) / p) + np.floor((yy - y0) / p)) % 2 == 1] = g.colour2
    tex *= (1.0 + 0.05 * rng.standard_normal((h, w, 1))).astype(np.float32)
    return tex


# ----------------------------------------------------------------------------------------------- face


def _template_px(scale: float) -> np.ndarray:
    return ARCFACE_TEMPLATE_112 * scale


def render_face_hr(ident: Identity, rng: np.random.Generator, size: int = FACE_HR_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Clean aligned face (RGB uint8, size x size) + its soft face-oval alpha (float32), landmarks on the template.

    Drawn at 2x in 112-template coordinates and area-downsampled; per-image variation is lighting and expression
    only, so the identity detail (marks, eye colour, brows, nose, lips, beard) is stable.
    """
    ss = 2 * size
    k = ss / 112.0
    f, skin, hair = ident.face, np.array(ident.skin, np.float32), np.array(ident.hair_colour, np.float32)
    img = np.empty((ss, ss, 3), np.float32)
    img[:] = (128, 128, 128)
    P = lambda x, y: (x * k, y * k)  # noqa: E731
    A = lambda a, b: (a * k, b * k)  # noqa: E731

    def fill(m: np.ndarray, colour: np.ndarray | tuple[float, float, float]) -> None:
        img[m.astype(bool)] = colour

    def ell(c: tuple[float, float], ax: tuple[float, float], angle: float = 0.0) -> np.ndarray:
        m = np.zeros((ss, ss), np.uint8)
        cv2.ellipse(m, _ipt(c), _ipt(ax), angle, 0, 360, 1, -1, cv2.LINE_8, 4)
        return m

    if ident.hair_style in ("long", "curly"):
        fill(ell(P(56, 70), A(f.face_width + 14, 58)), hair)
    neck = np.zeros((ss, ss), np.uint8)
    cv2.fillPoly(neck, [np.array([_ipt(P(42, 90)), _ipt(P(70, 90)), _ipt(P(74, 112)), _ipt(P(38, 112))])], 1,
                 cv2.LINE_8, 4)
    fill(neck, skin * 0.85)
    for ex in (56 - f.face_width - 1, 56 + f.face_width + 1):
        fill(ell(P(ex, 66), A(4.5, 9)), skin * 0.92)
    oval = ell(P(56, 66), A(f.face_width, f.chin))
    fill(oval, skin)
    # hair above the hairline
    if ident.hair_style != "bald":
        cap = ell(P(56, 58), A(f.face_width + 3, 40)).astype(bool)
        yy = np.arange(ss)[:, None] / k
        hairline = 32 if ident.hair_style != "curly" else 36
        fill(cap & (yy < hairline), hair)
    if f.beard in ("beard", "goatee"):
        b = ell(P(56, 100), A(f.face_width - 4 if f.beard == "beard" else 9, 13)).astype(bool) & oval.astype(bool)
        fill(b, hair * 0.9 + skin * 0.1)
    # brows, eyes, nose, mouth at the template landmarks
    t = ARCFACE_TEMPLATE_112
    brow_col = tuple(float(c) for c in hair * 0.8)
    for side, (ex, ey) in zip((-1, 1), t[:2]):
        ang = math.radians(f.brow_tilt * side)
        c = np.array([ex, ey - f.brow_gap - 2])
        d = np.array([math.cos(ang), math.sin(ang)]) * 8
        cv2.line(img, _ipt((c - d) * k), _ipt((c + d) * k), brow_col, max(1, int(f.brow_thick * k)), cv2.LINE_AA, 4)
        openness = float(rng.uniform(2.6, 3.6))
        cv2.ellipse(img, _ipt((ex * k, ey * k)), _ipt((7 * k, openness * k)), 0, 0, 360, (245, 245, 240), -1,
                    cv2.LINE_AA, 4)
        cv2.circle(img, _ipt((ex * k, ey * k)), int(3.0 * k * 16), f.eye_colour, -1, cv2.LINE_AA, 4)
        cv2.circle(img, _ipt((ex * k, ey * k)), int(1.3 * k * 16), (10, 10, 10), -1, cv2.LINE_AA, 4)
    nx, ny = t[2]
    nose_col = tuple(float(c) for c in skin * 0.7)
    if f.nose_kind == 0:
        cv2.line(img, _ipt(P(nx, ny - 14)), _ipt(P(nx, ny)), nose_col, max(1, int(1.5 * k)), cv2.LINE_AA, 4)
    for s in (-1, 1):
        cv2.circle(img, _ipt(P(nx + s * f.nose_width / 2, ny + 1)), int((1.4 + f.nose_kind * 0.5) * k * 16),
                   nose_col, -1, cv2.LINE_AA, 4)
    (lx, ly), (rx, ry) = t[3], t[4]
    smile = float(rng.uniform(-2.0, 3.0))
    mouth = np.array([P(lx, ly), P((lx + rx) / 2, (ly + ry) / 2 + smile), P(rx, ry)], np.float32)
    cv2.polylines(img, [np.round(mouth * 16).astype(np.int32)], False, f.lip_colour, max(1, int(f.lip_thick * k)),
                  cv2.LINE_AA, 4)
    if f.beard == "moustache":
        cv2.line(img, _ipt(P(lx + 2, ly - 7)), _ipt(P(rx - 2, ry - 7)), tuple(float(c) for c in hair), int(3 * k),
                 cv2.LINE_AA, 4)
    for mx, my, mr in f.marks:
        cv2.circle(img, _ipt(P(mx, my)), int(mr * k * 16), tuple(float(c) for c in skin * 0.35), -1, cv2.LINE_AA, 4)
    # per-image lighting: gain and a left-right gradient
    gain = rng.uniform(0.88, 1.12)
    grad = np.linspace(-1, 1, ss, dtype=np.float32)[None, :, None] * rng.uniform(-0.08, 0.08)
    img = img * (gain + grad)
    face = cv2.resize(np.clip(img, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(oval.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return np.round(face).astype(np.uint8), alpha


# ----------------------------------------------------------------------------------------------- body


@dataclass
class BodyRender:
    """What render_person returns, all in canvas coordinates."""

    painter: Painter
    keypoints: np.ndarray  # (17, 3)
    face_landmarks: np.ndarray | None  # (5, 2)
    face_mask: np.ndarray | None  # bool canvas mask of the warped face
    cx: float
    half_width: float


def _rot(v: np.ndarray, yaw: float) -> tuple[float, float]:
    """Body-frame (x left, y down, z forward) -> (image x offset, depth toward camera), in body units."""
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    return v[0] * c + v[2] * s, -v[0] * s + v[2] * c


def _skeleton(ident: Identity, view: View) -> dict[str, np.ndarray]:
    """3-D joints in body units (fraction of height, origin at top of head centre)."""
    h = ident.head
    y_sh, y_hip, y_ank = h * 1.32, 1.0 - ident.leg, 0.965
    j: dict[str, np.ndarray] = {"head": np.array([0, h / 2, 0.0]), "nose": np.array([0, h * 0.6, h * 0.42]),
                                "neck": np.array([0, h * 1.05, 0.0])}
    for s, n in ((1, "left"), (-1, "right")):
        j[f"{n}_eye"] = np.array([s * h * 0.17, h * 0.46, h * 0.34])
        j[f"{n}_ear"] = np.array([s * h * 0.39, h * 0.52, 0.0])
        sh = np.array([s * ident.shoulder / 2, y_sh, 0.0])
        abd = math.radians(view.arm_abd[0 if s > 0 else 1])
        swing = math.radians(view.arm_swing * s)
        d1 = np.array([s * math.sin(abd), math.cos(abd) * math.cos(swing), math.cos(abd) * math.sin(swing)])
        sw2 = swing + math.radians(view.elbow)
        d2 = np.array([s * math.sin(abd) * 0.5, math.cos(sw2), math.sin(sw2)])
        j[f"{n}_shoulder"], j[f"{n}_elbow"] = sh, sh + 0.185 * d1
        j[f"{n}_wrist"] = j[f"{n}_elbow"] + 0.16 * d2 / np.linalg.norm(d2)
        hip = np.array([s * ident.hip * 0.36, y_hip, 0.0])
        th = math.radians(-view.stride * s)
        L = y_ank - y_hip
        knee = hip + 0.5 * L * np.array([0, math.cos(th), math.sin(th)])
        ph = th * 0.5
        j[f"{n}_hip"], j[f"{n}_knee"] = hip, knee
        j[f"{n}_ankle"] = knee + 0.5 * L * np.array([0, math.cos(ph), math.sin(ph)])
        j[f"{n}_toe"] = j[f"{n}_ankle"] + np.array([0, 0.028, 0.06])
    return j


def _project(joints: dict[str, np.ndarray], view: View) -> dict[str, np.ndarray]:
    """Joints -> canvas (x, y, depth)."""
    out = {}
    for k, v in joints.items():
        x, d = _rot(v, view.yaw)
        out[k] = np.array([view.cx + x * view.size, view.top + v[1] * view.size, d])
    return out


def _face_affine(hc: np.ndarray, rx: float, ry: float, yaw: float, ft: FaceTraits, size: int) -> np.ndarray:
    """2x3 affine from the HR face (size px) to the canvas: oval onto the head, squeezed by cos(yaw)."""
    k = size / 112.0
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    kx = 0.86 * rx * c / (ft.face_width * k)
    ky = 0.9 * ry / (ft.chin * k)
    tx = hc[0] + 0.5 * rx * s - kx * 56 * k
    ty = hc[1] + 0.1 * ry - ky * 66 * k
    return np.array([[kx, 0, tx], [0, ky, ty]], np.float64)


def render_person(ident: Identity, outfit: Outfit, view: View, background: np.ndarray, rng: np.random.Generator,
                  face: tuple[np.ndarray, np.ndarray] | None) -> BodyRender:
    """Paint one person over `background` (canvas, RGB float32); `face` = (HR face, alpha) for visible faces."""
    pt = Painter(background.astype(np.float32).copy())
    shape = pt.lab.shape
    S, yaw = view.size, view.yaw
    cyaw, syaw = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    J = _project(_skeleton(ident, view), view)
    xy = {k: v[:2] for k, v in J.items()}
    skin = np.array(ident.skin, np.float32)
    hair = np.array(ident.hair_colour, np.float32)
    up, low = outfit.upper, outfit.lower
    dress = low.kind == "dress"
    torso_label = DRESS if dress else (COAT if up.kind == "coat" else UPPER)
    top_g = low if dress else up
    top_tex = garment_texture(top_g, shape, view.cx, xy["neck"][1], S, rng)
    low_tex = garment_texture(low, shape, view.cx, xy["left_hip"][1], S, rng)
    depth_half = 0.065
    ws = 0.5 * ident.shoulder * abs(cyaw) + depth_half * abs(syaw)
    wh = 0.5 * ident.hip * abs(cyaw) + depth_half * abs(syaw)
    y_sh, y_hip = xy["left_shoulder"][1], xy["left_hip"][1]
    cx_t = view.cx
    head_c = xy["head"]
    ry = ident.head * S / 2
    rx = ry * (0.78 * abs(cyaw) + 0.9 * abs(syaw))

    def arm(s: int) -> None:
        n = "left" if s > 0 else "right"
        a_pts = [xy[f"{n}_shoulder"], xy[f"{n}_elbow"], xy[f"{n}_wrist"]]
        th = ident.arm_thick * S
        pt.paint(pt.capsule(a_pts, th), skin, ARM[s], P_ARM[s])
        hand = xy[f"{n}_wrist"] + (xy[f"{n}_wrist"] - xy[f"{n}_elbow"]) * 0.18
        pt.paint(pt.ellipse((hand[0], hand[1]), (th * 0.55, th * 0.7)), skin * 0.97, ARM[s], P_ARM[s])
        sleeve_label = torso_label
        if top_g.kind == "tank":
            return
        if top_g.kind in ("longsleeve", "coat"):
            end = xy[f"{n}_elbow"] + 0.85 * (xy[f"{n}_wrist"] - xy[f"{n}_elbow"])
            pts = [xy[f"{n}_shoulder"], xy[f"{n}_elbow"], end]
        else:
            pts = [xy[f"{n}_shoulder"], xy[f"{n}_shoulder"] + 0.5 * (xy[f"{n}_elbow"] - xy[f"{n}_shoulder"])]
        pt.paint(pt.capsule(pts, th * 1.3), top_tex, sleeve_label, P_ARM[s])

    def leg(s: int) -> None:
        n = "left" if s > 0 else "right"
        l_pts = [xy[f"{n}_hip"], xy[f"{n}_knee"], xy[f"{n}_ankle"]]
        th = ident.leg_thick * S
        pt.paint(pt.capsule(l_pts, th), skin, LEG[s], P_LEG[s])
        if low.kind == "pants":
            pt.paint(pt.capsule(l_pts, th * 1.25), low_tex, PANTS, P_LEG[s])
        elif low.kind == "shorts":
            end = xy[f"{n}_hip"] + 0.75 * (xy[f"{n}_knee"] - xy[f"{n}_hip"])
            pt.paint(pt.capsule([xy[f"{n}_hip"], end], th * 1.3), low_tex, PANTS, P_LEG[s])
        pt.paint(pt.capsule([xy[f"{n}_ankle"], xy[f"{n}_toe"]], 0.042 * S), outfit.shoes.colour, SHOE[s], P_LEG[s])

    def torso() -> None:
        neck_w = 0.05 * S
        poly = [(cx_t - neck_w, y_sh - 0.03 * S), (cx_t + neck_w, y_sh - 0.03 * S), (cx_t + ws * S, y_sh + 0.01 * S),
                (cx_t + wh * S * 1.05, y_hip + 0.02 * S), (cx_t - wh * S * 1.05, y_hip + 0.02 * S),
                (cx_t - ws * S, y_sh + 0.01 * S)]
        if low.kind in ("pants", "shorts"):
            pel = [(cx_t - wh * S * 1.1, y_hip - 0.04 * S), (cx_t + wh * S * 1.1, y_hip - 0.04 * S),
                   (cx_t + wh * S, y_hip + 0.06 * S), (cx_t - wh * S, y_hip + 0.06 * S)]
            pt.paint(pt.poly(pel), low_tex, PANTS, P_TORSO)
        if low.kind in ("skirt", "dress"):
            yk = xy["left_knee"][1] + 0.01 * S
            spread = max(wh * S * 1.6, abs(xy["left_knee"][0] - xy["right_knee"][0]) / 2 + 0.05 * S)
            kc = (xy["left_knee"][0] + xy["right_knee"][0]) / 2
            sk = [(cx_t - wh * S * 1.1, y_hip - 0.04 * S), (cx_t + wh * S * 1.1, y_hip - 0.04 * S),
                  (kc + spread, yk), (kc - spread, yk)]
            pt.paint(pt.poly(sk), low_tex, DRESS if dress else SKIRT, P_TORSO)
        if up.kind == "coat" and not dress:
            y_c = y_hip + 0.13 * S
            poly = poly[:3] + [(cx_t + wh * S * 1.3, y_c), (cx_t - wh * S * 1.3, y_c)] + poly[5:]
        pt.paint(pt.poly(poly), top_tex, torso_label, P_TORSO)
        if top_g.pattern == "logo" and cyaw > 0.5:
            lc = (cx_t + 0.25 * ws * S * syaw, y_sh + 0.09 * S)
            r = 0.035 * S
            if top_g.logo == 0:
                m = pt.ellipse(lc, (r * cyaw, r))
            elif top_g.logo == 1:
                m = pt.poly([(lc[0] - r * cyaw, lc[1] - r), (lc[0] + r * cyaw, lc[1] - r),
                             (lc[0] + r * cyaw, lc[1] + r), (lc[0] - r * cyaw, lc[1] + r)])
            else:
                m = pt.poly([(lc[0], lc[1] - r), (lc[0] + r * cyaw, lc[1] + r), (lc[0] - r * cyaw, lc[1] + r)])
            m &= pt.lab == torso_label
            pt.paint(m, top_g.colour2, torso_label, P_TORSO)

    def back_hair() -> None:
        if ident.hair_style in ("long", "curly"):
            ln = 1.9 if ident.hair_style == "long" else 1.2
            pt.paint(pt.ellipse((head_c[0], head_c[1] + ry * (ln - 1) * 0.8), (rx * 1.2, ry * ln * 0.9)), hair,
                     HAIR, P_HEAD)

    def ponytail(front_of_body: bool) -> None:
        if ident.hair_style not in ("ponytail", "bun") or (front_of_body != (cyaw < 0.3)):
            return
        back = -syaw if abs(syaw) > 0.3 else 0.0
        base = (head_c[0] + back * rx * 0.9, head_c[1] - 0.1 * ry)
        if ident.hair_style == "bun":
            pt.paint(pt.ellipse((base[0], head_c[1] - 0.75 * ry), (rx * 0.45, ry * 0.35)), hair, HAIR, P_HEAD)
        else:
            tip = (base[0] + back * rx * 0.5, head_c[1] + 1.8 * ry)
            pt.paint(pt.capsule([np.array(base), np.array(tip)], rx * 0.55), hair, HAIR, P_HEAD)

    def head() -> tuple[np.ndarray | None, np.ndarray | None]:
        neck_m = pt.poly([(head_c[0] - 0.35 * rx, head_c[1]), (head_c[0] + 0.35 * rx, head_c[1]),
                          (head_c[0] + 0.4 * rx, y_sh - 0.01 * S), (head_c[0] - 0.4 * rx, y_sh - 0.01 * S)])
        pt.paint(neck_m, skin * 0.88, FACE, P_HEAD)
        hm = pt.ellipse((head_c[0], head_c[1]), (rx, ry))
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        u = np.clip((xx - head_c[0]) / max(rx, 1e-3), -1, 1)
        az = np.degrees(np.arcsin(u)) - yaw
        az = (az + 180) % 360 - 180
        face_side = np.abs(az) < 75
        hairline = head_c[1] - (0.45 if ident.hair_style != "curly" else 0.3) * ry
        is_hair = hm & (~face_side | (yy < hairline))
        if ident.hair_style == "bald":
            pt.paint(hm, skin, FACE, P_HEAD)
        else:
            pt.paint(hm & ~is_hair, skin, FACE, P_HEAD)
            pt.paint(is_hair, hair, HAIR, P_HEAD)
        lm = fmask = None
        if face is not None:
            fimg, falpha = face
            M = _face_affine(head_c, rx, ry, yaw, ident.face, fimg.shape[0])
            warped = cv2.warpAffine(fimg.astype(np.float32), M, (shape[1], shape[0]), flags=cv2.INTER_LINEAR)
            a = cv2.warpAffine(falpha, M, (shape[1], shape[0]), flags=cv2.INTER_LINEAR) * hm
            if ident.hair_style != "bald":
                a = a * (yy >= hairline)
            fmask = a > 0.5
            pt.img[:] = pt.img * (1 - a[..., None]) + warped * a[..., None]
            pt.lab[fmask] = FACE
            pt.part[fmask] = P_HEAD
            tpl = _template_px(fimg.shape[0] / 112.0)
            lm = (np.c_[tpl, np.ones(5)] @ M.T).astype(np.float32)
            fmask = cv2.warpAffine(falpha, M, (shape[1], shape[0]), flags=cv2.INTER_LINEAR) > 0.5
        if outfit.hat is not None:
            hat_m = pt.ellipse((head_c[0], head_c[1] - 0.35 * ry), (rx * 1.08, ry * 0.7)) & (yy < head_c[1] - 0.3 * ry)
            brim = pt.ellipse((head_c[0] + 0.5 * rx * syaw, head_c[1] - 0.32 * ry), (rx * (1.1 + 0.3 * abs(syaw)), ry * 0.12))
            pt.paint(hat_m | brim, outfit.hat.colour, HAT, P_HEAD)
        return lm, fmask

    # painter's order: far limbs, legs, back hair, torso, near arms, head
    arm_order = sorted((1, -1), key=lambda s: J["left_shoulder" if s > 0 else "right_shoulder"][2])
    far_arm_behind = abs(syaw) > 0.5
    if cyaw >= 0:
        back_hair()
    ponytail(front_of_body=False)
    if far_arm_behind:
        arm(arm_order[0])
    for s in sorted((1, -1), key=lambda s: J["left_knee" if s > 0 else "right_knee"][2]):
        leg(s)
    torso()
    if cyaw < 0:
        back_hair()
    for s in (arm_order[1:] if far_arm_behind else arm_order):
        arm(s)
    lm, fmask = head()
    ponytail(front_of_body=True)
    # cylinder shading of the body
    fg = pt.lab > 0
    hw = (ws + ident.arm_thick) * S
    xx = np.arange(shape[1], dtype=np.float32)[None, :]
    shade = 1.0 - 0.22 * np.clip(np.abs(xx - view.cx) / hw, 0, 1.4) ** 2
    pt.img[fg] *= np.broadcast_to(shade, shape)[fg][:, None]
    kps = _keypoints(J, pt, view)
    return BodyRender(pt, kps, lm, fmask, view.cx, hw)


_KP_PARTS = {
    "shoulder": ("P_TORSO", "arm"), "elbow": ("arm",), "wrist": ("arm",), "hip": ("P_TORSO", "leg"),
    "knee": ("leg", "P_TORSO"), "ankle": ("leg",),
}


def _keypoints(J: dict[str, np.ndarray], pt: Painter, view: View) -> np.ndarray:
    """COCO-17 (x, y, v) in canvas coordinates; v from the part-id map (self-occlusion) and head orientation."""
    h, w = pt.lab.shape
    out = np.zeros((17, 3), np.float32)
    for i, name in enumerate(COCO_KEYPOINTS):
        x, y, _ = J[name]
        out[i, :2] = (x, y)
        xi, yi = int(round(x)), int(round(y))
        if not (0 <= xi < w and 0 <= yi < h):
            continue
        if name in ("nose",) or name.endswith(("_eye", "_ear")):
            side = 0 if name == "nose" else (1 if name.startswith("left") else -1)
            az = {"nose": 0.0, "eye": 28.0, "ear": 90.0}[name.split("_")[-1]] * side
            # depth of a head point at body azimuth az (toward the person's left) is cos(az + yaw)
            facing = math.cos(math.radians(az + view.yaw))
            out[i, 2] = 2 if facing > 0.15 else 0
            continue
        side = 1 if name.startswith("left") else -1
        allowed = {P_ARM[side] if p == "arm" else P_LEG[side] if p == "leg" else P_TORSO
                   for p in _KP_PARTS[name.split("_", 1)[1]]}
        win = pt.part[max(0, yi - 1) : yi + 2, max(0, xi - 1) : xi + 2]
        out[i, 2] = 2 if np.isin(win, list(allowed)).any() else 1
    return out


# ----------------------------------------------------------------------------------------------- scenes


def make_scene(rng: np.random.Generator, width: int = 4 * CANVAS_W) -> np.ndarray:
    """A camera's static background panorama (RGB float32, canvas height): wall, floor, clutter in its palette."""
    h = CANVAS_H
    img = np.empty((h, width, 3), np.float32)
    wall = rng.uniform(60, 220, 3)
    floor = rng.uniform(40, 180, 3)
    horizon = int(rng.uniform(0.45, 0.75) * h)
    img[:horizon] = wall
    img[horizon:] = floor
    img[:horizon] *= np.linspace(0.85, 1.1, horizon, dtype=np.float32)[:, None, None]
    for y in np.arange(horizon, h, rng.uniform(10, 30)):  # floor tiles
        cv2.line(img, (0, int(y)), (width, int(y)), tuple(float(c) for c in floor * 0.8), 1)
    palette = rng.uniform(20, 240, (5, 3))
    for _ in range(int(rng.integers(8, 18))):  # windows, doors, posters
        c = tuple(float(v) for v in palette[rng.integers(5)] + rng.normal(0, 10, 3))
        x0, y0 = int(rng.uniform(0, width)), int(rng.uniform(0, horizon))
        w0, h0 = int(rng.uniform(10, 60)), int(rng.uniform(10, 90))
        cv2.rectangle(img, (x0, y0), (x0 + w0, min(y0 + h0, horizon)), c, -1)
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + w0, min(y0 + h0, horizon)), tuple(v * 0.6 for v in c), 2)
    for _ in range(int(rng.integers(2, 6))):  # poles and plants
        c = tuple(float(v) for v in palette[rng.integers(5)] * 0.7)
        x0 = int(rng.uniform(0, width))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, int(rng.uniform(0, horizon * 0.5))), (x0 + int(rng.uniform(3, 8)), horizon + 10), c, -1)
        else:
            cv2.circle(img, (x0, horizon), int(rng.uniform(10, 30)), c, -1)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def crop_background(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random canvas-sized window of the camera's scene plus a little per-image clutter."""
    x0 = int(rng.integers(0, scene.shape[1] - CANVAS_W + 1))
    bg = scene[:, x0 : x0 + CANVAS_W].copy()
    for _ in range(int(rng.integers(0, 4))):
        c = tuple(float(v) for v in rng.uniform(30, 230, 3))
        p0 = (int(rng.uniform(0, CANVAS_W)), int(rng.uniform(0, CANVAS_H)))
        if rng.random() < 0.5:
            cv2.rectangle(bg, p0, (p0[0] + int(rng.uniform(4, 30)), p0[1] + int(rng.uniform(4, 40))), c, -1)
        else:
            cv2.line(bg, p0, (int(rng.uniform(0, CANVAS_W)), int(rng.uniform(0, CANVAS_H))), c,
                     int(rng.integers(1, 4)))
    return bg


# ----------------------------------------------------------------------------------------------- occluders

OCCLUDER_KINDS = ("box", "pole", "bag", "car", "bush", "barrier", "sign")
OCCLUDER_MODE = {"box": "bottom", "pole": "side", "bag": "bottom", "car": "bottom", "bush": "bottom",
                 "barrier": "bottom", "sign": "top"}


def make_occluder(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One occluder sprite: RGBA uint8 (RGB order), alpha 255 inside the object."""
    c1, c2 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    col = lambda c, f=1.0: tuple(float(v) * f for v in c)  # noqa: E731
    if kind == "box":
        h, w = int(rng.uniform(70, 120)), int(rng.uniform(90, 140))
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        cv2.rectangle(rgb, (0, 0), (w - 1, h - 1), col(c1), -1)
        cv2.rectangle(rgb, (3, 3), (w - 4, h - 4), col(c1, 0.6), 3)
        cv2.line(rgb, (0, 0), (w - 1, h - 1), col(c1, 0.7), 3)
        a[:] = 1
    elif kind == "pole":
        h, w = CANVAS_H, int(rng.uniform(28, 50))
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        rgb[:] = col(c1)
        rgb[:, : w // 3] *= 0.75
        for y in range(0, h, int(rng.uniform(20, 50))):
            cv2.line(rgb, (0, y), (w, y), col(c2), 4)
        a[:] = 1
    elif kind == "bag":
        h, w = int(rng.uniform(70, 100)), int(rng.uniform(60, 90))
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        cv2.rectangle(a, (2, h // 4), (w - 3, h - 1), 1, -1)
        cv2.ellipse(a, (w // 2, h // 4), (w // 3, h // 5), 0, 180, 360, 1, 6)
        rgb[:] = col(c1)
        cv2.line(rgb, (2, h // 2), (w - 3, h // 2), col(c2), 3)
    elif kind == "car":
        h, w = int(rng.uniform(90, 130)), 2 * CANVAS_W
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        cv2.rectangle(a, (0, h // 3), (w - 1, h - 18), 1, -1)
        cv2.ellipse(a, (w // 2, h // 3), (w // 3, h // 3 - 2), 0, 180, 360, 1, -1)
        for wx in (w // 5, 4 * w // 5):
            cv2.circle(a, (wx, h - 18), 17, 1, -1)
        rgb[:] = col(c1)
        cv2.ellipse(rgb, (w // 2, h // 3), (w // 3 - 8, h // 3 - 10), 0, 180, 360, (60, 80, 110), -1)
        for wx in (w // 5, 4 * w // 5):
            cv2.circle(rgb, (wx, h - 18), 17, (25, 25, 25), -1)
    elif kind == "bush":
        h, w = int(rng.uniform(80, 130)), int(rng.uniform(110, 160))
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        for _ in range(14):
            cv2.circle(a, (int(rng.uniform(15, w - 15)), int(rng.uniform(h * 0.35, h - 15))), int(rng.uniform(15, 30)),
                       1, -1)
        base = np.array([40, 120, 40], np.float32) * rng.uniform(0.6, 1.3) if rng.random() < 0.6 else c1
        rgb[:] = base
        rgb *= (1 + 0.25 * rng.standard_normal((h, w, 1))).astype(np.float32)
    elif kind == "barrier":
        h, w = int(rng.uniform(60, 90)), 2 * CANVAS_W
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        a[: h // 2] = 1
        for x in (w // 6, 5 * w // 6):
            a[:, x - 5 : x + 5] = 1
        rgb[:] = col(c1)
        for x in range(-h, w, 30):
            cv2.line(rgb, (x, 0), (x + h // 2, h // 2), col(c2), 10)
    elif kind == "sign":
        h, w = int(rng.uniform(60, 90)), int(rng.uniform(110, 150))
        rgb, a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8)
        a[: int(h * 0.75)] = 1
        a[:, w // 2 - 4 : w // 2 + 4] = 1
        rgb[:] = col(c1)
        cv2.rectangle(rgb, (8, 8), (w - 9, int(h * 0.75) - 9), col(c2), -1)
    else:
        raise ValueError(f"unknown occluder kind {kind!r}; known: {OCCLUDER_KINDS}")
    return np.dstack([np.clip(rgb, 0, 255), a.astype(np.float32) * 255]).astype(np.uint8)


def _xpos(tw: float, rng: np.random.Generator) -> float:
    """Left edge of a sprite `tw` wide: sticks out of one side when narrow, spans the crop when wide."""
    if tw >= CANVAS_W:
        return float(rng.uniform(CANVAS_W - tw, 0.0))
    return float(rng.uniform(-0.3 * tw, CANVAS_W - 0.7 * tw))


def place_occluder(sprite: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Scale and position a sprite on the canvas (mode: bottom | side | top | person): returns a canvas RGBA float32
    layer (alpha in 0..1)."""
    sh, sw = sprite.shape[:2]
    if mode == "bottom":
        th = rng.uniform(0.3, 0.55) * CANVAS_H
        tw = max(sw * th / sh, rng.uniform(0.6, 1.0) * CANVAS_W)
        x0, y0 = _xpos(tw, rng), CANVAS_H - th + rng.uniform(0, 0.05) * CANVAS_H
    elif mode == "person":  # a pedestrian nearer the camera: as tall or taller, standing lower, to one side
        th = rng.uniform(0.9, 1.15) * CANVAS_H
        tw = sw * th / sh
        x0 = CANVAS_W / 2 + (1 if rng.random() < 0.5 else -1) * rng.uniform(0.15, 0.6) * CANVAS_W - tw / 2
        y0 = CANVAS_H - th + rng.uniform(0.0, 0.15) * CANVAS_H
    elif mode == "side":
        tw = rng.uniform(0.3, 0.5) * CANVAS_W
        th = max(sh * tw / sw, rng.uniform(0.6, 1.0) * CANVAS_H) if sh < CANVAS_H else CANVAS_H
        x0 = -rng.uniform(0, 0.1) * tw if rng.random() < 0.5 else CANVAS_W - tw * rng.uniform(0.9, 1.0)
        y0 = CANVAS_H - th
    else:
        th = rng.uniform(0.2, 0.35) * CANVAS_H
        tw = max(sw * th / sh, rng.uniform(0.7, 1.0) * CANVAS_W)
        x0, y0 = _xpos(tw, rng), -rng.uniform(0, 0.05) * CANVAS_H
    M = np.array([[tw / sw, 0, x0], [0, th / sh, y0]], np.float64)
    layer = cv2.warpAffine(sprite.astype(np.float32), M, (CANVAS_W, CANVAS_H), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    layer[..., 3] /= 255.0
    return layer
