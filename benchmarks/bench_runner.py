"""Throughput of the shared teacher runner (reid/teachers/runner.py): decode -> teacher.infer -> HDF5 cache.

On a small synthetic world (reid.data.synthetic.generate_world, synthcc at scale 0.3 by default, built once
under --work), every teacher configuration below is run through `run_teacher` into a fresh cache with decode
workers 0 (in-process) and 2 (forked DataLoader workers):

- `parsing/oracle`, `faces/oracle`: no network; ground-truth reading + the runner's I/O and HDF5 writing path.
- `parsing/onnx`, `faces/onnx`, `keypoints/onnx`, `restored_faces/onnx`: the real ONNX Runtime path (pre-
  processing, session, decoding) with the tests' stand-in models of the real signatures (reid/testing/:
  SCHP 473x473, SCRFD det_10g, HRNet 256x192, GPEN 512); the stand-ins are a few convolutions, so "inference"
  here is ONNX Runtime overhead, not the cost of the real networks.

Every repeat runs every configuration once (order reversed every other repeat); medians over repeats are
reported: images/s end to end, images/s of `teacher.infer` alone, and the share of wall time spent in infer
(the rest: decoding / preprocessing not hidden by workers, HDF5 writes, worker start-up, finalize).

Usage: python benchmarks/bench_runner.py [--quick] [--repeats N] [--rows N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import report  # noqa: E402  (the scripts' folder is on sys.path)
from reid.data.datasets import load_synthcc  # noqa: E402
from reid.data.index import read_index, write_index  # noqa: E402
from reid.data.synthetic import generate_world  # noqa: E402
from reid.teachers.base import build_teacher  # noqa: E402
from reid.teachers.runner import run_teacher  # noqa: E402
from reid.testing.faces_pose import export_pose, export_scrfd  # noqa: E402
from reid.testing.parsing_gpen import export_brightness_schp, export_gpen  # noqa: E402

Config = tuple[str, str, Callable[[], Any]]  # (teacher, backend, () -> Teacher)


def prepare_world(work: Path, scale: float, rows: int | None) -> tuple[Path, Path]:
    """Generate the world once (kept under `work`) and write an index of its first `rows` images."""
    root = work / f"synthcc_s{scale:g}"
    if not root.exists():
        generate_world("synthcc", root, seed=0, scale=scale, progress=False)
    all_rows = load_synthcc(root, verify=False)
    index = write_index(all_rows[:rows] if rows else all_rows, work / f"index_{rows or 'all'}.csv")
    return root, index


def export_standins(work: Path) -> dict[str, Path]:
    """The stand-in ONNX models, exported once into `work/models`."""
    d = work / "models"
    d.mkdir(parents=True, exist_ok=True)
    makers = {"parsing": lambda p: export_brightness_schp(p, 473), "faces": export_scrfd, "keypoints": export_pose,
              "restored_faces": lambda p: export_gpen(p, size=512)}
    paths = {}
    for name, make in makers.items():
        path = d / f"{name}.onnx"
        if not path.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make(path)
        paths[name] = path
    return paths


def configs(models: dict[str, Path], faces_cache: Path, select: set[str] | None) -> list[Config]:
    every: list[Config] = [
        ("parsing", "oracle", lambda: build_teacher("parsing", "oracle", None, device="cpu")),
        ("faces", "oracle", lambda: build_teacher("faces", "oracle", None, device="cpu")),
        ("parsing", "onnx", lambda: build_teacher("parsing", "onnx", models["parsing"], device="cpu")),
        ("faces", "onnx", lambda: build_teacher("faces", "onnx", models["faces"], device="cpu")),
        ("keypoints", "onnx", lambda: build_teacher("keypoints", "onnx", models["keypoints"], device="cpu")),
        ("restored_faces", "onnx", lambda: build_teacher("restored_faces", "onnx", models["restored_faces"],
                                                          device="cpu", faces_cache=str(faces_cache))),
    ]
    return [c for c in every if select is None or f"{c[0]}/{c[1]}" in select]


def run_once(cfg: Config, workers: int, index: Path, root: Path, out_dir: Path, batch_size: int) -> dict:
    """One fresh cache (no resume): the runner's own summary plus the wall time of the whole call."""
    teacher_name, backend, make = cfg
    out = out_dir / f"{teacher_name}_{backend}_w{workers}.h5"
    for p in (out, out.with_name(out.name + ".tmp")):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    summary = run_teacher(make(), index, root, out, batch_size=batch_size, workers=workers, progress=False)
    summary["call_s"] = time.perf_counter() - t0
    return summary


