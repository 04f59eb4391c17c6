"""Image decoding, one way for every reader (teachers, the training dataset, contact sheets).

A missing or undecodable file is an error naming the path, never a silent skip: a row that cannot be read
would otherwise shift every row after it in a cache aligned with the index.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np

from reid import MAX_IMAGE_PIXELS


class ImageReadError(OSError):
    """An image of the index cannot be read or decoded."""


def declared_pixels(data: bytes) -> int | None:
    """Width x height an image file's header declares, read without decoding the pixels (None: not recognised)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]) * int(im.size[1])
    except Image.DecompressionBombError as exc:  # PIL refuses huge headers at open; its message has the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else MAX_IMAGE_PIXELS + 1
    except Exception:  # noqa: BLE001 - any header PIL cannot read is left to cv2 to judge
        return None


def too_large(data: bytes) -> str | None:
    """Why an image exceeds the pixel budget (reid.MAX_IMAGE_PIXELS), or None."""
    pixels = declared_pixels(data)
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        return (f"declares {pixels:,} pixels, over the budget of {MAX_IMAGE_PIXELS:,} (a decompression bomb, or "
                "set REID_MAX_IMAGE_PIXELS)")
    return None


def read_bgr(path: str | Path) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3), as OpenCV-based models expect it."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        data = path.read_bytes()
        why = too_large(data) or ("empty file" if not data else "corrupt or unsupported")
        raise ImageReadError(f"cannot decode image {path} ({len(data)} bytes): {why}")
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), as the ReID networks are fed."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)
