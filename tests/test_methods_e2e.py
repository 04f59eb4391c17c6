"""Every method's DAG target, end to end through Snakemake, on tiny worlds and on real-layout trees.

One module-scoped workspace (a tmp folder with its own params.yaml, a copy of the repository's with tiny sizes)
runs the real Snakefile twice: first the synthetic worlds (`synth` rule), then every target below in one
`snakemake --cores 2` call. The real-layout trees are made by the test from the rendered worlds WITHOUT their
ground truth: a PRCC tree (rgb/{train,test/{A,B,C}}) whose teachers are the stand-in ONNX models of
reid/testing/ (parsing, faces, restored faces: the real ONNX teacher code paths), and an Occluded-Duke tree
whose keypoints come from the stand-in HRNet ONNX. The stand-ins' outputs are meaningless; what is checked is that
the DAG and the code paths run, that metrics.json holds the protocol's settings with finite numbers, that each
exported model.pt evaluates with only its method's `test_caches`, and that a second run has nothing to do.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Trainer settings small enough for 2 CPU cores: one epoch of 4 ids x 2 images at 64x32.
TINY_TRAIN = {"epochs": 1, "batch_p": 4, "batch_k": 2, "input_size": [64, 32], "warmup_epochs": 0,
              "milestones": [1], "workers": 0, "pad": 2}
TINY_TEACHER = {"workers": 0, "batch_size": 8}

SYNTH_RUNS = [
    "synthocc/baseline",
    "synthocc/pgfl_kd",
    "synthocc/isp",
    "synthcc/isp",
    "synthocc/sureid",
    "synthcc/deskpro",
    # one ablation row per method (a seed suffix too), each reachable by params only
    "synthocc/pgfl_kd--baseline--s1",
    "synthocc/isp--k4--s1",
    "synthocc/sureid--t4_vanilla--s1",
    "synthcc/deskpro--model4_student--s1",
]
REAL_RUNS = ["prcc/deskpro", "occluded_duke/pgfl_kd", "occluded_duke/isp", "occluded_duke/sureid"]
ALL_RUNS = SYNTH_RUNS + REAL_RUNS


# --- the workspace --------------------------------------------------------------------------------------------


def tiny_synthetic(p: dict[str, Any]) -> None:
    """Shrink the synthetic worlds' sections of a copy of params.yaml in place (scale 0.1, 1 epoch, 64x32)."""
    for name in ("synthcc", "synthocc"):
        ds = p["datasets"][name]
        ds["generate"].update(scale=0.1, test_ids=20)  # a tiny world: 2 test identities
        ds["train"] = dict(TINY_TRAIN)
        for teacher in ds["teachers"].values():
            teacher.update(TINY_TEACHER)
        ds["teachers"]["parsing"]["out_size"] = [64, 32]
        ds["teachers"]["faces"]["crop_size"] = 32
        ds["teachers"]["isp_labels"].update(input_size=[64, 32], backbone="hrnet_tiny")
        ds.setdefault("presets", {}).setdefault("deskpro", {})["face_size"] = 32
        ds["presets"]["isp"] = {"backbone": "hrnet_tiny"}
        ds.setdefault("train_presets", {})["deskpro_face_teacher"] = {"input_size": [32, 32], "pad": 2}
        for vit in ("sureid", "sureid_teacher"):  # the ViTs' img_size must equal the trainer's input_size
            ds["presets"].setdefault(vit, {})["img_size"] = [64, 32]


