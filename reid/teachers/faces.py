"""`faces` teacher: SCRFD / RetinaFace face detection (insightface's ONNX models) on person crops.

Facts from specs/teachers.md section 2; the decode is written here from those facts, not imported from
insightface, so every step is testable on its own.

Pipeline per image (the `onnx` backend):
1. `pad_image`: a person crop holds a face of only 10-25 px at its top border; padding the crop by `pad`
   (fraction of its longer side, on every side, black) gives the detector context around the head.
2. `letterbox_topleft`: resize keeping the aspect ratio to fit `det_size` ([height, width], default
   [640, 640], the insightface default; it upsamples a 256x128 crop ~2.1x, which is what makes 10-25 px faces
   detectable) and paste at the top-left of a black canvas. With `det_size: null` the padded crop is instead
   resized by `upscale` and the canvas rounded up to a multiple of 32 (models with dynamic H, W only).
3. blob = RGB, (x - 127.5) / 128, NCHW float32; input `input.1`.
4. `decode_scrfd`: outputs read by position (scores per stride, then boxes, then keypoints; 6/9/10/15
   outputs -> strides/anchors/keypoints by `scrfd_layout`); anchor centres (x*stride, y*stride), no +0.5;
   keep score >= `det_thresh` (default 0.3: person crops have small low-confidence faces; the spec reports
   0.2-0.3 as the remedy, insightface's default is 0.5); distances x stride; / det_scale; NMS at IoU 0.4.
5. `select_face`: back to crop coordinates, then keep the highest-scoring face whose box centre lies in the
   upper `upper_fraction` (default 0.5) of the crop: a pedestrian's own face is in the upper half; faces of
   other people or false positives lower down are ignored.
6. `norm_crop`: 5-point similarity (`umeyama_similarity`) to the ArcFace template (112-px base, scaled by
   crop_size / 112) -> aligned RGB face of `crop_size` (default 112).

Stored fields (docs/contracts.md): `has_face` uint8, `box` float32 (4,) x1,y1,x2,y2, `score` float32,
`landmarks` float32 (5,2) (left eye, right eye, nose, left mouth, right mouth; image pixels), `crop` uint8
(S,S,3) RGB. An image without a face is recorded with has_face 0, score 0, NaN box/landmarks, zero crop:
never dropped.

The `oracle` backend (synthetic worlds only) reads has_face / face_box / face_landmarks from the world's
ground truth, score 1.0, and aligns the crop from the image the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from reid.data.index import IndexRow
from reid.cache.h5 import Field
from reid.teachers.base import TEACHERS, Teacher, require_weights
from reid.teachers.onnx_utils import ModelSignatureError, check_signature, create_session, describe_signature
from reid.vocab import arcface_template


# number of outputs -> (strides, anchors per location, has keypoints), as insightface routes SCRFD exports
SCRFD_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}

INPUT_NAME = "input.1"
WEIGHTS_HELP = (
    "insightface model packs (not downloaded by this project): det_10g.onnx from buffalo_l.zip, det_500m.onnx "
    "from buffalo_s.zip, or scrfd_10g_bnkps.onnx from antelopev2.zip (github.com/deepinsight/insightface, "
    "model_zoo); unzip and point to the .onnx file"
)

DEFAULTS: dict[str, Any] = {
    "det_size": [640, 640],
    "det_thresh": 0.3,
    "nms_iou": 0.4,
    "pad": 0.15,
    "upscale": 1.0,
    "upper_fraction": 0.5,
    "crop_size": 112,
}


# --- pure functions -----------------------------------------------------------------------------------------
def scrfd_layout(n_outputs: int) -> tuple[tuple[int, ...], int, bool]:
    """(strides, anchors per location, keypoints?) for an SCRFD/RetinaFace ONNX with `n_outputs` outputs."""
    if n_outputs not in SCRFD_LAYOUTS:
        raise ModelSignatureError(
            f"a RetinaFace/SCRFD detector has 6, 9, 10 or 15 outputs (scores, boxes[, keypoints] per stride); "
            f"found {n_outputs}"
        )
    return SCRFD_LAYOUTS[n_outputs]


def anchor_centers(h: int, w: int, stride: int, num_anchors: int) -> np.ndarray:
    """Anchor centres (h*w*num_anchors, 2) = (x*stride, y*stride), row-major over (y, x, anchor), no +0.5."""
    ys, xs = np.mgrid[:h, :w]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, num_anchors, axis=0)


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes x1,y1,x2,y2 = (px - l, py - t, px + r, py + b) from centres (K,2) and distances (K,4) in pixels."""
    return np.concatenate([points - distance[:, :2], points + distance[:, 2:4]], axis=1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Keypoints (K, P, 2) = centre + (dx, dy) from centres (K,2) and offsets (K, 2P) in pixels."""
    return points[:, None, :] + distance.reshape(len(distance), distance.shape[1] // 2, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.4) -> np.ndarray:
    """Indices kept by greedy NMS (highest score first; IoU with continuous areas, no +1 pixel)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    import torch
    from torchvision.ops import nms as tv_nms

    keep = tv_nms(torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
                  torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)), float(iou))
    return keep.numpy().astype(np.int64)


