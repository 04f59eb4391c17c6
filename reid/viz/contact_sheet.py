"""`python -m reid inspect`: print a cache's provenance and statistics and draw a PNG contact sheet of overlays.

The overlay is chosen from the fields' kinds, so any teacher cache (a new teacher's too) can be inspected:
`labels` -> colour label map (LIP/ATR/Pascal palette for ``parsing``, part colours for ``isp_labels``);
`heatmaps` -> COCO-17 skeleton (decoded by argmax) when there are 17 channels, else a heat overlay; `image` -> the
picture beside the body. Face caches' ``box``/``landmarks`` draw the face box and 5 points, ``coords`` a skeleton.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from reid.cache.h5 import CacheReader, describe
from reid.data.images import read_bgr
from reid.vocab import NUM_JOINTS

TILE_W, TILE_H = 96, 192  # person crops are about 1:2
CAPTION_H = 14
# COCO-17 limbs (0 nose, 1/2 eyes, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees,
# 15/16 ankles; odd = left)
COCO_LIMBS: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
KEYPOINT_MIN_SCORE = 0.3


def label_palette(n: int = 256) -> np.ndarray:
    """The PASCAL-VOC style colour map (used by SCHP/LIP tools): bits of the label spread over R, G, B. RGB (n,3).

    Label j: for each of 8 rounds k, bit 3k of j -> bit 7-k of R, bit 3k+1 -> G, bit 3k+2 -> B.
    """
    labels = np.arange(n)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):
        for c in range(3):
            rgb[:, c] |= ((labels >> (3 * k + c)) & 1) << (7 - k)
    return rgb.astype(np.uint8)


def label_names(teacher: str, params: dict[str, Any], n: int) -> list[str]:
    """Names for a label legend: the parsing teacher's label set when known, else 'part k' / numbers."""
    if teacher == "parsing":
        try:
            from reid.vocab import LABEL_SETS

            names = list(LABEL_SETS[params.get("label_set", "lip")])
            return names + [str(i) for i in range(len(names), n)]
        except (ImportError, KeyError):
            pass
    if teacher == "isp_labels":
        return ["background"] + [f"part {k}" for k in range(1, n)]
    return [str(i) for i in range(n)]


