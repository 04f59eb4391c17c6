"""`parsing` teacher: SCHP human parsing -> uint8 label maps in the image frame.

Backends:
- `onnx`: a local SCHP export (`parsing_lip.onnx` style: input `input.1`, or `img` for ailia's files; three
  outputs parsing, fusion, edge; the fusion output, index 1, is decoded). Make one from the official checkpoint
  with `python -m reid export-schp`.
- `torch`: the pure-PyTorch AugmentCE2P (reid/teachers/schp_net.py) on an official `exp-schp-*.pth`.
- `oracle`: the synthetic world's ground-truth parsing (LIP labels only).

Pre/post-processing follows the official `simple_extractor` (see shared/specs/teachers.md section 1): the whole
image is letterboxed into an SxS input by a centred affine with the "-1" convention, BGR /255 normalised with the
BGR-ordered ImageNet statistics; the fusion logits are upsampled to SxS (bilinear, align_corners=True), warped
back to the image size per channel, arg-maxed, and the full-image label map is resized (nearest) to `out_size`.

Cache field: `labels` uint8 (N, H, W), [H, W] = params `out_size`. Default [128, 64] fits the synthetic world
(its images are at most that size); for real datasets (Market, PRCC, ...) use [256, 128], the usual ReID input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from reid.cache.h5 import Field
from reid.data.index import IndexRow
from reid.teachers.base import TEACHERS, Teacher, require_weights
from reid.vocab import IMAGENET_MEAN_BGR, IMAGENET_STD_BGR, LABEL_SETS, check_label_set, default_input_size

log = logging.getLogger(__name__)

# ImageNet statistics in BGR order (the image stays BGR as read by OpenCV).
SCHP_MEAN_BGR = IMAGENET_MEAN_BGR
SCHP_STD_BGR = IMAGENET_STD_BGR

ONNX_INPUT_NAMES = ("input.1", "img")
FUSION_OUTPUT = 1
DEFAULT_OUT_SIZE = (128, 64)

SCHP_WEIGHTS_HELP = (
    "SCHP (GoGoDuck912/Self-Correction-Human-Parsing, README 'Pretrained models'): exp-schp-201908261155-lip.pth, "
    "exp-schp-201908301523-atr.pth or exp-schp-201908270938-pascal-person-part.pth for the torch backend; for the "
    "onnx backend export one with `python -m reid export-schp --checkpoint <pth> --label-set lip --out "
    "parsing_lip.onnx` (or use a parsing_lip.onnx / parsing_atr.onnx of the same signature)"
)


# --- geometry ------------------------------------------------------------------------------------------------
def schp_affine(w: int, h: int, size: int) -> np.ndarray:
    """2x3 affine mapping the whole w x h image into an SxS input (aspect kept, centred, "-1" convention).

    Box centre c = ((w-1)/2, (h-1)/2), box scale (w-1, h-1) enlarged to 1:1 -> side s = max(w-1, h-1);
    c maps to ((S-1)/2, (S-1)/2) and s to S-1: x' = k x + t with k = (S-1)/s, t = (S-1)/2 - k c.
    """
    if w < 1 or h < 1 or size < 2 or max(w, h) < 2:
        raise ValueError(f"schp_affine: need an image of at least 2 px and size >= 2, got w={w}, h={h}, size={size}")
    side = float(max(w - 1, h - 1))
    k = (size - 1) / side
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    half = (size - 1) / 2.0
    return np.array([[k, 0.0, half - k * cx], [0.0, k, half - k * cy]], dtype=np.float64)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (as a 2x3)."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def schp_affine_inverse(w: int, h: int, size: int) -> np.ndarray:
    """2x3 affine from the SxS input back to the w x h image (inverse of `schp_affine`)."""
    return invert_affine(schp_affine(w, h, size))


def input_size_of(affine: np.ndarray, w: int, h: int) -> int:
    """Recover S from an SCHP affine: it maps the image centre to ((S-1)/2, (S-1)/2)."""
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return int(round(2.0 * (affine[0, 0] * cx + affine[0, 1] * cy + affine[0, 2]) + 1.0))


def preprocess_schp(img_bgr: np.ndarray, size: int) -> np.ndarray:
    """BGR uint8 image -> (1, 3, S, S) float32 SCHP input: letterbox warp (linear, border 0), /255, BGR mean/std."""
    if img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
        raise ValueError(f"preprocess_schp: expected an HxWx3 BGR image, got shape {img_bgr.shape}")
    h, w = img_bgr.shape[:2]
    warped = cv2.warpAffine(img_bgr, schp_affine(w, h, size), (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x = (warped.astype(np.float32) / 255.0 - SCHP_MEAN_BGR) / SCHP_STD_BGR
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def upsample_logits(logits: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(C, h, w) or (N, C, h, w) logits -> bilinear (align_corners=True) to SxS, as float32 tensor."""
    t = torch.as_tensor(logits).float()
    squeeze = t.ndim == 3
    if squeeze:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"upsample_logits: expected (C,h,w) or (N,C,h,w) logits, got shape {tuple(t.shape)}")
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)
    return out[0] if squeeze else out