def real_datasets(p: dict[str, Any], prcc_root: Path, duke_root: Path, onnx: dict[str, Path],
                  occluders: Path) -> None:
    """Point datasets.prcc / datasets.occluded_duke at the test's trees, with stand-in ONNX teachers."""
    p["datasets"]["prcc"] = {
        "loader": "prcc", "root": str(prcc_root),
        "teachers": {
            "parsing": {"backend": "onnx", "model": str(onnx["parsing"]), "out_size": [64, 32], **TINY_TEACHER},
            "faces": {"backend": "onnx", "model": str(onnx["faces"]), "det_size": [256, 256], "crop_size": 32,
                      **TINY_TEACHER},
            "restored_faces": {"backend": "onnx", "model": str(onnx["restored_faces"]), **TINY_TEACHER},
        },
        "train": dict(TINY_TRAIN),
        # a real dataset trains from random weights only by choice (`random`): the pre-flight refuses null
        "presets": {"deskpro": {"face_size": 32, "width": "x0_25", "weights": "random"},
                    "deskpro_face_teacher": {"width": "x0_25", "weights": "random"}},
        "train_presets": {"deskpro_face_teacher": {"input_size": [32, 32], "pad": 2}},
    }
    adam = {"optimizer": "adam", "lr": 3.5e-4, "scheduler": "multistep"}
    p["datasets"]["occluded_duke"] = {
        "loader": "occluded_duke", "root": str(duke_root),
        "teachers": {
            "keypoints": {"backend": "onnx", "model": str(onnx["keypoints"]), **TINY_TEACHER},
            "isp_labels": {"backbone": "hrnet_tiny", "input_size": [64, 32], "model": "random", **TINY_TEACHER},
        },
        "train": dict(TINY_TRAIN),
        "presets": {"pgfl_kd": {"backbone": "resnet18", "weights": "random"},
                    "isp": {"backbone": "hrnet_tiny", "weights": "random"},
                    "sureid_teacher": {"arch": "deit_small", "img_size": [64, 32], "deit_small_weights": "random"},
                    "sureid": {"img_size": [64, 32], "teacher_dim": 384, "occluder_dir": str(occluders),
                               "deit_small_weights": "random"}},
        "train_presets": {"sureid": adam, "sureid_teacher": adam},
    }


def export_standins(folder: Path) -> dict[str, Path]:
    """The four stand-in ONNX teachers with the real signatures (reid/testing/)."""
    from reid.testing.faces_pose import export_pose, export_scrfd
    from reid.testing.parsing_gpen import export_brightness_schp, export_gpen

    folder.mkdir(parents=True, exist_ok=True)
    return {
        "parsing": export_brightness_schp(folder / "parsing_lip.onnx", size=64),
        "faces": export_scrfd(folder / "det_10g.onnx"),
        "restored_faces": export_gpen(folder / "GPEN-BFR-64.onnx", size=64),
        "keypoints": export_pose(folder / "hrnet_w32_256x192.onnx"),
    }


def copy_with_face(src: Path, dst: Path) -> None:
    """Copy an image, painting a white block where the head is: the stand-in SCRFD fires on white cells."""
    img = cv2.imread(str(src))
    h, w = img.shape[:2]
    s = max(6, h // 5)
    y0, x0 = max(1, h // 25), (w - s) // 2
    img[y0 : y0 + s, x0 : x0 + s] = 255
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img)


def make_prcc_tree(world: Path, out: Path) -> Path:
    """PRCC layout rgb/{train/<pid>, test/{A,B,C}/<pid>} from a synthcc world, without its ground truth."""
    for src in sorted((world / "rgb").glob("t*/**/*.jpg")):  # train and test only (PRCC's val is never indexed)
        copy_with_face(src, out / src.relative_to(world))
    assert not (out / "groundtruth").exists()
    return out


def make_duke_tree(world: Path, out: Path) -> Path:
    """Occluded-Duke layout {bounding_box_train, query, bounding_box_test} from a synthocc world, no ground truth."""
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        shutil.copytree(world / sub, out / sub)
    return out


def snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in `work` (its params.yaml), with this interpreter's environment."""
    bin_dir = Path(sys.executable).parent
    exe = [str(bin_dir / "snakemake")] if (bin_dir / "snakemake").exists() else [sys.executable, "-m", "snakemake"]
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    # one thread per job, two jobs at a time: two-thread jobs crawl when the 2 cores are shared with other work
    single = ["--set-threads", "index=1", "evaluate=1", "teacher_outputs=1"]
    proc = subprocess.run([*exe, "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2", *args,
                           *single],
                          cwd=work, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-4000:]}\n{failed_logs(work)}")
    return proc