def overlay_labels(image_bgr: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray, alpha: float = 0.55):
    """Blend label colours (nearest-resized to the image) over non-background pixels."""
    h, w = image_bgr.shape[:2]
    lab = cv2.resize(labels.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    colour = palette_rgb[lab][..., ::-1].astype(np.float32)
    out = image_bgr.astype(np.float32)
    fg = lab > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour[fg]
    return out.astype(np.uint8)


def keypoints_from_heatmaps(heatmaps: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of image-frame heatmaps (17,h,w) -> (17,2) image pixels (cell centres) and (17,) peak scores."""
    k, h, w = heatmaps.shape
    flat = heatmaps.reshape(k, -1).astype(np.float32)
    idx = flat.argmax(1)
    ys, xs = np.divmod(idx, w)
    sx, sy = image_hw[1] / w, image_hw[0] / h
    coords = np.stack([(xs + 0.5) * sx - 0.5, (ys + 0.5) * sy - 0.5], axis=1).astype(np.float32)
    return coords, flat.max(1)


def draw_skeleton(img: np.ndarray, coords: np.ndarray, scores: np.ndarray, scale: tuple[float, float]) -> None:
    """COCO-17 limbs and joints (left side blue-ish, right side orange) for joints with score >= threshold."""
    pts = [(int(round(x * scale[0])), int(round(y * scale[1]))) for x, y in coords]
    ok = (scores >= KEYPOINT_MIN_SCORE) & np.isfinite(coords).all(1)
    for a, b in COCO_LIMBS:
        if ok[a] and ok[b]:
            cv2.line(img, pts[a], pts[b], (0, 255, 255), 1, cv2.LINE_AA)
    for j, p in enumerate(pts):
        if ok[j]:
            cv2.circle(img, p, 2, (255, 128, 0) if j % 2 else (0, 128, 255), -1, cv2.LINE_AA)


def draw_face(img: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None, scale: tuple[float, float]) -> None:
    """Face box (green) and 5 landmarks (eyes red, nose yellow, mouth magenta); nothing when NaN."""
    if not np.isfinite(box).all():
        return
    x1, y1, x2, y2 = box
    cv2.rectangle(img, (int(x1 * scale[0]), int(y1 * scale[1])), (int(x2 * scale[0]), int(y2 * scale[1])),
                  (0, 255, 0), 1)
    if landmarks is None:
        return
    colours = [(0, 0, 255), (0, 0, 255), (0, 255, 255), (255, 0, 255), (255, 0, 255)]
    for (x, y), c in zip(landmarks, colours):
        if np.isfinite([x, y]).all():
            cv2.circle(img, (int(round(x * scale[0])), int(round(y * scale[1]))), 2, c, -1)


def render_tile(image_bgr: np.ndarray, values: dict[str, np.ndarray], kinds: dict[str, str], caption: str) -> np.ndarray:
    """One sample: the resized image with the overlays its fields' kinds call for (label maps coloured, heatmaps
    as a skeleton when they are the 17 COCO joints and as a heat overlay otherwise, `image` fields as side panels,
    a face box and landmarks when the cache has them), and a caption."""
    h, w = image_bgr.shape[:2]
    scale = (TILE_W / w, TILE_H / h)
    tile = cv2.resize(image_bgr, (TILE_W, TILE_H), interpolation=cv2.INTER_AREA)
    for name, kind in kinds.items():
        if kind == "labels":
            tile = overlay_labels(tile, values[name], label_palette())
        elif kind == "heatmaps" and "coords" not in values:
            maps = np.asarray(values[name], np.float32)
            if maps.shape[0] == NUM_JOINTS:
                draw_skeleton(tile, *keypoints_from_heatmaps(maps, (h, w)), scale)
            else:
                tile = overlay_heat(tile, maps.max(axis=0))
    if "box" in values and values.get("has_face", 1):
        draw_face(tile, values["box"], values.get("landmarks"), scale)
    if "coords" in values:
        scores = values.get("scores", np.ones(len(values["coords"]), np.float32))
        draw_skeleton(tile, values["coords"], scores, scale)
    panels = [tile]
    for name, kind in kinds.items():
        if kind == "image":
            face = cv2.resize(values[name][..., ::-1], (TILE_W, TILE_W), interpolation=cv2.INTER_AREA)  # RGB->BGR
            pad = np.zeros((TILE_H - TILE_W, TILE_W, 3), np.uint8)
            panels.append(np.vstack([face, pad]))
    body = np.hstack(panels)
    bar = np.zeros((CAPTION_H, body.shape[1], 3), np.uint8)
    cv2.putText(bar, caption[: body.shape[1] // 6], (2, CAPTION_H - 4), cv2.FONT_HERSHEY_PLAIN, 0.8,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([body, bar])


def overlay_heat(tile: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A dense map in [0, max] blended over the tile as a colour map."""
    heat = cv2.resize(heat.astype(np.float32), (tile.shape[1], tile.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = (255 * heat / max(float(heat.max()), 1e-6)).clip(0, 255).astype(np.uint8)
    return cv2.addWeighted(tile, 1 - alpha, cv2.applyColorMap(heat, cv2.COLORMAP_JET), alpha, 0)


def legend(names: Sequence[str], present: Sequence[int], width: int) -> np.ndarray:
    """Colour swatches with names for the labels that appear on the sheet."""
    palette = label_palette()
    cell_w, cell_h = 120, 16
    per_row = max(1, width // cell_w)
    rows = (len(present) + per_row - 1) // per_row
    out = np.zeros((max(1, rows) * cell_h, width, 3), np.uint8)
    for k, lab in enumerate(present):
        x, y = (k % per_row) * cell_w, (k // per_row) * cell_h
        cv2.rectangle(out, (x + 2, y + 3), (x + 14, y + 13), tuple(int(c) for c in palette[lab][::-1]), -1)
        name = names[lab] if lab < len(names) else str(lab)
        cv2.putText(out, f"{lab} {name}", (x + 18, y + 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1)
    return out


def sample_rows(num_rows: int, n: int) -> list[int]:
    """n rows spread evenly over the index (deterministic)."""
    return sorted(set(np.linspace(0, num_rows - 1, min(n, num_rows)).round().astype(int).tolist()))


def contact_sheet(reader: CacheReader, root: str | Path, rows: Sequence[int], cols: int | None = None) -> np.ndarray:
    """Grid of tiles for ``rows`` of a cache (BGR image), with a label legend when the cache has label maps."""
    teacher = reader.meta.teacher
    tiles, labels_seen = [], set()
    for i in rows:
        values = reader[i]
        for name, kind in reader.kinds.items():
            if kind == "labels":
                labels_seen.update(np.unique(values[name]).tolist())
        tiles.append(render_tile(read_bgr(Path(root) / reader.paths[i]), values, reader.kinds,
                                 f"{i} {Path(reader.paths[i]).name}"))
    cols = cols or int(np.ceil(np.sqrt(len(tiles) * 2)))
    th, tw = tiles[0].shape[:2]
    grid_rows = (len(tiles) + cols - 1) // cols
    sheet = np.zeros((grid_rows * th, cols * tw, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
    if labels_seen:
        present = sorted(x for x in labels_seen if x > 0)
        names = label_names(teacher, reader.meta.params, max(labels_seen) + 1)
        sheet = np.vstack([sheet, legend(names, present, sheet.shape[1])])
    return sheet


def format_description(d: dict[str, Any]) -> str:
    """Readable provenance + per-field statistics."""
    lines = [f"cache: {d['path']}", f"rows: {d['rows_done']} of {d['num_rows']} done; statistics over "
                                    f"{d['stats_rows']} rows"]
    lines += [f"  {k}: {json.dumps(v, sort_keys=True)}" for k, v in d["provenance"].items()]
    for name, s in d["fields"].items():
        extra = {k: v for k, v in s.items() if k not in ("shape", "dtype")}
        hist = extra.pop("histogram", None)
        stats = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        lines.append(f"field {name}: shape {tuple(s['shape'])} {s['dtype']}; {stats}")
        if hist:
            lines.append("    histogram: " + ", ".join(f"{k}:{v:.3f}" for k, v in hist.items() if v > 0))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m reid inspect`."""
    parser.add_argument("cache", type=Path, help="cache file (.h5)")
    parser.add_argument("--index", type=Path, default=None, help="index CSV (checked against the cache's hash)")
    parser.add_argument("--root", type=Path, default=None, help="dataset root (needed for --sheet)")
    parser.add_argument("--sheet", type=Path, default=None, help="write a PNG contact sheet here")
    parser.add_argument("--n", type=int, default=16, help="number of samples on the sheet")
    parser.add_argument("--stats-rows", type=int, default=5000,
                        help="compute statistics on at most this many evenly spaced rows (0 = all)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def main(args: argparse.Namespace) -> int:
    """`python -m reid inspect`: provenance + statistics, and optionally an overlay contact sheet."""
    d = describe(args.cache, max_rows=args.stats_rows or None)
    if args.index is not None:  # the help promises it: a cache of another index is an error, not a statistic
        from reid.cache.h5 import CacheIndexMismatch
        from reid.data.index import index_sha256

        expected, found = d["provenance"]["index_sha256"], index_sha256(args.index)
        if expected != found:
            raise CacheIndexMismatch(f"{args.cache} was built for an index with sha256 {expected}, but {args.index} "
                                     f"has sha256 {found}: rebuild the cache or pass its own index")
    print(json.dumps(d, indent=1, sort_keys=True) if args.json else format_description(d))
    if args.sheet is not None:
        if args.root is None:
            raise SystemExit("--sheet needs --root (the dataset root the cache's paths are relative to)")
        reader = CacheReader(args.cache, args.index)
        sheet = contact_sheet(reader, args.root, sample_rows(len(reader), args.n))
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(args.sheet), sheet):
            raise SystemExit(f"cannot write {args.sheet}")
        print(f"contact sheet: {args.sheet} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0