def pad_image(img: np.ndarray, pad: float) -> tuple[np.ndarray, int]:
    """Black margin of round(pad * longer side) px on every side; returns (padded, margin)."""
    margin = int(round(pad * max(img.shape[:2])))
    if margin <= 0:
        return img, 0
    return cv2.copyMakeBorder(img, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0), margin


def letterbox_topleft(img: np.ndarray, det_size: Sequence[int]) -> tuple[np.ndarray, float]:
    """Fit `img` into det_size [h, w] keeping its aspect ratio, pasted top-left on black; -> (canvas, det_scale).

    det_scale = new_h / img_h (coordinates on the canvas / det_scale = coordinates in img).
    """
    det_h, det_w = int(det_size[0]), int(det_size[1])
    h, w = img.shape[:2]
    if h / w > det_h / det_w:
        new_h, new_w = det_h, int(det_h * w / h)
    else:
        new_w, new_h = det_w, int(det_w * h / w)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    canvas = np.zeros((det_h, det_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
    return canvas, new_h / h


def upscale_canvas(img: np.ndarray, upscale: float, multiple: int = 32) -> tuple[np.ndarray, float]:
    """Resize by `upscale` and pad (bottom/right, black) to multiples of `multiple`; -> (canvas, det_scale)."""
    h, w = img.shape[:2]
    new_h, new_w = max(int(round(h * upscale)), 1), max(int(round(w * upscale)), 1)
    canvas = np.zeros((math.ceil(new_h / multiple) * multiple, math.ceil(new_w / multiple) * multiple, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    return canvas, new_h / h


def scrfd_blob(canvas_bgr: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float32 RGB blob, (x - 127.5) / 128."""
    rgb = canvas_bgr[:, :, ::-1].astype(np.float32)
    return ((rgb - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()


@dataclass
class Detections:
    """Faces of one image, sorted by score: boxes (K,4), scores (K,), landmarks (K,5,2) or None."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None


def decode_scrfd(
    outputs: Sequence[np.ndarray],
    input_hw: Sequence[int],
    det_scale: float,
    thresh: float,
    strides: Sequence[int] | None = None,
    num_anchors: int | None = None,
    use_kps: bool | None = None,
    nms_iou: float = 0.4,
) -> Detections:
    """Decode one image's SCRFD outputs (2-D, read by position) into boxes/scores/landmarks in the pre-letterbox
    frame (canvas coordinates / det_scale), thresholded, sorted by score and NMS-filtered.

    strides / num_anchors / use_kps default to `scrfd_layout(len(outputs))`.
    """
    layout = scrfd_layout(len(outputs))
    strides = tuple(strides or layout[0])
    num_anchors = num_anchors or layout[1]
    use_kps = layout[2] if use_kps is None else use_kps
    n = len(strides)
    boxes, scores, kps = [], [], []
    for level, stride in enumerate(strides):
        fh, fw = int(input_hw[0]) // stride, int(input_hw[1]) // stride
        centres = anchor_centers(fh, fw, stride, num_anchors)
        score = np.asarray(outputs[level], dtype=np.float32).reshape(-1)
        dist = np.asarray(outputs[n + level], dtype=np.float32).reshape(-1, 4)
        if len(score) != len(centres) or len(dist) != len(centres):
            raise ModelSignatureError(
                f"SCRFD stride {stride}: expected {len(centres)} = {fh}x{fw}x{num_anchors} rows for a "
                f"{input_hw[0]}x{input_hw[1]} input, got scores {len(score)}, boxes {len(dist)}"
            )
        keep = np.where(score >= thresh)[0]
        scores.append(score[keep])
        boxes.append(distance2bbox(centres[keep], dist[keep] * stride))
        if use_kps:
            off = np.asarray(outputs[2 * n + level], dtype=np.float32).reshape(len(centres), -1)
            kps.append(distance2kps(centres[keep], off[keep] * stride))
    score_all = np.concatenate(scores)
    box_all = np.concatenate(boxes).reshape(-1, 4) / det_scale
    kps_all = np.concatenate(kps) / det_scale if use_kps else None
    order = np.argsort(-score_all, kind="stable")
    box_all, score_all = box_all[order], score_all[order]
    keep = nms(box_all, score_all, nms_iou)
    return Detections(
        boxes=box_all[keep].astype(np.float32),
        scores=score_all[keep].astype(np.float32),
        landmarks=None if kps_all is None else kps_all[order][keep].astype(np.float32),
    )


def select_face(det: Detections, image_hw: Sequence[int], upper_fraction: float = 0.5) -> int | None:
    """Index of the best face whose box centre is inside the image and in its upper `upper_fraction`."""
    h, w = image_hw
    for i, (x1, y1, x2, y2) in enumerate(det.boxes):  # sorted by score: the first match is the best
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if 0 <= cx < w and 0 <= cy < upper_fraction * h:
            return i
    return None


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src (N,2) onto dst (N,2).

    Umeyama (1991): with centred points and covariance C = dst_c^T src_c / N = U S V^T, R = U D V^T
    (D = diag(1, sign det(U V^T))), scale = tr(S D) / var(src), t = mean(dst) - scale R mean(src).
    Returns the 2x3 matrix [scale R | t].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ d @ vt
    var_s = (sc**2).sum(axis=1).mean()
    scale = float(np.trace(np.diag(s) @ d) / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def norm_crop(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned face (size, size, C): warp `img` by the similarity taking the 5 landmarks to the template."""
    matrix = umeyama_similarity(landmarks, arcface_template(size))
    return cv2.warpAffine(img, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


# --- the teacher ------------------------------------------------------------------------------------------
def _merge_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"faces teacher: unknown params {unknown}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **params}


@TEACHERS.register("faces")
class FacesTeacher(Teacher):
    """Face box, score, 5 landmarks and aligned crop per image (SCRFD/RetinaFace ONNX or synthetic oracle)."""

    name = "faces"
    backends = ("onnx", "oracle")
    defaults = DEFAULTS
    weights_source = {"onnx": WEIGHTS_HELP}

    def __init__(self, backend: str, model_path: str | Path | None = None, device: str = "cpu", **params: Any):
        super().__init__(backend, model_path, device, **_merge_params(params))
        self.crop_size = int(self.params["crop_size"])
        self._session: Any = None
        self.providers: list[str] = []
        if backend == "onnx":
            self.model_path = require_weights(model_path, "face detector (SCRFD/RetinaFace ONNX)", WEIGHTS_HELP,
                                              "teachers.faces.model")

    def fields(self) -> dict[str, Field]:
        s = self.crop_size
        return {
            "has_face": Field((), "uint8", "vector"),
            "box": Field((4,), "float32", "vector"),
            "score": Field((), "float32", "vector"),
            "landmarks": Field((5, 2), "float32", "vector"),
            "crop": Field((s, s, 3), "uint8", "image"),
        }

    # decode worker ------------------------------------------------------------------------------------------
    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path, index: int | None = None) -> dict:
        if image_bgr is None:
            raise ValueError(f"faces teacher needs the decoded image of {row.path}")
        item: dict[str, Any] = {"image": image_bgr, "path": row.path}
        if self.backend == "oracle":
            item["gt"] = read_face_groundtruth(root, row.path)
            return item
        padded, margin = pad_image(image_bgr, float(self.params["pad"]))
        if self.params["det_size"]:
            canvas, det_scale = letterbox_topleft(padded, self.params["det_size"])
        else:
            canvas, det_scale = upscale_canvas(padded, float(self.params["upscale"]))
        item.update(blob=scrfd_blob(canvas), det_scale=det_scale, margin=margin)
        return item

    # main process ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.backend == "onnx" and self._session is None:
            session, self.providers = create_session(self.model_path, prefer_gpu=self.device != "cpu")
            check_signature(session, [INPUT_NAME], path=self.model_path)
            self.layout = scrfd_layout(len(session.get_outputs()))  # raises on a non-detector output count
            shape = session.get_inputs()[0].shape
            if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
                raise ModelSignatureError(f"{self.model_path}: expected input {INPUT_NAME} (N,3,H,W); "
                                          f"model has {describe_signature(session)}")
            self.batchable = not isinstance(shape[0], int) and bool(self.params["det_size"])
            self._session = session

    def infer(self, items: list[dict]) -> dict[str, np.ndarray]:
        rows = [self._oracle_faces(it) for it in items] if self.backend == "oracle" else self._detect(items)
        return self._assemble(items, rows)

    def _detect(self, items: list[dict]) -> list[tuple[np.ndarray, float, np.ndarray] | None]:
        self.setup()
        if self.batchable and len(items) > 1:
            outs = self._session.run(None, {INPUT_NAME: np.concatenate([it["blob"] for it in items])})
            if all(o.ndim == 3 and len(o) == len(items) for o in outs):
                return [self._pick([o[b] for o in outs], it) for b, it in enumerate(items)]
            self.batchable = False  # dynamic batch but flattened 2-D outputs: one image per run from now on
        found = []
        for item in items:
            outs = self._session.run(None, {INPUT_NAME: item["blob"]})
            found.append(self._pick([o[0] if o.ndim == 3 else o for o in outs], item))
        return found

    def _pick(self, outputs: list[np.ndarray], item: dict) -> tuple[np.ndarray, float, np.ndarray] | None:
        strides, anchors, use_kps = self.layout
        if not use_kps:
            raise ModelSignatureError(f"{self.model_path}: detector has no keypoint outputs; face alignment needs "
                                      "the 5 landmarks (use a *_kps / det_10g model)")
        det = decode_scrfd(outputs, item["blob"].shape[2:], item["det_scale"], float(self.params["det_thresh"]),
                           strides, anchors, use_kps, float(self.params["nms_iou"]))
        det.boxes -= item["margin"]
        det.landmarks -= item["margin"]
        best = select_face(det, item["image"].shape[:2], float(self.params["upper_fraction"]))
        if best is None:
            return None
        return det.boxes[best], float(det.scores[best]), det.landmarks[best]

    @staticmethod
    def _oracle_faces(item: dict) -> tuple[np.ndarray, float, np.ndarray] | None:
        gt = item["gt"]
        if not gt["has_face"]:
            return None
        return gt["face_box"], 1.0, gt["face_landmarks"]

    def _assemble(self, items: list[dict], faces: list) -> dict[str, np.ndarray]:
        n, s = len(items), self.crop_size
        out = {
            "has_face": np.zeros(n, np.uint8),
            "box": np.full((n, 4), np.nan, np.float32),
            "score": np.zeros(n, np.float32),
            "landmarks": np.full((n, 5, 2), np.nan, np.float32),
            "crop": np.zeros((n, s, s, 3), np.uint8),
        }
        for i, (item, face) in enumerate(zip(items, faces)):
            if face is None:
                continue
            box, score, lms = face
            out["has_face"][i] = 1
            out["box"][i] = box
            out["score"][i] = score
            out["landmarks"][i] = lms
            out["crop"][i] = norm_crop(item["image"], lms, s)[:, :, ::-1]
        return out

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        if self.backend == "onnx":
            prov["providers"] = list(self.providers)
        else:
            prov["oracle"] = "synthetic ground truth (valid only for synthetic worlds)"
        return prov


def read_face_groundtruth(root: Path, rel_path: str) -> dict[str, Any]:
    """has_face / face_box / face_landmarks of one synthetic image, checked for shape (oracle backend)."""
    from reid.data.groundtruth import load_groundtruth

    gt = load_groundtruth(root, rel_path)
    for key in ("has_face", "face_box", "face_landmarks"):
        if key not in gt:
            raise KeyError(f"ground truth of {rel_path} under {root} has no '{key}' (is this a synthetic world?)")
    has_face = bool(np.asarray(gt["has_face"]))
    box = np.asarray(gt["face_box"], dtype=np.float32).reshape(4)
    lms = np.asarray(gt["face_landmarks"], dtype=np.float32).reshape(5, 2)
    if has_face and not (np.isfinite(box).all() and np.isfinite(lms).all()):
        raise ValueError(f"ground truth of {rel_path}: has_face is set but face_box/face_landmarks hold NaN")
    return {"has_face": has_face, "face_box": box, "face_landmarks": lms}
