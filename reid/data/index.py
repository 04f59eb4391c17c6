"""The dataset index: one CSV row per usable image, the contract between loaders, teachers and trainers."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from reid.hashing import file_sha256

COLUMNS = ("path", "pid", "camid", "clothes", "split")
SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class IndexRow:
    """One image: path relative to the dataset root, raw pid, 0-based camid, clothes key ('' if none), split."""

    path: str
    pid: int
    camid: int
    clothes: str
    split: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r} for {self.path}")


def sort_rows(rows: Iterable[IndexRow]) -> list[IndexRow]:
    """Deterministic order: train, query, gallery, then path."""
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(rows, key=lambda r: (order[r.split], r.path))


def write_index(rows: Sequence[IndexRow], out: str | Path) -> Path:
    """Write rows (sorted) as CSV with a fixed column order and '\\n' line endings (stable bytes)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in sort_rows(rows):
            writer.writerow([r.path, r.pid, r.camid, r.clothes, r.split])
    tmp.replace(out)
    return out


def read_index(path: str | Path) -> list[IndexRow]:
    """Read an index CSV; a missing file or a wrong header is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file not found: {path} (make it with `python -m reid index`)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header[: len(COLUMNS)]) != COLUMNS:
            raise ValueError(f"{path}: expected header {','.join(COLUMNS)}, found {header}")
        rows = []
        try:
            for fields in reader:
                rows.append(_parse_row(fields, path, reader.line_num))
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None
        return rows


def _parse_row(fields: list[str], path: Path, line: int) -> IndexRow:
    """One CSV row -> IndexRow; every problem names the file and line."""
    where = f"{path}, line {line}"
    if len(fields) < len(COLUMNS):
        raise ValueError(f"{where}: {len(fields)} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
    p, pid, cam, clothes, split = fields[: len(COLUMNS)]
    try:
        pid_i, cam_i = int(pid), int(cam)
    except ValueError:
        raise ValueError(f"{where}: pid {pid!r} and camid {cam!r} must be integers") from None
    check_relative(p, where)
    try:
        return IndexRow(p, pid_i, cam_i, clothes, split)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def check_relative(p: str, where: str) -> None:
    """An index path stays inside the dataset root: relative, no `..` component, no NUL (a row must not make a
    teacher or trainer read a file elsewhere, e.g. `../../secret.jpg`)."""
    parts = p.replace("\\", "/").split("/")
    if not p or "\0" in p or p.startswith(("/", "\\")) or (len(p) > 1 and p[1] == ":") or ".." in parts:
        raise ValueError(f"{where}: path {p!r} leaves the dataset root (index paths are relative to it, without "
                         "'..')")


def index_sha256(path: str | Path) -> str:
    """Content hash of an index file; caches record it and readers refuse a mismatch."""
    return file_sha256(path)


def select(rows: Sequence[IndexRow], split: str) -> list[int]:
    """Row numbers of one split (row numbers, not rows, so caches aligned with the index can be sliced)."""
    return [i for i, r in enumerate(rows) if r.split == split]
