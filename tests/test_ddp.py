"""DistributedDataParallel, tested on CPU: `torchrun --nproc_per_node 2` (gloo) trains a tiny baseline.

Checked: both ranks hold identical weights after each epoch (the trainer compares them and logs it), the PK
sampler gives each rank disjoint identities of the configured global batch (tests/test_samplers.py), the run takes
the same steps as one process with the same global batch, model.pt is the plain student, a NaN stops every rank
with the message (none hangs), SyncBN on CPU ranks is a clear error, and a DDP run killed mid-epoch (SIGKILL to the
whole torchrun group) resumes from its checkpoint to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"epochs": 2, "batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0, "workers": 0,
         "pad": 2, "device": "cpu", "amp": False}


def _torchrun_cmd(tiny_world, out: Path, train_cfg: dict, env: dict | None = None, nproc: int = 2,
                  method_params: dict | None = None) -> tuple[list[str], dict]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "reid", "train", "--method", "baseline",
           "--method-params", json.dumps(method_params or {"depth": 18}), "--train-cfg", json.dumps(train_cfg),
           "--index", str(tiny_world.index), "--root", str(tiny_world.root), "--out", str(out)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    return cmd, full_env


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc, Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _torchrun(tiny_world, out: Path, train_cfg: dict, **kw) -> subprocess.CompletedProcess:
    cmd, env = _torchrun_cmd(tiny_world, out, train_cfg, **kw)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_killed_ddp_run_resumes_to_the_uninterrupted_weights(tiny_world, tmp_path: Path) -> None:
    """SIGKILL the whole torchrun group as soon as the first checkpoint lands (mid-way through the next epoch),
    start the same command again: it resumes after the checkpointed epoch, every rank gets its own RNG stream
    back (augmentations differ per rank), and model.pt equals an uninterrupted 2-process run tensor for tensor."""
    cfg = {**TRAIN, "epochs": 4}
    full = _torchrun(tiny_world, tmp_path / "full", cfg)
    assert full.returncode == 0, (full.stdout + full.stderr)[-3000:]

    out = tmp_path / "killed"
    cmd, env = _torchrun_cmd(tiny_world, out, cfg)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victims = [proc.pid, *_descendants(proc.pid)]  # torchrun starts each rank in a session of its own
    for pid in victims:  # torchrun and both ranks at once, as a scheduler's job kill (cgroup) does
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "model.pt").exists(), "the run finished before it could be killed"
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert killed_at < cfg["epochs"] - 1

    again = _torchrun(tiny_world, out, cfg)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text[-3000:]
    assert f"after epoch {killed_at}" in text, text[-3000:]  # "resumed from .../checkpoint.pt after epoch N"
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after the resumed DDP run"
    log_full = list(csv.DictReader((tmp_path / "full" / "train_log.csv").open()))
    log_again = list(csv.DictReader((out / "train_log.csv").open()))
    assert [r["total"] for r in log_full] == [r["total"] for r in log_again]
