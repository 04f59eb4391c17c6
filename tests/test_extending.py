"""docs/extending.md's worked example: a new teacher and a new method, each one module (tests/plugins/) and one
params.yaml section, with nothing else in the project edited, run through the registries, Snakemake and DVC."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from reid.pipeline import params as C

REPO = Path(__file__).resolve().parents[1]
PLUGINS = {"teachers": ("edges", "tests.plugins.toy_edges"), "methods": ("edge_pooled", "tests.plugins.toy_method")}


def add_plugins(p: dict) -> dict:
    """The only edit a new teacher and method need: one params.yaml section each."""
    p["teachers"]["edges"] = {"module": "tests.plugins.toy_edges", "backend": "cv2", "map_size": [16, 8],
                              "batch_size": 16, "workers": 0}
    p["methods"]["edge_pooled"] = {"module": "tests.plugins.toy_method"}
    return p


@pytest.fixture()
def cfg(monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(REPO)  # plugins are imported from the project root, as Snakemake and DVC run there
    p = add_plugins(yaml.safe_load((REPO / "params.yaml").read_text()))
    C.prepare(p)
    return p


def test_the_docs_show_the_modules_the_test_runs() -> None:
    doc = (REPO / "docs" / "extending.md").read_text()
    for _, module in PLUGINS.values():
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        assert source.strip() in doc, f"docs/extending.md does not show {module} as it is"


def test_plugins_reach_every_registry(cfg: dict) -> None:
    from reid.pipeline import dvc_yaml as Y
    from reid.pipeline import layout as D
    from reid.teachers.base import TEACHERS

    assert "edges" in TEACHERS and "edges" in C.teacher_names(cfg)
    assert C.stage_train(cfg, "synthcc", "edge_pooled--uniform")[0]["method_params"]["use_edges"] is False
    assert C.stage_train(cfg, "synthcc", "edge_pooled")[0]["method_module"] == "tests.plugins.toy_method"
    assert D.train_deps(cfg, "synthcc", "edge_pooled")["edges"] == "cache/synthcc/edges.h5"
    assert D.evaluate_deps(cfg, "synthcc", "edge_pooled").keys() == {"model", "index", "root"}  # no teacher
    stages = Y.stages_for(cfg, ["synthcc/edge_pooled"])
    assert "tests/plugins/toy_edges.py" in stages["teach-synthcc-edges"].deps
    assert "tests/plugins/toy_method.py" in stages["train-synthcc-edge_pooled"].deps
    assert stages["teach-synthcc-edges"].params == ["teachers.edges"]
    from reid.report import ablation_rows, paper_numbers

    assert ablation_rows("edge_pooled") == ["uniform", "edges"] and paper_numbers("edge_pooled")["edges"] == {"R1": 2.0}


def test_a_misspelt_plugin_key_is_a_clear_error(cfg: dict) -> None:
    from reid.pipeline.check import ParamsError

    cfg["teachers"]["edges"]["map_sise"] = [8, 4]
    with pytest.raises(ParamsError, match="teachers.edges.map_sise"):
        C.prepare(cfg)
    cfg["teachers"]["edges"].pop("map_sise")
    cfg["teachers"]["edges"]["backend"] = "onnx"
    with pytest.raises(ParamsError, match=r"teachers.edges.backend: 'onnx' is not a backend of teacher edges \(cv2\)"):
        C.prepare(cfg)
    cfg["teachers"]["edges"]["backend"] = "cv2"
    cfg["teachers"]["edges"]["size"] = [8, 4]  # a name DVC's run cache cannot see
    with pytest.raises(ParamsError, match=r"teachers.edges.size: DVC's run cache ignores parameters named 'size'"):
        C.prepare(cfg)
    cfg["teachers"]["edges"].pop("size")
    cfg["methods"]["edge_pooled"]["module"] = "tests.plugins.no_such_module"
    with pytest.raises(ModuleNotFoundError, match=r"methods.edge_pooled.module: cannot import module "
                                                  r"'tests.plugins.no_such_module'"):
        C.prepare(cfg)


@pytest.mark.slow
def test_a_new_teacher_and_method_run_through_snakemake_and_dvc(tmp_path: Path, repo_copier) -> None:
    from test_methods_e2e import TINY_TRAIN
    from test_pipeline_e2e import _init_repo, _ran_stages, _run

    work = repo_copier(tmp_path / "repo", skip=(".dvc/", "dvc.lock"))
    p = add_plugins(yaml.safe_load((work / "params.yaml").read_text()))
    p["dvc"]["runs"] = ["synthcc/edge_pooled"]
    p["ablation"]["ledger"] = False  # dvc.yaml: that run's stages only, no claims assembly
    p["datasets"]["synthcc"]["generate"].update(scale=0.1, test_ids=20)  # tiny world and training: test settings
    p["datasets"]["synthcc"]["train"] = {**TINY_TRAIN, "device": "cpu", "amp": False}
    p["evaluate"] = {"batch_size": 32, "workers": 0, "device": "cpu"}
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    _init_repo(work, "a toy teacher and method")
    py, target = sys.executable, "results/synthcc/edge_pooled/metrics.json"

    # Snakemake: the teacher's wildcard, the cache kind, the method's caches all come from the plugins.
    out = _run(work, py, "-m", "snakemake", "--cores", "2", target, timeout=300)
    assert "recorded 5 DVC stage(s)" in out, out[-3000:]
    metrics = json.loads((work / target).read_text())
    assert metrics["method"] == "edge_pooled" and metrics["cross_clothes"]["num_query"] > 0
    from reid.cache.h5 import CacheReader

    assert CacheReader(work / "cache/synthcc/edges.h5").kinds == {"magnitude": "heatmaps"}

    # DVC agrees nothing is left, then tracks the plugin teacher's own parameter: exactly its cache and the
    # training that reads it rerun.
    assert "Data and pipelines are up to date" in _run(work, py, "-m", "dvc", "status")
    p["teachers"]["edges"]["map_size"] = [8, 4]
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = _run(work, py, "-m", "dvc", "repro", timeout=300)
    assert _ran_stages(out) == {"teach-synthcc-edges", "train-synthcc-edge_pooled",
                                "evaluate-synthcc-edge_pooled"}, out[-3000:]
    assert CacheReader(work / "cache/synthcc/edges.h5").meta.fields["magnitude"].shape == (1, 8, 4)
