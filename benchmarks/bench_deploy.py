"""Speed of the deployed student: images/s of PyTorch vs ONNX Runtime for each method, and SUREID's token
removal (HTS) vs the same DeiT-S without it, both through ONNX Runtime: does the speed-up survive export?

Random weights (speed does not depend on them), the same batch for both runtimes, repeats interleaved and the
median kept, so a loaded machine biases both sides alike. Sizes: the synthetic worlds' CPU settings by default
(`--size cpu`), the papers' (`--size paper`: ResNet-50 / OSNet x1.0 / HRNet-W32 / DeiT-S at 256x128).

    python benchmarks/bench_deploy.py --size cpu --batch 16 --repeats 5 --out benchmarks/results/deploy_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_io import write_result  # noqa: E402  (the scripts' folder is on sys.path)

from reid.deploy.export import export_graph, graph_inputs  # noqa: E402
from reid.methods.base import build_method  # noqa: E402
from reid.teachers.onnx_utils import create_session  # noqa: E402

SIZES = {
    "cpu": {"input": (128, 64), "methods": {
        "baseline": {"depth": 18}, "deskpro": {"width": "x0_25", "face_size": 64}, "pgfl_kd": {"backbone": "resnet18"},
        "isp": {"backbone": "hrnet_w18_small"}, "sureid": {"arch": "deit_small", "img_size": [128, 64],
                                                           "npkd": False, "noda": False},
        "sureid--vanilla": {"arch": "deit_small", "img_size": [128, 64], "hts": False, "npkd": False,
                            "noda": False}}},
    "paper": {"input": (256, 128), "methods": {
        "baseline": {}, "deskpro": {"face_size": 224}, "pgfl_kd": {}, "isp": {"backbone": "hrnet_w32"},
        "sureid": {"arch": "deit_small", "npkd": False, "noda": False},
        "sureid--vanilla": {"arch": "deit_small", "hts": False, "npkd": False, "noda": False}}},
}


def batch_for(method, size: tuple[int, int], n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batch = {}
    for key, (shape, dtype) in method.export_inputs(size).items():
        batch[key] = (torch.randn((n, *shape), generator=gen) if dtype == "float32"
                      else torch.ones((n, *shape), dtype=getattr(torch, dtype)))
    return batch


def measure(name: str, params: dict, size: tuple[int, int], n: int, repeats: int, work: Path) -> dict:
    method = build_method(name.split("--")[0], **params)
    model = method.build_model(100).eval()
    onnx_path, _ = export_graph(method, model, size, work / f"{name}.onnx")
    session, providers = create_session(onnx_path, prefer_gpu=False, intra_threads=torch.get_num_threads())
    batch = batch_for(method, size, n)
    feed = graph_inputs(method, batch, size)
    outputs = [o.name for o in session.get_outputs()]
    torch_s, ort_s = [], []
    with torch.no_grad():
        method.embed(model, batch), session.run(outputs, feed)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            method.embed(model, batch)
            torch_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            session.run(outputs, feed)
            ort_s.append(time.perf_counter() - t0)
    t, o = statistics.median(torch_s), statistics.median(ort_s)
    return {"method": name, "batch": n, "input": list(size), "torch_images_per_s": round(n / t, 1),
            "onnxruntime_images_per_s": round(n / o, 1), "ort_over_torch": round(t / o, 2), "providers": providers}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", nargs="*", help="subset of the methods (default: all)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    cfg = SIZES[args.size]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, params in cfg["methods"].items():
            if args.methods and name.split("--")[0] not in args.methods:
                continue
            row = measure(name, params, cfg["input"], args.batch, args.repeats, Path(tmp))
            rows.append(row)
            print(f"{name:18s} torch {row['torch_images_per_s']:8.1f} img/s   onnxruntime "
                  f"{row['onnxruntime_images_per_s']:8.1f} img/s   ratio {row['ort_over_torch']:.2f}", flush=True)
    by = {r["method"]: r for r in rows}
    result = {"size": args.size, "threads": torch.get_num_threads(), "rows": rows}
    if "sureid" in by and "sureid--vanilla" in by:
        result["hts_speedup_torch"] = round(by["sureid"]["torch_images_per_s"]
                                            / by["sureid--vanilla"]["torch_images_per_s"], 2)
        result["hts_speedup_onnxruntime"] = round(by["sureid"]["onnxruntime_images_per_s"]
                                                  / by["sureid--vanilla"]["onnxruntime_images_per_s"], 2)
        print(f"SUREID HTS vs vanilla DeiT-S: x{result['hts_speedup_torch']} in PyTorch, "
              f"x{result['hts_speedup_onnxruntime']} in ONNX Runtime")
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
