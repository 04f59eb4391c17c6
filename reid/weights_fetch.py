"""`python -m reid weights fetch <method|teacher|all>`: download the official weight files a run needs, check them,
and write the params.yaml keys that name them into an override file the user reviews.

Only files their publishers serve at a stable direct URL are fetched (torchvision's ImageNet ResNets, timm's ViTs on
the Hugging Face hub, insightface's buffalo_l pack with the SCRFD detector); the others (torchreid OSNet, HRNet,
SCHP, GPEN, the HRNet pose model) are behind Google Drive / OneDrive pages, and the command prints where to get
them by hand and which key to set. Downloads resume after a cut (HTTP Range), follow redirects, and are checked:
against the hash prefix the publisher puts in the file name (torchvision), else against `weights.lock` (the sha256
recorded at the first download); a mismatch removes the file. Nothing runs at pipeline time: this is a one-off
command a user runs before a real run.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from reid.hashing import file_sha256
from reid.models.zoo import BACKBONES

__all__ = ["Source", "SOURCES", "FetchError", "download", "fetch"]


class FetchError(RuntimeError):
    """A download failed or its file did not match its checksum (the message names the URL and the file)."""


@dataclass(frozen=True)
class Source:
    """One official file: where it is served, what its name is here, the params.yaml keys that name it."""

    file: str
    keys: tuple[str, ...]
    url: str | None = None  # None: no stable direct URL; `manual` says where to get it
    sha256_prefix: str | None = None  # the publisher's own hash (torchvision puts 8 hex digits in the file name)
    member: str | None = None  # a file inside the downloaded zip (insightface packs)
    manual: str = ""


_HF = "https://huggingface.co/timm/{repo}/resolve/main/model.safetensors"

SOURCES: dict[str, Source] = {
    "resnet50": Source(BACKBONES["resnet50"].file, ("methods.baseline.weights", "methods.pgfl_kd.weights"),
                       BACKBONES["resnet50"].source, "0676ba61"),
    "resnet18": Source(BACKBONES["resnet18"].file, (), BACKBONES["resnet18"].source, "f37072fd"),
    "deit_small": Source("deit_small_patch16_224.safetensors", ("methods.sureid.deit_small_weights",),
                         _HF.format(repo="deit_small_patch16_224.fb_in1k")),
    "vit_base": Source("vit_base_patch16_224.safetensors", ("methods.sureid_teacher.vit_base_weights",),
                       _HF.format(repo="vit_base_patch16_224.augreg2_in21k_ft_in1k")),
    "det_10g": Source("det_10g.onnx", ("teachers.faces.model",),
                      "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                      member="det_10g.onnx"),
    "osnet_x1_0": Source("osnet_x1_0_imagenet.pth", ("methods.deskpro.weights", "methods.deskpro_face_teacher.weights"),
                         manual="torchreid model zoo (KaiyangZhou/deep-person-reid, docs MODEL_ZOO, Google Drive)"),
    "hrnet_w32": Source("hrnetv2_w32_imagenet_pretrained.pth", ("methods.isp.weights", "teachers.isp_labels.model"),
                        manual="HRNet/HRNet-Image-Classification README (OneDrive / Baidu)"),
    "schp_lip": Source("exp-schp-201908261155-lip.pth", ("teachers.parsing.model",),
                       manual="GoGoDuck912/Self-Correction-Human-Parsing README (Google Drive); then "
                              "`python -m reid export-schp` for the onnx backend"),
    "gpen_512": Source("GPEN-BFR-512.onnx", ("teachers.restored_faces.model",),
                       manual="yangxy/GPEN (its misc/onnx_export.py on GPEN-BFR-512.pth)"),
    "hrnet_pose": Source("pose_hrnet_w32_256x192.pth", ("teachers.keypoints.model",),
                         manual="leoxiaobin/deep-high-resolution-net.pytorch model zoo (Google Drive / OneDrive); "
                                "`backend: torch` reads it"),
}

# What each method / teacher needs (the pipeline's defaults: paper backbones).
NEEDS: dict[str, tuple[str, ...]] = {
    "baseline": ("resnet50",), "pgfl_kd": ("resnet50", "hrnet_pose"), "isp": ("hrnet_w32",),
    "deskpro": ("osnet_x1_0", "schp_lip", "det_10g", "gpen_512"), "sureid": ("deit_small", "vit_base"),
    "faces": ("det_10g",), "parsing": ("schp_lip",), "restored_faces": ("gpen_512",), "keypoints": ("hrnet_pose",),
}


def download(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` through `<dest>.part`, resuming a part left by a cut (HTTP Range); redirects are
    followed; an HTTP error names the URL and the status."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "reid-weights-fetch",
                                                   **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https / the user's URL
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already complete
            part.replace(dest)
            return dest
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason} (the publisher moved or removed the file?)") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); a part is kept at {part} "
                         "and the next run resumes it" if have else f"{url}: cannot connect "
                         f"({getattr(exc, 'reason', exc)})") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server ignored the range: start over
        total = response.length + have if response.length is not None else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(total=total, initial=have, unit="B",
                                                                 unit_scale=True, desc=dest.name,
                                                                 disable=not progress) as bar:
            try:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise FetchError(f"{url}: the download was cut ({exc}); {part} is kept and the next run "
                                 "resumes it") from None
    if total is not None and part.stat().st_size != total:
        raise FetchError(f"{url}: got {part.stat().st_size} of {total} bytes; {part} is kept and the next run "
                         "resumes it")
    part.replace(dest)
    return dest


def _check(path: Path, source: Source, name: str, lock: dict[str, str]) -> str:
    """The file's sha256, checked against the publisher's prefix or the lock; a mismatch removes the file."""
    found = file_sha256(path)
    expected = source.sha256_prefix or lock.get(name)
    if expected and not found.startswith(expected):
        path.unlink()
        raise FetchError(f"{path}: sha256 {found[:16]}... does not match {expected[:16]} "
                         f"({'the publisher' if source.sha256_prefix else 'weights.lock'}); the file was removed")
    return found


def fetch(names: list[str], folder: Path, sources: dict[str, Source] | None = None, progress: bool = True
          ) -> dict[str, Any]:
    """Fetch each named source into `folder`; returns {fetched: {name: path}, manual: {name: text}, override}."""
    sources = sources or SOURCES
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / "weights.lock"
    lock: dict[str, str] = json.loads(lock_path.read_text()) if lock_path.is_file() else {}
    fetched: dict[str, str] = {}
    manual: dict[str, str] = {}
    for name in names:
        source = sources[name]
        target = folder / source.file
        if source.url is None:
            if target.is_file():
                fetched[name] = str(target)
            else:
                manual[name] = f"{source.file}: {source.manual}; place it at {target}"
            continue
        if not target.is_file():
            got = download(source.url, folder / (Path(source.url).name if source.member else source.file),
                           progress)
            if source.member:
                with zipfile.ZipFile(got) as archive:
                    member = next((m for m in archive.namelist() if Path(m).name == source.member), None)
                    if member is None:
                        raise FetchError(f"{got}: no {source.member} inside")
                    target.write_bytes(archive.read(member))
        lock[name] = _check(target, source, name, lock)
        fetched[name] = str(target)
    lock_path.write_text(json.dumps(dict(sorted(lock.items())), indent=1) + "\n")
    override = folder / "params.override.yaml"
    lines = ["# written by `python -m reid weights fetch`: review, then copy these keys into params.yaml"]
    for name, path in sorted(fetched.items()):
        lines += [f"{key}: {path}" for key in sources[name].keys]
    override.write_text("\n".join(lines) + "\n")
    return {"fetched": fetched, "manual": manual, "override": str(override)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("fetch", "list"), help="fetch the files, or list what each name needs")
    p.add_argument("names", nargs="*", default=["all"],
                   help=f"methods / teachers / files ({', '.join(sorted(NEEDS))}, {', '.join(sorted(SOURCES))}) "
                        "or all")
    p.add_argument("--dir", default="weights", help="where the files go (with weights.lock and the override)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    wanted: list[str] = []
    for name in args.names:
        if name == "all":
            wanted += list(SOURCES)
        elif name in NEEDS:
            wanted += list(NEEDS[name])
        elif name in SOURCES:
            wanted.append(name)
        else:
            raise ValueError(f"unknown name {name!r}: one of {', '.join(sorted(NEEDS))}, "
                             f"{', '.join(sorted(SOURCES))} or all")
    wanted = list(dict.fromkeys(wanted))
    if args.action == "list":
        for name in wanted:
            s = SOURCES[name]
            print(f"{name}: {s.file} -> {', '.join(s.keys) or '(no default key)'}; {s.url or s.manual}")
        return 0
    result = fetch(wanted, Path(args.dir), progress=not args.no_progress and sys.stderr.isatty())
    for name, path in result["fetched"].items():
        print(f"ok      {name}: {path}")
    for name, text in result["manual"].items():
        print(f"by hand {name}: {text}")
    print(f"params keys written to {result['override']} (review, then copy into params.yaml)")
    return 0
