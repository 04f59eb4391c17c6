"""HDF5 cache writer/reader: layout, byte reproducibility, resume, shards, index checks, per-process handles."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from reid.cache.h5 import (
    check_field,
    CacheError,
    CacheIndexMismatch,
    CacheCorrupt,
    CacheReader,
    CacheWriter,
    describe,
    h5open,
    merge_shards,
    parse_shard,
    shard_rows,
    tmp_path as work_path,
)
from reid.data.index import IndexRow, index_sha256, write_index

N = 10
PATHS = [f"train/{i:03d}.png" for i in range(N)]
FIELDS = {"labels": ((6, 4), "uint8", "labels"), "vec": ((3,), "float32", "vector"),
          "has_face": ((), "uint8", "vector")}


def values(rows) -> dict[str, np.ndarray]:
    """Deterministic row content that depends only on the row number."""
    rows = np.asarray(rows)
    rng = [np.random.default_rng(int(r)) for r in rows]
    return {
        "labels": np.stack([g.integers(0, 5, (6, 4)).astype(np.uint8) for g in rng]),
        "vec": np.stack([np.array([r, r * 0.5, np.nan if r == 3 else -r], np.float32) for r in rows]),
        "has_face": (rows % 3 == 0).astype(np.uint8),
    }


def writer(out: Path, shard=None, params=None, index_hash="ab" * 32) -> CacheWriter:
    return CacheWriter(out, teacher="toy", backend="oracle", model_sha256="", params=params or {"k": 1, "a": "x"},
                       index_sha256=index_hash, paths=PATHS, fields=FIELDS, shard=shard, flush_every_s=0)


def fill(out: Path, batches, shard=None, **kw) -> Path:
    w = writer(out, shard=shard, **kw)
    for b in batches:
        b = [r for r in b if r in w.rows]
        if b:
            w.write_rows(b, values(b))
    return w.finalize()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_and_attributes(tmp_path: Path) -> None:
    out = fill(tmp_path / "c.h5", [range(N)])
    with h5py.File(out, "r") as f:
        assert f["labels"].shape == (N, 6, 4) and f["labels"].chunks == (1, 6, 4)
        assert f["labels"].compression == "gzip" and f["labels"].compression_opts == 4 and f["labels"].shuffle
        assert f["has_face"].shape == (N,) and f["has_face"].chunks == (1,)
        assert f["path"].dtype.kind == "S" and f["path"][3].decode() == PATHS[3]
        assert f["done"].dtype == np.uint8 and f["done"][()].all()
        assert sorted(f.attrs) == sorted(["schema_version", "teacher", "backend", "model_sha256", "params",
                                          "index_sha256", "num_rows", "fields", "content_digest"])
        assert f.attrs["params"] == '{"a":"x","k":1}'  # sorted keys
        assert json.loads(f.attrs["fields"])["labels"] == [[6, 4], "uint8", "labels"]
    assert not tmp_path.joinpath("c.h5.tmp").exists()


def test_same_rows_any_history_same_bytes(tmp_path: Path) -> None:
    a = fill(tmp_path / "a.h5", [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]])
    time.sleep(1.1)  # a timestamp anywhere in the file would now differ
    b = fill(tmp_path / "b.h5", [[9, 8], [0, 1, 2, 3, 4, 5], [6, 7], [2]])  # other order, a row rewritten
    assert sha(a) == sha(b)


def test_no_final_file_before_finalize_and_resume(tmp_path: Path, caplog) -> None:
    out = tmp_path / "c.h5"
    w = writer(out)
    w.write_rows([0, 1, 2], values([0, 1, 2]))
    w.close()  # as after an exception: rows kept, nothing published
    assert not out.exists() and tmp_path.joinpath("c.h5.tmp").exists()
    with caplog.at_level(logging.INFO):
        w2 = writer(out)
    assert w2.resumed_rows == 3 and w2.pending_rows().tolist() == list(range(3, N))
    w2.write_rows(w2.pending_rows(), values(w2.pending_rows()))
    w2.finalize()
    assert sha(out) == sha(fill(tmp_path / "ref.h5", [range(N)]))


def test_mismatched_tmp_starts_over(tmp_path: Path, caplog) -> None:
    out = tmp_path / "c.h5"
    w = writer(out, params={"k": 1})
    w.write_rows([0], values([0]))
    w.close()
    with caplog.at_level(logging.WARNING):
        w2 = writer(out, params={"k": 2})
    assert "does not match" in caplog.text and w2.resumed_rows == 0 and len(w2.pending_rows()) == N
    w2.close()


def test_corrupt_tmp_starts_over(tmp_path: Path, caplog) -> None:
    out = tmp_path / "c.h5"
    tmp_path.joinpath("c.h5.tmp").write_bytes(b"not an hdf5 file")
    with caplog.at_level(logging.WARNING):
        w = writer(out)
    assert "unreadable" in caplog.text and len(w.pending_rows()) == N
    w.close()


def test_done_row_without_data_is_recomputed(tmp_path: Path, caplog) -> None:
    out = tmp_path / "c.h5"
    w = writer(out)
    w.write_rows([0, 1], values([0, 1]))
    w.close()
    with h5open(tmp_path / "c.h5.tmp", "r+") as f:  # simulate a kill that left a done flag without its chunk
        f["done"][5] = 1
    with caplog.at_level(logging.WARNING):
        w2 = writer(out)
    assert w2.pending_rows().tolist() == list(range(2, N)) and "no data" in caplog.text
    w2.close()


def test_finalize_refuses_missing_rows(tmp_path: Path) -> None:
    w = writer(tmp_path / "c.h5")
    w.write_rows([0], values([0]))
    with pytest.raises(CacheError, match="9 of 10 rows not written"):
        w.finalize()
    w.close()


def test_write_rows_checks_shape_dtype_and_fields(tmp_path: Path) -> None:
    w = writer(tmp_path / "c.h5")
    bad = values([0])
    bad["labels"] = bad["labels"][:, :5]
    with pytest.raises(ValueError, match=r"field 'labels' has batch shape \(1, 5, 4\)"):
        w.write_rows([0], bad)
    bad = values([0])
    bad["labels"] = bad["labels"].astype(np.float64)
    with pytest.raises(TypeError, match="field 'labels' has dtype float64"):
        w.write_rows([0], bad)
    with pytest.raises(KeyError, match="missing \\['vec'\\]"):
        w.write_rows([0], {k: v for k, v in values([0]).items() if k != "vec"})
    w.close()


def test_shard_ranges_and_parse() -> None:
    # N=10, n=3: [0,3), [3,6), [6,10) from i*N//n
    assert [list(shard_rows(10, (i, 3))) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("3/3")


def test_shards_merge_byte_identical(tmp_path: Path) -> None:
    single = fill(tmp_path / "single.h5", [range(N)])
    parts = [fill(tmp_path / f"part{i}.h5", [range(N)], shard=(i, 3)) for i in range(3)]
    with pytest.raises(CacheError, match="shard part 1/3"):
        CacheReader(parts[1])
    merged = merge_shards(parts[::-1], tmp_path / "merged.h5")
    assert sha(merged) == sha(single)
    with pytest.raises(CacheError, match="undone"):
        merge_shards(parts[:2], tmp_path / "bad.h5")
    with pytest.raises(CacheError, match="overlap"):
        merge_shards(parts + parts[:1], tmp_path / "bad.h5")
    other = fill(tmp_path / "other.h5", [range(N)], shard=(2, 3), params={"k": 9})
    with pytest.raises(CacheError, match="provenance differs"):
        merge_shards(parts[:2] + [other], tmp_path / "bad.h5")


def _index(tmp_path: Path, n: int = N) -> Path:
    return write_index([IndexRow(p, 1, 0, "", "train") for p in PATHS[:n]], tmp_path / "index.csv")


def test_reader_checks_index_hash(tmp_path: Path) -> None:
    index = _index(tmp_path)
    out = fill(tmp_path / "c.h5", [range(N)], index_hash=index_sha256(index))
    assert len(CacheReader(out, index)) == N
    old = index_sha256(index)
    index = _index(tmp_path, n=N - 1)
    with pytest.raises(CacheIndexMismatch) as err:
        CacheReader(out, index)
    assert old in str(err.value) and index_sha256(index) in str(err.value) and "rebuild" in str(err.value)


def test_reader_access_fields_and_teacher(tmp_path: Path) -> None:
    out = fill(tmp_path / "c.h5", [range(N)])
    r = CacheReader(out, fields=["labels", "has_face"])
    row = r[4]
    assert set(row) == {"labels", "has_face"} and np.array_equal(row["labels"], values([4])["labels"][0])
    assert np.array_equal(r.read("vec", [7, 2, 7]), values([7, 2, 7])["vec"], equal_nan=True)
    assert r.attrs["params"] == {"a": "x", "k": 1} and r.attrs["num_rows"] == N
    assert r.paths[2] == PATHS[2]
    with pytest.raises(CacheError, match="no field"):
        CacheReader(out, fields=["heatmaps"])
    with pytest.raises(CacheError, match="expected 'faces'"):
        CacheReader(out, expected_teacher="faces")
    with pytest.raises(FileNotFoundError, match="cache not found"):
        CacheReader(tmp_path / "none.h5")


def _child_read(reader: CacheReader, q) -> None:
    q.put((reader._file is None or reader._pid != __import__("os").getpid(), int(reader[5]["has_face"])))


def test_reader_pickles_and_reopens_after_fork(tmp_path: Path) -> None:
    out = fill(tmp_path / "c.h5", [range(N)])
    r = CacheReader(out)
    assert r._file is None  # nothing opened in __init__
    r[0]
    clone = pickle.loads(pickle.dumps(r))
    assert clone._file is None and np.array_equal(clone[1]["vec"], r[1]["vec"])
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(r, q))
    p.start()
    inherited_not_used, has_face = q.get(timeout=30)
    p.join(30)
    assert inherited_not_used and has_face == 0  # row 5: 5 % 3 != 0


def test_describe_stats(tmp_path: Path) -> None:
    out = fill(tmp_path / "c.h5", [range(N)])
    d = describe(out)
    assert d["rows_done"] == N and d["provenance"]["teacher"] == "toy"
    # has_face = 1 for rows 0, 3, 6, 9 -> 4 / 10
    assert d["fields"]["has_face"]["detection_rate"] == pytest.approx(0.4)
    # vec rows r: (r, r/2, -r) except row 3's NaN: max = 9, min = -9, one NaN among 30 values
    assert d["fields"]["vec"]["max"] == 9 and d["fields"]["vec"]["min"] == -9
    assert d["fields"]["vec"]["nan_fraction"] == pytest.approx(1 / 30)
    hist = d["fields"]["labels"]["histogram"]
    assert set(hist) <= set(range(5)) and sum(hist.values()) == pytest.approx(1.0)
    assert "histogram" not in d["fields"]["has_face"]
    # 3 evenly spaced rows of 0..9: linspace(0, 9, 3) = 0, 4.5 -> 4 (round half to even), 9
    small = describe(out, max_rows=3)
    assert small["stats_rows"] == 3 and small["fields"]["vec"]["max"] == 9 and small["fields"]["vec"]["min"] == -9
    # has_face over rows 0, 4, 9 = 1, 0, 1
    assert small["fields"]["has_face"]["detection_rate"] == pytest.approx(2 / 3)


def test_tmp_path_same_directory(tmp_path: Path) -> None:
    assert work_path(tmp_path / "x" / "c.h5") == tmp_path / "x" / "c.h5.tmp"


# --- inspection (reid/viz/contact_sheet.py) -------------------------------------------------------------------
def test_label_palette_hand_values() -> None:
    from reid.viz.contact_sheet import label_palette

    pal = label_palette()
    # j=1: bit0 -> R bit7 = 128; j=2: bit1 -> G bit7; j=5 = 0b101: R and B bit7; j=8: bit3 -> R bit6 = 64
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[2].tolist() == [0, 128, 0]
    assert pal[5].tolist() == [128, 0, 128] and pal[8].tolist() == [64, 0, 0]


def test_keypoints_from_heatmaps_hand_values() -> None:
    from reid.viz.contact_sheet import keypoints_from_heatmaps

    hm = np.zeros((17, 4, 2), np.float32)
    hm[0, 3, 1] = 0.9  # joint 0 peaks at cell (x=1, y=3)
    coords, scores = keypoints_from_heatmaps(hm, (8, 4))
    # cell size 2x2 px; centre of cell x=1 -> (1 + 0.5) * 2 - 0.5 = 2.5; y=3 -> (3 + 0.5) * 2 - 0.5 = 6.5
    assert coords[0].tolist() == [2.5, 6.5] and scores[0] == pytest.approx(0.9)


def test_inspect_cli_writes_sheet_with_overlays(tmp_path: Path, capsys) -> None:
    import argparse

    import cv2

    from reid.viz import contact_sheet as cs

    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    for p in PATHS:
        cv2.imwrite(str(root / p), np.full((24, 12, 3), 200, np.uint8))
    index = _index(tmp_path)
    fields = {"labels": ((6, 4), "uint8", "labels"), "has_face": ((), "uint8", "vector"),
              "box": ((4,), "float32", "vector"), "crop": ((8, 8, 3), "uint8", "image")}
    w = CacheWriter(tmp_path / "c.h5", teacher="parsing", backend="oracle", model_sha256="", params={},
                    index_sha256=index_sha256(index), paths=PATHS, fields=fields, flush_every_s=0)
    rows = np.arange(N)
    w.write_rows(rows, {"labels": np.full((N, 6, 4), 5, np.uint8), "has_face": np.ones(N, np.uint8),
                        "box": np.tile(np.array([2, 2, 10, 8], np.float32), (N, 1)),
                        "crop": np.full((N, 8, 8, 3), (255, 0, 0), np.uint8)})
    w.finalize()
    parser = argparse.ArgumentParser()
    cs.add_arguments(parser)
    sheet = tmp_path / "sheet.png"
    assert cs.main(parser.parse_args([str(tmp_path / "c.h5"), "--index", str(index), "--root", str(root),
                                      "--sheet", str(sheet), "--n", "4"])) == 0
    out = capsys.readouterr().out
    assert "teacher: \"parsing\"" in out and "detection_rate=1" in out and "histogram: 5:1.000" in out
    img = cv2.imread(str(sheet))
    # body tile pixel far from the box: grey 200 blended with label 5 = RGB (128,0,128) at alpha 0.55
    # -> B = R = 0.45*200 + 0.55*128 = 160.4, G = 0.45*200 = 90
    assert np.abs(img[cs.TILE_H - 5, 5].astype(int) - [160, 90, 160]).max() <= 1
    # the face crop panel beside the body: RGB red -> BGR (0, 0, 255)
    assert img[10, cs.TILE_W + 10].tolist() == [0, 0, 255]
    assert img.shape[0] > cs.TILE_H  # caption + legend rows below the tiles


def test_a_truncated_cache_is_an_error_naming_it(tmp_path: Path) -> None:
    out = fill(tmp_path / "parsing.h5", [range(N)])
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheCorrupt, match=r"parsing.h5: cannot be opened as HDF5.*truncated or damaged"):
        CacheReader(out)


def test_a_damaged_chunk_names_the_file_and_row_and_verify_lists_it(tmp_path: Path, capsys) -> None:
    from reid.cli import main

    out = fill(tmp_path / "keypoints.h5", [range(N)])
    with h5open(out) as f:  # the byte range of row 6's compressed `labels` chunk
        info = f["labels"].id.get_chunk_info(6)
        offset, size = info.byte_offset, info.size
    raw = bytearray(out.read_bytes())
    raw[offset : offset + size] = b"\xff" * size
    out.write_bytes(bytes(raw))
    reader = CacheReader(out)
    assert np.array_equal(reader[5]["labels"], values([5])["labels"][0])  # the other rows still read
    with pytest.raises(CacheCorrupt, match=r"keypoints.h5: row 6 \(train/006.png\) cannot be read"):
        reader[6]
    with pytest.raises(CacheCorrupt, match=r"keypoints.h5: field 'labels' cannot be read"):
        reader.read("labels", [2, 6])
    assert reader.verify() == [(6, "train/006.png", reader.verify()[0][2])]
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "row 6 (train/006.png)" in printed
    good = fill(tmp_path / "good.h5", [range(N)])
    assert main(["verify", str(good)]) == 0 and "OK" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    (((6, 4), "uint8"), r"field 'f' declares \(\(6, 4\), 'uint8'\): expected \(shape, dtype, kind\)"),
    (((6, 4), "uint8", "mask"), r"field 'f' has kind 'mask'; known kinds"),
    (((6, 4, 2), "uint8", "labels"), r"field 'f' of kind 'labels' must be \(h, w\) integer, got shape \(6, 4, 2\)"),
    (((17, 6, 4), "uint8", "heatmaps"), r"kind 'heatmaps' must be \(C, h, w\) float, got shape \(17, 6, 4\) uint8"),
    (((8, 8, 3), "float32", "image"), r"kind 'image' must be \(h, w, 3\) uint8"),
])
def test_every_field_declares_a_kind_that_fits_its_shape(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_field("f", spec)


def test_the_reader_reports_each_fields_kind(tmp_path: Path) -> None:
    out = fill(tmp_path / "c.h5", [range(N)])
    assert CacheReader(out).kinds == {"has_face": "vector", "labels": "labels", "vec": "vector"}
