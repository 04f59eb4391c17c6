"""A toy teacher: the image's gradient magnitude, a dense map the data pipeline warps like heatmaps.

The worked example of docs/extending.md (tests/test_extending.py runs it through Snakemake and DVC).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from reid.cache.h5 import Field
from reid.data.index import IndexRow
from reid.teachers.base import TEACHERS, Teacher


@TEACHERS.register("edges")
class EdgesTeacher(Teacher):
    name = "edges"
    backends = ("cv2",)
    defaults = {"map_size": [16, 8]}  # the map's (h, w): typed in params.yaml by these defaults

    def __init__(self, backend: str, model_path: str | Path | None = None, device: str = "cpu",
                 map_size: list[int] = (16, 8)) -> None:
        super().__init__(backend, model_path, device, map_size=list(map_size))
        self.size = (int(map_size[0]), int(map_size[1]))

    def fields(self) -> dict[str, Field]:
        # the kind, not the name, tells the data pipeline to warp it with flips and crops
        return {"magnitude": Field((1, *self.size), "float16", "heatmaps")}

    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path) -> np.ndarray:
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        return cv2.resize(magnitude, self.size[::-1], interpolation=cv2.INTER_AREA)

    def infer(self, items: list[np.ndarray]) -> dict[str, np.ndarray]:
        maps = np.stack(items)[:, None]
        return {"magnitude": (maps / np.maximum(maps.max(axis=(2, 3), keepdims=True), 1e-6)).astype(np.float16)}
