"""End to end in a scratch copy of the repository: Snakemake builds a tiny baseline run, DVC then agrees that
nothing is left to do, and a `dvc exp run -S` of a training key reruns exactly train + evaluate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

TARGET = "results/synthcc/baseline/metrics.json"
MODEL = "models/synthcc/baseline/model.pt"
STAGES = ["synth-synthcc", "index-synthcc", "train-synthcc-baseline", "evaluate-synthcc-baseline"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python`, `dvc`, `snakemake`
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    return env


def _run(work: Path, *cmd: str, timeout: int = 180, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(cmd), cwd=work, env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def _tiny_params(path: Path) -> None:
    """A 0.1-scale world, 1 epoch of ResNet-18 baseline at 64x32 with 4 x 2 batches, and one DVC run (no claims
    stages: without the ledger dvc.yaml holds exactly that run's four stages)."""
    p = yaml.safe_load(path.read_text())
    p["dvc"]["runs"] = ["synthcc/baseline"]
    p["ablation"]["ledger"] = False
    ds = p["datasets"]["synthcc"]
    ds["generate"].update(scale=0.1, test_ids=20)  # a tiny world: 2 test identities
    ds["train"] = {"epochs": 1, "batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0,
                   "workers": 0, "pad": 2, "device": "cpu", "amp": False}
    ds.setdefault("presets", {})["baseline"] = {"depth": 18}
    p["train_presets"]["baseline"] = {}
    p["evaluate"] = {"batch_size": 32, "workers": 0, "device": "cpu"}
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def _init_repo(work: Path, message: str) -> None:
    """Make the scratch copy a git + DVC repository with dvc.yaml generated from its params.yaml, committed."""
    py = sys.executable
    _run(work, py, "-m", "reid", "dvc-yaml")
    _run(work, "git", "init", "-q")
    _run(work, py, "-m", "dvc", "init", "-q")
    _run(work, py, "-m", "dvc", "config", "core.analytics", "false")
    _run(work, "git", "add", "-A")
    _run(work, "git", "commit", "-q", "-m", message)


def _ran_stages(text: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", text))


@pytest.mark.slow
def test_snakemake_then_dvc(tmp_path: Path, repo_copier) -> None:
    work = repo_copier(tmp_path / "repo", skip=(".dvc/", "dvc.lock"))
    py = sys.executable
    _tiny_params(work / "params.yaml")
    _init_repo(work, "tiny pipeline")

    # 1. Snakemake builds the run; its onsuccess hook records the four DVC stages in dvc.lock.
    out = _run(work, py, "-m", "snakemake", "--cores", "2", TARGET)
    assert "recorded 4 DVC stage(s)" in out, out[-3000:]
    metrics = json.loads((work / TARGET).read_text())
    assert metrics["protocol"] == "prcc" and metrics["method"] == "baseline" and metrics["dataset"] == "synthcc"
    for setting in ("same_clothes", "cross_clothes"):
        assert 0.0 <= metrics[setting]["mAP"] <= 100.0 and metrics[setting]["num_query"] == 8
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    model_mtime = (work / MODEL).stat().st_mtime_ns
    snakemake_weights = torch.load(work / MODEL, map_location="cpu", weights_only=True)["state_dict"]

    # 2. Snakemake again: nothing to do (DVC's commit kept the outputs' times).
    out = _run(work, py, "-m", "snakemake", "--cores", "2", TARGET)
    assert "Nothing to be done" in out, out[-3000:]

    # 3. DVC agrees: up to date, and `dvc repro` runs no stage and leaves the model alone.
    assert "Data and pipelines are up to date" in _run(work, py, "-m", "dvc", "status")
    out = _run(work, py, "-m", "dvc", "repro")
    assert _ran_stages(out) == set(), out[-3000:]
    assert (work / MODEL).stat().st_mtime_ns == model_mtime
    assert "Nothing to be done" in _run(work, py, "-m", "snakemake", "-n", "--cores", "2", TARGET)

    # 4. A training key changed through `dvc exp run -S`: exactly train + evaluate rerun.
    out = _run(work, py, "-m", "dvc", "exp", "run", "-S", "train.lr=0.0007", timeout=240)
    assert _ran_stages(out) == {"train-synthcc-baseline", "evaluate-synthcc-baseline"}, out[-3000:]
    assert "Data and pipelines are up to date" in _run(work, py, "-m", "dvc", "status")
    assert (work / MODEL).stat().st_mtime_ns != model_mtime

    # 5. The same training made by DVC, in an environment that asks for another thread count, gives the same
    #    tensors as Snakemake's: the stage pins its threads itself (reid.pipeline.params.stage_threads).
    _run(work, "git", "checkout", "--", "params.yaml")
    out = _run(work, py, "-m", "dvc", "repro", "--force", "--no-run-cache", "--single-item", "train-synthcc-baseline",
               env={"OMP_NUM_THREADS": "1"})
    assert _ran_stages(out) == {"train-synthcc-baseline"}, out[-3000:]
    dvc_weights = torch.load(work / MODEL, map_location="cpu", weights_only=True)["state_dict"]
    assert snakemake_weights.keys() == dvc_weights.keys()
    for key, value in snakemake_weights.items():
        assert torch.equal(value, dvc_weights[key]), key


@pytest.mark.slow
def test_dvc_exp_run_alpha_reruns_only_deskpro(tmp_path: Path, repo_copier) -> None:
    """The README's experiment: `dvc exp run -S alpha=0.9 evaluate-synthcc-deskpro` reruns DeSKPro's train +
    evaluate only (not the teacher caches, the face teacher or its logits); `dvc exp show --only-changed` then
    shows the baseline and the experiment side by side with their metrics, and `dvc plots diff` both CMC curves."""
    from test_methods_e2e import tiny_synthetic

    work = repo_copier(tmp_path / "repo", skip=(".dvc/", "dvc.lock"))
    py = sys.executable
    params = yaml.safe_load((work / "params.yaml").read_text())
    tiny_synthetic(params)
    params["dvc"]["runs"] = ["synthcc/deskpro"]
    # the README's `evaluate` runs with the CLI's defaults (batch 64, bf16 on a CPU with native bf16): the same here
    params["evaluate"] = {"batch_size": 64, "workers": 0, "device": "cpu", "cpu_amp": True}
    params["train_presets"]["deskpro"] = {}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _init_repo(work, "tiny deskpro pipeline")

    out = _run(work, py, "-m", "dvc", "repro", timeout=600)
    first = _ran_stages(out)
    assert {"teach-synthcc-parsing", "train-synthcc-deskpro_face_teacher", "train-synthcc-deskpro"} <= first, first
    _run(work, "git", "add", "-A")  # metrics.json, cmc.csv and train_log.csv are tracked: experiments carry them
    _run(work, "git", "commit", "-q", "-m", "baseline")
    tracked = _run(work, "git", "ls-files", "results", "models")
    assert "results/synthcc/deskpro/metrics.json" in tracked and "model.pt" not in tracked, tracked

    out = _run(work, py, "-m", "dvc", "exp", "run", "-n", "alpha09", "-S", "alpha=0.9", "evaluate-synthcc-deskpro",
               timeout=600)
    assert _ran_stages(out) == {"train-synthcc-deskpro", "evaluate-synthcc-deskpro"}, out[-3000:]
    shown = json.loads(_run(work, py, "-m", "dvc", "exp", "show", "--json"))
    rows = {}
    for commit in shown:
        for exp in [commit, *[e for run in commit.get("experiments") or [] for e in run.get("revs", [])]]:
            data = (exp.get("data") or {})
            metrics = data.get("metrics", {}).get("results/synthcc/deskpro/metrics.json", {}).get("data", {})
            alpha = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("alpha")
            if exp.get("name") in ("alpha09", "main", "master") or data.get("name") == "alpha09":
                rows[alpha] = metrics
    assert set(rows) >= {0.8, 0.9}, shown
    for alpha, metrics in rows.items():  # both rows carry their numbers (not DVC's '!')
        assert isinstance(metrics.get("cross_clothes", {}).get("mAP"), float), (alpha, metrics)
        assert "description" not in metrics
    table = _run(work, py, "-m", "dvc", "exp", "show", "--only-changed", "--drop", ".*per_s|models/.*", "--no-pager",
                 env={"COLUMNS": "200"})
    header = next(line for line in table.splitlines() if "Experiment" in line)
    assert "cross_clothes.mAP" in header and "alpha" in header and "per_s" not in header, table
    assert "[alpha09]" in table and "0.9" in table and "0.8" in table, table
    diff = json.loads(_run(work, py, "-m", "dvc", "plots", "diff", "HEAD", "alpha09", "--json", "--targets",
                           "results/synthcc/deskpro/cmc.csv"))
    (plot,) = diff["data"]["results/synthcc/deskpro/cmc.csv"]
    assert plot["revisions"] == ["HEAD", "alpha09"], plot["revisions"]
    assert {v["rev"] for v in plot["content"]["data"]["values"]} == {"HEAD", "alpha09"}  # both curves, one chart

    # The README's "Using the trained model" block, as written, on what this built (what `make demo` builds).
    commands = readme_block("## Using the trained model")
    assert [c[3] for c in commands] == ["export", "embed", "embed", "search", "evaluate"], commands
    for cmd in commands:
        _run(work, py, *cmd[1:], timeout=300)
    ranking = json.loads((work / "ranking.json").read_text())
    assert ranking and (work / "ranks.png").stat().st_size > 0 and (work / "q.h5").is_file()
    mine = json.loads((work / "metrics.json").read_text())
    pipeline = json.loads((work / "results/synthcc/deskpro/metrics.json").read_text())
    for setting in ("cross_clothes", "same_clothes"):  # the CLI computes what the pipeline computed
        for key in ("R1", "mAP", "mINP"):
            assert mine[setting][key] == pipeline[setting][key], (setting, key)


def readme_block(section: str) -> list[list[str]]:
    """The commands of the first ```bash block under `section` in README.md (comment lines dropped)."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = text[text.index(section):]
    block = body[body.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
