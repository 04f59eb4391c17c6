"""Shared vocabularies: label sets, keypoints, flip pairs, the face template and normalisation constants.

Each fact lives here once. The renderer draws with them, the teachers decode with them and the data pipeline warps
with them, so the synthetic ground truth, the teacher caches and the augmentation cannot disagree.
"""

from __future__ import annotations

import numpy as np

# --- human parsing label sets (SCHP checkpoints: LIP 20 classes, ATR 18, Pascal-Person-Part 7) -----------------
LIP_LABELS: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks", "Pants",
    "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
    "Right-shoe",
)
ATR_LABELS: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt", "Left-shoe",
    "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
)
PASCAL_LABELS: tuple[str, ...] = (
    "Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs",
)
LABEL_SETS: dict[str, tuple[str, ...]] = {"lip": LIP_LABELS, "atr": ATR_LABELS, "pascal": PASCAL_LABELS}
# SCHP's training resolution per label set (its checkpoints expect square inputs of this side).
SCHP_INPUT_SIZES: dict[str, int] = {"lip": 473, "atr": 512, "pascal": 512}
# Left/right classes swapped by a horizontal flip, per label set.
LABEL_FLIP_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    "lip": ((14, 15), (16, 17), (18, 19)),
    "atr": ((9, 10), (12, 13), (14, 15)),
    "pascal": (),
}



def check_label_set(label_set: str) -> None:
    if label_set not in LABEL_SETS:
        raise ValueError(f"unknown SCHP label set {label_set!r}; choose one of {sorted(LABEL_SETS)}")


def default_input_size(label_set: str) -> int:
    """SCHP's training resolution per label set: 473 for LIP, 512 for ATR and Pascal-Person-Part."""
    check_label_set(label_set)
    return SCHP_INPUT_SIZES[label_set]


# --- COCO keypoints (HRNet heatmap channel order) -----------------------------------------------------------------
COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
NUM_JOINTS = len(COCO_KEYPOINTS)
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))

# --- faces ----------------------------------------------------------------------------------------------------------
# ArcFace 5-point template at 112 x 112 (left eye, right eye, nose, left mouth corner, right mouth corner): the
# faces teacher aligns crops to it, restored_faces maps it to GPEN's template, the renderer draws faces on it.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def arcface_template(size: int) -> np.ndarray:
    """The ArcFace 5-point template scaled to a `size` x `size` crop."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


# --- normalisation ----------------------------------------------------------------------------------------------------
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB order
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_MEAN_BGR = IMAGENET_MEAN[::-1].copy()  # for models fed OpenCV's BGR images (SCHP)
IMAGENET_STD_BGR = IMAGENET_STD[::-1].copy()
