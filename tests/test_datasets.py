"""Loaders: tiny trees in each real layout (real 4x2 images written with cv2), exact rows, error cases."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from reid.data.datasets import (DATASETS, DatasetError, build_index, dataset_folder, dataset_info, add_arguments,
                                main)
from reid.data.index import IndexRow, read_index

Row = tuple[str, int, int, str, str]


def img(path: Path) -> None:
    """Write a tiny real image (format from the suffix) so the decode check passes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((4, 2, 3), 127, np.uint8)), path


def junk(path: Path, data: bytes = b"not an image") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tree(base: Path, rel_paths: list[str]) -> None:
    for r in rel_paths:
        img(base / r)


# Each builder writes a layout under ``root`` and returns the rows expected (paths relative to ``root``).


def build_market(root: Path) -> list[Row]:
    w = "Market-1501-v15.09.15/"
    tree(root, [w + "bounding_box_train/0002_c1s1_000451_03.jpg", w + "bounding_box_train/0007_c6s3_000001_01.jpg",
                w + "bounding_box_train/-1_c2s1_000001_00.jpg", w + "query/0002_c2s1_000301_00.jpg",
                w + "bounding_box_test/0000_c3s1_000001_00.jpg", w + "bounding_box_test/0002_c5s2_000101_02.jpg",
                w + "bounding_box_test/-1_c1s1_000002_00.jpg"])
    junk(root / w / "bounding_box_train/Thumbs.db")
    junk(root / w / "bounding_box_train/readme.txt")
    return [(w + "bounding_box_train/0002_c1s1_000451_03.jpg", 2, 0, "", "train"),
            (w + "bounding_box_train/0007_c6s3_000001_01.jpg", 7, 5, "", "train"),
            (w + "query/0002_c2s1_000301_00.jpg", 2, 1, "", "query"),
            (w + "bounding_box_test/0000_c3s1_000001_00.jpg", 0, 2, "", "gallery"),  # pid 0 kept as distractor
            (w + "bounding_box_test/0002_c5s2_000101_02.jpg", 2, 4, "", "gallery")]


def _duke_like(root: Path, w: str, cam: int) -> list[Row]:
    tree(root, [w + "bounding_box_train/0001_c2_f0046182.jpg", w + f"query/0005_c{cam}_f0000001.jpg",
                w + "bounding_box_test/0005_c1_f0000002.jpg"])
    return [(w + "bounding_box_train/0001_c2_f0046182.jpg", 1, 1, "", "train"),
            (w + f"query/0005_c{cam}_f0000001.jpg", 5, cam - 1, "", "query"),
            (w + "bounding_box_test/0005_c1_f0000002.jpg", 5, 0, "", "gallery")]


def build_duke(root: Path) -> list[Row]:
    return _duke_like(root, "", 8)


def build_occluded_duke(root: Path) -> list[Row]:
    return _duke_like(root, "Occluded_Duke/", 8)


def build_synthocc(root: Path) -> list[Row]:
    return _duke_like(root, "", 11)  # synthetic worlds may have more cameras than Duke


def build_cuhk03(root: Path) -> list[Row]:
    for v in ("detected", "labeled"):
        tree(root, [f"cuhk03-np/{v}/bounding_box_train/0001_c1_1.png", f"cuhk03-np/{v}/query/0003_c2_4.png",
                    f"cuhk03-np/{v}/bounding_box_test/0003_c1_2.png"])
    w = "cuhk03-np/detected/"
    return [(w + "bounding_box_train/0001_c1_1.png", 1, 0, "", "train"), (w + "query/0003_c2_4.png", 3, 1, "", "query"),
            (w + "bounding_box_test/0003_c1_2.png", 3, 0, "", "gallery")]


def _prcc_like(root: Path, w: str) -> list[Row]:
    r = w + "rgb/"
    tree(root, [r + "train/001/A_cropped_rgb001.jpg", r + "train/001/C_cropped_rgb002.jpg",
                r + "train/003/B_cropped_rgb010.jpg", r + "val/005/A_cropped_rgb001.jpg",
                r + "test/A/002/cropped_rgb001.jpg", r + "test/B/002/cropped_rgb002.jpg",
                r + "test/C/002/cropped_rgb003.jpg", r + "test/C/004/cropped_rgb001.jpg"])
    return [(r + "train/001/A_cropped_rgb001.jpg", 1, 0, "1", "train"),
            (r + "train/001/C_cropped_rgb002.jpg", 1, 2, "1C", "train"),
            (r + "train/003/B_cropped_rgb010.jpg", 3, 1, "3", "train"),
            (r + "test/B/002/cropped_rgb002.jpg", 2, 1, "2", "query"),
            (r + "test/C/002/cropped_rgb003.jpg", 2, 2, "2C", "query"),
            (r + "test/C/004/cropped_rgb001.jpg", 4, 2, "4C", "query"),
            (r + "test/A/002/cropped_rgb001.jpg", 2, 0, "2", "gallery")]  # val/ is ignored


