"""DeSKPro cost: cached vs online face teacher (training), DeSKPro vs DeSKPro* vs body (inference), SCHP forward.

Three measurements, all side by side in ONE run: every repeat runs every task once (the order alternates between
repeats) and the median over repeats is reported, so load from other jobs on a shared machine hits all tasks
alike; ratios are the meaningful output, absolute seconds depend on the machine and its load.

(a) one optimiser step of `deskpro` (Eq. 7: body stream + CSA + attention loss + face student with L_fkp) with the
    face-teacher logits read from the derived cache (`face_teacher.logits`, the default) vs `online_teacher: true`
    (a frozen `deskpro_face_teacher` LightMBN run on the restored faces every step, set in memory with
    `DeskPro.set_online_teacher`). Same batch (P x K), same weights init. The data side differs too: the online
    option reads a restored face (S x S x 3 uint8) per row instead of the (2, 7, C) float16 logits; that read cost
    is timed separately from small HDF5 caches written with the project's CacheWriter (`read_*` tasks).
(b) inference images/s of `embed` (eval, flip TTA) for DeSKPro (body + face student on the raw face crop),
    DeSKPro* (`ABLATIONS["deskpro_star"]`: body + face stream on the restored face) and the body stream alone
    (`ABLATIONS["model3_csa_att"]`), batch 32.
(c) what the parsing cache removes from every step: one SCHP forward (ResNet-101 at 473x473, the official
    parsing model) per image, next to the DeSKPro training step per image. (GPEN is not available as a network
    here, so the restored-face cost is not measured.)

All weights are random (no files are read): speed does not depend on the weights.

Usage: python benchmarks/bench_deskpro.py [--quick] [--device auto|cpu|cuda] [--repeats N] [--out results.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import report, setup  # noqa: E402  (the scripts' folder is on sys.path)
from reid.cache.h5 import CacheReader, CacheWriter  # noqa: E402
from reid.data.transforms import normalize_rgb  # noqa: E402
from reid.methods.deskpro import ABLATIONS, DeskPro  # noqa: E402
from reid.models.lightmbn import NUM_EMBEDDINGS, LightMBN  # noqa: E402
from reid.teachers.schp_net import build_schp  # noqa: E402
from reid.device import resolve_device  # noqa: E402

Task = Callable[[], float]


# --- setup ----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_method(row: str, args: argparse.Namespace, **extra: object) -> DeskPro:
    """A DeskPro method for an ABLATIONS row at the benchmark's width / face size."""
    return DeskPro(**{**ABLATIONS[row], "width": args.width_mult, "face_size": args.face_size, **extra})


