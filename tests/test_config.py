"""params.yaml resolver: precedence per stage, the exact keys each stage reads, run names, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reid.pipeline import params as C
from reid.methods.deskpro import ABLATIONS as DESKPRO_ABLATIONS

REPO = Path(__file__).resolve().parents[1]


def _cfg() -> dict:
    """A small in-memory params.yaml with every layer of precedence set to a distinct value."""
    return {
        "alpha": 0.6,
        "dvc": {"runs": ["toy/deskpro"]},
        "datasets": {
            "toy": {
                "loader": "synthcc", "root": "data/toy", "generate": {"world": "synthcc", "seed": 2, "scale": 0.5},
                "teachers": {"parsing": {"out_size": [32, 16], "backend": "oracle"}},
                "train": {"epochs": 3, "lr": 0.3},
                "train_presets": {"deskpro": {"lr": 0.4, "batch_p": 7}},
                "presets": {"deskpro": {"tau": 5.0}},
            },
            "real": {"loader": "prcc", "root": "/data/prcc"},
            "testonly": {"loader": "occluded_reid", "root": "/data/occ", "train_on": "real"},
        },
        "teachers": {"parsing": {"backend": "onnx", "model": "w.onnx", "batch_size": 4, "out_size": [256, 128],
                                 "label_set": "lip"}},
        "train": {"epochs": 60, "lr": 0.1, "batch_p": 16, "batch_k": 4, "seed": 0},
        "train_presets": {"deskpro": {"epochs": 140, "lr": 0.2}},
        "methods": {"deskpro": {"tau": 1.0, "alpha": 0.9, "use_csa": True}, "baseline": {"depth": 50}},
        "evaluate": {"batch_size": 32},
    }


# --- run names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("deskpro", C.Run("deskpro", None, None)),
        ("deskpro--model3_csa_att", C.Run("deskpro", "model3_csa_att", None)),
        ("deskpro--model3_csa_att--s2", C.Run("deskpro", "model3_csa_att", 2)),
        ("deskpro--s2", C.Run("deskpro", None, 2)),  # a seed alone, not an ablation named 's2'
        ("pgfl_kd--sab_im--s10", C.Run("pgfl_kd", "sab_im", 10)),
        ("deskpro--pretrained", C.Run("deskpro", None, None, True)),  # the init token, not an ablation
        ("deskpro--model3--pretrained--s2", C.Run("deskpro", "model3", 2, True)),
        ("deskpro--pretrained_x--s2", C.Run("deskpro", "pretrained_x", 2)),  # an ablation that starts alike
    ],
)
def test_parse_run(name: str, expected: C.Run) -> None:
    assert C.parse_run(name) == expected


@pytest.mark.parametrize("name", ["DeskPro", "deskpro/", "deskpro--", "deskpro--model 3", "--s2", "deskpro s2", ""])
def test_bad_run_names(name: str) -> None:
    with pytest.raises(C.ConfigError,
                       match=r"bad run name .*expected <method>\[--<ablation>\]\[--pretrained\]\[--s<seed>\]"):
        C.parse_run(name)


def test_split_target() -> None:
    assert C.split_target("synthcc/deskpro--s1") == ("synthcc", "deskpro--s1")
    for bad in ("synthcc", "/deskpro", "synthcc/"):
        with pytest.raises(C.ConfigError, match=rf"bad target '{bad}'"):
            C.split_target(bad)


# --- train stage -------------------------------------------------------------------------------------------


def test_train_precedence_and_keys() -> None:
    kw, keys = C.stage_train(_cfg(), "toy", "deskpro")
    # train (lr .1, epochs 60) < train_presets (lr .2, epochs 140) < ds.train (lr .3, epochs 3)
    # < ds.train_presets (lr .4, batch_p 7); seed from train.
    assert kw["train_cfg"] == {"epochs": 3, "lr": 0.4, "batch_p": 7, "batch_k": 4, "seed": 0}
    # methods.deskpro (tau 1, alpha .9) < top-level alpha (.6) < ds presets (tau 5)
    assert kw["method"] == "deskpro"
    assert kw["method_params"] == {"tau": 5.0, "alpha": 0.6, "use_csa": True}
    assert keys == ["train", "train_presets.deskpro", "datasets.toy.train", "datasets.toy.train_presets.deskpro",
                    "methods.deskpro", "alpha", "datasets.toy.presets.deskpro"]


def test_seed_and_ablation_come_last() -> None:
    kw, keys = C.stage_train(_cfg(), "toy", "deskpro--model1_baseline--s4")
    assert kw["train_cfg"]["seed"] == 4
    row = DESKPRO_ABLATIONS["model1_baseline"]
    assert kw["method_params"] == {"tau": 5.0, "alpha": 0.6, **row}
    assert kw["method_params"]["use_csa"] is False  # the ablation row beats methods.deskpro
    # seeds and ablation rows are in the run name / code, not params.yaml keys
    assert keys == C.stage_train(_cfg(), "toy", "deskpro")[1]


def test_dataset_preset_beats_the_top_level_knob() -> None:
    cfg = _cfg()
    cfg["datasets"]["toy"]["presets"]["deskpro"]["alpha"] = 0.7  # e.g. Celeb-reID
    kw, keys = C.stage_train(cfg, "toy", "deskpro")
    assert kw["method_params"]["alpha"] == 0.7
    assert "alpha" in keys


def test_knob_only_reaches_its_own_method() -> None:
    kw, keys = C.stage_train(_cfg(), "real", "baseline")
    assert kw == {"method": "baseline", "method_params": {"depth": 50},
                  "train_cfg": {"epochs": 60, "lr": 0.1, "batch_p": 16, "batch_k": 4, "seed": 0}}
    assert keys == ["train", "methods.baseline"]  # no presets exist for it: none listed, and no `alpha`


def test_train_errors_name_the_key() -> None:
    with pytest.raises(C.ConfigError, match=r"method 'sureid' is not configured under `methods:`"):
        C.stage_train(_cfg(), "toy", "sureid")
    with pytest.raises(C.ConfigError, match=r"dataset 'nope' is not configured under `datasets:`.*known: real, "
                       r"testonly, toy"):
        C.stage_train(_cfg(), "nope", "deskpro")
    with pytest.raises(C.ConfigError, match=r"method 'deskpro' has no ablation 'model9'; known: \[.*'model1_baseline'"):
        C.stage_train(_cfg(), "toy", "deskpro--model9")
    with pytest.raises(C.ConfigError, match=r"method 'baseline' has no ablation 'x'"):
        C.stage_train(_cfg(), "toy", "baseline--x")
    cfg = _cfg()
    cfg["train_presets"]["deskpro"] = [1, 2]
    with pytest.raises(C.ConfigError, match=r"params.yaml key train_presets.deskpro must be a mapping"):
        C.stage_train(cfg, "toy", "deskpro")


# --- other stages ------------------------------------------------------------------------------------------


def test_synth_and_index_stages() -> None:
    """The synth stage's resolved params carry the renderer's version, so a renderer change reruns the world."""
    from reid.data.synthetic import SCHEMA_VERSION

    assert C.stage_synth(_cfg(), "toy") == ({"world": "synthcc", "seed": 2, "scale": 0.5,
                                             "renderer_version": SCHEMA_VERSION}, ["datasets.toy.generate"])
    assert C.stage_index(_cfg(), "toy") == ({"dataset": "synthcc", "root": "data/toy"},
                                            ["datasets.toy.loader", "datasets.toy.root"])
    with pytest.raises(C.ConfigError, match=r"datasets.real has no `generate:` section"):
        C.stage_synth(_cfg(), "real")
    cfg = _cfg()
    cfg["datasets"]["toy"]["root"] = "elsewhere"
    with pytest.raises(C.ConfigError, match=r"datasets.toy.root must be data/toy"):
        C.stage_index(cfg, "toy")


def test_teacher_stage_merges_dataset_overrides() -> None:
    kw, keys = C.stage_teacher(_cfg(), "toy", "parsing")
    # teachers.parsing < datasets.toy.teachers.parsing; the oracle reads ground truth, so no weights file.
    assert kw == {"teacher": "parsing", "backend": "oracle", "model": None, "batch_size": 4,
                  "params": {"out_size": [32, 16], "label_set": "lip"}}
    assert keys == ["teachers.parsing", "datasets.toy.teachers.parsing"]
    kw, keys = C.stage_teacher(_cfg(), "real", "parsing")
    assert kw["backend"] == "onnx" and kw["params"]["out_size"] == [256, 128]
    assert keys == ["teachers.parsing"]
    with pytest.raises(C.ConfigError, match=r"teacher 'faces' is not configured under `teachers:`"):
        C.stage_teacher(_cfg(), "toy", "faces")
    with pytest.raises(C.ConfigError, match=r"dataset 'nope' is not configured under `datasets:`"):
        C.stage_teacher(_cfg(), "nope", "parsing")


def test_evaluate_stage_and_train_on() -> None:
    assert C.stage_evaluate(_cfg(), "toy", "deskpro") == ({"dataset": "synthcc", "batch_size": 32}, ["evaluate"])
    cfg = _cfg()
    del cfg["evaluate"]
    assert C.stage_evaluate(cfg, "testonly", "baseline") == ({"dataset": "occluded_reid"}, [])
    assert C.model_dataset(_cfg(), "testonly") == "real"
    assert C.model_dataset(_cfg(), "toy") == "toy"


def test_method_caches_follow_the_method(monkeypatch) -> None:
    cfg = _cfg()
    cfg["methods"]["deskpro"] = {}
    assert C.method_caches(cfg, "toy", "baseline") == []
    train = C.method_caches(cfg, "toy", "deskpro", train=True)
    test = C.method_caches(cfg, "toy", "deskpro", train=False)
    assert "parsing" in train and "face_teacher" in train  # DeSKPro reads parsing and the face teacher's logits
    assert "parsing" not in test  # no teacher at test time except the detected faces
    assert set(test) <= {"faces", "restored_faces"}


def test_load_params_missing_file(tmp_path) -> None:
    with pytest.raises(C.ConfigError, match=r"parameter file not found: .*nope.yaml"):
        C.load_params(tmp_path / "nope.yaml")


def test_repo_params_resolve_for_every_dvc_run() -> None:
    cfg = C.load_params("params.yaml")
    for target in cfg["dvc"]["runs"]:
        ds, run = C.split_target(target)
        kw, keys = C.stage_train(cfg, C.model_dataset(cfg, ds), run)
        assert keys[0] == "train" and f"methods.{C.parse_run(run).method}" in keys


def test_stage_threads_is_one_formula_for_both_orchestrators() -> None:
    from reid.pipeline.stage import pin_threads

    assert C.stage_threads("train", {"train_cfg": {"workers": 3}}) == 3
    assert C.stage_threads("train", {"train_cfg": {"workers": 0}}) == 1
    assert C.stage_threads("teach", {"workers": 4}) == 4 and C.stage_threads("evaluate", {}) == 2
    before = torch.get_num_threads()
    try:
        assert pin_threads("train", {"train_cfg": {"workers": 1}}) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    rules = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'C.stage_threads("train"' in rules and 'C.stage_threads("teach"' in rules


def test_params_check_names_every_bad_key_and_type() -> None:
    from reid.pipeline.check import ParamsError, check_params

    cfg = C.load_params(REPO / "params.yaml")
    check_params(cfg)  # the shipped file is clean
    bad = {**cfg, "datasets": {**cfg["datasets"], "synthocc": {**cfg["datasets"]["synthocc"],
                                                               "train": {"epochs": "two", "bacth_p": 4}}},
           "methods": {**cfg["methods"], "pgfl_kd": {"heatmap_temprature": 0.1, "lambda_cl": [1]}},
           "train_presets": {"isp": {"input_size": [256, "x"]}}}
    with pytest.raises(ParamsError) as info:
        check_params(bad)
    text = str(info.value)
    assert "datasets.synthocc.train.epochs: expected int, got 'two'" in text
    assert "datasets.synthocc.train.bacth_p: unknown parameter of the trainer (TrainConfig)" in text
    assert "methods.pgfl_kd.heatmap_temprature: unknown parameter of method pgfl_kd (did you mean " \
           "heatmap_temperature" in text
    assert "methods.pgfl_kd.lambda_cl: expected a number, got [1]" in text
    assert "train_presets.isp.input_size[1]: expected int, got 'x'" in text
    bad_teacher = {"teachers": {"faces": {"det_thresh": "high", "crop_sise": 112}},
                   "datasets": {"synthcc": {"teachers": {"keypoints": {"flip_test": "yes"}}}}}
    with pytest.raises(ParamsError) as info:
        check_params(bad_teacher)
    text = str(info.value)
    assert "teachers.faces.det_thresh: expected a number, got 'high'" in text
    assert "teachers.faces.crop_sise: unknown parameter of teacher faces (did you mean crop_size" in text
    assert "datasets.synthcc.teachers.keypoints.flip_test: expected true or false, got 'yes'" in text
    with pytest.raises(ParamsError, match=r"datasets.synthcc.presets.nosuch: no method named 'nosuch'"):
        check_params({"datasets": {"synthcc": {"presets": {"nosuch": {}}}}})


@pytest.mark.slow
def test_snakemake_dry_run_and_the_dvc_stage_command_refuse_a_bad_key(tmp_path: Path, repo_copier) -> None:
    import subprocess
    import sys

    import yaml

    work = repo_copier(tmp_path / "repo")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["datasets"]["synthocc"]["train"]["epochs"] = "two"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    smk = subprocess.run([str(bin_dir / "snakemake"), "-n", "--cores", "1", "results/synthocc/baseline/metrics.json"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert smk.returncode != 0
    assert "datasets.synthocc.train.epochs: expected int, got 'two'" in smk.stdout + smk.stderr
    stage = subprocess.run([sys.executable, "-m", "reid", "pipeline", "synth", "--dataset", "synthocc", "--params",
                            "params.yaml", "--out", "data/synthocc"], cwd=work, capture_output=True, text=True,
                           timeout=300)
    assert stage.returncode != 0 and "datasets.synthocc.train.epochs: expected int" in stage.stderr
    assert not (work / "data" / "synthocc").exists()  # refused before any work


# params.yaml values that deliberately differ from the constructor default (the paper's setting vs a test-sized one)
PARAMS_DIFFERING_FROM_CODE = {("deskpro", "face_size")}


def test_params_yaml_method_values_equal_the_code_defaults() -> None:
    """One place for each default: a value in params.yaml's `methods` that silently differs from the code (as
    `heatmap_temperature: 1.0` once did after the code's default became 0.1) overrides the fix for every run."""
    import inspect

    import reid.methods  # noqa: F401
    from reid.methods.base import METHODS

    cfg = C.load_params(REPO / "params.yaml")
    drift = []
    for method, section in cfg["methods"].items():
        sig = inspect.signature(METHODS.get(method).__init__)
        for key, value in section.items():
            default = sig.parameters[key].default
            default = list(default) if isinstance(default, tuple) else default
            if value != default and (method, key) not in PARAMS_DIFFERING_FROM_CODE:
                drift.append(f"methods.{method}.{key}: params.yaml {value!r}, code {default!r}")
    assert not drift, drift


@pytest.mark.parametrize("evaluate_params, expected", [({}, True), ({"cpu_amp": False}, False)])
def test_the_evaluate_stage_embeds_in_the_clis_precision_when_params_omit_it(
        monkeypatch, evaluate_params: dict, expected: bool) -> None:
    """params.yaml without `evaluate.cpu_amp` evaluates as `reid evaluate` does (DEFAULT_CPU_AMP), so the stage and
    the CLI print the same numbers; an explicit false is kept."""
    import argparse

    from reid.engine import inference
    from reid.pipeline import stage

    assert inference.DEFAULT_CPU_AMP is True
    seen: dict = {}
    monkeypatch.setattr(inference, "evaluate_model", lambda *a, **kw: seen.update(kw) or {})
    monkeypatch.setattr("reid.engine.commands.format_metrics", lambda m: "")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # pin_threads sets it: restored after the test
    args = argparse.Namespace(stage="evaluate", dataset="synthocc", run="baseline--s0", params=None, cache=None,
                              resolved=json.dumps({"dataset": "synthocc", **evaluate_params}), root="data/x",
                              index="i.csv", model="m.pt", out="o.json")
    assert stage.main(args) == 0
    assert seen["cpu_amp"] is expected
