"""benchmarks/gpu_suite.py, the one-call GPU script, exercised where no GPU is present: it says so and writes its
JSON; its plan names every GPU check and benchmark the project promises, each pointing at a script that exists;
the tiny CUDA configuration it writes is a valid params.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"


def _run(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, str(SUITE), "--out", str(tmp), *args], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=300)


def test_without_a_gpu_it_says_so_and_writes_its_json(tmp_path: Path) -> None:
    proc = _run(tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device visible to torch" in proc.stdout
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["gpu_available"] is False and "nothing was measured" in report["message"]
    assert "steps" not in report


def test_the_plan_covers_every_gpu_check_and_its_scripts_exist(tmp_path: Path) -> None:
    proc = _run("--plan", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == ["environment", "dag", "onnx_teacher", "isp_clustering", "sureid_hts", "evaluation", "deskpro"]
    for script in ("bench_isp.py", "bench_sureid.py", "bench_eval.py", "bench_deskpro.py"):
        assert f"benchmarks/{script} --device cuda" in proc.stdout
    assert "--amp" in proc.stdout  # SUREID throughput in fp16, as the paper measures it


def test_the_tiny_cuda_configuration_is_a_valid_params_file(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_suite import DAG_TARGETS, tiny_gpu_params
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from reid.pipeline import params as C

    out = tmp_path / "params.yaml"
    tiny_gpu_params(REPO / "params.yaml", out)
    cfg = C.load_params(out)  # the same checks a pipeline run makes
    for target in DAG_TARGETS:
        _, ds, run, _ = target.split("/")
        resolved = C.stage_train(cfg, ds, run)[0]
        assert resolved["train_cfg"]["device"] == "cuda" and resolved["train_cfg"]["amp"] is True
    assert yaml.safe_load(out.read_text())["evaluate"]["device"] == "cuda"


def test_the_shell_wrapper_calls_the_suite() -> None:
    text = (REPO / "benchmarks" / "gpu_suite.sh").read_text()
    assert "benchmarks/gpu_suite.py" in text and "make install" in text