def build_prcc(root: Path) -> list[Row]:
    return _prcc_like(root, "prcc/")


def build_synthcc(root: Path) -> list[Row]:
    return _prcc_like(root, "")


def build_ltcc(root: Path) -> list[Row]:
    w = "LTCC_ReID/"
    tree(root, [w + "train/140_2_c5_002106.png", w + "train/144_1_c11_011239.png", w + "query/150_3_c12_000001.png",
                w + "test/150_1_c10_000002.png", w + "test/150_3_c1_000003.png"])
    junk(root / w / "info/cloth-change_id_train.txt", b"140\n")
    return [(w + "train/140_2_c5_002106.png", 140, 4, "140_2", "train"),
            (w + "train/144_1_c11_011239.png", 144, 10, "144_1", "train"),
            (w + "query/150_3_c12_000001.png", 150, 11, "150_3", "query"),
            (w + "test/150_1_c10_000002.png", 150, 9, "150_1", "gallery"),
            (w + "test/150_3_c1_000003.png", 150, 0, "150_3", "gallery")]


def _celeb_like(root: Path, w: str) -> list[Row]:
    tree(root, [w + "train/1_1_0.jpg", w + "train/1_2_1.jpg", w + "query/5_3_1.jpg", w + "gallery/5_12_0.jpg"])
    return [(w + "train/1_1_0.jpg", 1, 0, "1_1", "train"), (w + "train/1_2_1.jpg", 1, 0, "1_2", "train"),
            (w + "query/5_3_1.jpg", 5, 0, "5_3", "query"), (w + "gallery/5_12_0.jpg", 5, 1, "5_12", "gallery")]


def build_celeb(root: Path) -> list[Row]:
    return _celeb_like(root, "Celeb-reID/")


def build_celeb_light(root: Path) -> list[Row]:
    _celeb_like(root, "Celeb-reID/")  # both versions side by side: the light loader must pick its own folder
    return _celeb_like(root, "Celeb-reID-light/")


def build_occluded_reid(root: Path) -> list[Row]:
    w = "Occluded_REID/"
    tree(root, [w + "occluded_body_images/001/001_01.tif", w + "occluded_body_images/002/002_01.tif",
                w + "whole_body_images/001/001_01.tif", w + "whole_body_images/002/002_03.tif"])
    return [(w + "occluded_body_images/001/001_01.tif", 1, 0, "", "query"),
            (w + "occluded_body_images/002/002_01.tif", 2, 0, "", "query"),
            (w + "whole_body_images/001/001_01.tif", 1, 1, "", "gallery"),
            (w + "whole_body_images/002/002_03.tif", 2, 1, "", "gallery")]


def build_partial_reid(root: Path) -> list[Row]:
    w = "Partial_REID/"
    tree(root, [w + "partial_body_images/001_001.jpg", w + "whole_body_images/001_001.jpg",
                w + "whole_body_images/002_001.jpg", w + "occluded_body_images/001_001.jpg"])
    return [(w + "partial_body_images/001_001.jpg", 1, 0, "", "query"),
            (w + "whole_body_images/001_001.jpg", 1, 1, "", "gallery"),
            (w + "whole_body_images/002_001.jpg", 2, 1, "", "gallery")]


def build_partial_ilids(root: Path) -> list[Row]:
    w = "Partial_iLIDS/"
    tree(root, [w + "Probe/001.jpg", w + "Probe/017.jpg", w + "Gallery/001.jpg", w + "Gallery/017.jpg"])
    return [(w + "Probe/001.jpg", 1, 0, "", "query"), (w + "Probe/017.jpg", 17, 0, "", "query"),
            (w + "Gallery/001.jpg", 1, 1, "", "gallery"), (w + "Gallery/017.jpg", 17, 1, "", "gallery")]


BUILDERS: dict[str, Callable[[Path], list[Row]]] = {
    "market1501": build_market, "dukemtmc_reid": build_duke, "occluded_duke": build_occluded_duke,
    "synthocc": build_synthocc, "cuhk03_np": build_cuhk03, "prcc": build_prcc, "synthcc": build_synthcc,
    "ltcc": build_ltcc, "celeb_reid": build_celeb, "celeb_reid_light": build_celeb_light,
    "occluded_reid": build_occluded_reid, "partial_reid": build_partial_reid, "partial_ilids": build_partial_ilids,
}


