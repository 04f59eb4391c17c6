"""`restored_faces` teacher: GPEN blind face restoration of the faces found by the `faces` teacher.

Input: the `faces` cache (params `faces_cache`), row-aligned with the same index: `has_face` (N,), `landmarks`
(N, 5, 2) in image pixels, `crop` (N, S, S, 3) RGB aligned to the ArcFace 5-point template at S px.

Alignment (params `align_source`):
- `image` (default, better quality): a similarity transform fitted (least squares, Umeyama) from the row's five
  landmarks to GPEN's reference points at the model size M warps the ORIGINAL image into GPEN's M x M input, so
  the face is resampled only once before restoration.
- `crop`: the cached ArcFace crop is re-warped to GPEN's reference points (template -> template similarity);
  cheaper, but resamples an already resampled, usually tiny face.
In both cases the restored M x M face is warped back with the composed transform (GPEN frame -> image ->
ArcFace crop frame at S) into exactly the geometry and size of `faces.crop`, so `restored[i]` is pixel-aligned
with `crop[i]` (DeSKPro compares the two). When shrinking (M > S) the face is first area-resized to about the
target scale, then warped, to avoid aliasing.

GPEN I/O (yangxy/GPEN, shared/specs/teachers.md section 3): BGR face -> resize to M -> /255 -> (x - 0.5) / 0.5 ->
CHW -> RGB; output RGB in [-1, 1] -> x 0.5 + 0.5 -> BGR -> clip [0, 1] -> x 255 -> uint8 (truncation, as the
official `tensor2img`).

Backends: `onnx` (input `input` -> output `output`, 1x3xMxM; exports with extra outputs are accepted when one is
named `output` or is the only 4-D 3-channel one), `oracle` (the synthetic world's clean `face_hr`, resized to S:
a perfect restoration, for rows where both the faces cache and the ground truth have a face).

Fields: `has_face` uint8 (N,) (copied from `faces`; rows without a face are kept, zeros), `restored` uint8
(N, S, S, 3) RGB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from reid.data.index import IndexRow
from reid.cache.h5 import Field
from reid.teachers.base import TEACHERS, Teacher, file_sha256, require_weights
from reid.vocab import arcface_template  # the one template `faces.crop` is aligned to

log = logging.getLogger(__name__)

# GPEN's reference points at 512 px (96x112 reference, inner padding 0.25; spec section 3).
GPEN_512 = np.array([[202.0, 242.9], [309.4, 242.3], [256.1, 304.0], [212.0, 366.8], [300.9, 366.3]],
                    dtype=np.float64)
ALIGN_SOURCES = ("image", "crop")
DEFAULT_MODEL_SIZE = 512

GPEN_WEIGHTS_HELP = (
    "GPEN (yangxy/GPEN): an ONNX export of GPEN-BFR-512 or GPEN-BFR-256 with input `input` and output `output` "
    "(the official misc/onnx_export.py writes this signature; community files such as facefusion's "
    "gpen_bfr_512.onnx have it too)"
)


# --- geometry ------------------------------------------------------------------------------------------------
def gpen_template(size: int) -> np.ndarray:
    """GPEN's reference points for an M-px model input (the 512 points scaled by M/512)."""
    return GPEN_512 * (size / 512.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst points, as 2x3.

    Umeyama (1991): with centred points a = src - mu_s, b = dst - mu_d, covariance C = b^T a / n and its SVD
    U D V^T, R = U diag(1, det(U V^T)) V^T, scale c = trace(D diag(1, d)) / var(a), t = mu_d - c R mu_s.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"similarity_transform: need matching (n>=2, 2) point sets, got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_a = (a ** 2).sum() / len(a)
    if var_a <= 0 or not np.isfinite(var_a):
        raise ValueError(f"similarity_transform: degenerate source points {src.tolist()}")
    u, d, vt = np.linalg.svd(b.T @ a / len(a))
    sign = np.diag([1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign)) / var_a
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 of `outer` after `inner` (x -> outer(inner(x)))."""
    o = np.vstack([outer, [0.0, 0.0, 1.0]])
    i = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (o @ i)[:2]


def affine_scale(affine: np.ndarray) -> float:
    """Uniform scale of a similarity 2x3 (sqrt of the determinant of its linear part)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(affine)[:, :2]))))


