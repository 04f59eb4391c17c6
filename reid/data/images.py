"""Image decoding, one way for every reader (teachers, the training dataset, contact sheets).

A missing or undecodable file is an error naming the path, never a silent skip: a row that cannot be read
would otherwise shift every row after it in a cache aligned with the index.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class ImageReadError(OSError):
    """An image of the index cannot be read or decoded."""


def read_bgr(path: str | Path) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3), as OpenCV-based models expect it."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"cannot decode image {path} ({path.stat().st_size} bytes): corrupt or unsupported")
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), as the ReID networks are fed."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)