def as_tuples(rows: list[IndexRow]) -> list[Row]:
    return [(r.path, r.pid, r.camid, r.clothes, r.split) for r in rows]


def order(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (("train", "query", "gallery").index(r[4]), r[0]))


def test_every_registered_dataset_has_a_layout_test() -> None:
    assert set(DATASETS.names()) == set(BUILDERS)


@pytest.mark.parametrize("name", DATASETS.names())
def test_loader_rows_exact(name: str, tmp_path: Path) -> None:
    root = tmp_path / "runs_c3" / "0001_c2_data"  # camera/pid-like folder names must not leak into parsing
    expected = BUILDERS[name](root)
    rows = build_index(name, root)
    assert as_tuples(rows) == order(expected)
    assert all((root / r.path).is_file() for r in rows)
    info = dataset_info(name)
    assert info.name == name and info.reference
    assert info.test_only == (not any(r.split == "train" for r in rows))
    assert info.has_clothes == (name in {"prcc", "synthcc", "ltcc"})  # Celeb keys are per image, not labels


@pytest.mark.parametrize("name", DATASETS.names())
def test_loader_accepts_the_dataset_folder_itself(name: str, tmp_path: Path) -> None:
    expected = BUILDERS[name](tmp_path)
    folder = dataset_folder(name, tmp_path)
    rows = build_index(name, folder)
    prefix = folder.relative_to(tmp_path).as_posix()
    strip = len(prefix) + 1 if prefix != "." else 0
    assert as_tuples(rows) == order([(p[strip:], *rest) for p, *rest in expected])


def test_protocols_exist_for_every_dataset() -> None:
    from reid.eval.protocols import PROTOCOLS

    for name in DATASETS.names():
        assert dataset_info(name).protocol in PROTOCOLS


def test_cuhk03_variants(tmp_path: Path) -> None:
    build_cuhk03(tmp_path)
    labeled = build_index("cuhk03_np", tmp_path, variant="labeled")
    assert {r.path.split("/")[1] for r in labeled} == {"labeled"}
    direct = build_index("cuhk03_np", tmp_path / "cuhk03-np" / "labeled")
    assert [r.pid for r in direct] == [r.pid for r in labeled]
    with pytest.raises(DatasetError, match="variant"):
        build_index("cuhk03_np", tmp_path / "cuhk03-np" / "labeled", variant="detected")
    with pytest.raises(DatasetError, match="variant"):
        build_index("cuhk03_np", tmp_path, variant="both")


def test_alternative_test_only_layouts(tmp_path: Path) -> None:
    tree(tmp_path / "a", ["OccludedREID/query/003_02.jpg", "OccludedREID/gallery/003_05.png"])  # fast-reid, flat
    assert as_tuples(build_index("occluded_reid", tmp_path / "a")) == [
        ("OccludedREID/query/003_02.jpg", 3, 0, "", "query"), ("OccludedREID/gallery/003_05.png", 3, 1, "", "gallery")]
    tree(tmp_path / "b", ["partial_body_images/009.jpg", "whole_body_images/009.jpg"])  # PVPM Partial-iLIDS
    assert [(r.pid, r.camid, r.split) for r in build_index("partial_ilids", tmp_path / "b")] == [
        (9, 0, "query"), (9, 1, "gallery")]


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        build_index("market1501", tmp_path / "nope")


def test_missing_subfolder_is_named(tmp_path: Path) -> None:
    tree(tmp_path, ["bounding_box_train/0001_c1s1_0_0.jpg", "query/0001_c2s1_0_0.jpg"])
    with pytest.raises(DatasetError, match="bounding_box_test"):
        build_index("market1501", tmp_path)


def test_empty_split(tmp_path: Path) -> None:
    tree(tmp_path, ["bounding_box_train/0001_c1s1_0_0.jpg", "bounding_box_test/0001_c1s1_0_1.jpg",
                    "query/-1_c2s1_0_0.jpg"])  # only junk in query
    junk(tmp_path / "query" / "Thumbs.db")
    with pytest.raises(DatasetError, match="split 'query' is empty"):
        build_index("market1501", tmp_path)


def test_unmatched_name_is_an_error(tmp_path: Path) -> None:
    build_market(tmp_path)
    img(tmp_path / "Market-1501-v15.09.15" / "query" / "person.jpg")
    img(tmp_path / "Market-1501-v15.09.15" / "query" / "0003_c7s1_000001_00.jpg")  # camera 7 does not exist
    with pytest.raises(DatasetError, match="person.jpg") as exc:
        build_index("market1501", tmp_path)
    assert len(exc.value.paths) == 2 and "0003_c7s1" in str(exc.value)


