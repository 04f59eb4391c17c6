"""DistributedDataParallel, tested on CPU: `torchrun --nproc_per_node 2` (gloo) trains a tiny baseline.

Checked: both ranks hold identical weights after each epoch (the trainer compares them and logs it), the PK
sampler gives each rank disjoint identities of the configured global batch (tests/test_samplers.py), the run takes
the same steps as one process with the same global batch, model.pt is the plain student, a NaN stops every rank
with the message (none hangs), SyncBN on CPU ranks is a clear error. Not tested here: resuming a killed DDP run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"epochs": 2, "batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0, "workers": 0,
         "pad": 2, "device": "cpu", "amp": False}


def _torchrun(tiny_world, out: Path, train_cfg: dict, env: dict | None = None, nproc: int = 2,
              method_params: dict | None = None) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "reid", "train", "--method", "baseline",
           "--method-params", json.dumps(method_params or {"depth": 18}), "--train-cfg", json.dumps(train_cfg),
           "--index", str(tiny_world.index), "--root", str(tiny_world.root), "--out", str(out)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_processes_train_one_model(tiny_world, tmp_path: Path) -> None:
    proc = _torchrun(tiny_world, tmp_path / "ddp", TRAIN)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for epoch in (1, 2):
        assert f"DDP: 2 ranks hold identical weights after epoch {epoch}" in out, out[-3000:]
    rows = list(csv.DictReader((tmp_path / "ddp" / "train_log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    single = _torchrun(tiny_world, tmp_path / "one", TRAIN, nproc=1)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    one = list(csv.DictReader((tmp_path / "one" / "train_log.csv").open()))
    assert [r["steps"] for r in rows] == [r["steps"] for r in one]  # the same global batches, the same steps
    ddp_w = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    one_w = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    assert ddp_w.keys() == one_w.keys()  # a DDP model.pt is the plain student (no `module.` prefix)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_nan_stops_every_rank_with_the_message_and_none_hangs(tiny_world, tmp_path: Path) -> None:
    proc = _torchrun(tiny_world, tmp_path / "nan", {**TRAIN, "lr": 1e30, "optimizer": "sgd"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "non-finite loss" in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sync_bn_on_cpu_processes_is_a_clear_error(tiny_world, tmp_path: Path) -> None:
    """torch's SyncBatchNorm runs on CUDA only; on CPU ranks the option is refused by name (GPU runs: the
    device suite)."""
    proc = _torchrun(tiny_world, tmp_path / "sync", {**TRAIN, "epochs": 1, "sync_bn": True})
    assert proc.returncode != 0
    assert "train.sync_bn needs CUDA devices" in proc.stdout + proc.stderr


def test_snakemake_launches_a_multi_gpu_training_with_torchrun(tmp_path: Path, repo_copier) -> None:
    """`train.gpus: N` > 1: the train job asks for N GPUs and runs through torchrun with N processes."""
    import yaml

    work = repo_copier(tmp_path / "repo")
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["datasets"]["synthocc"]["train"]["gpus"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "4",
                           "models/synthocc/baseline/model.pt", "models/synthcc/baseline/model.pt"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "torchrun --standalone --nproc_per_node 2 -m reid pipeline train --dataset synthocc" in out
    assert "python -m reid pipeline train --dataset synthcc" in out  # one GPU: a plain process
    assert "gpu=2" in out
