"""Pictures of a ranking: query + top-k rows with right/wrong borders (ranks.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from reid.data.images import read_bgr
from reid.eval.metrics import junk_rule

TILE_H, TILE_W, BORDER = 128, 64, 4
GREEN, RED, GREY, BLUE = (60, 180, 60), (40, 40, 220), (150, 150, 150), (200, 120, 40)  # BGR


def _tile(path: Path, colour: tuple[int, int, int], caption: str = "") -> np.ndarray:
    img = cv2.resize(read_bgr(path), (TILE_W - 2 * BORDER, TILE_H - 2 * BORDER), interpolation=cv2.INTER_AREA)
    img = cv2.copyMakeBorder(img, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_CONSTANT, value=colour)
    bar = np.full((14, TILE_W, 3), 255, np.uint8)
    cv2.putText(bar, caption[:10], (2, 11), cv2.FONT_HERSHEY_PLAIN, 0.75, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([img, bar])


def _header(width: int, lines: Sequence[str]) -> np.ndarray:
    """White band with one line of text per entry (the sheet's title and how to read it)."""
    band = np.full((8 + 16 * len(lines), width, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(band, text, (4, 17 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def rank_sheet(queries: Sequence[Path], ranked: Sequence[Sequence[Path]], correct: np.ndarray | None,
               out: str | Path, captions: Sequence[str] | None = None,
               distances: np.ndarray | None = None, title: Sequence[str] = ()) -> Path:
    """One row per query: the query (blue border), a gap, its ranked gallery images nearest first, each with a
    green border when it shows the query's identity, red when not (grey when identities are unknown); `title`
    lines go above, followed by a legend of the borders and captions."""
    rows = []
    for i, (q, hits) in enumerate(zip(queries, ranked)):
        gap = np.full((TILE_H + 14, 8, 3), 255, np.uint8)
        tiles = [_tile(Path(q), BLUE, captions[i] if captions else "query"), gap]
        for j, g in enumerate(hits):
            colour = GREY if correct is None else (GREEN if correct[i][j] else RED)
            label = f"{j + 1}" + (f" {distances[i][j]:.2f}" if distances is not None else "")
            tiles.append(_tile(Path(g), colour, label))
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    sheet = np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    legend = ["blue: the query; then its gallery, nearest first: " + (
        "grey (identities unknown)" if correct is None else "green = same identity, red = another") + "; "
        "under each: rank" + (" and distance" if distances is not None else "")]
    if title or captions:
        sheet = np.vstack([_header(width, [*title, *legend]), sheet])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    return out


def display_rankings(dist: np.ndarray, q_rows: Sequence, g_rows: Sequence, mode: str, k: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query, the top-k gallery indices with the protocol's junk removed (same identity seen by the same
    camera; also the same clothes in `cc`, other clothes in `sc`), whether each shows the query's identity, and
    the rank of the first correct match (len(gallery) when none)."""
    def column(rows: Sequence, key: str) -> np.ndarray:
        return np.array([getattr(r, key) for r in rows])

    same = column(q_rows, "pid")[:, None] == column(g_rows, "pid")[None, :]
    cam_eq = torch.from_numpy(column(q_rows, "camid")[:, None] == column(g_rows, "camid")[None, :])
    clothes_eq = torch.from_numpy(column(q_rows, "clothes")[:, None] == column(g_rows, "clothes")[None, :])
    junk = same & junk_rule(cam_eq, clothes_eq, mode).numpy()  # the evaluation's own rule
    d = np.where(junk, np.inf, np.asarray(dist, np.float64))
    order = np.argsort(d, axis=1, kind="stable")
    hits = np.take_along_axis(same & ~junk, order, axis=1)
    first = np.where(hits.any(1), hits.argmax(1), d.shape[1])
    return order[:, :k], hits[:, :k], first
