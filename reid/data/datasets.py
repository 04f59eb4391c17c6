"""Dataset loaders: one registered function per dataset that turns an on-disk layout into index rows.

Facts follow shared/specs/datasets.md. Shared rules:
- file names are parsed on the BASENAME (a root folder such as ``run_c3`` can never corrupt a parse);
- camids are 0-based; pids are raw integers (training relabelling happens later, never in the index);
- paths in the rows are POSIX paths relative to the ``root`` the caller passed, so when a wrapper folder one level
  down was used (e.g. ``<root>/Market-1501-v15.09.15/``) the rows carry that prefix and ``root / row.path`` works;
- junk that the spec says to skip (Market pid -1, ``Thumbs.db``, hidden and non-image files) is skipped; every
  other surprise (missing folder, empty split, a name that does not parse, an image cv2 cannot decode) raises
  :class:`DatasetError` naming the path.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from reid.data.index import SPLITS, IndexRow, sort_rows, write_index
from reid.data.images import too_large
from reid.registry import Registry

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
MAX_LISTED = 20  # how many offending files an error message spells out (all are kept on the exception)


class DatasetError(ValueError):
    """A dataset on disk does not match its documented layout; ``paths`` lists every offending file/folder."""

    def __init__(self, message: str, paths: Sequence[Path | str] = ()) -> None:
        super().__init__(message)
        self.paths = [str(p) for p in paths]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and how it is scored (``protocol`` is a key of reid.eval.protocols.PROTOCOLS)."""

    name: str
    protocol: str
    test_only: bool
    has_clothes: bool
    reference: str
    layouts: tuple[tuple[str, ...], ...]  # alternative sets of subfolders that identify the dataset folder
    wrappers: tuple[str, ...] = ()  # usual wrapper folder names one level below --root


Loader = Callable[..., list[IndexRow]]
DATASETS: Registry[Loader] = Registry("dataset")
_INFOS: dict[str, DatasetInfo] = {}


