"""Evaluation-only ablation rows (EVAL_ABLATIONS): a trained row's model evaluated with test-time overrides.

PGFL-KD's Table 8 (`test_P` ... `test_E`: the `full` model tested on another feature) and ISP's "w/o ARM" (`wo_arm`:
the default `k7` model matched by concatenation) change nothing in training, so the DAG must reuse the trained row's
model.pt (same seed) instead of training the same network again, and `reid evaluate --set` must apply the
override and refuse one that changes the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reid.pipeline import params as C
from reid.pipeline import dvc_yaml as Y
from reid.pipeline import layout as D
from reid import report
from reid.engine.commands import parse_overrides
from reid.engine.inference import load_model
from reid.engine.trainer import MODEL_FORMAT
from reid.methods.pgfl_kd import ABLATIONS, PGFLKD
from reid.serialization import save_file


def _cfg() -> dict:
    return {
        "datasets": {"toy": {"loader": "synthocc", "root": "data/toy", "generate": {"world": "synthocc"}}},
        "methods": {"pgfl_kd": {"backbone": "resnet18"}, "isp": {}},
        "teachers": {"keypoints": {"backend": "oracle"}},
        "train": {"epochs": 1},
    }


def test_eval_row_reuses_the_trained_rows_model_of_the_same_seed() -> None:
    assert C.model_run("pgfl_kd--test_P--s2") == "pgfl_kd--full--s2"
    assert C.model_run("pgfl_kd--test_E") == "pgfl_kd--full"
    assert C.model_run("isp--wo_arm--s1") == "isp--k7--s1"
    assert C.model_run("isp--learned--s1") == "isp--k7--s1"  # Table 5 "ISP" is the default configuration = k7
    assert C.model_run("pgfl_kd--full--s2") == "pgfl_kd--full--s2"  # a trained row is its own model
    assert C.model_run("baseline") == "baseline"


def test_eval_row_params_are_the_trained_row_plus_the_override() -> None:
    assert C.ablation_overrides("pgfl_kd", "test_V") == {**ABLATIONS["full"], "test_feature": "V", "test_neck": False}
    assert C.eval_overrides("pgfl_kd--test_V--s0") == {"test_feature": "V", "test_neck": False}
    assert C.eval_overrides("pgfl_kd--full--s0") == {}
    resolved, _ = C.stage_train(_cfg(), "toy", "pgfl_kd--test_P--s0")
    assert resolved["method_params"]["test_feature"] == "P"
    # only evaluation-only rows carry method_overrides, so the other runs' resolved parameters are unchanged
    assert C.stage_evaluate(_cfg(), "toy", "pgfl_kd--test_P--s0")[0]["method_overrides"] == {
        "test_feature": "P", "test_neck": False}
    assert "method_overrides" not in C.stage_evaluate(_cfg(), "toy", "pgfl_kd--full--s0")[0]


def test_dag_evaluates_the_trained_model_with_the_eval_rows_test_caches() -> None:
    deps = D.evaluate_deps(_cfg(), "toy", "pgfl_kd--test_P--s1")
    assert deps["model"] == "models/toy/pgfl_kd--full--s1/model.pt"
    assert deps["keypoints"] == "cache/toy/keypoints.h5"  # f_P needs the heatmaps at test time; f_G does not
    assert "keypoints" not in D.evaluate_deps(_cfg(), "toy", "pgfl_kd--full--s1")
    stages = Y.stages_for(_cfg(), ["toy/pgfl_kd--test_P--s1"])
    assert "train-toy-pgfl_kd--full--s1" in stages
    assert not any(name.startswith("train-toy-pgfl_kd--test_P") for name in stages)


def test_eval_rows_are_assembled_after_the_trained_rows() -> None:
    rows = report.ablation_rows("pgfl_kd")
    trained_in_paper = [r for r in ABLATIONS if r != "full_literal_cl"]
    assert rows[: len(trained_in_paper)] == trained_in_paper
    assert rows[len(trained_in_paper):] == ["test_G", "test_P", "test_V", "test_F", "test_E", "full_literal_cl",
                                            "baseline_raw", "visible_pool"]
    paper = report.paper_numbers("pgfl_kd")
    assert paper["test_P"]["R1"] == 57.1 and paper["full"]["GFLOPs"] == 8.98
    assert report.ablation_rows("isp", {"ablation": {"rows": {"isp": ["wo_arm", "k7"]}}}) == ["k7", "wo_arm"]


def test_parse_overrides_reads_yaml_values() -> None:
    assert parse_overrides(["test_feature=P", "flip_test=false", "ratio=0.5"]) == {
        "test_feature": "P", "flip_test": False, "ratio": 0.5}
    with pytest.raises(SystemExit, match="PARAM=VALUE"):
        parse_overrides(["test_feature"])


@pytest.fixture()
def pgfl_model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    method = PGFLKD(backbone="resnet18", **ABLATIONS["full"])
    model = method.build_model(num_classes=3)
    path = tmp_path / "model.pt"
    save_file({"format": MODEL_FORMAT, "method": method.name, "method_params": method.params, "num_classes": 3,
               "input_size": [64, 32], "state_dict": model.state_dict(), "method_state": {}}, path)
    return path


def test_load_model_applies_a_test_time_override(pgfl_model_file: Path) -> None:
    method, model, _ = load_model(pgfl_model_file, "cpu")
    assert method.test_feature == "G" and not method.test_caches
    method, model_p, _ = load_model(pgfl_model_file, "cpu", {"test_feature": "P"})
    assert method.test_feature == "P" and "keypoints" in method.test_caches
    for a, b in zip(model.state_dict().values(), model_p.state_dict().values()):
        assert torch.equal(a, b)  # the same trained weights, only the test feature differs


def test_load_model_refuses_an_override_that_changes_the_network(pgfl_model_file: Path) -> None:
    with pytest.raises(ValueError, match="change the network"):
        load_model(pgfl_model_file, "cpu", {"feb": False, "consistent": False})
    with pytest.raises(ValueError, match="cannot apply overrides"):
        load_model(pgfl_model_file, "cpu", {"no_such_param": 1})


def test_probe_cli_prints_the_group_map_support(pgfl_model_file: Path, tiny_world, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from reid.cli import main
    from reid.teachers.base import build_teacher
    from reid.teachers.runner import run_teacher

    keypoints = tmp_path / "keypoints.h5"
    run_teacher(build_teacher("keypoints", "oracle", None, "cpu"), tiny_world.index, tiny_world.root, keypoints,
                batch_size=16, workers=0, progress=False)
    out = tmp_path / "probe.json"
    assert main(["probe", "--model", str(pgfl_model_file), "--index", str(tiny_world.index), "--root",
                 str(tiny_world.root), "--cache", f"keypoints={keypoints}", "--limit", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "group_map_top_mass" in printed and "feb_attention_effective_cells" in printed
    report = json.loads(out.read_text())
    assert report["images"] == 8 and 0 < report["stats"]["group_map_top_mass"]["mean"] <= 1
    assert main(["probe", "--model", str(pgfl_model_file), "--index", str(tiny_world.index), "--root",
                 str(tiny_world.root)]) == 1  # a user error: one line naming the missing cache, no traceback
    assert "keypoints" in capsys.readouterr().err


def test_probe_groundtruth_masks_are_the_worlds_resized_and_an_old_world_is_a_clear_error(tiny_world,
                                                                                         tmp_path: Path) -> None:
    """`groundtruth.occluder` for the probe: each probed row's ground-truth mask resized (nearest) to the input
    size, rows not probed left 0; a world rendered before the mask existed names the file to regenerate."""
    import cv2
    import numpy as np

    from reid.data.synthetic import load_groundtruth
    from reid.engine.probe import groundtruth_masks

    rows = tiny_world.rows
    occluded = [i for i, r in enumerate(rows) if bool(load_groundtruth(tiny_world.root, r.path)["occluded"])]
    assert occluded, "the tiny world has no occluded image to probe"
    probed = occluded[:2] + [0]
    masks = groundtruth_masks(tiny_world.root, rows, probed, "occluder", (64, 32))
    assert masks.shape == (len(rows), 64, 32) and masks.dtype == np.uint8
    for i in probed:
        want = cv2.resize(load_groundtruth(tiny_world.root, rows[i].path)["occluder"], (32, 64),
                          interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(masks[i], want)
    assert masks[occluded[0]].any()
    assert not np.delete(masks, probed, axis=0).any()
    old = tmp_path / "old"
    rel = Path(rows[occluded[0]].path).with_suffix(".npz")
    (old / "groundtruth" / rel).parent.mkdir(parents=True)
    gt = load_groundtruth(tiny_world.root, rows[occluded[0]].path)
    np.savez(old / "groundtruth" / rel, **{k: v for k, v in gt.items() if k != "occluder"})
    with pytest.raises(KeyError, match=rf"{rel.name}.*no 'occluder' array.*regenerate"):
        groundtruth_masks(old, rows, [occluded[0]], "occluder", (64, 32))
