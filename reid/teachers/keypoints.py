"""`keypoints` teacher: HRNet-W32 COCO-17 heatmaps, coordinates and scores for every person crop.

Facts from specs/teachers.md section 4 (official deep-high-resolution-net.pytorch conventions); the code is
written here from those facts.

Pipeline (`onnx` and `torch` backends):
1. `hrnet_center_scale` / `hrnet_box_affine`: the box is the whole crop (x1, y1, x2, y2) = (0, 0, W, H);
   centre = box centre, the box is enlarged to the model aspect w/h = 0.75, scale = (w/200, h/200) x 1.25;
   the affine maps the centre to the middle of the 192x256 input and scale[0]*200 px to 192 px (no "-1"
   convention; pixel indices are the coordinates, as in cv2.warpAffine).
2. `preprocess_hrnet`: linear warp (black border), BGR -> RGB, /255, ImageNet mean/std, CHW.
3. Network: ONNX (`input` (N,3,256,192) -> one output (N,17,64,48)) or the pure-PyTorch HRNet-W32 of
   reid/models/hrnet.py loading `pose_hrnet_w32_256x192.pth`. Optional flip test (`flip_test`, default
   true as in the official test config): the mirrored input's heatmaps are mirrored back, left/right joints
   swapped (`COCO_FLIP_PAIRS`), shifted right by one pixel and averaged with the plain ones.
4. Decode: `get_max_preds` (argmax per joint; score = peak value; joints with peak <= 0 get coordinate 0 like
   the official code), `refine_quarter_offset` (+/- 0.25 px toward the higher neighbour when not on the border;
   the official code also skips index 1, we only skip true border pixels), inverse heatmap affine to image
   pixels.
5. Stored heatmaps: warped from the heatmap's affine frame back into the IMAGE frame on a grid of
   `heatmap_size` [h, w] (default [64, 32] = 1/4 of a 256x128 crop, the resolution the trainers use; grid
   point (i, j) is image pixel (j * W / w, i * H / h)), float16.

`oracle` backend (synthetic worlds only): Gaussian heatmaps (sigma `sigma` = 2 grid pixels) rendered on the
same image-frame grid at the ground-truth keypoints with visibility > 0; coords = ground truth x, y; scores = 1
for visible (v=2), 0.5 for occluded (v=1, e.g. behind an occluder), 0 for not labelled (v=0; its heatmap is all
zero). Each heatmap peaks at its joint's score, as a real estimator's does (HRNet's score IS its heatmap maximum):
an occluded joint is there but weak, never drawn at full strength.

Fields: `heatmaps` float16 (17, h, w), `coords` float32 (17, 2) image pixels (x, y), `scores` float32 (17,).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from reid.data.index import IndexRow
from reid.cache.h5 import Field
from reid.teachers.base import TEACHERS, Teacher, require_weights
from reid.teachers.onnx_utils import ModelSignatureError, check_signature, create_session, describe_signature
from reid.vocab import COCO_FLIP_PAIRS, IMAGENET_MEAN, IMAGENET_STD, NUM_JOINTS

PIXEL_STD = 200.0  # the official "scale" unit

INPUT_NAME = "input"
WEIGHTS_HELP = {
    "onnx": "an ONNX export of HRNet-W32 COCO 256x192 (input `input` (N,3,256,192) -> heatmaps (N,17,64,48)), "
            "e.g. made with mmdeploy from mmpose's td-hm_hrnet-w32_8xb64-210e_coco-256x192 checkpoint",
    "torch": "pose_hrnet_w32_256x192.pth from the model zoo of github.com/leoxiaobin/deep-high-resolution-net"
             ".pytorch (Google Drive / OneDrive links in its README)",
}

DEFAULTS: dict[str, Any] = {
    "input_size": [256, 192],
    "aspect": 0.75,
    "box_pad": 1.25,
    "heatmap_size": [64, 32],
    "flip_test": True,
    "arch": "w32",
    "sigma": 2.0,
}


# --- geometry ---------------------------------------------------------------------------------------------
def hrnet_center_scale(box: Sequence[float], aspect: float = 0.75, pad: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Official box -> (centre, scale): box (x1,y1,x2,y2) enlarged to w/h = aspect, scale = (w, h)/200 * pad."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    centre = np.array([x1 + 0.5 * w, y1 + 0.5 * h], np.float64)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return centre, np.array([w, h], np.float64) / PIXEL_STD * pad


def hrnet_box_affine(box: Sequence[float], aspect: float = 0.75, pad: float = 1.25,
                     out: Sequence[int] = (192, 256)) -> np.ndarray:
    """2x3 affine image -> network frame of size out=(w, h): centre -> (w/2, h/2), scale[0]*200 px -> w px."""
    centre, scale = hrnet_center_scale(box, aspect, pad)
    s = float(out[0]) / (scale[0] * PIXEL_STD)
    return np.array([[s, 0.0, out[0] / 2 - s * centre[0]], [0.0, s, out[1] / 2 - s * centre[1]]], np.float64)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to points (..., 2)."""
    pts = np.asarray(points, np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def preprocess_hrnet(img_bgr: np.ndarray, box: Sequence[float] | None = None, input_size: Sequence[int] = (256, 192),
                     aspect: float = 0.75, pad: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Warp the box (default: the whole image) to input_size [h, w]; RGB, /255, ImageNet mean/std -> (3,h,w), M."""
    h_img, w_img = img_bgr.shape[:2]
    box = (0.0, 0.0, float(w_img), float(h_img)) if box is None else box
    in_h, in_w = int(input_size[0]), int(input_size[1])
    matrix = hrnet_box_affine(box, aspect, pad, out=(in_w, in_h))
    warped = cv2.warpAffine(img_bgr, matrix, (in_w, in_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    rgb = warped[:, :, ::-1].astype(np.float32) / 255.0
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy(), matrix


# --- heatmap decode ---------------------------------------------------------------------------------------
def get_max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax per joint of (N, J, h, w) -> coords (N, J, 2) as (x, y) floats and peak values (N, J).

    Joints whose peak is <= 0 get coordinate (0, 0), as in the official code.
    """
    n, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, j, h * w)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0].astype(np.float32)
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    coords[maxvals <= 0] = 0.0
    return coords, maxvals