def _register(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Register a loader under ``info.name`` and remember its metadata."""

    def deco(fn: Loader) -> Loader:
        DATASETS.register(info.name)(fn)
        _INFOS[info.name] = info
        fn.info = info  # type: ignore[attr-defined]
        return fn

    return deco


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a registered dataset (unknown names list the known ones)."""
    DATASETS.get(name)
    return _INFOS[name]


# ----------------------------------------------------------------------------------------------------------------
# Generic helpers


def _missing(folder: Path, layout: Sequence[str]) -> list[str]:
    return [m for m in layout if not (folder / m).is_dir()]


def locate(root: str | Path, layouts: Sequence[Sequence[str]],
           wrappers: Sequence[str] = ()) -> tuple[Path, tuple[str, ...]]:
    """Find the folder that directly holds one of ``layouts``: ``root`` itself, else one level down.

    Known wrapper names are tried first, then any other child folder (an ambiguous match is an error).
    Returns the folder and the layout found there.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found or not a folder: {root}", [root])
    for layout in layouts:
        if not _missing(root, layout):
            return root, tuple(layout)
    for w in wrappers:
        for layout in layouts:
            if (root / w).is_dir() and not _missing(root / w, layout):
                return root / w, tuple(layout)
    children = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in wrappers)
    hits = [(c, tuple(lay)) for c in children for lay in layouts if not _missing(c, lay)]
    if len({c for c, _ in hits}) > 1:
        raise DatasetError(f"{root}: several folders look like this dataset: {[str(c) for c, _ in hits]}; "
                           "pass the one you mean as --root", [c for c, _ in hits])
    if hits:
        return hits[0]
    # Nothing matched: name what is missing in the closest candidate.
    candidates = [root] + [root / w for w in wrappers if (root / w).is_dir()] + children
    best = min(((c, lay, _missing(c, lay)) for c in candidates for lay in layouts), key=lambda t: len(t[2]))
    wanted = " or ".join("{" + ", ".join(lay) + "}" for lay in layouts)
    raise DatasetError(
        f"{root}: expected subfolders {wanted} in it or in a folder one level below it "
        f"(usual names: {', '.join(wrappers) or '-'}); closest match {best[0]} lacks "
        f"{', '.join(best[0].joinpath(m).as_posix() for m in best[2])}",
        [best[0] / m for m in best[2]],
    )


def _is_candidate_image(p: Path) -> bool:
    """Files the spec says to skip silently: hidden files, OS junk, anything without an image extension."""
    return (p.is_file() and not p.name.startswith(".") and p.name.lower() not in JUNK_NAMES
            and p.suffix.lower() in IMAGE_EXTS)


def list_images(folder: Path, nested: bool = False) -> list[Path]:
    """Image files directly in ``folder`` (and, when ``nested``, in its immediate subfolders), sorted."""
    if not folder.is_dir():
        raise DatasetError(f"expected folder is missing: {folder}", [folder])
    found = [p for p in folder.iterdir() if _is_candidate_image(p)]
    if nested:
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.name.startswith("."):
                found.extend(p for p in sub.iterdir() if _is_candidate_image(p))
    return sorted(found)


def _raise_bad_names(bad: list[Path], pattern: str) -> None:
    if bad:
        shown = "\n  ".join(str(p) for p in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise DatasetError(f"{len(bad)} file name(s) do not match the expected pattern {pattern}:\n  {shown}{more}",
                           bad)


def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


def image_problem(path: Path) -> str | None:
    """Why an image file is unusable, or None: cv2 cannot decode it, or a JPEG lacks its end-of-image marker.

    libjpeg decodes a truncated JPEG without failing (grey rows where the data stops, one unnamed warning on
    stderr), so a JPEG must end with the EOI marker FF D9 (only zero padding may follow). Entropy-coded data
    stuffs every FF byte, so FF D9 cannot occur there by chance.
    """
    import cv2  # local import: opencv is heavy and only needed here
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not data:
        return "empty file (0 bytes)"
    if data[:2] == b"\xff\xd8" and not data[-1024:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    big = too_large(data)
    if big:
        return big
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        return f"cannot be decoded by cv2 ({str(exc).strip().splitlines()[-1]})"
    if decoded is None:
        return "cannot be decoded by cv2"
    return None


def verify_images(root: Path, rows: Sequence[IndexRow], workers: int | None = None) -> None:
    """Fully decode-check every image in a thread pool; list every file that fails, with why, in one error."""
    n = workers or min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=n) as pool:
        problems = list(pool.map(lambda r: image_problem(root / r.path), rows, chunksize=64))
    failed = [(root / r.path, why) for r, why in zip(rows, problems) if why]
    if failed:
        shown = "\n  ".join(f"{p}: {why}" for p, why in failed[:MAX_LISTED])
        more = f"\n  ... and {len(failed) - MAX_LISTED} more" if len(failed) > MAX_LISTED else ""
        raise DatasetError(f"{len(failed)} image(s) are unusable:\n  {shown}{more}", [p for p, _ in failed])


def _finish(root: Path, rows: list[IndexRow], splits: Iterable[str], where: dict[str, Path],
            verify: bool, workers: int | None) -> list[IndexRow]:
    """Check no split is empty, decode-check the images, return rows in index order."""
    for split in splits:
        if not any(r.split == split for r in rows):
            raise DatasetError(f"split '{split}' is empty: no usable image in {where[split]}", [where[split]])
    if verify:
        verify_images(root, rows, workers)
    return sort_rows(rows)


# ----------------------------------------------------------------------------------------------------------------
# Market-1501 style: {bounding_box_train, query, bounding_box_test}/<pid>_c<cam>...


MARKET_LAYOUT = ("bounding_box_train", "query", "bounding_box_test")
MARKET_SPLITS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}
MARKET_RE = re.compile(r"^(-?\d+)_c(\d+)")


def _parse_market_dir(root: Path, folder: Path, split: str, num_cams: int | None, drop_junk: bool,
                      bad: list[Path]) -> list[IndexRow]:
    rows = []
    for p in list_images(folder):
        m = MARKET_RE.match(p.name)
        cam = int(m.group(2)) if m else 0
        if m is None or cam < 1 or (num_cams is not None and cam > num_cams):
            bad.append(p)
            continue
        pid = int(m.group(1))
        if pid == -1 and drop_junk:
            continue  # Market junk boxes: dropped in every split (torchreid / fast-reid / TransReID)
        if pid < 0:
            bad.append(p)
            continue
        rows.append(IndexRow(_rel(root, p), pid, cam - 1, "", split))
    return rows


def load_market_style(root: str | Path, info: DatasetInfo, num_cams: int | None, drop_junk: bool = False,
                      verify: bool = True, workers: int | None = None, folder: Path | None = None) -> list[IndexRow]:
    """Shared loader of the Market layout (Market-1501, DukeMTMC-reID, Occluded-Duke, CUHK03-NP, synthocc)."""
    root = Path(root)
    if folder is None:
        folder, _ = locate(root, info.layouts, info.wrappers)
    log.info("%s: using dataset folder %s", info.name, folder)
    rows: list[IndexRow] = []
    bad: list[Path] = []
    cams = f"1..{num_cams}" if num_cams else ">=1"
    for sub, split in MARKET_SPLITS.items():
        rows += _parse_market_dir(root, folder / sub, split, num_cams, drop_junk, bad)
    _raise_bad_names(bad, f"'<pid>_c<cam>...' (regex {MARKET_RE.pattern}, camera {cams})")
    where = {split: folder / sub for sub, split in MARKET_SPLITS.items()}
    return _finish(root, rows, SPLITS, where, verify, workers)


def _market_info(name: str, protocol: str, reference: str, wrappers: tuple[str, ...]) -> DatasetInfo:
    return DatasetInfo(name, protocol, False, False, reference, (MARKET_LAYOUT,), wrappers)


@_register(_market_info("market1501", "market", "Zheng et al., Scalable Person Re-identification: A Benchmark, "
                        "ICCV 2015. Junk pid -1 dropped; pid 0 kept as gallery distractor; cams 1..6.",
                        ("Market-1501-v15.09.15", "market1501", "Market-1501")))
def load_market1501(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Market-1501: 751 train ids / 12,936 images, 3,368 queries, 15,913 gallery images."""
    return load_market_style(root, dataset_info("market1501"), 6, drop_junk=True, verify=verify, workers=workers)


@_register(_market_info("dukemtmc_reid", "market", "Zheng et al., Unlabeled Samples Generated by GAN Improve the "
                        "Person Re-identification Baseline in vitro, ICCV 2017. Cams 1..8.",
                        ("DukeMTMC-reID", "dukemtmc-reid")))
def load_dukemtmc_reid(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """DukeMTMC-reID: 702 train ids / 16,522 images, 2,228 queries, 17,661 gallery images."""
    return load_market_style(root, dataset_info("dukemtmc_reid"), 8, verify=verify, workers=workers)


@_register(_market_info("occluded_duke", "occluded", "Miao et al., Pose-Guided Feature Alignment for Occluded "
                        "Person Re-identification, ICCV 2019 (lightas/Occluded-DukeMTMC-Dataset). Cams 1..8.",
                        ("Occluded_Duke", "Occluded-DukeMTMC", "occluded_duke")))
def load_occluded_duke(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Occluded-Duke: 702 train ids / 15,618 images, 2,210 occluded queries, 17,661 gallery images."""
    return load_market_style(root, dataset_info("occluded_duke"), 8, verify=verify, workers=workers)


@_register(_market_info("synthocc", "occluded", "The project's synthetic occluded world, written in the "
                        "Occluded-Duke layout (reid.data.synthetic).", ("synthocc", "Occluded_Duke")))
def load_synthocc(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Synthetic occluded set: Occluded-Duke layout, any number of cameras."""
    return load_market_style(root, dataset_info("synthocc"), None, verify=verify, workers=workers)


CUHK03_VARIANTS = ("detected", "labeled")


@_register(DatasetInfo("cuhk03_np", "market", False, False,
                       "Zhong et al., Re-ranking Person Re-identification with k-reciprocal Encoding, CVPR 2017 "
                       "(CUHK03-NP new protocol: 767 train / 700 test ids, Market-style names, cams 1..2).",
                       (("detected",), ("labeled",), MARKET_LAYOUT),
                       ("cuhk03-np", "CUHK03-NP", "cuhk03_np")))
def load_cuhk03_np(root: str | Path, variant: str | None = None, verify: bool = True,
                   workers: int | None = None) -> list[IndexRow]:
    """CUHK03-NP: ``<root>/{labeled,detected}/{bounding_box_train,query,bounding_box_test}``.

    ``variant`` picks labeled or detected (default detected); ``root`` may also be the variant folder itself, in
    which case its name decides (a conflicting ``variant`` is an error).
    """
    folder = cuhk03_folder(root, variant)
    return load_market_style(root, dataset_info("cuhk03_np"), 2, verify=verify, workers=workers, folder=folder)


def cuhk03_folder(root: str | Path, variant: str | None = None) -> Path:
    """The CUHK03-NP variant folder: ``root`` itself when it holds the Market layout, else ``<root>/<variant>``
    (also one wrapper level down, e.g. ``<root>/cuhk03-np/detected``)."""
    if variant is not None and variant not in CUHK03_VARIANTS:
        raise DatasetError(f"cuhk03_np variant must be one of {CUHK03_VARIANTS}, got {variant!r}")
    root = Path(root)
    if root.is_dir() and not _missing(root, MARKET_LAYOUT):
        if root.name in CUHK03_VARIANTS and variant not in (None, root.name):
            raise DatasetError(f"{root} is the '{root.name}' folder but variant={variant!r} was asked for", [root])
        return root
    v = variant or "detected"
    parent, _ = locate(root, [(v,)], dataset_info("cuhk03_np").wrappers)
    missing = _missing(parent / v, MARKET_LAYOUT)
    if missing:
        raise DatasetError(f"{parent / v}: missing subfolder(s) {', '.join(missing)}",
                           [parent / v / m for m in missing])
    return parent / v


# ----------------------------------------------------------------------------------------------------------------
# PRCC layout: rgb/train/<pid>/<CAM>_cropped_rgb<NNN>.jpg ; rgb/test/{A,B,C}/<pid>/*.jpg


PRCC_CAMS = {"A": 0, "B": 1, "C": 2}
PRCC_TRAIN_RE = re.compile(r"^([ABC])_")
PID_DIR_RE = re.compile(r"^\d+$")


def prcc_clothes(pid: int, cam: str) -> str:
    """CAL clothes key: cameras A and B show the same outfit (``<pid>``), camera C a different one (``<pid>C``)."""
    return f"{pid}C" if cam == "C" else str(pid)


def _pid_dirs(folder: Path, bad: list[Path]) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"expected folder is missing: {folder}", [folder])
    dirs = []
    for d in sorted(folder.iterdir()):
        if d.is_dir():
            (dirs if PID_DIR_RE.match(d.name) else bad).append(d)
    return dirs


def load_prcc_layout(root: str | Path, info: DatasetInfo, verify: bool = True,
                     workers: int | None = None) -> list[IndexRow]:
    """Shared PRCC loader (PRCC, synthcc). Query = test/B (same clothes) + test/C (changed); gallery = test/A.

    ``rgb/val`` is ignored on purpose: CAL trains on train and scores on test; val is never in the index.
    """
    root = Path(root)
    folder, _ = locate(root, info.layouts, info.wrappers)
    log.info("%s: using dataset folder %s", info.name, folder)
    rgb = folder / "rgb"
    rows: list[IndexRow] = []
    bad_dirs: list[Path] = []
    bad: list[Path] = []
    for pdir in _pid_dirs(rgb / "train", bad_dirs):
        pid = int(pdir.name)
        for p in list_images(pdir):
            m = PRCC_TRAIN_RE.match(p.name)
            if m is None:
                bad.append(p)
                continue
            rows.append(IndexRow(_rel(root, p), pid, PRCC_CAMS[m.group(1)], prcc_clothes(pid, m.group(1)), "train"))
    for cam, camid in PRCC_CAMS.items():
        split = "gallery" if cam == "A" else "query"
        for pdir in _pid_dirs(rgb / "test" / cam, bad_dirs):
            pid = int(pdir.name)
            rows += [IndexRow(_rel(root, p), pid, camid, prcc_clothes(pid, cam), split) for p in list_images(pdir)]
    _raise_bad_names(bad_dirs, "'<pid>' (digits only) for identity folders")
    _raise_bad_names(bad, f"'<A|B|C>_cropped_rgb<NNN>.<ext>' (regex {PRCC_TRAIN_RE.pattern})")
    where = {"train": rgb / "train", "query": rgb / "test" / "{B,C}", "gallery": rgb / "test" / "A"}
    return _finish(root, rows, SPLITS, where, verify, workers)


@_register(DatasetInfo("prcc", "prcc", False, True,
                       "Yang et al., Person Re-identification by Contour Sketch under Moderate Clothing Change, "
                       "TPAMI 2019. Protocol as CAL (Gu et al., CVPR 2022): gallery A, queries B (same clothes) "
                       "and C (cross clothes).", (("rgb/train", "rgb/test"),), ("prcc", "PRCC")))
def load_prcc(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """PRCC: 150 train ids / 17,896 images; test 71 ids / 10,800 images (A gallery, B+C queries)."""
    return load_prcc_layout(root, dataset_info("prcc"), verify, workers)


@_register(DatasetInfo("synthcc", "prcc", False, True, "The project's synthetic cloth-changing world, written in "
                       "the PRCC layout (reid.data.synthetic).", (("rgb/train", "rgb/test"),), ("synthcc", "prcc")))
def load_synthcc(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Synthetic cloth-changing set: PRCC layout (A/B same clothes, C changed)."""
    return load_prcc_layout(root, dataset_info("synthcc"), verify, workers)


# ----------------------------------------------------------------------------------------------------------------
# LTCC: {train, query, test}/<pid>_<outfit>_c<cam>_<frame>.png


LTCC_RE = re.compile(r"^(\d+)_(\d+)_c(\d+)")
LTCC_SPLITS = {"train": "train", "query": "query", "test": "gallery"}


@_register(DatasetInfo("ltcc", "ltcc", False, True,
                       "Qian et al., Long-Term Cloth-Changing Person Re-identification, ACCV 2020. Gallery = test/; "
                       "clothes key '<pid>_<outfit>' (CAL); cams 1..12; info/ lists not used (as CAL).",
                       (("train", "query", "test"),), ("LTCC_ReID", "LTCC", "ltcc")))
def load_ltcc(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """LTCC: 77 train ids / 9,576 images; 493 queries; 7,050 gallery images; 12 cameras."""
    info = dataset_info("ltcc")
    root = Path(root)
    folder, _ = locate(root, info.layouts, info.wrappers)
    log.info("ltcc: using dataset folder %s", folder)
    rows: list[IndexRow] = []
    bad: list[Path] = []
    for sub, split in LTCC_SPLITS.items():
        for p in list_images(folder / sub):
            m = LTCC_RE.match(p.name)
            if m is None or not 1 <= int(m.group(3)) <= 12:
                bad.append(p)
                continue
            pid, outfit, cam = (int(g) for g in m.groups())
            rows.append(IndexRow(_rel(root, p), pid, cam - 1, f"{pid}_{outfit}", split))
    _raise_bad_names(bad, f"'<pid>_<outfit>_c<cam>_<frame>' (regex {LTCC_RE.pattern}, camera 1..12)")
    where = {split: folder / sub for sub, split in LTCC_SPLITS.items()}
    return _finish(root, rows, SPLITS, where, verify, workers)


# ----------------------------------------------------------------------------------------------------------------
# Celeb-reID: {train, query, gallery}/<x>_<y>_<z>.jpg


CELEB_RE = re.compile(r"^(\d+)_(\d+)_")
CELEB_CAMS = {"train": 0, "query": 0, "gallery": 1}


def load_celeb_layout(root: str | Path, info: DatasetInfo, verify: bool = True,
                      workers: int | None = None) -> list[IndexRow]:
    """Shared Celeb-reID loader.

    There are no real cameras (author, Huang-3/Celeb-reID issue #1), so camids are split-based: query 0, gallery 1
    (train 0), the recommended "no exclusion" protocol where every same-id gallery image is a positive. Clothes are
    not labelled; the key is ``<x>_<y>`` (one per image, as CAL), so only the general metric is meaningful.
    """
    root = Path(root)
    folder, _ = locate(root, info.layouts, info.wrappers)
    log.info("%s: using dataset folder %s", info.name, folder)
    rows: list[IndexRow] = []
    bad: list[Path] = []
    for split in SPLITS:
        for p in list_images(folder / split):
            m = CELEB_RE.match(p.name)
            if m is None:
                bad.append(p)
                continue
            rows.append(IndexRow(_rel(root, p), int(m.group(1)), CELEB_CAMS[split],
                                 f"{int(m.group(1))}_{int(m.group(2))}", split))
    _raise_bad_names(bad, f"'<id>_<n>_<z>.jpg' (regex {CELEB_RE.pattern})")
    return _finish(root, rows, SPLITS, {s: folder / s for s in SPLITS}, verify, workers)


_CELEB_REF = ("Huang et al., Celebrities-ReID: A Benchmark for Clothes Variation in Long-Term Person "
              "Re-Identification, IJCNN 2019; camids query 0 / gallery 1 (no exclusion).")


@_register(DatasetInfo("celeb_reid", "celeb", False, False, _CELEB_REF, (SPLITS,), ("Celeb-reID",)))
def load_celeb_reid(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Celeb-reID: 632 train ids / 20,208 images; 2,972 queries; 11,006 gallery images."""
    return load_celeb_layout(root, dataset_info("celeb_reid"), verify, workers)


@_register(DatasetInfo("celeb_reid_light", "celeb", False, False, _CELEB_REF, (SPLITS,), ("Celeb-reID-light",)))
def load_celeb_reid_light(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Celeb-reID-light: 490 train ids / 9,021 images; 887 queries; 934 gallery images."""
    return load_celeb_layout(root, dataset_info("celeb_reid_light"), verify, workers)


# ----------------------------------------------------------------------------------------------------------------
# Test-only partial / occluded sets: query folder + gallery folder, split-based camids (query 0, gallery 1)


OCC_PARTIAL_RE = re.compile(r"^(\d+)_")
ILIDS_RE = re.compile(r"^(\d+)\.[A-Za-z]+$")
TEST_ONLY_SPLITS = {
    # first folder of each layout is the query, second the gallery
    ("occluded_body_images", "whole_body_images"): ("query", "gallery"),
    ("partial_body_images", "whole_body_images"): ("query", "gallery"),
    ("Probe", "Gallery"): ("query", "gallery"),
    ("query", "gallery"): ("query", "gallery"),
}


def load_test_only(root: str | Path, info: DatasetInfo, name_re: re.Pattern[str], verify: bool = True,
                   workers: int | None = None) -> list[IndexRow]:
    """Shared loader of Occluded-REID, Partial-REID and Partial-iLIDS (test-only; train on Market-1501).

    Images may sit directly in the query/gallery folders or in per-identity subfolders; in the latter case the
    folder name must agree with the pid in the file name. camid = 0 for queries, 1 for the gallery (PVPM,
    bpbreid), so nothing is ever excluded.
    """
    root = Path(root)
    folder, layout = locate(root, info.layouts, info.wrappers)
    log.info("%s: using dataset folder %s (layout %s)", info.name, folder, "/".join(layout))
    rows: list[IndexRow] = []
    bad: list[Path] = []
    for sub, split in zip(layout, TEST_ONLY_SPLITS[layout]):
        for p in list_images(folder / sub, nested=True):
            m = name_re.match(p.name)
            in_pid_dir = p.parent != folder / sub
            if m is None or (in_pid_dir and not (PID_DIR_RE.match(p.parent.name)
                                                 and int(p.parent.name) == int(m.group(1)))):
                bad.append(p)
                continue
            rows.append(IndexRow(_rel(root, p), int(m.group(1)), 0 if split == "query" else 1, "", split))
    _raise_bad_names(bad, f"regex {name_re.pattern} (and, inside an identity folder, the same pid as the folder)")
    where = dict(zip(TEST_ONLY_SPLITS[layout], (folder / s for s in layout)))
    return _finish(root, rows, ("query", "gallery"), where, verify, workers)


@_register(DatasetInfo("occluded_reid", "occluded", True, False,
                       "Zhuo et al., Occluded Person Re-identification, ICME 2018. Query = occluded_body_images, "
                       "gallery = whole_body_images (or fast-reid's query/gallery); 200 ids, 1,000 + 1,000.",
                       (("occluded_body_images", "whole_body_images"), ("query", "gallery")),
                       ("Occluded_REID", "OccludedREID", "Occluded-REID")))
def load_occluded_reid(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Occluded-REID: names ``<pid>_<nn>.tif`` (or converted .jpg/.png), in per-pid folders or flat."""
    return load_test_only(root, dataset_info("occluded_reid"), OCC_PARTIAL_RE, verify, workers)


@_register(DatasetInfo("partial_reid", "partial", True, False,
                       "Zheng et al., Partial Person Re-identification, ICCV 2015. Query = partial_body_images, "
                       "gallery = whole_body_images (occluded_body_images unused); 60 ids, 300 + 300.",
                       (("partial_body_images", "whole_body_images"), ("query", "gallery")),
                       ("Partial_REID", "Partial-REID_Dataset", "PartialREID", "Partial-REID")))
def load_partial_reid(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Partial-REID: names ``<pid>_<idx>.jpg``."""
    return load_test_only(root, dataset_info("partial_reid"), OCC_PARTIAL_RE, verify, workers)


@_register(DatasetInfo("partial_ilids", "partial", True, False,
                       "Zheng et al., Partial Person Re-identification, ICCV 2015 (from i-LIDS); 119 ids, one probe "
                       "and one gallery image each. Layouts: DSR Probe/Gallery, PVPM partial/whole_body_images, "
                       "fast-reid query/gallery.",
                       (("partial_body_images", "whole_body_images"), ("Probe", "Gallery"), ("query", "gallery")),
                       ("Partial_iLIDS", "PartialiLIDS", "Partial-iLIDS")))
def load_partial_ilids(root: str | Path, verify: bool = True, workers: int | None = None) -> list[IndexRow]:
    """Partial-iLIDS: names ``<pid>.jpg``."""
    return load_test_only(root, dataset_info("partial_ilids"), ILIDS_RE, verify, workers)


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def build_index(dataset: str, root: str | Path, **kwargs: object) -> list[IndexRow]:
    """Rows of ``dataset`` under ``root`` (kwargs go to the loader, e.g. ``variant`` for cuhk03_np)."""
    return DATASETS.get(dataset)(Path(root), **kwargs)


def dataset_folder(dataset: str, root: str | Path, variant: str | None = None) -> Path:
    """The folder a loader reads (``root`` or a wrapper one level down); for messages and logs."""
    if dataset == "cuhk03_np":
        return cuhk03_folder(root, variant)
    info = dataset_info(dataset)
    return locate(root, info.layouts, info.wrappers)[0]


def split_stats(rows: Sequence[IndexRow]) -> dict[str, dict[str, int]]:
    """Per split: number of images, identities, cameras and clothes keys."""
    out = {}
    for split in SPLITS:
        sel = [r for r in rows if r.split == split]
        if sel:
            out[split] = {"images": len(sel), "ids": len({r.pid for r in sel}),
                          "cameras": len({r.camid for r in sel}), "clothes": len({r.clothes for r in sel} - {""})}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI verb ``index``: dataset layout on disk -> index CSV."""
    parser.add_argument("--dataset", required=True, choices=DATASETS.names(), help="registered dataset name")
    parser.add_argument("--root", required=True, type=Path,
                        help="folder holding the dataset's own subfolders (a usual wrapper one level down is found)")
    parser.add_argument("--out", required=True, type=Path, help="index CSV to write")
    parser.add_argument("--variant", choices=CUHK03_VARIANTS, default=None,
                        help="cuhk03_np only: labeled or detected boxes (default detected)")
    parser.add_argument("--workers", type=int, default=None, help="threads for the image decode check")


def main(args: argparse.Namespace) -> int:
    """Build, write and summarise the index; a layout problem prints the DatasetError and returns 1."""
    kwargs: dict[str, object] = {"workers": args.workers}
    if args.variant is not None:
        if args.dataset != "cuhk03_np":
            print(f"error: --variant only applies to cuhk03_np, not {args.dataset}")
            return 2
        kwargs["variant"] = args.variant
    try:
        folder = dataset_folder(args.dataset, args.root, args.variant)
        rows = build_index(args.dataset, args.root, **kwargs)
    except DatasetError as exc:
        print(f"error: {args.dataset}: {exc}")
        return 1
    write_index(rows, args.out)
    info = dataset_info(args.dataset)
    print(f"{args.dataset}: read {folder} (protocol {info.protocol}); wrote {len(rows)} rows to {args.out}")
    print(f"{'split':<8} {'images':>8} {'ids':>6} {'cameras':>8}" + (f" {'clothes':>8}" if info.has_clothes else ""))
    for split, s in split_stats(rows).items():
        extra = f" {s['clothes']:>8}" if info.has_clothes else ""
        print(f"{split:<8} {s['images']:>8} {s['ids']:>6} {s['cameras']:>8}{extra}")
    return 0