def train_batch(args: argparse.Namespace, device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A P x K batch with every field either variant reads (as the trainer's dataset delivers them)."""
    b, s = args.p * args.k, args.face_store
    has = (torch.rand(b, generator=gen) < args.face_fraction).to(torch.uint8)
    has[: 2] = 1  # the face terms need >= 2 faces
    batch = {
        "image": torch.randn(b, 3, args.height, args.width, generator=gen),
        "pid": torch.arange(args.p).repeat_interleave(args.k),
        "flipped": torch.rand(b, generator=gen) < 0.5,
        "parsing.labels": torch.randint(0, 20, (b, args.height, args.width), generator=gen),
        "faces.crop": torch.randn(b, 3, s, s, generator=gen),
        "faces.has_face": has,
        "face_teacher.logits": torch.randn(b, 2, NUM_EMBEDDINGS, args.num_classes, generator=gen).half(),
        "restored_faces.restored": torch.randn(b, 3, s, s, generator=gen),
    }
    return {k: v.to(device) for k, v in batch.items()}


def step_task(method: DeskPro, args: argparse.Namespace, device: torch.device,
              batch: dict[str, torch.Tensor]) -> Task:
    """One trainer step as reid/engine/trainer.py does it: losses -> sum -> backward (AMP on CUDA) -> Adam step."""
    torch.manual_seed(0)
    model = method.build_model(args.num_classes).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def run() -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = method.training_losses(model, batch, 0)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        sync(device)
        return time.perf_counter() - t0

    return run


def embed_task(method: DeskPro, args: argparse.Namespace, device: torch.device,
               batch: dict[str, torch.Tensor]) -> Task:
    """One batched `embed` (eval mode, flip TTA) of a method's model."""
    torch.manual_seed(0)
    model = method.build_model(args.num_classes).to(device).eval()
    amp = args.amp and device.type == "cuda"

    def run() -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            method.embed(model, batch)
        sync(device)
        return time.perf_counter() - t0

    return run


def schp_task(args: argparse.Namespace, device: torch.device) -> Task:
    """One SCHP forward (eval) on a batch of `schp_batch` images at `schp_size` x `schp_size`."""
    model = build_schp(20, args.schp_variant).to(device).eval()
    x = torch.randn(args.schp_batch, 3, args.schp_size, args.schp_size, device=device)
    amp = args.amp and device.type == "cuda"

    def run() -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            model(x)
        sync(device)
        return time.perf_counter() - t0

    return run


def write_cache(path: Path, field: str, shape: tuple[int, ...], dtype: str, rows: int, rgb: bool = False) -> Path:
    """A small finished cache of one field, written with the project's CacheWriter (random content)."""
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind == "u" else None
    data = (rng.integers(0, info.max + 1, (rows, *shape)) if info else rng.standard_normal((rows, *shape)))
    with CacheWriter(path, teacher=path.stem, backend="bench", model_sha256="0" * 64, params={},
                     index_sha256="0" * 64, paths=[f"img{i}.jpg" for i in range(rows)],
                     fields={field: (shape, dtype, "image" if rgb else "vector")}) as writer:
        writer.write_rows(np.arange(rows), {field: data.astype(dtype)})
        return writer.finalize()


def read_task(path: Path, field: str, batch: int, rgb: bool) -> Task:
    """Read `batch` random rows one by one as ReIDDataset does (RGB: mirror half, ImageNet-normalise)."""
    reader = CacheReader(path, fields=[field])
    rng = np.random.default_rng(1)

    def run() -> float:
        rows = rng.integers(0, len(reader), batch)
        t0 = time.perf_counter()
        for n, i in enumerate(rows):
            value = np.asarray(reader[int(i)][field])
            if rgb:
                value = normalize_rgb(np.ascontiguousarray(value[:, ::-1] if n % 2 else value))
            else:
                torch.from_numpy(np.ascontiguousarray(value))
        return time.perf_counter() - t0

    return run


def build_tasks(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, Task]:
    gen = torch.Generator().manual_seed(0)
    tasks: dict[str, Task] = {}
    if "a" in args.parts or "c" in args.parts:
        batch = train_batch(args, device, gen)
        cached = make_method("deskpro", args)
        tasks["train_step_cached"] = step_task(cached, args, device, batch)
    if "a" in args.parts:
        online = make_method("deskpro", args, online_teacher=True, face_teacher_model="<in-memory teacher>")
        online.set_online_teacher(LightMBN(args.num_classes, None, width=args.width_mult).to(device))
        tasks["train_step_online"] = step_task(online, args, device, batch)
        s, b = args.face_store, args.p * args.k
        logits = write_cache(tmp / "face_teacher.h5", "logits", (2, NUM_EMBEDDINGS, args.num_classes), "float16",
                             args.cache_rows)
        restored = write_cache(tmp / "restored_faces.h5", "restored", (s, s, 3), "uint8", args.cache_rows, rgb=True)
        tasks["read_cached_logits"] = read_task(logits, "logits", b, rgb=False)
        tasks["read_restored_faces"] = read_task(restored, "restored", b, rgb=True)
    if "b" in args.parts:
        ib = args.infer_batch
        ebatch = {"image": torch.randn(ib, 3, args.height, args.width, generator=gen),
                  "faces.crop": torch.randn(ib, 3, args.face_store, args.face_store, generator=gen),
                  "restored_faces.restored": torch.randn(ib, 3, args.face_store, args.face_store, generator=gen),
                  "faces.has_face": (torch.rand(ib, generator=gen) < args.face_fraction).to(torch.uint8)}
        ebatch = {k: v.to(device) for k, v in ebatch.items()}
        for name, row in (("embed_deskpro", "deskpro"), ("embed_deskpro_star", "deskpro_star"),
                          ("embed_body_only", "model3_csa_att")):
            tasks[name] = embed_task(make_method(row, args), args, device, ebatch)
    if "c" in args.parts:
        tasks["schp_forward"] = schp_task(args, device)
    return tasks


# --- measurement ----------------------------------------------------------------------------------------------
def measure(tasks: dict[str, Task], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Warm every task, then `repeats` rounds running each task once, order reversed every other round."""
    for task in tasks.values():
        for _ in range(warmup):
            task()
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for r in range(repeats):
        order = list(tasks) if r % 2 == 0 else list(reversed(tasks))
        for name in order:
            times[name].append(tasks[name]())
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k}={times[k][-1]:.3f}s" for k in tasks), file=sys.stderr)
    return times


def summarise(times: dict[str, list[float]], args: argparse.Namespace) -> dict[str, object]:
    med = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, object] = {"median_s": med, "all_s": times}
    b = args.p * args.k
    if "train_step_online" in med:
        out["a_train_step"] = {
            "cached_s": med["train_step_cached"], "online_s": med["train_step_online"],
            "online_over_cached": med["train_step_online"] / med["train_step_cached"],
            "read_logits_s_per_batch": med["read_cached_logits"],
            "read_restored_s_per_batch": med["read_restored_faces"],
            "online_incl_read_over_cached_incl_read": (med["train_step_online"] + med["read_restored_faces"])
            / (med["train_step_cached"] + med["read_cached_logits"]),
        }
    if "embed_deskpro" in med:
        ips = {k.removeprefix("embed_"): args.infer_batch / v for k, v in med.items() if k.startswith("embed_")}
        out["b_inference_images_per_s"] = ips
        out["b_ratio_vs_body_only"] = {k: v / ips["body_only"] for k, v in ips.items()}
    if "schp_forward" in med:
        schp = med["schp_forward"] / args.schp_batch
        step = med["train_step_cached"] / b
        out["c_schp_vs_step"] = {"schp_s_per_image": schp, "deskpro_train_step_s_per_image": step,
                                 "schp_over_step_per_image": schp / step}
    return out


def table(res: dict[str, object]) -> str:
    cfg = res["config"]
    lines = [f"DeSKPro on {res['device']}; body {cfg['height']}x{cfg['width']}, faces {cfg['face_size']} "
             f"(stored {cfg['face_store']}), OSNet {cfg['width_mult']}, batch {cfg['p']}x{cfg['k']}, "
             f"median of {cfg['repeats']} interleaved repeats"]
    if "a_train_step" in res:
        a = res["a_train_step"]
        lines += [f"(a) train step cached {a['cached_s']:.3f} s, online {a['online_s']:.3f} s -> "
                  f"online/cached = {a['online_over_cached']:.2f}x",
                  f"    batch read: logits {a['read_logits_s_per_batch'] * 1e3:.2f} ms, restored faces "
                  f"{a['read_restored_s_per_batch'] * 1e3:.2f} ms; step+read ratio "
                  f"{a['online_incl_read_over_cached_incl_read']:.2f}x"]
    if "b_inference_images_per_s" in res:
        for k, v in res["b_inference_images_per_s"].items():
            lines.append(f"(b) {k:<14} {v:8.1f} img/s  ({res['b_ratio_vs_body_only'][k]:.2f}x body-only)")
    if "c_schp_vs_step" in res:
        c = res["c_schp_vs_step"]
        lines.append(f"(c) SCHP {cfg['schp_variant']}@{cfg['schp_size']} {c['schp_s_per_image']:.3f} s/img vs "
                     f"DeSKPro step {c['deskpro_train_step_s_per_image']:.4f} s/img -> "
                     f"{c['schp_over_step_per_image']:.1f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128x64 body, 64 px faces, OSNet x0_25, tiny SCHP")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--parts", default="abc", help="which measurements: any of a, b, c")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (median); default 5 (quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--p", type=int, default=5, help="identities per batch (paper: 5)")
    p.add_argument("--k", type=int, default=6, help="images per identity (paper: 6)")
    p.add_argument("--height", type=int, default=None, help="body input height (384; quick 128)")
    p.add_argument("--width", type=int, default=None, help="body input width (128; quick 64)")
    p.add_argument("--face-size", type=int, default=None, help="face stream input (224; quick 64)")
    p.add_argument("--face-store", type=int, default=112, help="stored face crop / restored size S (faces cache)")
    p.add_argument("--width-mult", default=None, help="OSNet width of both streams (x1_0; quick x0_25)")
    p.add_argument("--num-classes", type=int, default=150, help="training identities (PRCC: 150)")
    p.add_argument("--face-fraction", type=float, default=1.0, help="share of rows with a detected face")
    p.add_argument("--infer-batch", type=int, default=32)
    p.add_argument("--schp-variant", default=None, choices=("resnet101", "tiny"), help="resnet101 (quick: tiny)")
    p.add_argument("--schp-size", type=int, default=473)
    p.add_argument("--schp-batch", type=int, default=1)
    p.add_argument("--cache-rows", type=int, default=512, help="rows of the HDF5 caches the read tasks use")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable fp16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    quick = {"height": 128, "width": 64, "face_size": 64, "width_mult": "x0_25", "schp_variant": "tiny",
             "repeats": 3}
    full = {"height": 384, "width": 128, "face_size": 224, "width_mult": "x1_0", "schp_variant": "resnet101",
            "repeats": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not set(args.parts) <= set("abc") or not args.parts:
        p.error(f"--parts must be letters from 'abc', got {args.parts!r}")
    return args


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(resolve_device(args.device))
    with tempfile.TemporaryDirectory(prefix="bench_deskpro_") as tmp:
        tasks = build_tasks(args, device, Path(tmp))
        times = measure(tasks, args.repeats, args.warmup)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    cfg = {k: v for k, v in vars(args).items() if k not in ("out",)}
    return {"device": dev, "config": cfg, **summarise(times, args)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup(args.threads, quiet=(".*pretrained.*", ".*weights.*"))
    return report(run(args), table, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
