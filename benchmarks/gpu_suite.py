"""Every GPU check and benchmark in one call (about 5-8 minutes on one GPU), results in one JSON.

    bash benchmarks/gpu_suite.sh [OUT_DIR]          # sets up .venv when missing (make install), then this
    python benchmarks/gpu_suite.py --out benchmarks/out/gpu_suite
    python benchmarks/gpu_suite.py --plan           # list the steps and their commands, run nothing

Steps, each a subprocess with its own time limit (a failing or slow step is recorded, the others still run):
1. environment: GPU name and memory, torch / CUDA / cuDNN, ONNX Runtime providers;
2. dag: a scratch copy of the repository with a tiny configuration (synthetic worlds at scale 0.2, 2 epochs,
   device cuda, AMP + channels-last training) runs `snakemake` to the metrics of deskpro, pgfl_kd, isp and sureid
   (oracle teachers, derived caches, teacher trainings, students, evaluation on CUDA), and checks the training
   logs say `device cuda`;
3. onnx_teacher: a stand-in pose network exported to ONNX (the real HRNet's input/output names) run as the
   `keypoints` teacher with `--device cuda`: the providers ONNX Runtime used and images/s of the shared runner;
4. benchmarks on CUDA: ISP clustering per round at DukeMTMC-reID size (bench_isp.py), SUREID HTS vs vanilla
   throughput at p = 0.5-0.9 with real token removal (bench_sureid.py --amp), evaluation (bench_eval.py), DeSKPro
   step time with cached vs online face teacher and SCHP cost (bench_deskpro.py).

Without a CUDA device it says so, writes {"gpu_available": false, ...} and exits 0 (tests/test_gpu_suite.py
runs it that way on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

ENVIRONMENT = """
import json, torch, onnxruntime as ort
p = torch.cuda.get_device_properties(0)
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "memory_gb": round(p.total_memory / 2**30, 1),
                  "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}))
"""

DAG_TARGETS = ["results/synthcc/deskpro/metrics.json", "results/synthocc/pgfl_kd/metrics.json",
               "results/synthocc/isp/metrics.json", "results/synthocc/sureid/metrics.json"]

ONNX_TEACHER = """
import json, subprocess, sys
from reid.testing.faces_pose import export_pose
model = export_pose("{work}/pose_standin.onnx")
cmd = [sys.executable, "-m", "reid", "teach", "--teacher", "keypoints", "--backend", "onnx", "--model", str(model),
       "--index", "cache/synthocc/index.csv", "--root", "data/synthocc", "--out", "{work}/keypoints_cuda.h5",
       "--device", "cuda", "--batch-size", "64", "--workers", "4", "--no-progress", "--summary", "{work}/summary.json"]
subprocess.run(cmd, check=True, cwd="{work}")
print(open("{work}/summary.json").read())
"""


@dataclass
class Step:
    name: str
    cmd: list[str]
    timeout_s: int
    cwd: Path = ROOT
    json_out: Path | None = None  # the step writes its numbers here; else its stdout is parsed / kept


def tiny_gpu_params(src: Path, dst: Path) -> None:
    """The scratch copy's params.yaml: small worlds and short CUDA trainings with AMP."""
    import yaml

    p = yaml.safe_load(src.read_text())
    for ds in ("synthcc", "synthocc"):
        d = p["datasets"][ds]
        d["generate"]["scale"] = 0.2
        d["train"] = {**d.get("train", {}), "epochs": 2, "batch_p": 8, "batch_k": 4, "input_size": [128, 64],
                      "warmup_epochs": 0, "milestones": [1, 2], "workers": 4, "device": "cuda", "amp": True}
    p["evaluate"] = {**p.get("evaluate", {}), "device": "cuda", "workers": 4}
    dst.write_text(yaml.safe_dump(p, sort_keys=False))


def copy_repo(work: Path) -> Path:
    """The working tree's tracked and untracked (not ignored) files, into `work/repo`."""
    repo = work / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / f)
    tiny_gpu_params(ROOT / "params.yaml", repo / "params.yaml")
    return repo


