"""reid.eval side by side with the evaluators of torchreid and fast-reid (their compiled Cython), same inputs.

    git clone --depth 1 https://github.com/KaiyangZhou/deep-person-reid /tmp/torchreid
    git clone --depth 1 https://github.com/JDAI-CV/fast-reid /tmp/fast-reid
    pip install cython                      # builds the peers' evaluators; not a dependency of the project
    python benchmarks/bench_eval_peers.py --torchreid /tmp/torchreid --fastreid /tmp/fast-reid \
        --repeats 5 --out benchmarks/results/eval_peers.json
    python benchmarks/bench_eval_peers.py ... --quick     # small sizes, seconds

The peers' code is not part of the project: each `rank_cy.pyx` is copied from the given clone into a scratch
folder (benchmarks/out/peers/) and compiled there. Inputs: a Market-1501-size matrix (3,368 x 15,913, 751 ids,
6 cameras, float32 uniform distances, so no exact ties and the peers' unstable argsort ranks as ours does). Every
repeat runs every candidate once, the order reversed every other repeat; medians are reported, with the ratios
measured in the same run. Results must agree to 1e-6 (CMC ranks 1-50, mAP; mINP with fast-reid), or the script
fails. A second part times MSMT17-size `evaluate_features` (11,659 x 82,161, 512-d) against the matmul alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reid.eval.metrics import evaluate, evaluate_features

PEERS = {"torchreid": "torchreid/metrics/rank_cylib/rank_cy.pyx",
         "fastreid": "fastreid/evaluation/rank_cylib/rank_cy.pyx"}
SETUP = """from setuptools import Extension, setup
from Cython.Build import cythonize
import numpy as np
setup(name="{name}_rank", ext_modules=cythonize([Extension("{name}_rank_cy", ["{name}_rank_cy.pyx"],
      include_dirs=[np.get_include()], extra_compile_args=["-O3"])], language_level=3, quiet=True))
"""


def build_peer(name: str, clone: Path, scratch: Path):
    """Copy the peer's rank_cy.pyx into `scratch/<name>`, compile it in place, import and return the module."""
    src = clone / PEERS[name]
    if not src.is_file():
        raise SystemExit(f"{src}: not found; pass the root of a {name} clone (see the docstring)")
    work = scratch / name
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, work / f"{name}_rank_cy.pyx")
    (work / "setup.py").write_text(SETUP.format(name=name))
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work, check=True,
                   capture_output=True, text=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    spec = importlib.util.spec_from_file_location(f"{name}_rank_cy", work / f"{name}_rank_cy{suffix}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def market_problem(nq: int, ng: int, ids: int, cams: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    qp = rng.integers(0, ids, nq)
    gp = rng.permutation(np.concatenate([qp, rng.integers(0, ids, ng - nq)]))
    return {"distmat": rng.random((nq, ng), dtype=np.float32), "q_pids": qp, "g_pids": gp,
            "q_camids": rng.integers(0, cams, nq), "g_camids": rng.integers(0, cams, ng)}


def candidates(p: dict, peers: dict) -> dict:
    """name -> callable returning (cmc[:50], mAP, mINP or None)."""
    args = (p["distmat"], p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"])

    def ours():
        r = evaluate(*args, max_rank=50)
        return r["cmc"], r["mAP"], r["mINP"]

    out = {"reid (this project)": ours}
    if "torchreid" in peers:
        def tr():
            cmc, m_ap = peers["torchreid"].evaluate_cy(*args, 50, False)
            return cmc, m_ap, None
        out["torchreid Cython"] = tr
    if "fastreid" in peers:
        def fr():
            cmc, all_ap, all_inp = peers["fastreid"].evaluate_cy(*args, 50, False)
            return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))
        out["fast-reid Cython"] = fr
    return out


def side_by_side(fns: dict, repeats: int) -> tuple[dict, dict]:
    times = {k: [] for k in fns}
    results = {}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            results[k] = fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, results


def check_agree(results: dict) -> dict:
    ref_cmc, ref_map, ref_inp = results["reid (this project)"]
    diffs = {}
    for k, (cmc, m_ap, inp) in results.items():
        d = max(float(np.abs(np.asarray(cmc, np.float64) - ref_cmc).max()), abs(m_ap - ref_map),
                0.0 if inp is None else abs(inp - ref_inp))
        if d > 1e-6:
            raise SystemExit(f"{k} disagrees with reid by {d:.3g} (> 1e-6)")
        diffs[k] = d
    return diffs


def msmt_part(nq: int, ng: int, dim: int, repeats: int) -> dict:
    """evaluate_features (distances chunk by chunk + ranking) against the bare matmul of the same features."""
    rng = np.random.default_rng(1)
    qf = torch.from_numpy(rng.standard_normal((nq, dim), dtype=np.float32))
    gf = torch.from_numpy(rng.standard_normal((ng, dim), dtype=np.float32))
    qp, gp = rng.integers(0, 3060, nq), rng.integers(0, 3060, ng)
    qc, gc = rng.integers(0, 15, nq), rng.integers(0, 15, ng)

    def matmul():
        q, g = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
        for s in range(0, nq, 2048):  # chunked like evaluate_features, never the whole q x g at once
            _ = q[s:s + 2048] @ g.T

    def ours():
        return evaluate_features(qf, gf, qp, gp, qc, gc, device="cpu")

    med, res = side_by_side({"matmul only": matmul, "evaluate_features": ours}, repeats)
    return {"case": f"evaluate_features {nq} x {ng}, {dim}-d, cosine, CPU", "median_s": med,
            "ratio_to_matmul": med["evaluate_features"] / med["matmul only"],
            "mAP": res["evaluate_features"]["mAP"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torchreid", type=Path, help="root of a deep-person-reid clone")
    ap.add_argument("--fastreid", type=Path, help="root of a fast-reid clone")
    ap.add_argument("--scratch", type=Path, default=ROOT / "benchmarks" / "out" / "peers")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--skip-msmt", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    peers = {}
    for name, clone in (("torchreid", a.torchreid), ("fastreid", a.fastreid)):
        if clone is not None:
            peers[name] = build_peer(name, clone, a.scratch)
    nq, ng = (337, 1591) if a.quick else (3368, 15913)
    p = market_problem(nq, ng, 751, 6)
    evaluate(p["distmat"][:8], p["q_pids"][:8], p["g_pids"], p["q_camids"][:8], p["g_camids"])  # JIT warm-up
    med, res = side_by_side(candidates(p, peers), a.repeats)
    ours = med["reid (this project)"]
    report = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1m": os.getloadavg()[0]},
        "market": {"case": f"evaluate {nq} x {ng}, 751 ids, 6 cams, float32, max_rank 50", "repeats": a.repeats,
                   "median_s": med, "speedup_vs": {k: v / ours for k, v in med.items() if k != "reid (this project)"},
                   "max_abs_diff": check_agree(res)},
    }
    if not a.skip_msmt:
        report["msmt"] = msmt_part(*((1166, 8216, 512) if a.quick else (11659, 82161, 512)), max(1, a.repeats // 2))
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