def run_isolated(key: str, workers: int, args: argparse.Namespace) -> dict | None:
    """`run_once` in a fresh interpreter with a time limit: a hung forked worker cannot stall the benchmark
    (and no run inherits another run's threads or HDF5 handles). None when it timed out or failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--work", str(args.work), "--scale", str(args.scale),
           "--batch-size", str(args.batch_size), "--single", key, "--workers", str(workers)]
    if args.rows:
        cmd += ["--rows", str(args.rows)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"{key} workers={workers}: no result within {args.run_timeout} s (hung or too slow)", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"{key} workers={workers} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(cfgs: list[Config], args: argparse.Namespace) -> dict[str, list[dict | None]]:
    """Every (config, workers) once per repeat, each in its own interpreter, order reversed every other repeat."""
    jobs = [(f"{c[0]}/{c[1]}", w) for c in cfgs for w in args.workers]
    runs: dict[str, list[dict | None]] = {f"{k}/w{w}": [] for k, w in jobs}
    for r in range(args.repeats):
        for key, w in (jobs if r % 2 == 0 else list(reversed(jobs))):
            s = run_isolated(key, w, args)
            runs[f"{key}/w{w}"].append(s)
            if s:
                print(f"repeat {r + 1}/{args.repeats} {key} workers={w}: {s['images_per_s']} img/s "
                      f"(infer {s['infer_images_per_s']} img/s)", file=sys.stderr)
    return runs


def summarise(runs: dict[str, list[dict | None]]) -> dict[str, dict[str, float]]:
    """Medians over the finished runs; `failed` counts runs that hung past the time limit or failed."""
    rows = {}
    for key, all_items in runs.items():
        items = [s for s in all_items if s]
        row: dict[str, float] = {"failed": len(all_items) - len(items)}
        if items:
            row.update({
                "images_per_s": statistics.median(s["images_per_s"] for s in items),
                "infer_images_per_s": statistics.median(s["infer_images_per_s"] for s in items),
                "infer_share": statistics.median(s["images_per_s"] / s["infer_images_per_s"] for s in items
                                                 if s["infer_images_per_s"] > 0) if items[0]["infer_images_per_s"]
                else 0.0,
                "seconds": statistics.median(s["seconds"] for s in items),
                "images": items[0]["rows_computed"]})
        rows[key] = row
    return rows


def table(res: dict[str, Any]) -> str:
    lines = [f"teacher runner on {res['rows']} images of synthcc scale {res['scale']}, batch {res['batch_size']}, "
             f"median of {res['repeats']} interleaved repeats",
             f"{'teacher/backend/workers':<28}{'img/s':>9}{'infer img/s':>13}{'infer share':>13}{'seconds':>9}"]
    for key, r in res["results"].items():
        if "images_per_s" not in r:
            lines.append(f"{key:<28}{'no finished run (hung or failed)':>44}")
            continue
        lines.append(f"{key:<28}{r['images_per_s']:>9.1f}{r['infer_images_per_s']:>13.1f}"
                     f"{r['infer_share'] * 100:>12.1f}%{r['seconds']:>9.2f}"
                     + (f"  ({r['failed']:.0f} runs hung/failed)" if r["failed"] else ""))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="first 96 images, 2 repeats")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_runner"), help="world, models, caches go here")
    p.add_argument("--scale", type=float, default=0.3, help="synthetic world scale")
    p.add_argument("--rows", type=int, default=None, help="use the first N index rows (default all; quick 96)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (median); default 3 (quick 2)")
    p.add_argument("--only", nargs="+", default=None, help="teacher/backend pairs, e.g. parsing/oracle faces/onnx")
    p.add_argument("--run-timeout", type=float, default=180.0, help="seconds before one run counts as hung")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)  # internal: one run, summary JSON on stdout
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = 96 if args.quick else None
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    return args


def setup(args: argparse.Namespace) -> tuple[Path, Path, list[Config], Path]:
    """World, index, stand-in models and the faces cache restored_faces reads (all reused when present)."""
    args.work.mkdir(parents=True, exist_ok=True)
    root, index = prepare_world(args.work, args.scale, args.rows)
    models = export_standins(args.work)
    out_dir = args.work / "caches"
    out_dir.mkdir(exist_ok=True)
    faces = out_dir / f"faces_for_restored_{args.rows or 'all'}.h5"
    if args.single is None:
        faces.unlink(missing_ok=True)
    if not faces.is_file():
        run_teacher(build_teacher("faces", "oracle", None, device="cpu"), index, root, faces, workers=0,
                    progress=False)
    cfgs = configs(models, faces, set(args.only) if args.only else None)
    return root, index, cfgs, out_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    root, index, cfgs, out_dir = setup(args)
    runs = measure(cfgs, args)
    return {"rows": len(read_index(index)), "scale": args.scale, "batch_size": args.batch_size,
            "repeats": args.repeats, "workers": args.workers, "run_timeout_s": args.run_timeout,
            "results": summarise(runs),
            "runs": {k: [{f: s[f] for f in ("images_per_s", "infer_images_per_s", "seconds", "call_s")} if s
                         else None for s in v] for k, v in runs.items()}}


def single(args: argparse.Namespace) -> int:
    """Internal mode: one configuration, one workers value; print the runner summary as JSON."""
    root, index, _, out_dir = setup(args)
    args.only = [args.single]
    cfgs = configs(export_standins(args.work), out_dir / f"faces_for_restored_{args.rows or 'all'}.h5",
                   {args.single})
    if not cfgs:
        raise SystemExit(f"unknown configuration {args.single!r}")
    summary = run_once(cfgs[0], args.workers[0], index, root, out_dir, args.batch_size)
    print(json.dumps(summary, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.single:
        return single(args)
    return report(run(args), table, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