def failed_logs(work: Path) -> str:
    """The tails of the job logs that hold a traceback, for the failure message."""
    parts = []
    for log in sorted((work / "logs").rglob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text or "Error" in text:
            parts.append(f"--- {log.relative_to(work)}\n{text[-2500:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where every target of ALL_RUNS has been built by one Snakemake run."""
    work = tmp_path_factory.mktemp("e2e")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny_synthetic(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake(work, "data/synthcc", "data/synthocc")  # the synth rule; the real-layout trees are made from these

    # real-layout roots with a space and non-ASCII characters: every rule must quote the paths it passes
    real = work / "réal data"
    prcc = make_prcc_tree(work / "data/synthcc", real / "PRCC")
    duke = make_duke_tree(work / "data/synthocc", real / "Occluded_Duke")
    occluders = Path(shutil.copytree(work / "data/synthocc/occluders", real / "occluders"))
    real_datasets(params, prcc, duke, export_standins(work / "weights"), occluders)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    snakemake(work, *[f"results/{run}/metrics.json" for run in ALL_RUNS])
    return work


# --- the checks -----------------------------------------------------------------------------------------------


def _loader(work: Path, dataset: str) -> str:
    return yaml.safe_load((work / "params.yaml").read_text())["datasets"][dataset]["loader"]


def assert_protocol_metrics(metrics: dict[str, Any], loader: str) -> None:
    """metrics.json names the dataset's protocol and holds each of its settings with finite percentages."""
    from reid.data.datasets import dataset_info
    from reid.eval.protocols import PROTOCOLS

    protocol = dataset_info(loader).protocol
    assert metrics["protocol"] == protocol
    for setting in PROTOCOLS.get(protocol).settings:
        scores = metrics[setting.name]
        for key in ("R1", "R5", "mAP", "mINP"):
            assert math.isfinite(scores[key]) and 0.0 <= scores[key] <= 100.0, (setting.name, key, scores[key])
        assert scores["num_query"] > 0


@pytest.mark.parametrize("target", ALL_RUNS)
def test_target_metrics_and_student_only_evaluation(workspace: Path, target: str) -> None:
    """The DAG's metrics.json is sound, and model.pt evaluates again with nothing but its test_caches."""
    from reid.pipeline import layout as D
    from reid.engine.inference import evaluate_model, load_model

    dataset, run = target.split("/")
    metrics = json.loads((workspace / D.metrics_path(dataset, run)).read_text())
    loader = _loader(workspace, dataset)
    assert_protocol_metrics(metrics, loader)

    model = workspace / D.model_path(dataset, run)
    method, _, _ = load_model(model, "cpu")  # only to read what the method declares
    allowed = set(method.test_caches)
    for extra in (getattr(method, "image_field", None), getattr(method, "require_field", None)):
        if extra:
            allowed.add(extra.split(".", 1)[0])
    assert sorted(metrics["test_caches"]) == sorted(method.test_caches)
    cfg = yaml.safe_load((workspace / "params.yaml").read_text())
    dag_caches = set(D.evaluate_deps(cfg, dataset, run)) - {"index", "root", "model"}
    assert dag_caches == allowed, f"the evaluate rule of {target} reads {dag_caches}, the method needs {allowed}"
    caches = {name: str(workspace / D.cache_path(dataset, name)) for name in sorted(allowed)}
    root = cfg["datasets"][dataset]["root"]
    again = evaluate_model(model, workspace / D.index_path(dataset), workspace / root, loader,
                           workspace / "recheck" / dataset / run / "metrics.json", caches, batch_size=16, workers=0)
    # Same query/gallery subsets and a sound protocol. The scores are not compared: after one epoch from random
    # weights the distances can be near-ties (ISP's tiny HRNet gives ~1e-8 spreads), so thread count and batch
    # size decide the ranking.
    assert_protocol_metrics(again, loader)
    for key in ("num_query_images", "num_gallery_images", "test_caches"):
        assert again[key] == metrics[key], key


def test_real_layout_trees_ran_the_onnx_teachers(workspace: Path) -> None:
    """The real-dataset caches came from the stand-in ONNX files (onnx backend, their hashes), not an oracle."""
    import h5py

    from reid.teachers.base import file_sha256

    for dataset, teacher, weights in (("prcc", "parsing", "parsing_lip.onnx"), ("prcc", "faces", "det_10g.onnx"),
                                      ("prcc", "restored_faces", "GPEN-BFR-64.onnx"),
                                      ("occluded_duke", "keypoints", "hrnet_w32_256x192.onnx")):
        with h5py.File(workspace / "cache" / dataset / f"{teacher}.h5", "r") as fh:
            attrs = dict(fh.attrs)
        assert attrs["backend"] == "onnx", (dataset, teacher, attrs)
        assert attrs["model_sha256"] == file_sha256(workspace / "weights" / weights), (dataset, teacher, attrs)
    with h5py.File(workspace / "cache" / "prcc" / "faces.h5", "r") as fh:
        assert np.asarray(fh["has_face"]).any(), "the stand-in detector found no face on the painted heads"
    assert not (workspace / "réal data" / "PRCC" / "groundtruth").exists()


def test_second_run_has_nothing_to_do(workspace: Path) -> None:
    """A dry run and then a real run of the same targets both find everything up to date."""
    targets = [f"results/{run}/metrics.json" for run in ALL_RUNS]
    dry = snakemake(workspace, "-n", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    again = snakemake(workspace, *targets)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


@pytest.mark.parametrize("target", ["synthcc/deskpro", "occluded_duke/pgfl_kd"])
def test_the_evaluate_verb_prints_the_pipelines_numbers(workspace: Path, target: str) -> None:
    """One number for one model: `python -m reid evaluate` with its defaults computes exactly the metrics.json of the
    pipeline's evaluate stage (same precision, threads and preprocessing)."""
    from reid.pipeline import layout as D

    dataset, run = target.split("/")
    cfg = yaml.safe_load((workspace / "params.yaml").read_text())
    deps = D.evaluate_deps(cfg, dataset, run)
    caches = [f"--cache={k}={workspace / v}" for k, v in deps.items() if k not in D.NON_CACHE_DEPS]
    out = workspace / "cli" / dataset / run / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "reid", "evaluate", "--model", str(workspace / deps["model"]),
                           "--index", str(workspace / deps["index"]), "--root",
                           str(workspace / cfg["datasets"][dataset]["root"]), "--dataset", _loader(workspace, dataset),
                           "--out", str(out), *caches], cwd=workspace, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli, dag = json.loads(out.read_text()), json.loads((workspace / D.metrics_path(dataset, run)).read_text())
    settings = [k for k, v in dag.items() if isinstance(v, dict) and "mAP" in v]
    assert settings and all(cli[k] == dag[k] for k in settings), {k: (cli[k], dag[k]) for k in settings}
    assert cli["embed_dtype"] == dag["embed_dtype"]


def test_the_snakemake_report_carries_each_runs_metrics_and_pictures(workspace: Path) -> None:
    """`snakemake --report` lists every run's metrics.json, CMC curve and rank list with its caption."""
    import zipfile

    targets = [f"results/{run}/metrics.json" for run in ("synthcc/deskpro", "prcc/deskpro", "occluded_duke/isp")]
    snakemake(workspace, "--report", "report.zip", *targets)
    with zipfile.ZipFile(workspace / "report.zip") as archive:
        names = archive.namelist()
        text = "\n".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for picture in ("metrics.json", "cmc.png", "ranks.png"):  # stored under hashed folders, one per run
        assert sum(n.endswith(f"/{picture}") for n in names) == len(targets), (picture, names)
    for target in targets:
        assert target.rsplit("/", 1)[0] in text, target  # each run is listed under its dataset
    assert "first correct match is at rank" in text and "rank list" in text  # captions and labels


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_deskpro_embeds_new_images_with_the_detector_it_trained_with(workspace: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The deployed DeSKPro needs face crops: on new images `embed` runs the detector model.pt / model.json recorded
    (the training caches' file, sha256-checked) and gives the embeddings of the cached path, with model.pt and ONNX."""
    import torch

    from reid.cache.h5 import CacheReader
    from reid.cli import main as cli
    from reid.pipeline import layout as D

    model = workspace / D.model_path("prcc", "deskpro")
    record = torch.load(model, map_location="cpu", weights_only=True)["test_teachers"]
    assert record["faces"]["backend"] == "onnx" and record["faces"]["params"]["crop_size"] == 32
    cfg = yaml.safe_load((workspace / "params.yaml").read_text())
    root = Path(cfg["datasets"]["prcc"]["root"])
    detector = workspace / "weights" / "det_10g.onnx"
    assert cli(["export", "--model", str(model), "--out", str(tmp_path / "onnx")]) == 0
    assert json.loads((tmp_path / "onnx" / "model.json").read_text())["test_teachers"] == record
    assert cli(["embed", "--model", str(model), "--index", str(workspace / D.index_path("prcc")), "--root", str(root),
                "--cache", f"faces={workspace / D.cache_path('prcc', 'faces')}", "--out", str(tmp_path / "cached.h5"),
                "--workers", "0"]) == 0
    # the ONNX graph computes in float32: its reference is model.pt embedded in float32 (on a CPU with native bf16
    # `embed` defaults to bf16, as `evaluate` does, and model.pt on new images is compared with that)
    assert cli(["embed", "--model", str(model), "--index", str(workspace / D.index_path("prcc")), "--root", str(root),
                "--cache", f"faces={workspace / D.cache_path('prcc', 'faces')}", "--out", str(tmp_path / "cached32.h5"),
                "--workers", "0", "--no-cpu-amp"]) == 0
    references = {"pt": CacheReader(tmp_path / "cached.h5"), "onnx": CacheReader(tmp_path / "cached32.h5")}
    by_path = {p: i for i, p in enumerate(references["pt"].paths)}
    folder = root / "rgb" / "test" / "C"
    for tag, path in (("pt", model), ("onnx", tmp_path / "onnx" / "model.onnx")):
        cached = references[tag]
        out = tmp_path / f"new.{tag}.h5"
        assert cli(["embed", "--model", str(path), "--images", str(folder), "--teacher-model", f"faces={detector}",
                    "--out", str(out), "--workers", "0"]) == 0
        new = CacheReader(out)
        rows = [by_path[f"rgb/test/C/{p}"] for p in new.paths]
        assert new.read("has_face", range(len(new))).tolist() == cached.read("has_face", rows).tolist()
        assert new.read("has_face", range(len(new))).any(), "the stand-in detector found no face"
        for field in ("body", "face"):
            np.testing.assert_allclose(new.read(field, range(len(new))), cached.read(field, rows), atol=1e-4,
                                       err_msg=f"{tag} {field}")
    capsys.readouterr()
    assert cli(["embed", "--model", str(model), "--images", str(folder), "--teacher-model",
                f"faces={workspace / 'weights' / 'GPEN-BFR-64.onnx'}", "--out", str(tmp_path / "x.h5")]) == 1
    assert "is not the faces model the training caches came from" in capsys.readouterr().err
