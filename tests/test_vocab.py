"""The shared vocabularies agree with their own names, and every module uses the one copy."""

from __future__ import annotations

import numpy as np
import pytest

from reid import vocab


@pytest.mark.parametrize("label_set", sorted(vocab.LABEL_SETS))
def test_label_flip_pairs_swap_left_and_right_classes(label_set: str) -> None:
    names = vocab.LABEL_SETS[label_set]
    sided = {n for n in names if n.startswith(("Left-", "Right-"))}
    paired = set()
    for a, b in vocab.LABEL_FLIP_PAIRS[label_set]:
        assert names[a].startswith("Left-") and names[b] == "Right-" + names[a][len("Left-"):], (names[a], names[b])
        paired |= {names[a], names[b]}
    assert paired == sided  # every sided class has its mirror


def test_coco_flip_pairs_swap_left_and_right_joints() -> None:
    names = vocab.COCO_KEYPOINTS
    assert vocab.NUM_JOINTS == 17 and names[0] == "nose"
    for a, b in vocab.COCO_FLIP_PAIRS:
        assert names[a].startswith("left_") and names[b] == "right_" + names[a][len("left_"):]
    assert len(vocab.COCO_FLIP_PAIRS) == 8


def test_face_template_scales_and_keeps_eyes_left_of_nose() -> None:
    t = vocab.arcface_template(224)
    np.testing.assert_allclose(t[0], [76.5892, 103.3926], rtol=1e-6)  # 38.2946 * 2, 51.6963 * 2
    assert t[0, 0] < t[2, 0] < t[1, 0]


def test_bgr_statistics_are_the_rgb_ones_reversed() -> None:
    np.testing.assert_array_equal(vocab.IMAGENET_MEAN_BGR, np.float32([0.406, 0.456, 0.485]))
    np.testing.assert_array_equal(vocab.IMAGENET_STD_BGR, np.float32([0.225, 0.224, 0.229]))


def test_modules_share_the_one_copy() -> None:
    from reid.data import render, transforms
    from reid.teachers import faces, keypoints, parsing, restored_faces

    assert render.COCO_KEYPOINTS is vocab.COCO_KEYPOINTS and parsing.LABEL_SETS is vocab.LABEL_SETS
    assert render.ARCFACE_TEMPLATE_112 is vocab.ARCFACE_TEMPLATE_112
    assert faces.arcface_template is vocab.arcface_template
    assert restored_faces.arcface_template is vocab.arcface_template
    assert keypoints.COCO_FLIP_PAIRS is vocab.COCO_FLIP_PAIRS and transforms.COCO_FLIP_PAIRS is vocab.COCO_FLIP_PAIRS
