"""A real scheduler: a one-node SLURM (workflow/scripts/slurm_single_node.sh) runs a tiny DAG with a sharded
teacher through `snakemake --profile workflow/profiles/slurm` and snakemake-executor-plugin-slurm.

Skipped where SLURM cannot start (not root, no apt-get, no daemons): run it with `pytest -m slow
tests/test_slurm.py` on a machine where it can. Checked: every job went through sbatch (jobcomp log of the
controller), and the sharded, merged cache equals a local, unsharded run byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("REID_SLURM_STATE", "/tmp/reid-slurm"))
# The version tested against Debian 12's slurm-wlm 22.05 (job status through squeue: no slurmdbd for sacct).
PLUGIN = "snakemake-executor-plugin-slurm==2.8.0"


def _start_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("a single-node SLURM needs root here (daemons, /etc/slurm)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("no SLURM and no apt-get to install it")
    proc = subprocess.run(["bash", str(REPO / "workflow/scripts/slurm_single_node.sh"), "start"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"SLURM did not start: {(proc.stdout + proc.stderr)[-500:]}")
    try:  # the daemons may be up without being able to run a job (e.g. an unresolvable host name)
        probe = subprocess.run(["sbatch", "--wait", "--wrap", "true", "-o", "/dev/null"], capture_output=True,
                               text=True, timeout=90)
    except subprocess.TimeoutExpired:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("SLURM is up but a trivial sbatch job did not complete within 90 s")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PLUGIN],
                             capture_output=True, text=True, timeout=600)
        if pip.returncode != 0:
            pytest.skip(f"cannot install snakemake-executor-plugin-slurm: {pip.stderr[-300:]}")


def _completed_jobs() -> set[str]:
    log = STATE / "log" / "jobcomp.txt"
    if not log.is_file():
        return set()
    return {line.split()[0] for line in log.read_text().splitlines() if "JobState=COMPLETED" in line}


@pytest.mark.slow
@pytest.mark.cluster
def test_a_sharded_dag_runs_through_slurm_and_equals_a_local_run(tmp_path: Path, repo_copier) -> None:
    _start_slurm()
    work = repo_copier(tmp_path / "repo")
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["datasets"]["synthocc"]["generate"].update(scale=0.1, test_ids=20)
    p["datasets"]["synthocc"]["teachers"]["keypoints"].update(shards=2, workers=0)
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    before = _completed_jobs()
    # The profile as users run it; this CPU-only node gets small memory/runtime requests and no GPU.
    cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/slurm", "--slurm-status-command",
           "squeue", "--default-resources", "mem_mb=1000", "runtime=30", "slurm_partition=gpu",
           "--set-resources", "synth:gpu=0", "index:gpu=0", "--jobs", "4", "cache/synthocc/keypoints.h5"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    submitted = out.count("has been submitted with SLURM jobid")
    assert submitted == 5, out[-3000:]  # synth, index, 2 shards, merge
    assert len(_completed_jobs() - before) == 5  # the controller ran and completed them
    assert sorted(p.name for p in (work / "cache/synthocc/keypoints.shards").iterdir()) == ["0-of-2.h5", "1-of-2.h5"]

    from reid.pipeline import params as C
    from reid.teachers.base import build_teacher

    kw = C.stage_teacher(C.load_params(work / "params.yaml"), "synthocc", "keypoints")[0]
    local = tmp_path / "local.h5"
    build_teacher("keypoints", kw["backend"], kw.get("model"), "cpu", {}, **kw["params"]).build_cache(
        work / "cache/synthocc/index.csv", work / "data/synthocc", local, workers=0, progress=False)
    assert local.read_bytes() == (work / "cache/synthocc/keypoints.h5").read_bytes()