def logits_to_image(logits_sxs: np.ndarray, affine: np.ndarray, w: int, h: int) -> np.ndarray:
    """(C, S, S) input-frame logits -> (h, w, C) image-frame logits via the inverse affine (linear, border 0)."""
    inv = invert_affine(affine)
    hwc = np.ascontiguousarray(np.asarray(logits_sxs, dtype=np.float32).transpose(1, 2, 0))
    chunks = []
    for c0 in range(0, hwc.shape[2], 4):  # OpenCV handles any channel count; chunking keeps memory steady
        part = cv2.warpAffine(np.ascontiguousarray(hwc[:, :, c0:c0 + 4]), inv, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        chunks.append(part.reshape(h, w, -1))
    return np.concatenate(chunks, axis=2)


def decode_schp_reference(fusion_logits: np.ndarray | torch.Tensor, affine: np.ndarray, w: int, h: int,
                          size: int | None = None) -> np.ndarray:
    """The official decode, step by step (slow: materialises C x S x S): upsample, cv2 inverse warp, argmax.

    Kept as the reference `decode_schp` is tested against.
    """
    size = size or input_size_of(affine, w, h)
    up = upsample_logits(fusion_logits, size).numpy()
    return logits_to_image(up, affine, w, h).argmax(axis=2).astype(np.uint8)


def bilinear_weights(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """(n_out, n_in) 1-D linear-interpolation matrix sampling input coordinate u = scale * x + offset for each
    output x; neighbours outside [0, n_in) contribute 0 (constant border 0, as cv2.BORDER_CONSTANT)."""
    u = scale * np.arange(n_out, dtype=np.float64) + offset
    i0 = np.floor(u).astype(np.int64)
    frac = u - i0
    mat = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    for idx, wgt in ((i0, 1.0 - frac), (i0 + 1, frac)):
        ok = (idx >= 0) & (idx < n_in)
        mat[rows[ok], idx[ok]] += wgt[ok]
    return mat


def schp_decode_matrices(affine: np.ndarray, w: int, h: int, size: int, logit_hw: tuple[int, int]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(h x h') and (w x w') matrices M_y, M_x with image logits = M_y @ L @ M_x^T per class.

    Both steps of the official decode are separable for SCHP's rotation-free affine: the align_corners upsample
    h' -> S samples u = x (h'-1)/(S-1), the inverse warp samples the SxS map at v = k y + t; composing
    the two 1-D interpolation matrices gives the same bilinear-of-bilinear values without the C x S x S map (up to
    OpenCV's 1/32-pixel fixed-point interpolation weights).
    """
    if abs(affine[0, 1]) > 1e-12 or abs(affine[1, 0]) > 1e-12:
        raise ValueError(f"schp_decode_matrices: expects a rotation-free affine, got {np.asarray(affine).tolist()}")
    mats = []  # image pixel y samples the SxS map at v = k y + t (the forward affine; cv2 inverts the inverse)
    for n_img, n_logit, a, b in ((h, logit_hw[0], affine[1, 1], affine[1, 2]),
                                 (w, logit_hw[1], affine[0, 0], affine[0, 2])):
        up = bilinear_weights(size, n_logit, (n_logit - 1) / (size - 1), 0.0)
        mats.append(bilinear_weights(n_img, size, a, b) @ up)
    return mats[0], mats[1]


def decode_schp(fusion_logits: np.ndarray | torch.Tensor, affine: np.ndarray, w: int, h: int,
                size: int | None = None) -> np.ndarray:
    """(C, h', w') fusion logits -> uint8 (h, w) labels: upsample to SxS (bilinear, align_corners=True), inverse
    affine per channel (linear, border 0), argmax; computed as two small matmuls (`schp_decode_matrices`) on the
    logits' device. `size` (S) defaults to the one the affine was built for (see `input_size_of`).
    """
    size = size or input_size_of(affine, w, h)
    logits = torch.as_tensor(fusion_logits).float()
    if logits.ndim != 3:
        raise ValueError(f"decode_schp: expected (C, h, w) logits, got shape {tuple(logits.shape)}")
    m_y, m_x = schp_decode_matrices(affine, w, h, size, (logits.shape[1], logits.shape[2]))
    m_y = torch.from_numpy(m_y).to(logits)
    m_x = torch.from_numpy(m_x).to(logits)
    image_logits = torch.matmul(torch.matmul(m_y, logits), m_x.t())  # (C, h, w)
    return image_logits.argmax(dim=0).to(torch.uint8).cpu().numpy()


def resize_labels(labels: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour (pixel-centre exact) resize of a label map to (H, W)."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if labels.shape[:2] == (out_h, out_w):
        return labels.astype(np.uint8, copy=False)
    return cv2.resize(labels, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT).astype(np.uint8)


# --- model runners --------------------------------------------------------------------------------------------
class _OnnxSCHP:
    """SCHP through ONNX Runtime; checks the signature and returns the fusion output."""

    def __init__(self, path: Path, num_classes: int) -> None:
        from reid.teachers.onnx_utils import ModelSignatureError, check_signature, create_session, describe_signature

        self.session, self.providers = create_session(path)
        inputs = [a.name for a in self.session.get_inputs()]
        name = inputs[0] if len(inputs) == 1 and inputs[0] in ONNX_INPUT_NAMES else ONNX_INPUT_NAMES[0]
        check_signature(self.session, [name], n_outputs=3, path=path)
        self.input_name = name
        shape = self.session.get_inputs()[0].shape
        self.fixed_size = shape[2] if isinstance(shape[2], int) and shape[2] == shape[3] else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        classes = self.session.get_outputs()[FUSION_OUTPUT].shape[1]
        if isinstance(classes, int) and classes != num_classes:
            raise ModelSignatureError(
                f"{path}: fusion output (index {FUSION_OUTPUT}) has {classes} classes but the label set needs "
                f"{num_classes}; model has {describe_signature(self.session)}"
            )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch == 1 and len(batch) > 1:  # static-batch exports: run one image at a time
            return np.concatenate([self(batch[i:i + 1]) for i in range(len(batch))])
        return self.session.run(None, {self.input_name: batch})[FUSION_OUTPUT]


class _TorchSCHP:
    """The pure-PyTorch AugmentCE2P on an official checkpoint."""

    def __init__(self, path: Path, num_classes: int, variant: str, device: str) -> None:
        from reid.teachers.schp_net import build_schp, load_schp_checkpoint

        self.model = build_schp(num_classes, variant)
        load_schp_checkpoint(self.model, path)
        self.device = torch.device(device)
        self.model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        return self.model(torch.from_numpy(batch).to(self.device))[FUSION_OUTPUT].float()  # decoded on device


@dataclass
class ParsingItem:
    """What a decode worker hands to `infer`: the SCHP input and the geometry needed to decode it."""

    x: np.ndarray | None  # (3, S, S) float32, None for the oracle
    affine: np.ndarray | None
    width: int
    height: int
    labels: np.ndarray | None = None  # oracle: the ground-truth labels already at out_size


@TEACHERS.register("parsing")
class ParsingTeacher(Teacher):
    """SCHP human parsing; field `labels` uint8 (H, W) at `out_size` in the image frame."""

    name = "parsing"
    backends = ("onnx", "torch", "oracle")
    weights_source = {"onnx": SCHP_WEIGHTS_HELP, "torch": SCHP_WEIGHTS_HELP}

    def __init__(self, backend: str, model_path: str | Path | None = None, device: str = "cpu",
                 label_set: str = "lip", input_size: int | None = None,
                 out_size: Sequence[int] = DEFAULT_OUT_SIZE, variant: str = "resnet101", **params: Any) -> None:
        check_label_set(label_set)
        if len(out_size) != 2 or min(int(v) for v in out_size) < 1:
            raise ValueError(f"parsing: out_size must be [H, W] with positive entries, got {out_size!r}")
        if backend == "oracle" and label_set != "lip":
            raise ValueError(f"parsing: the oracle backend serves LIP labels only, got label_set={label_set!r}")
        super().__init__(backend, model_path, device, **params)
        self.label_set = label_set
        self.num_classes = len(LABEL_SETS[label_set])
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.input_size = int(input_size) if input_size else default_input_size(label_set)
        self.variant = variant
        self._runner: Any = None
        if backend == "oracle":
            self.model_path = None
            self.needs_image = False  # reads only the ground-truth files
        else:
            self.model_path = require_weights(model_path, f"SCHP parsing ({backend} backend, {label_set})",
                                              SCHP_WEIGHTS_HELP, "teachers.parsing.model")
            if backend == "onnx":
                self._open_onnx(explicit_size=input_size)
        self.params = {"label_set": label_set, "input_size": self.input_size, "out_size": list(self.out_size),
                       **({"variant": variant} if backend == "torch" else {}), **params}

    def _open_onnx(self, explicit_size: int | None) -> None:
        runner = _OnnxSCHP(self.model_path, self.num_classes)
        if runner.fixed_size is not None:
            if explicit_size and int(explicit_size) != runner.fixed_size:
                raise ValueError(f"{self.model_path}: model input is {runner.fixed_size}x{runner.fixed_size} "
                                 f"but params input_size={explicit_size}")
            self.input_size = runner.fixed_size
        self._runner = runner

    def setup(self) -> None:
        """Build the torch model in the main process (after the decode workers have forked)."""
        if self.backend == "torch" and self._runner is None:
            self._runner = _TorchSCHP(self.model_path, self.num_classes, self.variant, self.device)

    def fields(self) -> dict[str, Field]:
        return {"labels": Field(self.out_size, "uint8", "labels")}

    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path, index: int | None = None) -> ParsingItem:
        if self.backend == "oracle":
            return ParsingItem(None, None, 0, 0, labels=self._oracle_labels(row, Path(root)))
        if image_bgr is None:
            raise ValueError(f"parsing: no image decoded for {row.path}")
        h, w = image_bgr.shape[:2]
        return ParsingItem(preprocess_schp(image_bgr, self.input_size)[0], schp_affine(w, h, self.input_size), w, h)

    def _oracle_labels(self, row: IndexRow, root: Path) -> np.ndarray:
        if not (root / "groundtruth").is_dir():
            raise FileNotFoundError(
                f"parsing oracle backend: {root / 'groundtruth'} does not exist; the oracle is only valid for the "
                "synthetic datasets (synthcc, synthocc), whose generator writes ground truth there"
            )
        from reid.data.groundtruth import load_groundtruth

        gt = load_groundtruth(root, row.path)
        if "parsing" not in gt:
            raise KeyError(f"ground truth of {row.path} under {root / 'groundtruth'} has no 'parsing' entry")
        labels = np.asarray(gt["parsing"])
        if labels.ndim != 2:
            raise ValueError(f"ground-truth parsing of {row.path} must be HxW, got shape {labels.shape}")
        return resize_labels(labels.astype(np.uint8), self.out_size)

    def infer(self, items: list[ParsingItem]) -> dict[str, np.ndarray]:
        if self.backend == "oracle":
            return {"labels": np.stack([it.labels for it in items])}
        self.setup()
        logits = self._runner(np.stack([it.x for it in items]).astype(np.float32, copy=False))
        # decode one image at a time: SxS logits of a whole batch would take ~18 MB per image
        labels = [resize_labels(decode_schp(logits[i], it.affine, it.width, it.height, self.input_size),
                                self.out_size) for i, it in enumerate(items)]
        return {"labels": np.stack(labels)}

    def provenance(self) -> dict[str, Any]:
        info = super().provenance()
        info["label_names"] = list(LABEL_SETS[self.label_set])
        if self.backend == "onnx":
            info["providers"] = list(self._runner.providers)
        return info
