"""`python -m reid dvc-commit`: tell DVC about outputs Snakemake built, so `dvc repro` does not redo them.

DVC only trusts what its dvc.lock records. After a Snakemake run, the DVC stages whose outputs Snakemake has just
made (or found up to date) are recorded with `dvc commit --force <stage>...`: DVC hashes their current deps,
params and outputs, and a later `dvc repro` skips them. The Snakefile calls `sync_after_snakemake` from its
`onsuccess:` handler with the outputs of every job in the run's DAG; a stage outside that DAG is never committed,
since Snakemake has not checked that its outputs match the current params and code.

DVC may re-link committed outputs (new files, new times); the modification times of every committed path are put
back afterwards, so Snakemake's own mtime checks still see the outputs as up to date.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import yaml

log = logging.getLogger(__name__)


def stage_outputs(dvc_yaml: str | Path = "dvc.yaml") -> dict[str, list[str]]:
    """Stage name -> every path it writes (outs, metrics, plots), as written in dvc.yaml."""
    doc = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    out: dict[str, list[str]] = {}
    for name, stage in (doc.get("stages") or {}).items():
        paths: list[str] = []
        for key in ("outs", "metrics", "plots"):
            for item in stage.get(key, []) or []:
                paths += list(item) if isinstance(item, dict) else [str(item)]
        out[name] = paths
    return out


def committable(stages: dict[str, list[str]], root: Path, built: set[str] | None = None) -> list[str]:
    """Stages with outputs that all exist (and, when `built` is given, were all part of the Snakemake run)."""
    chosen = []
    for name, paths in stages.items():
        if not paths or not all((root / p).exists() for p in paths):
            continue
        if built is not None and not all(os.path.normpath(p) in built for p in paths):
            continue
        chosen.append(name)
    return chosen


def _times(root: Path, paths: Iterable[str]) -> dict[Path, tuple[int, int]]:
    """(atime, mtime) in ns of every file and folder under the given paths."""
    found: dict[Path, tuple[int, int]] = {}
    for rel in paths:
        top = root / rel
        items = [top]
        if top.is_dir():
            items += sorted(top.rglob("*"))
        for p in items:
            if p.exists() and not p.is_symlink():
                st = p.stat()
                found[p] = (st.st_atime_ns, st.st_mtime_ns)
    return found


def _restore_times(times: dict[Path, tuple[int, int]]) -> None:
    # files first, then folders deepest first: re-linking a file changes its folder's mtime
    for p in sorted(times, key=lambda q: (q.is_dir(), -len(q.parts))):
        if p.exists():
            os.utime(p, ns=times[p])


def dvc_command() -> list[str]:
    exe = shutil.which("dvc")
    return [exe] if exe else [sys.executable, "-m", "dvc"]


def commit(stages: list[str], stage_paths: dict[str, list[str]], root: Path) -> None:
    """`dvc commit --force` the stages in one call (one DVC lock), keeping the outputs' modification times."""
    if not stages:
        return
    times = _times(root, [p for s in stages for p in stage_paths[s]])
    try:
        proc = subprocess.run([*dvc_command(), "commit", "--force", "--quiet", *stages], cwd=root,
                              capture_output=True, text=True)
    finally:
        _restore_times(times)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc commit --force {' '.join(stages)}` failed in {root}:\n{proc.stderr.strip()}")


def sync(root: str | Path = ".", built: Iterable[str] | None = None, dvc_yaml: str = "dvc.yaml") -> list[str]:
    """Commit the DVC stages whose outputs exist (restricted to `built` outputs when given); returns their names.

    Does nothing (returns []) where DVC is not set up: no `.dvc` folder or no dvc.yaml.
    """
    root = Path(root)
    if not (root / ".dvc").is_dir() or not (root / dvc_yaml).is_file():
        return []
    stage_paths = stage_outputs(root / dvc_yaml)
    done = None if built is None else {os.path.normpath(str(p)) for p in built}
    stages = committable(stage_paths, root, done)
    commit(stages, stage_paths, root)
    return stages


def sync_after_snakemake(built: Iterable[str], root: str | Path = ".") -> None:
    """The Snakefile's `onsuccess:` hook: never fails the finished run, only reports. REID_DVC_SYNC=0 skips it
    (`ledger build` does: it runs Snakemake once per row, and each sync re-hashes the worlds, ~40 s on 2 cores)."""
    if os.environ.get("REID_DVC_SYNC", "1") == "0":
        return
    try:
        stages = sync(root, built)
    except Exception as exc:  # a DVC problem must not turn a successful Snakemake run into a failure
        print(f"reid dvc-commit: DVC not updated ({exc}); run `python -m reid dvc-commit` to retry", file=sys.stderr)
        return
    if stages:
        print(f"reid dvc-commit: recorded {len(stages)} DVC stage(s) in dvc.lock: {', '.join(stages)}",
              file=sys.stderr)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("outputs", nargs="*", help="only stages all of whose outputs are among these paths "
                   "(default: every stage whose outputs exist)")
    p.add_argument("--root", default=".", help="the repository root (holds .dvc and dvc.yaml)")
    p.add_argument("--dvc-yaml", default="dvc.yaml", help="the stages to record")


def main(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not (root / ".dvc").is_dir():
        print(f"{root.resolve()} has no .dvc folder: run `dvc init` first")
        return 1
    stages = sync(root, args.outputs or None, args.dvc_yaml)
    print(f"committed {len(stages)} stage(s): {', '.join(stages) if stages else '-'}")
    return 0
