"""The `isp_labels` teacher: ISP's first round of pseudo part labels (cascaded clustering on backbone features).

Not a pretrained parser: a backbone named in params (`backbone: hrnet_w32 | resnet50 | hrnet_w18_small | hrnet_tiny`, `weights`: a
local ImageNet checkpoint, or null for random initialisation with a loud warning) runs over the images at
`input_size` with the test transform (whole image resized, ImageNet normalisation); its 1/4-resolution feature
maps are clustered per identity (reid/models/isp_clustering.py) into labels 0 (background), 1..K-1 (top to
bottom), stored as `labels` uint8 (N, H/4, W/4) in the image frame.

Why it overrides `Teacher.build_cache` instead of using the per-batch runner (`python -m reid teach --teacher
isp_labels` calls it like any other teacher's): clustering
needs all images of an identity at once, and `run_teacher` writes each batch as soon as `infer` returns it, with
no final hook. `build_cache` reuses the runner's decode pool and the shared CacheWriter (atomic, resumable,
same provenance attributes): rows are visited sorted by identity, features are kept (float16, CPU) only until a
chunk of whole identities is complete, clustered on the teacher's device, and written. A resumed run recomputes
the identities that still have missing rows; their labels do not depend on chunking (hashed k-means++ draws),
so the file matches an uninterrupted run.

Rows: identities of the `splits` param (default: train only, the only rows ISP trains on) are clustered per
identity (train and test identities never share a cluster); every other row is stored as zeros (all
background).

The Table 3 check verb `isp-iou` lives in reid/engine/isp_iou.py (it runs trained models; this teacher must not
import the engine, so its DVC stage does not depend on it).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from reid.cache.h5 import CacheWriter, Field
from reid.data.index import IndexRow, index_sha256, read_index
from reid.data.transforms import Geometry, normalize_rgb, warp
from reid.models.zoo import RANDOM, is_random
from reid.teachers.base import TEACHERS, Teacher, require_weights

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train",)
# Parameters (params.yaml teachers.isp_labels) and their defaults; also what reid/pipeline/check.py types them by.
DEFAULTS: dict[str, Any] = {"backbone": "hrnet_w32", "num_parts": 7, "input_size": [256, 128], "sharpen": True,
                            "iters": 20, "seed": 0, "splits": list(DEFAULT_SPLITS), "chunk_images": 1024,
                            "weights": None, "align_corners": True}


def identity_shard_rows(rows: Sequence[IndexRow], shard: tuple[int, int]) -> list[int]:
    """Rows of shard i/n by whole identities: the j-th identity (sorted keys) goes to shard j mod n. Clustering
    sees every image of an identity in one shard, so merged shards equal an unsharded run byte for byte."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    order = {k: j for j, k in enumerate(sorted({identity_key(r) for r in rows}))}
    return [r for r, row in enumerate(rows) if order[identity_key(row)] % n == i]


def identity_key(row: IndexRow) -> int:
    """Clustering group of a row: its pid, kept apart for train and test rows (2*pid, 2*pid+1; junk -1 too)."""
    return 2 * int(row.pid) + (0 if row.split == "train" else 1)