def test_unreadable_images_are_all_listed(tmp_path: Path) -> None:
    build_ltcc(tmp_path)
    junk(tmp_path / "LTCC_ReID" / "train" / "141_1_c2_000001.png")
    junk(tmp_path / "LTCC_ReID" / "test" / "150_2_c3_000001.png", b"\xff\xd8\xff")
    with pytest.raises(DatasetError, match="cannot be decoded") as exc:
        build_index("ltcc", tmp_path, workers=2)
    assert sorted(Path(p).name for p in exc.value.paths) == ["141_1_c2_000001.png", "150_2_c3_000001.png"]
    assert len(build_index("ltcc", tmp_path, verify=False)) == 7  # parsing alone is fine


def test_prcc_bad_names(tmp_path: Path) -> None:
    build_prcc(tmp_path)
    img(tmp_path / "prcc/rgb/train/001/D_cropped_rgb003.jpg")
    with pytest.raises(DatasetError, match="D_cropped_rgb003"):
        build_index("prcc", tmp_path)
    (tmp_path / "prcc/rgb/train/001/D_cropped_rgb003.jpg").unlink()
    img(tmp_path / "prcc/rgb/test/A/person7/x.jpg")
    with pytest.raises(DatasetError, match="person7"):
        build_index("prcc", tmp_path)


def test_prcc_missing_camera_folder(tmp_path: Path) -> None:
    build_prcc(tmp_path)
    for p in (tmp_path / "prcc/rgb/test/C").rglob("*.jpg"):
        p.unlink()
    for d in sorted((tmp_path / "prcc/rgb/test/C").iterdir()):
        d.rmdir()
    (tmp_path / "prcc/rgb/test/C").rmdir()
    with pytest.raises(DatasetError, match="test/C"):
        build_index("prcc", tmp_path)


def test_test_only_pid_folder_mismatch(tmp_path: Path) -> None:
    tree(tmp_path, ["occluded_body_images/001/002_01.tif", "whole_body_images/001/001_01.tif"])
    with pytest.raises(DatasetError, match="002_01.tif"):
        build_index("occluded_reid", tmp_path)


def test_ambiguous_wrappers(tmp_path: Path) -> None:
    _duke_like(tmp_path, "copy1/", 1)
    _duke_like(tmp_path, "copy2/", 1)
    with pytest.raises(DatasetError, match="several folders"):
        build_index("dukemtmc_reid", tmp_path)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = build_prcc(tmp_path / "data")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "index" / "prcc.csv"
    args = parser.parse_args(["--dataset", "prcc", "--root", str(tmp_path / "data"), "--out", str(out)])
    assert main(args) == 0
    assert as_tuples(read_index(out)) == order(expected)
    text = capsys.readouterr().out
    assert str(tmp_path / "data" / "prcc") in text
    assert [line.split() for line in text.splitlines()[2:]] == [
        ["train", "3", "2", "3", "3"], ["query", "3", "2", "2", "3"], ["gallery", "1", "1", "1", "1"]]
    bad = parser.parse_args(["--dataset", "prcc", "--root", str(tmp_path / "none"), "--out", str(out)])
    assert main(bad) == 1
    assert "not found" in capsys.readouterr().out


def test_a_truncated_jpeg_is_an_error_naming_it(tmp_path: Path) -> None:
    """cv2 decodes a JPEG cut to a third of its bytes without failing (grey rows); the index check must not."""
    build_ltcc(tmp_path)
    path = tmp_path / "LTCC_ReID" / "query" / "150_1_c4_000001.jpg"
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (128, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert cv2.imread(str(path)) is not None  # the silent failure this check exists for
    with pytest.raises(DatasetError, match=r"150_1_c4_000001.jpg: truncated JPEG") as exc:
        build_index("ltcc", tmp_path)
    assert [Path(p).name for p in exc.value.paths] == ["150_1_c4_000001.jpg"]
    path.write_bytes(data + b"\x00" * 16)  # zero padding after the end-of-image marker is fine
    assert len(build_index("ltcc", tmp_path)) == 6


def test_the_docs_state_every_loaders_layout_and_naming_rule() -> None:
    """docs/pipeline.md 'Datasets' names every registered dataset and quotes each file-name regex of the code."""
    from pathlib import Path

    from reid.data import datasets as L

    doc = (Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text()
    section = doc[doc.index("## Datasets: the layout under `root`"):]
    section = section[: section.index("\n## ", 3)]
    for name in L.DATASETS.names():
        assert f"`{name}`" in section, name
    for pattern in (L.MARKET_RE, L.PRCC_TRAIN_RE, L.LTCC_RE, L.CELEB_RE, L.OCC_PARTIAL_RE, L.ILIDS_RE):
        assert f"`{pattern.pattern}`" in section.replace("\\|", "|"), pattern.pattern
