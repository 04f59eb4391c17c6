"""The torch Dataset every method trains and tests on: index rows + images + aligned teacher caches.

Cache fields are named "<teacher>.<field>" and come out augmented together with the image (see
reid/data/transforms.py and docs/contracts.md "Batch dict"). Cache files are opened lazily in each worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from reid.cache.h5 import check_field
from reid.data.images import read_rgb
from reid.data.index import IndexRow
from reid.data.transforms import (
    FieldAugment,
    Geometry,
    apply_translation,
    erase,
    erase_heatmaps,
    erasing_box,
    normalize_rgb,
    random_geometry,
    random_translation,
    warp,
    warp_heatmaps,
    warp_labels,
)


class ReIDDataset(Dataset):
    """Rows `positions` of an index, with the requested cache fields.

    Args:
        rows: the whole index (cache rows are aligned with it).
        root: dataset root the index paths are relative to.
        positions: index row numbers this dataset serves.
        input_size: (H, W) of the network input.
        train: random flip / pad-crop / erasing when True; deterministic resize when False.
        caches: teacher name -> CacheReader (or any reader with `[i] -> dict`, `attrs` and `kinds`).
        fields: "<teacher>.<field>" names to put in each sample.
        image_field: take the image from this cached RGB field instead of the image file.
        pid_labels / clothes_labels: raw pid / clothes key -> contiguous label (train); identity if None.
        rgb_augment: in training, also translate (Random2DTranslation) and erase the cached `image` fields (face
            crops) as this FieldAugment says, drawn once per sample so that every such field (raw and restored
            face) moves alike; None leaves them flipped only.
    """

    def __init__(
        self,
        rows: Sequence[IndexRow],
        root: str | Path,
        positions: Sequence[int],
        input_size: tuple[int, int],
        train: bool,
        caches: Mapping[str, Any] | None = None,
        fields: Sequence[str] = (),
        image_field: str | None = None,
        pid_labels: Mapping[int, int] | None = None,
        clothes_labels: Mapping[str, int] | None = None,
        flip_p: float = 0.5,
        pad: int = 10,
        erasing_p: float = 0.5,
        rgb_augment: FieldAugment | None = None,
    ) -> None:
        self.rows, self.root = rows, Path(root)
        self.positions = list(positions)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train = train
        self.caches = dict(caches or {})
        self.fields = list(fields)
        self.image_field = image_field
        self.pid_labels, self.clothes_labels = pid_labels, clothes_labels
        self.flip_p, self.pad, self.erasing_p = flip_p, pad, erasing_p
        self.rgb_augment = rgb_augment
        self.overrides: dict[str, np.ndarray] = {}
        needed = {f.split(".", 1)[0] for f in self.fields + ([image_field] if image_field else [])}
        missing = sorted(needed - set(self.caches))
        if missing:
            raise KeyError(f"fields need caches {missing}, but only {sorted(self.caches)} were given")
        self.label_sets = {name: _label_set(reader) for name, reader in self.caches.items()}
        # How each field is augmented: the kind its cache declares (reid/cache/h5.py FIELD_KINDS), never its name.
        self.kinds: dict[str, str] = {}
        for name in self.fields:
            teacher, field = name.split(".", 1)
            kinds = self.caches[teacher].kinds
            if field not in kinds:
                raise KeyError(f"field {name!r}: the {teacher} cache has no field {field!r} (it has {sorted(kinds)})")
            self.kinds[name] = kinds[field]

    def set_field(self, name: str, values: np.ndarray, kind: str) -> None:
        """Serve `name` (of kind `kind`) from an in-memory array (N_index, ...) instead of its cache (ISP's
        re-clustered labels)."""
        if len(values) != len(self.rows):
            raise ValueError(f"set_field({name!r}): expected {len(self.rows)} rows, got {len(values)}")
        check_field(name, (np.shape(values)[1:], np.asarray(values[:1]).dtype, kind))
        self.overrides[name] = values
        self.kinds[name] = kind
        if name not in self.fields:
            self.fields.append(name)

    def __len__(self) -> int:
        return len(self.positions)

    def _field(self, name: str, row_id: int) -> np.ndarray:
        if name in self.overrides:
            return np.asarray(self.overrides[name][row_id])
        teacher, field = name.split(".", 1)
        return np.asarray(self.caches[teacher][row_id][field])

    def __getitem__(self, i: int) -> dict[str, Any]:
        row_id = self.positions[i]
        row = self.rows[row_id]
        img = self._field(self.image_field, row_id) if self.image_field else read_rgb(self.root / row.path)
        geom = random_geometry(self.input_size, self.flip_p, self.pad) if self.train else Geometry(self.input_size)
        image = normalize_rgb(warp(img, geom))
        erased = erasing_box(self.input_size, self.erasing_p) if self.train and self.erasing_p > 0 else None
        if erased is not None:
            image = erase(image, erased)
        sample: dict[str, Any] = {
            "image": image,
            "pid": self.pid_labels.get(row.pid, -1) if self.pid_labels is not None else row.pid,
            "camid": row.camid,
            "clothes": self.clothes_labels.get(row.clothes, -1) if self.clothes_labels is not None else -1,
            "index": row_id,
            "flipped": geom.flip,
        }
        H, W = self.input_size
        rgb_moves: dict[tuple[int, int], tuple[Any, Any]] = {}  # per field size: (translation, erasing box)
        for name in self.fields:
            value = self._field(name, row_id)
            kind = self.kinds[name]
            if kind == "labels":
                label_set = self.label_sets.get(name.split(".", 1)[0], "lip")
                sample[name] = torch.from_numpy(warp_labels(value, geom, (H, W), label_set).astype(np.int64))
            elif kind == "heatmaps":
                maps = warp_heatmaps(value, geom, (max(H // 4, 1), max(W // 4, 1)))
                if erased is not None:
                    maps = erase_heatmaps(maps, erased, (H, W))
                sample[name] = torch.from_numpy(maps)
            elif kind == "image":
                face = np.ascontiguousarray(value[:, ::-1] if geom.flip else value)
                if self.train and self.rgb_augment is not None:
                    size = face.shape[:2]
                    if not rgb_moves:  # drawn once per sample, on the first RGB field's grid
                        rgb_moves[size] = (random_translation(size, scale=self.rgb_augment.scale),
                                           erasing_box(size, self.erasing_p))
                    if size not in rgb_moves:
                        rgb_moves[size] = _rescale_moves(next(iter(rgb_moves.items())), size)
                    move, box = rgb_moves[size]
                    face = apply_translation(face, move) if move is not None else face
                    tensor = normalize_rgb(face)
                    sample[name] = erase(tensor, box, self.rgb_augment.erase_fill) if box is not None else tensor
                else:
                    sample[name] = normalize_rgb(face)
            else:
                sample[name] = torch.from_numpy(np.ascontiguousarray(value))
        return sample


def _rescale_moves(ref: tuple[tuple[int, int], tuple[Any, Any]], size: tuple[int, int]) -> tuple[Any, Any]:
    """The translation and erasing box drawn on the reference grid, scaled to another RGB field's grid."""
    (h0, w0), (move, box) = ref
    sy, sx = size[0] / h0, size[1] / w0
    if move is not None:
        nh, nw, y, x = move
        move = (round(nh * sy), round(nw * sx), min(round(y * sy), round(nh * sy) - size[0]),
                min(round(x * sx), round(nw * sx) - size[1]))
    if box is not None:
        y, x, eh, ew = box
        box = (round(y * sy), round(x * sx), max(1, round(eh * sy)), max(1, round(ew * sx)))
    return move, box


def _label_set(reader: Any) -> str:
    """The parsing label set recorded in a cache's provenance ('lip' when not recorded)."""
    attrs = getattr(reader, "attrs", {}) or {}
    params = attrs.get("params", {})
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            params = {}
    return str(params.get("label_set", "lip")) if isinstance(params, dict) else "lip"


def label_maps(rows: Sequence[IndexRow], positions: Sequence[int]) -> tuple[dict[int, int], dict[str, int]]:
    """Contiguous train labels for pids and clothes keys, in sorted order (stable across runs)."""
    pids = sorted({rows[i].pid for i in positions})
    clothes = sorted({rows[i].clothes for i in positions})
    return {p: n for n, p in enumerate(pids)}, {c: n for n, c in enumerate(clothes)}