@TEACHERS.register("isp_labels")
class ISPLabelsTeacher(Teacher):
    """Cascaded-clustering pseudo part labels; see the module docstring (use `build_cache`, not `run_teacher`)."""

    name = "isp_labels"
    backends = ("torch",)
    defaults = DEFAULTS
    weights_may_be_random = True  # the file is the ImageNet backbone whose features are clustered
    weights_source = {"torch": "HRNet-W32-C ImageNet: hrnetv2_w32_imagenet_pretrained.pth (HRNet-Image-Classification "
                               "model zoo); ResNet-50: torchvision resnet50-0676ba61.pth; or `random`"}

    def __init__(self, backend: str = "torch", model_path: str | Path | None = None, device: str = "auto",
                 **params: Any) -> None:
        weights = params.pop("weights", None) or (str(model_path) if model_path else None)
        self.random_init = is_random(weights)  # `random`: the explicit choice, no warning
        super().__init__(backend, None if self.random_init else weights, device, **params)
        unknown = sorted(set(params) - set(DEFAULTS) - {"weights"})
        if unknown:
            raise ValueError(f"isp_labels teacher: unknown params {unknown}; known: {sorted(DEFAULTS)}")
        params = {**DEFAULTS, **params}
        self.backbone_name = str(params["backbone"])
        self.num_parts = int(params["num_parts"])
        self.input_size = tuple(int(v) for v in params["input_size"])
        self.sharpen = bool(params["sharpen"])
        self.iters = int(params["iters"])
        self.seed = int(params["seed"])
        self.splits = tuple(params["splits"])
        self.chunk_images = int(params["chunk_images"])
        self.align_corners = bool(params["align_corners"])
        if len(self.input_size) != 2 or self.input_size[0] % 32 or self.input_size[1] % 32:
            raise ValueError(f"isp_labels: input_size must be [H, W] multiples of 32, got {list(self.input_size)}")
        if self.num_parts < 2:
            raise ValueError(f"isp_labels: num_parts (K) must be >= 2, got {self.num_parts}")
        if self.model_path is not None:
            require_weights(self.model_path, f"the ISP {self.backbone_name} backbone (ImageNet weights)",
                            "HRNet-W32-C ImageNet: hrnetv2_w32_imagenet_pretrained.pth (HRNet-Image-Classification "
                            "model zoo); ResNet-50: torchvision resnet50-0676ba61.pth",
                            "teachers.isp_labels.weights")
        self.net: torch.nn.Module | None = None

    # --- contract -------------------------------------------------------------------------------------------
    @property
    def map_size(self) -> tuple[int, int]:
        return self.input_size[0] // 4, self.input_size[1] // 4

    def fields(self) -> dict[str, Field]:
        return {"labels": Field(self.map_size, "uint8", "labels")}

    def cache_params(self) -> dict[str, Any]:
        """What decides the labels (chunk size and device do not); `label_set: isp` = no left/right swap on flip."""
        return {"backbone": self.backbone_name, "num_parts": self.num_parts, "input_size": list(self.input_size),
                "sharpen": self.sharpen, "iters": self.iters, "seed": self.seed, "splits": list(self.splits),
                "align_corners": self.align_corners, "label_set": "isp"}

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["weights"] = str(self.model_path) if self.model_path else RANDOM
        return out

    def load(self, image_bgr: np.ndarray | None, row: IndexRow, root: Path, index: int | None = None) -> torch.Tensor:
        """Test transform: the whole image resized to input_size, RGB, ImageNet mean/std -> (3, H, W)."""
        if image_bgr is None:
            raise ValueError(f"isp_labels needs the image of {row.path}")
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        return normalize_rgb(warp(rgb, Geometry(self.input_size)))

    def setup(self) -> None:
        """Build the backbone once, in the main process."""
        if self.net is not None:
            return
        from reid.models.isp_backbones import build_feature_backbone

        if self.model_path is None:
            if not self.random_init:  # `random` is the explicit choice: no warning
                warnings.warn(f"isp_labels: no `weights` for {self.backbone_name}: clustering the features of a "
                              "RANDOMLY initialised backbone (the paper starts from ImageNet weights)", stacklevel=2)
            torch.manual_seed(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warning above already said it
            net = build_feature_backbone(self.backbone_name, str(self.model_path) if self.model_path else None,
                                         align_corners=self.align_corners)
        self.net = net.eval().to(self.device)

    @torch.no_grad()
    def extract(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps (B, C, H/4, W/4) of a batch of `load` outputs."""
        self.setup()
        x = torch.stack(list(items)).to(self.device)
        with torch.autocast(self.device.split(":")[0], dtype=torch.float16, enabled=self.device.startswith("cuda")):
            fmap = self.net(x)
        if fmap.shape[-2:] != self.map_size:
            raise ValueError(f"isp_labels: backbone {self.backbone_name} gave maps {tuple(fmap.shape[-2:])}, "
                             f"expected {self.map_size} (input_size / 4)")
        return fmap

    def infer(self, items: list[Any]) -> dict[str, np.ndarray]:
        raise RuntimeError(
            "isp_labels cannot run through the per-batch teacher runner: the cascaded clustering needs all images "
            "of an identity at once. Use `python -m reid teach --teacher isp_labels ...` or its build_cache()."
        )

    # --- the global driver -----------------------------------------------------------------------------------
    def build_cache(self, index_path: str | Path, root: str | Path, out: str | Path, batch_size: int = 16,
                    workers: int = 2, shard: tuple[int, int] | None = None, progress: bool = True,
                    flush_every_s: float = 10.0) -> dict[str, Any]:
        """Write the `isp_labels` cache for every index row (or one shard: whole identities, see
        `identity_shard_rows`); returns a run summary (images/s, seconds...)."""
        from reid.models.isp_clustering import IdentityChunker
        from reid.teachers.runner import _batches, _progress, _RowLoader

        rows = read_index(index_path)
        start = time.perf_counter()
        with CacheWriter(out, teacher=self.name, backend=self.backend, model_sha256=self.model_sha256,
                         params=self.cache_params(), index_sha256=index_sha256(index_path),
                         paths=[r.path for r in rows], fields=self.fields(), shard=shard,
                         rows=identity_shard_rows(rows, shard) if shard else None) as writer:
            pending = set(writer.pending_rows().tolist())
            self._write_zeros(writer, sorted(i for i in pending if rows[i].split not in self.splits))
            todo = self._rows_to_cluster(rows, pending)
            computed = 0
            if len(todo):
                chunker = IdentityChunker(K=self.num_parts, sharpen=self.sharpen, iters=self.iters, seed=self.seed,
                                          chunk_images=self.chunk_images, device=self.device)
                batches = _batches(_RowLoader(self, rows, Path(root), todo), batch_size, workers)
                self.setup()
                with _progress(len(todo), progress, "isp_labels/torch") as bar:
                    for batch_rows, items in batches:
                        keys = np.array([identity_key(rows[i]) for i in batch_rows])
                        computed += self._write_done(writer, pending, chunker.add(batch_rows, keys,
                                                                                  self.extract(items)))
                        bar.update(len(batch_rows))
                    computed += self._write_done(writer, pending, chunker.finish())
            final = writer.finalize()
        seconds = time.perf_counter() - start
        summary = {"out": str(final), "teacher": self.name, "backend": self.backend, "rows_total": len(rows),
                   "rows_clustered": int(len(todo)), "rows_written": computed, "rows_resumed": writer.resumed_rows,
                   "seconds": round(seconds, 3), "images_per_s": round(len(todo) / seconds, 2) if len(todo) else 0.0,
                   "batch_size": batch_size, "workers": workers, "provenance": self.provenance()}
        log.info("isp_labels: clustered %d images in %.1f s (%.1f images/s) -> %s", len(todo), seconds,
                 summary["images_per_s"], final)
        return summary

    def _rows_to_cluster(self, rows: Sequence[IndexRow], pending: set[int]) -> np.ndarray:
        """All rows of every identity (of the chosen splits) that still has a pending row, sorted by identity."""
        keys = np.array([identity_key(r) for r in rows], dtype=np.int64)
        selected = np.array([r.split in self.splits for r in rows], dtype=bool)
        needed = {int(keys[i]) for i in pending if selected[i]}
        cand = np.flatnonzero(selected & np.isin(keys, list(needed)))
        return cand[np.argsort(keys[cand], kind="stable")]

    def _write_zeros(self, writer: CacheWriter, rows: Sequence[int]) -> None:
        for start in range(0, len(rows), 256):
            block = np.asarray(rows[start:start + 256], dtype=np.int64)
            writer.write_rows(block, {"labels": np.zeros((len(block), *self.map_size), dtype=np.uint8)})

    @staticmethod
    def _write_done(writer: CacheWriter, pending: set[int], done: list[tuple[np.ndarray, np.ndarray]]) -> int:
        written = 0
        for rows, labels in done:
            keep = np.array([int(r) in pending for r in rows], dtype=bool)
            if keep.any():
                writer.write_rows(rows[keep], {"labels": labels[keep]})
                written += int(keep.sum())
        return written