def refine_quarter_offset(coords: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Move each integer peak 0.25 px toward its higher neighbour, per axis, unless the peak is on the border."""
    out = coords.astype(np.float32).copy()
    n, j, h, w = heatmaps.shape
    for b in range(n):
        for k in range(j):
            px, py = int(coords[b, k, 0] + 0.5), int(coords[b, k, 1] + 0.5)
            if 0 < px < w - 1 and 0 < py < h - 1:
                hm = heatmaps[b, k]
                diff = np.array([hm[py, px + 1] - hm[py, px - 1], hm[py + 1, px] - hm[py - 1, px]])
                out[b, k] += np.sign(diff) * 0.25
    return out


def flip_back(heatmaps: np.ndarray, pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """Heatmaps of a mirrored input -> the original frame: mirror the width axis and swap left/right joints."""
    out = heatmaps[..., ::-1].copy()
    for a, b in pairs:
        out[:, [a, b]] = out[:, [b, a]]
    return out


def shift_right(heatmaps: np.ndarray) -> np.ndarray:
    """The official one-pixel right shift of flipped-back heatmaps (column 0 keeps its value)."""
    out = heatmaps.copy()
    out[..., 1:] = heatmaps[..., :-1]
    return out


def flip_test_average(plain: np.ndarray, mirrored: np.ndarray,
                      pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """Average of the plain heatmaps and the mirrored input's heatmaps flipped back and shifted."""
    return 0.5 * (plain + shift_right(flip_back(mirrored, pairs)))


def decode_heatmaps(heatmaps: np.ndarray, hm_affines: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, h, w) heatmaps + per-image image->heatmap affines -> image coords (N, J, 2), scores (N, J)."""
    coords, maxvals = get_max_preds(heatmaps)
    coords = refine_quarter_offset(coords, heatmaps)
    image_coords = np.stack([apply_affine(invert_affine(m), c) for m, c in zip(hm_affines, coords)])
    return image_coords.astype(np.float32), maxvals


def grid_scale(image_hw: Sequence[int], grid_hw: Sequence[int]) -> np.ndarray:
    """2x3 affine image pixels -> image-frame grid of size grid_hw (x * gw / W, y * gh / H)."""
    return np.array([[grid_hw[1] / image_hw[1], 0, 0], [0, grid_hw[0] / image_hw[0], 0]], np.float64)


def heatmaps_to_image_frame(heatmaps: np.ndarray, hm_affine: np.ndarray, image_hw: Sequence[int],
                            grid_hw: Sequence[int]) -> np.ndarray:
    """Warp one image's (J, h, w) network heatmaps into the image frame, on a grid of grid_hw [h, w]."""
    g = grid_scale(image_hw, grid_hw)
    inv = invert_affine(hm_affine)  # heatmap -> image
    m = np.concatenate([g[:, :2] @ inv[:, :2], (g[:, :2] @ inv[:, 2:]) + g[:, 2:]], axis=1)
    size = (int(grid_hw[1]), int(grid_hw[0]))
    return np.stack([cv2.warpAffine(np.ascontiguousarray(hm, np.float32), m, size, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for hm in heatmaps])


def render_gaussian_heatmaps(keypoints: np.ndarray, image_hw: Sequence[int], grid_hw: Sequence[int],
                             sigma: float = 2.0) -> np.ndarray:
    """(J, gh, gw) Gaussians exp(-d^2 / (2 sigma^2)) (grid pixels) at keypoints (J, 3) with visibility > 0."""
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    centres = apply_affine(grid_scale(image_hw, grid_hw), keypoints[:, :2])
    ys, xs = np.mgrid[:gh, :gw].astype(np.float64)
    d2 = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    maps = np.exp(-d2 / (2.0 * sigma**2))
    maps[keypoints[:, 2] <= 0] = 0.0
    return maps.astype(np.float32)


def oracle_scores(visibility: np.ndarray) -> np.ndarray:
    """Visibility 2 -> 1.0, 1 (occluded) -> 0.5, 0 (not labelled) -> 0.0."""
    v = np.asarray(visibility)
    return np.where(v >= 2, 1.0, np.where(v >= 1, 0.5, 0.0)).astype(np.float32)


# --- the teacher ------------------------------------------------------------------------------------------
def _merge_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"keypoints teacher: unknown params {unknown}; known: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **params}
    if merged["arch"] not in ("w32", "tiny"):
        raise ValueError(f"keypoints teacher: arch must be 'w32' (the official net) or 'tiny' (tests), got "
                         f"{merged['arch']!r}")
    return merged


@TEACHERS.register("keypoints")
class KeypointsTeacher(Teacher):
    """COCO-17 heatmaps (image frame), coordinates and scores per image (HRNet ONNX / PyTorch, or oracle)."""

    name = "keypoints"
    backends = ("onnx", "torch", "oracle")
    defaults = DEFAULTS
    weights_source = WEIGHTS_HELP

    def __init__(self, backend: str, model_path: str | Path | None = None, device: str = "cpu", **params: Any):
        super().__init__(backend, model_path, device, **_merge_params(params))
        self.grid_hw = tuple(int(v) for v in self.params["heatmap_size"])
        self.input_hw = tuple(int(v) for v in self.params["input_size"])
        self._net: Any = None
        self.providers: list[str] = []
        if backend in WEIGHTS_HELP:
            key = "teachers.keypoints.model"
            self.model_path = require_weights(model_path, f"HRNet-W32 COCO ({backend})", WEIGHTS_HELP[backend], key)

    def fields(self) -> dict[str, Field]:
        return {
            "heatmaps": Field((NUM_JOINTS, *self.grid_hw), "float16", "heatmaps"),
            "coords": Field((NUM_JOINTS, 2), "float32", "vector"),
            "scores": Field((NUM_JOINTS,), "float32", "vector"),
        }

    # decode worker ------------------------------------------------------------------------------------------
    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path, index: int | None = None) -> dict:
        if image_bgr is None:
            raise ValueError(f"keypoints teacher needs the decoded image of {row.path}")
        item: dict[str, Any] = {"image_hw": image_bgr.shape[:2], "path": row.path}
        if self.backend == "oracle":
            item["keypoints"] = read_keypoint_groundtruth(root, row.path)
            return item
        p = self.params
        item["input"], _ = preprocess_hrnet(image_bgr, None, self.input_hw, float(p["aspect"]), float(p["box_pad"]))
        return item

    # main process ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self._net is not None or self.backend == "oracle":
            return
        if self.backend == "onnx":
            self._setup_onnx()
        else:
            self._setup_torch()

    def _setup_onnx(self) -> None:
        session, self.providers = create_session(self.model_path, prefer_gpu=self.device != "cpu")
        check_signature(session, [INPUT_NAME], n_outputs=1, path=self.model_path)
        in_shape, out_shape = session.get_inputs()[0].shape, session.get_outputs()[0].shape
        static_hw = [d for d in in_shape[2:] if isinstance(d, int)]
        if len(in_shape) != 4 or (len(static_hw) == 2 and tuple(static_hw) != self.input_hw):
            raise ModelSignatureError(f"{self.model_path}: expected input {INPUT_NAME} (N,3,{self.input_hw[0]},"
                                      f"{self.input_hw[1]}) (params input_size); model has "
                                      f"{describe_signature(session)}")
        if len(out_shape) != 4 or (isinstance(out_shape[1], int) and out_shape[1] != NUM_JOINTS):
            raise ModelSignatureError(f"{self.model_path}: expected one output (N,{NUM_JOINTS},h,w); model has "
                                      f"{describe_signature(session)}")
        self.batchable = not isinstance(in_shape[0], int)
        self._net = session

    def _setup_torch(self) -> None:
        from reid.models.hrnet import hrnet_tiny, hrnet_w32

        net = hrnet_w32() if self.params["arch"] == "w32" else hrnet_tiny()
        net.load_pose_checkpoint(self.model_path, strict=True)
        self._net = net.to(self.device).eval()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.backend == "onnx":
            if self.batchable:
                return self._net.run(None, {INPUT_NAME: batch})[0]
            return np.concatenate([self._net.run(None, {INPUT_NAME: x[None]})[0] for x in batch])
        import torch

        with torch.inference_mode():
            return self._net(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def _heatmaps(self, batch: np.ndarray) -> np.ndarray:
        plain = self._forward(batch)
        if plain.ndim != 4 or plain.shape[1] != NUM_JOINTS:
            raise ModelSignatureError(f"{self.model_path}: heatmaps of shape {plain.shape}, expected (N,17,h,w)")
        if not self.params["flip_test"]:
            return plain
        return flip_test_average(plain, self._forward(np.ascontiguousarray(batch[..., ::-1])))

    def infer(self, items: list[dict]) -> dict[str, np.ndarray]:
        if self.backend == "oracle":
            return self._oracle(items)
        self.setup()
        heatmaps = self._heatmaps(np.stack([it["input"] for it in items]))
        hm_hw = heatmaps.shape[2:]
        p = self.params
        affines = [hrnet_box_affine((0, 0, it["image_hw"][1], it["image_hw"][0]), float(p["aspect"]),
                                    float(p["box_pad"]), out=(hm_hw[1], hm_hw[0])) for it in items]
        coords, scores = decode_heatmaps(heatmaps, affines)
        frame = np.stack([heatmaps_to_image_frame(h, m, it["image_hw"], self.grid_hw)
                          for h, m, it in zip(heatmaps, affines, items)])
        return {"heatmaps": frame.astype(np.float16), "coords": coords, "scores": scores.astype(np.float32)}

    def _oracle(self, items: list[dict]) -> dict[str, np.ndarray]:
        sigma = float(self.params["sigma"])
        kps = [it["keypoints"] for it in items]
        scores = np.stack([oracle_scores(k[:, 2]) for k in kps])
        maps = np.stack([render_gaussian_heatmaps(k, it["image_hw"], self.grid_hw, sigma) for k, it in zip(kps, items)])
        return {
            "heatmaps": (maps * scores[:, :, None, None]).astype(np.float16),  # peak = score
            "coords": np.stack([k[:, :2] for k in kps]).astype(np.float32),
            "scores": scores,
        }

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        if self.backend == "onnx":
            prov["providers"] = list(self.providers)
        elif self.backend == "oracle":
            prov["oracle"] = "synthetic ground truth (valid only for synthetic worlds)"
        return prov


def read_keypoint_groundtruth(root: Path, rel_path: str) -> np.ndarray:
    """COCO-17 (x, y, visibility) of one synthetic image, checked for shape (oracle backend)."""
    from reid.data.groundtruth import load_groundtruth

    gt = load_groundtruth(root, rel_path)
    if "keypoints" not in gt:
        raise KeyError(f"ground truth of {rel_path} under {root} has no 'keypoints' (is this a synthetic world?)")
    kps = np.asarray(gt["keypoints"], dtype=np.float32)
    if kps.shape != (NUM_JOINTS, 3):
        raise ValueError(f"ground truth of {rel_path}: keypoints have shape {kps.shape}, expected (17, 3)")
    return kps
