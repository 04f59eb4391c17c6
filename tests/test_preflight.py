"""Pre-flight: a target's missing inputs (dataset root and layout, teacher files, ImageNet backbone files) are listed
at once, with the params.yaml key, the format and the source, by Snakemake's dry run, by the DVC stage command and
by `python -m reid check`; null ImageNet weights on a real dataset are refused, `random` is a choice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reid.cli import main as cli
from reid.pipeline import params as C
from reid.pipeline.preflight import PreflightError, check_targets, raise_if_missing

REPO = Path(__file__).resolve().parents[1]
PRCC_MISSING = {  # key -> a fragment of where the file comes from
    "datasets.prcc.root": "dataset's authors",
    "teachers.parsing.model": "Self-Correction-Human-Parsing",
    "teachers.faces.model": "insightface",
    "teachers.restored_faces.model": "yangxy/GPEN",
    "methods.deskpro.weights": "torchreid model zoo",
    "methods.deskpro_face_teacher.weights": "torchreid model zoo",
}


@pytest.fixture()
def cfg() -> dict:
    return C.load_params(REPO / "params.yaml")


def prcc_tree(root: Path) -> Path:
    """The PRCC layout's folders (the pre-flight checks the layout; indexing checks the images)."""
    for sub in ("rgb/train", "rgb/val", "rgb/test"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def test_every_missing_input_of_a_real_run_is_listed_with_key_format_and_source(cfg: dict) -> None:
    problems = check_targets(cfg, ["results/prcc/deskpro/metrics.json"])
    assert {p.key: p.source for p in problems}.keys() == PRCC_MISSING.keys()
    for p in problems:
        assert PRCC_MISSING[p.key] in p.source and p.expect
    assert problems[0].key == "datasets.prcc.root"  # the dataset first, then teachers, then backbones
    backbone = next(p for p in problems if p.key == "methods.deskpro.weights")
    assert "not chosen (null)" in backbone.found and "osnet_x1_0_imagenet.pth" in backbone.expect


def test_the_synthetic_worlds_need_nothing_placed(cfg: dict) -> None:
    assert check_targets(cfg, [f"results/{t}/metrics.json" for t in cfg["dvc"]["runs"]]) == []
    assert check_targets(cfg, ["results/synthocc/sureid--pretrained/metrics.json"]) == []  # pretrain stand-ins


def test_random_is_a_choice_and_placed_files_satisfy_the_check(cfg: dict, tmp_path: Path) -> None:
    cfg["datasets"]["prcc"]["root"] = str(prcc_tree(tmp_path / "PRCC"))
    for teacher in ("parsing", "faces", "restored_faces"):
        path = tmp_path / f"{teacher}.onnx"
        path.write_bytes(b"stand-in")
        cfg["teachers"][teacher]["model"] = str(path)
    cfg["methods"]["deskpro"]["weights"] = "random"
    assert [p.key for p in check_targets(cfg, ["prcc/deskpro"])] == ["methods.deskpro_face_teacher.weights"]
    cfg["methods"]["deskpro_face_teacher"]["weights"] = str(tmp_path / "osnet_x1_0_imagenet.pth")
    missing = check_targets(cfg, ["prcc/deskpro"])
    assert [p.found for p in missing] == [f"{tmp_path / 'osnet_x1_0_imagenet.pth'}: no such file"]
    (tmp_path / "osnet_x1_0_imagenet.pth").write_bytes(b"stand-in")
    raise_if_missing(cfg, ["results/prcc/deskpro/metrics.json", "cache/prcc/faces.h5"])


def test_a_wrong_layout_names_what_is_missing(cfg: dict, tmp_path: Path) -> None:
    (tmp_path / "PRCC" / "rgb" / "train").mkdir(parents=True)
    cfg["datasets"]["prcc"]["root"] = str(tmp_path / "PRCC")
    dataset = check_targets(cfg, ["cache/prcc/index.csv"])
    assert len(dataset) == 1 and "lacks" in dataset[0].found and "rgb/test" in dataset[0].found


def test_the_check_verb_and_the_dvc_stage_command_refuse_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["check", "--params", str(REPO / "params.yaml"), "results/prcc/deskpro/metrics.json"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("6 missing input(s) for results/prcc/deskpro/metrics.json")
    assert all(key in out for key in PRCC_MISSING)
    assert cli(["check", "--params", str(REPO / "params.yaml"), "synthcc/deskpro"]) == 0
    assert cli(["pipeline", "train", "--dataset", "prcc", "--run", "deskpro", "--params", str(REPO / "params.yaml"),
                "--index", str(tmp_path / "index.csv"), "--out", str(tmp_path / "models")]) == 1
    err = capsys.readouterr().err
    assert "reid pipeline: error: " in err and "methods.deskpro.weights" in err and "Traceback" not in err
    assert not (tmp_path / "models").exists()


def _snakemake_dry_run(work: Path, target: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    exe = [str(bin_dir / "snakemake")] if (bin_dir / "snakemake").exists() else [sys.executable, "-m", "snakemake"]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([*exe, "-s", str(REPO / "Snakefile"), "--directory", str(work), "-n", "--cores", "2",
                           target], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_one_snakemake_dry_run_lists_every_missing_file_then_plans_the_dag(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["prcc"]["root"] = str(prcc_tree(tmp_path / "réal data" / "PRCC"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = _snakemake_dry_run(tmp_path, "results/prcc/deskpro/metrics.json")
    text = first.stdout + first.stderr
    assert first.returncode != 0
    assert "5 missing input(s) for results/prcc/deskpro/metrics.json" in text, text[-3000:]
    for key, source in PRCC_MISSING.items():
        assert key == "datasets.prcc.root" or (f"set: {key}" in text and source in text), key
    # the user places the files (stand-ins here) and chooses random backbones: the same command plans the DAG
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("parsing_lip.onnx", "det_10g.onnx", "GPEN-BFR-512.onnx"):
        (weights / name).write_bytes(b"stand-in")
    shutil.copy(tmp_path / "params.yaml", tmp_path / "params.orig.yaml")
    params["methods"]["deskpro"]["weights"] = "random"
    params["methods"]["deskpro_face_teacher"]["weights"] = "random"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = _snakemake_dry_run(tmp_path, "results/prcc/deskpro/metrics.json")
    assert planned.returncode == 0, (planned.stdout + planned.stderr)[-3000:]
    for rule in ("index", "teach", "train", "teacher_outputs", "evaluate"):
        assert rule in planned.stdout, rule


def test_a_trained_model_loads_without_its_imagenet_file(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    from reid.engine.inference import load_model
    from reid.engine.trainer import MODEL_FORMAT
    from reid.methods.base import build_method
    from reid.serialization import save_file

    m = build_method("baseline", depth=18, weights="random")
    save_file({"format": MODEL_FORMAT, "method": "baseline", "method_params": {**m.params, "weights": "gone.pth"},
               "num_classes": 3, "input_size": [64, 32], "state_dict": m.build_model(3).state_dict(),
               "method_state": {}}, tmp_path / "model.pt")
    method, _, _ = load_model(tmp_path / "model.pt", "cpu")  # gone.pth is never read
    assert method.params["weights"] == "gone.pth"  # the record stays as trained
    assert not [w for w in recwarn if "random initialisation" in str(w.message)]