def warp_face_back(face: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Warp an M x M face into an S x S crop with `affine` (face frame -> crop frame), area-resizing first
    when the transform shrinks by more than 1.5x so the linear warp does not alias."""
    scale = affine_scale(affine)
    if scale < 1.0 / 1.5:
        m = face.shape[0]
        small = max(2, int(round(m * scale)))
        f = small / m
        face = cv2.resize(face, (small, small), interpolation=cv2.INTER_AREA)
        affine = compose_affine(affine, np.array([[1.0 / f, 0.0, 0.0], [0.0, 1.0 / f, 0.0]]))
        # cv2.resize maps pixel centres: x_small = (x + 0.5) f - 0.5, so x = (x_small + 0.5) / f - 0.5
        affine = compose_affine(affine, np.array([[1.0, 0.0, 0.5 - 0.5 * f], [0.0, 1.0, 0.5 - 0.5 * f]]))
    return cv2.warpAffine(face, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


# --- GPEN I/O ------------------------------------------------------------------------------------------------
def preprocess_gpen(face_bgr: np.ndarray, size: int) -> np.ndarray:
    """BGR uint8 face -> (1, 3, M, M) float32: resize to M, /255, (x - 0.5) / 0.5, CHW, BGR -> RGB."""
    if face_bgr.ndim != 3 or face_bgr.shape[2] != 3:
        raise ValueError(f"preprocess_gpen: expected an HxWx3 BGR face, got shape {face_bgr.shape}")
    if face_bgr.shape[:2] != (size, size):
        face_bgr = cv2.resize(face_bgr, (size, size), interpolation=cv2.INTER_LINEAR)
    x = (face_bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[::-1][None])


def postprocess_gpen(out: np.ndarray) -> np.ndarray:
    """GPEN output (3, M, M) or (1, 3, M, M) RGB in [-1, 1] -> (M, M, 3) uint8 BGR (x*0.5+0.5, clip, x255)."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 4 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 3 or out.shape[0] != 3:
        raise ValueError(f"postprocess_gpen: expected a (3, M, M) RGB output, got shape {out.shape}")
    bgr = (out * 0.5 + 0.5).transpose(1, 2, 0)[:, :, ::-1]
    return np.ascontiguousarray((np.clip(bgr, 0.0, 1.0) * 255.0).astype(np.uint8))


def gpen_input_from_image(image_bgr: np.ndarray, landmarks: np.ndarray, model_size: int,
                          crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Align from the original image: returns (M x M BGR face, 2x3 GPEN frame -> ArcFace crop frame)."""
    to_gpen = similarity_transform(landmarks, gpen_template(model_size))
    to_crop = similarity_transform(landmarks, arcface_template(crop_size))
    face = cv2.warpAffine(image_bgr, to_gpen, (model_size, model_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return face, compose_affine(to_crop, cv2.invertAffineTransform(to_gpen))


def gpen_input_from_crop(crop_rgb: np.ndarray, model_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Align from the cached ArcFace crop: returns (M x M BGR face, 2x3 GPEN frame -> crop frame)."""
    crop_size = crop_rgb.shape[0]
    to_gpen = similarity_transform(arcface_template(crop_size), gpen_template(model_size))
    face = cv2.warpAffine(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), to_gpen, (model_size, model_size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return face, cv2.invertAffineTransform(to_gpen)


# --- model runner ---------------------------------------------------------------------------------------------
def pick_image_output(outputs: list[Any]) -> int:
    """Index of GPEN's image output: the one named `output`, else the only 4-D output with 3 channels."""
    names = [o.name for o in outputs]
    if "output" in names:
        return names.index("output")
    images = [i for i, o in enumerate(outputs) if len(o.shape) == 4 and o.shape[1] == 3]
    if len(images) != 1:
        raise ValueError(f"cannot tell GPEN's image output among {[(o.name, o.shape) for o in outputs]}")
    return images[0]


class _OnnxGPEN:
    """GPEN through ONNX Runtime; checks the signature, runs one face at a time when the batch is fixed."""

    def __init__(self, path: Path) -> None:
        from reid.teachers.onnx_utils import ModelSignatureError, check_signature, create_session, describe_signature

        self.session, self.providers = create_session(path)
        outputs = self.session.get_outputs()
        check_signature(self.session, ["input"], path=path)
        try:
            self.output_index = pick_image_output(outputs)
        except ValueError as exc:
            raise ModelSignatureError(f"{path}: expected output `output` (1,3,M,M); model has "
                                      f"{describe_signature(self.session)} ({exc})") from exc
        self.output_name = outputs[self.output_index].name
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ModelSignatureError(f"{path}: input `input` must be (N,3,M,M); model has "
                                      f"{describe_signature(self.session)}")
        self.fixed_size = shape[2] if isinstance(shape[2], int) and shape[2] == shape[3] else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and len(batch) != self.fixed_batch:
            return np.concatenate([self(batch[i:i + 1]) for i in range(len(batch))])
        return self.session.run([self.output_name], {"input": batch})[0]


@dataclass
class FaceItem:
    """A decode worker's result: the GPEN input and the way back, or the oracle's ready face; None = no face."""

    x: np.ndarray | None = None  # (3, M, M) float32
    back: np.ndarray | None = None  # 2x3 GPEN frame -> crop frame
    restored: np.ndarray | None = None  # oracle: (S, S, 3) uint8 RGB


@TEACHERS.register("restored_faces")
class RestoredFacesTeacher(Teacher):
    """GPEN restoration of the `faces` cache's faces, stored pixel-aligned with `faces.crop`."""

    name = "restored_faces"
    backends = ("onnx", "oracle")
    weights_source = {"onnx": GPEN_WEIGHTS_HELP}

    def __init__(self, backend: str, model_path: str | Path | None = None, device: str = "cpu",
                 faces_cache: str | Path | None = None, model_size: int | None = None,
                 align_source: str = "image", **params: Any) -> None:
        super().__init__(backend, model_path, device, **params)
        if align_source not in ALIGN_SOURCES:
            raise ValueError(f"restored_faces: align_source must be one of {ALIGN_SOURCES}, got {align_source!r}")
        if not faces_cache:
            raise ValueError("restored_faces: params `faces_cache` must name the faces cache (cache/<dataset>/faces.h5)")
        self.align_source = align_source
        self._open_faces(Path(faces_cache))
        self._runner: _OnnxGPEN | None = None
        self.model_size = int(model_size) if model_size else DEFAULT_MODEL_SIZE
        if backend == "oracle":
            self.model_path = None
            self.needs_image = False
        else:
            self.model_path = require_weights(model_path, "GPEN face restoration (onnx backend)", GPEN_WEIGHTS_HELP,
                                              "teachers.restored_faces.model")
            self._runner = _OnnxGPEN(self.model_path)
            if self._runner.fixed_size is not None:
                if model_size and int(model_size) != self._runner.fixed_size:
                    raise ValueError(f"{self.model_path}: model input is {self._runner.fixed_size} px but params "
                                     f"model_size={model_size}")
                self.model_size = self._runner.fixed_size
            self.needs_image = align_source == "image"
        self.params = {**params, "align_source": align_source,
                       **({"model_size": self.model_size} if backend == "onnx" else {})}

    def _open_faces(self, path: Path) -> None:
        """Read the small per-row facts of the faces cache now (has_face, landmarks, paths); crops stay lazy."""
        from reid.cache.h5 import CacheReader

        reader = CacheReader(path, expected_teacher="faces")
        needed = {"has_face", "landmarks", "crop"}
        missing = needed - set(reader.meta.fields)
        if missing:
            raise ValueError(f"{path}: faces cache lacks field(s) {sorted(missing)}; has {list(reader.meta.fields)}")
        crop_shape = reader.meta.fields["crop"].shape
        if len(crop_shape) != 3 or crop_shape[0] != crop_shape[1] or crop_shape[2] != 3:
            raise ValueError(f"{path}: faces `crop` must be (S, S, 3), found {crop_shape}")
        rows = np.arange(len(reader))
        self.faces_path = path
        self.faces_sha256 = file_sha256(path)
        self.crop_size = int(crop_shape[0])
        self.has_face = reader.read("has_face", rows).astype(np.uint8)
        self.landmarks = reader.read("landmarks", rows).astype(np.float64)
        self.face_paths = reader.paths
        reader.close()  # no HDF5 handle across the decode workers' fork; crops reopen lazily per process
        self._faces = reader

    def cache_params(self) -> dict[str, Any]:
        """Recorded params: the faces cache by content hash (not by path, so both orchestrators write the same)."""
        return {**super().cache_params(), "faces_cache_sha256": self.faces_sha256, "crop_size": self.crop_size}

    def fields(self) -> dict[str, Field]:
        s = self.crop_size
        return {"has_face": Field((), "uint8", "vector"), "restored": Field((s, s, 3), "uint8", "image")}

    def _check_row(self, row: IndexRow, index: int | None) -> int:
        if index is None:
            raise ValueError("restored_faces needs the row number (runner passes index=)")
        if not 0 <= index < len(self.face_paths) or self.face_paths[index] != row.path:
            found = self.face_paths[index] if 0 <= index < len(self.face_paths) else "(out of range)"
            raise ValueError(f"{self.faces_path} is not aligned with this index: row {index} is {row.path} in the "
                             f"index but {found} in the faces cache; rebuild the faces cache for this index")
        return index

    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path, index: int | None = None) -> FaceItem:
        i = self._check_row(row, index)
        if not self.has_face[i]:
            return FaceItem()
        if self.backend == "oracle":
            return self._oracle_face(row, Path(root))
        if self.align_source == "image":
            if image_bgr is None:
                raise ValueError(f"restored_faces: no image decoded for {row.path}")
            lms = self.landmarks[i]
            if not np.isfinite(lms).all():
                raise ValueError(f"{self.faces_path}: row {i} ({row.path}) has has_face=1 but landmarks {lms.tolist()}")
            face, back = gpen_input_from_image(image_bgr, lms, self.model_size, self.crop_size)
        else:
            face, back = gpen_input_from_crop(self._faces[i]["crop"], self.model_size)
        return FaceItem(x=preprocess_gpen(face, self.model_size)[0], back=back)

    def _oracle_face(self, row: IndexRow, root: Path) -> FaceItem:
        if not (root / "groundtruth").is_dir():
            raise FileNotFoundError(
                f"restored_faces oracle backend: {root / 'groundtruth'} does not exist; the oracle is only valid "
                "for the synthetic datasets (synthcc, synthocc), whose generator writes ground truth there"
            )
        from reid.data.groundtruth import load_groundtruth

        gt = load_groundtruth(root, row.path)
        if not bool(np.asarray(gt["has_face"])):
            return FaceItem()  # detector found a face the world did not render: no clean face to serve
        face_hr = np.asarray(gt["face_hr"], dtype=np.uint8)
        s = self.crop_size
        interp = cv2.INTER_AREA if face_hr.shape[0] > s else cv2.INTER_CUBIC
        return FaceItem(restored=cv2.resize(face_hr, (s, s), interpolation=interp))

    def infer(self, items: list[FaceItem]) -> dict[str, np.ndarray]:
        s = self.crop_size
        restored = np.zeros((len(items), s, s, 3), np.uint8)
        has_face = np.zeros(len(items), np.uint8)
        todo = [k for k, it in enumerate(items) if it.x is not None]
        if todo:
            out = self._runner(np.stack([items[k].x for k in todo]).astype(np.float32, copy=False))
            for j, k in enumerate(todo):
                bgr = warp_face_back(postprocess_gpen(out[j]), items[k].back, s)
                restored[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                has_face[k] = 1
        for k, it in enumerate(items):
            if it.restored is not None:
                restored[k], has_face[k] = it.restored, 1
        return {"has_face": has_face, "restored": restored}

    def provenance(self) -> dict[str, Any]:
        info = super().provenance()
        info["faces_cache"] = str(self.faces_path)
        if self._runner is not None:
            info["providers"] = list(self._runner.providers)
        return info