def plan(out: Path, repo: Path) -> list[Step]:
    bench = ROOT / "benchmarks"
    env_path = os.pathsep.join([str(Path(PY).parent), os.environ.get("PATH", "")])
    return [
        Step("environment", [PY, "-c", ENVIRONMENT], 120),
        Step("dag", ["env", f"PATH={env_path}", PY, "-m", "snakemake", "--cores", "8", *DAG_TARGETS], 300, repo),
        Step("onnx_teacher", [PY, "-c", ONNX_TEACHER.format(work=repo)], 120, repo),
        Step("isp_clustering", [PY, str(bench / "bench_isp.py"), "--device", "cuda", "--out", str(out / "isp.json")],
             180, json_out=out / "isp.json"),
        Step("sureid_hts", [PY, str(bench / "bench_sureid.py"), "--device", "cuda", "--amp", "--ratios", "0.5", "0.6",
                            "0.7", "0.8", "0.9", "--out", str(out / "sureid.json")], 180, json_out=out / "sureid.json"),
        Step("evaluation", [PY, str(bench / "bench_eval.py"), "--device", "cuda"], 180),
        Step("deskpro", [PY, str(bench / "bench_deskpro.py"), "--device", "cuda", "--out", str(out / "deskpro.json")],
             240, json_out=out / "deskpro.json"),
    ]


def run_step(step: Step) -> dict:
    t0 = time.perf_counter()
    stdout = ""
    try:
        proc = subprocess.run(step.cmd, cwd=step.cwd, capture_output=True, text=True, timeout=step.timeout_s,
                              check=False)
        status = "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
        stdout, text = proc.stdout, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {step.timeout_s} s"
        text = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    row: dict = {"status": status, "seconds": round(time.perf_counter() - t0, 1), "result": None}
    if step.json_out is not None and step.json_out.is_file():
        row["result"] = json.loads(step.json_out.read_text())
    elif status == "ok":
        row["result"] = _last_json(stdout)
    if status != "ok":
        row["output_tail"] = text[-3000:]
    return row


def _last_json(text: str):
    """The last line of stdout that parses as JSON (the step's result), else the whole stdout."""
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return text.strip() or None


def check_dag(repo: Path) -> dict:
    """Which trainings ran on CUDA (their logs), and the metrics the DAG produced."""
    logs = {p.name: "device cuda" in p.read_text(errors="replace") for p in (repo / "logs").rglob("train_*.log")}
    metrics = {}
    for target in DAG_TARGETS:
        path = repo / target
        if path.is_file():
            m = json.loads(path.read_text())
            metrics[target] = {k: v for k, v in m.items() if isinstance(v, dict) and "mAP" in v}
    return {"trainings_on_cuda": logs, "metrics": metrics}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_suite")
    ap.add_argument("--plan", action="store_true", help="print the steps, run nothing")
    ap.add_argument("--only", nargs="+", help="run only these steps (names as in --plan)")
    ap.add_argument("--budget-s", type=int, default=480,
                    help="wall-clock budget: each step's limit is cut to what is left, later steps are skipped")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.out / "work"
    steps = plan(a.out, work / "repo")
    if a.plan:
        for s in steps:
            command = " ".join(s.cmd).replace("\n", " ")
            print(f"{s.name:<16} timeout {s.timeout_s:>4} s  cwd {s.cwd}\n    {command[:300]}")
        return 0
    import torch

    report: dict = {"suite": "benchmarks/gpu_suite.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "gpu_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        report["message"] = ("no CUDA device visible to torch (torch.cuda.is_available() is False): nothing was "
                             "measured; run this on a machine with an NVIDIA GPU and the CUDA build of torch")
        print(f"gpu_suite: {report['message']}")
        (a.out / "gpu_suite.json").write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if work.exists():
        shutil.rmtree(work)
    copy_repo(work)
    report["steps"] = {}
    deadline = time.monotonic() + a.budget_s
    for step in steps:
        if a.only and step.name not in a.only:
            continue
        left = int(deadline - time.monotonic())
        if left < 20:
            report["steps"][step.name] = {"status": f"skipped: the {a.budget_s} s budget is spent"}
            continue
        step.timeout_s = min(step.timeout_s, left)
        print(f"gpu_suite: {step.name} ...", flush=True)
        row = run_step(step)
        if step.name == "dag":
            row["check"] = check_dag(step.cwd)
        report["steps"][step.name] = row
        print(f"gpu_suite: {step.name} {row['status']} in {row['seconds']} s", flush=True)
        (a.out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v["status"] for k, v in report["steps"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
