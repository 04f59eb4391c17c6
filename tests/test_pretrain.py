"""The pretrain stage: each miniature backbone's file has the official ImageNet layout (the methods' own loaders
read it), training writes it, `--pretrained` runs load it and depend on it in both orchestrators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reid.engine.pretrain import (ARCHS, PretrainConfig, build_classifier, lr_at, make_optimizer, official_state,
                                  pretrain)
from reid.methods import build_method
from reid.pipeline import layout as D
from reid.pipeline import params as C

REPO = Path(__file__).resolve().parents[1]


def _load_like_a_method(arch: str, path: Path) -> torch.nn.Module:
    """The module a method builds with `weights=path`, through the method's own loader."""
    if arch.startswith("resnet"):
        from reid.models.resnet import ResNetBackbone

        return ResNetBackbone(int(arch.removeprefix("resnet")), last_stride=1, weights=path)
    if arch.startswith("osnet_"):
        from reid.models.osnet import osnet_width

        return osnet_width(arch.removeprefix("osnet_"), weights=path)
    if arch.startswith("hrnet"):
        from reid.models.isp_backbones import build_feature_backbone

        return build_feature_backbone(arch, weights=str(path), incre_modules=True)
    from reid.models.vit import build_vit

    return build_vit(arch, img_size=(128, 64), weights=path)


def _module_key(arch: str, key: str) -> str:
    """A tensor's name in the file -> its name in the module the method builds."""
    if arch.startswith("resnet"):  # ResNetBackbone wraps conv1/bn1 into `stem`
        for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
            if key.startswith(old):
                return new + key.removeprefix(old)
    if arch.startswith("hrnet") and not key.startswith("incre_modules."):
        return "body." + key  # the trunk lives in HRNetFeatureMap.body
    return key


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_file_loads_through_the_methods_loader_tensor_for_tensor(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_classifier(arch, 7, (128, 64))
    state = official_state(model)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    torch.manual_seed(2)  # another init: only a real load makes the tensors equal
    loaded = _load_like_a_method(arch, path).state_dict()
    weights = [k for k, v in state.items() if v.ndim > 1 and not k.startswith(("fc.", "classifier.", "head."))]
    assert weights
    unmatched = [k for k in weights if _module_key(arch, k) not in loaded]
    assert not unmatched, f"{arch}: tensors of the file the method never reads: {unmatched[:5]}"
    for k in weights:
        assert torch.equal(loaded[_module_key(arch, k)], state[k]), f"{arch}: {k} not loaded"


def test_lr_warms_up_then_decays_to_zero() -> None:
    assert lr_at(0, 100, 10, 0.1) == pytest.approx(0.01)
    assert lr_at(9, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 0.1) == pytest.approx(0.05)  # half way through the cosine
    assert lr_at(100, 100, 10, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_config_rejects_unknown_keys_and_labels() -> None:
    with pytest.raises(ValueError, match=r"pretrain.epoch: unknown parameter of PretrainConfig \(did you mean epochs"):
        PretrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="labels must be clothes or pid"):
        PretrainConfig.from_dict({"labels": "outfit"})


def test_a_preset_overrides_the_shared_recipe_for_its_arch_only() -> None:
    cfg = {"pretrain": {"dataset": "synthpre", "epochs": 6, "lr": 0.05},
           "pretrain_presets": {"deit_tiny": {"optimizer": "adamw", "lr": 0.001}},
           "datasets": {"synthpre": {"loader": "synthcc", "root": "data/synthpre"}}}
    vit, vit_keys = C.stage_pretrain(cfg, "deit_tiny")
    assert vit["config"] == {"epochs": 6, "lr": 0.001, "optimizer": "adamw"}
    assert vit_keys == ["pretrain", "pretrain_presets.deit_tiny"]  # DVC reruns the ViT's stage on a preset edit
    cnn, cnn_keys = C.stage_pretrain(cfg, "resnet18")
    assert cnn["config"] == {"epochs": 6, "lr": 0.05} and cnn_keys == ["pretrain"]  # the CNN's stage untouched


def test_params_check_names_a_bad_preset() -> None:
    from reid.pipeline.check import ParamsError, check_params

    with pytest.raises(ParamsError, match=r"pretrain_presets.deit_huge: no pretrain arch"):
        check_params({"pretrain_presets": {"deit_huge": {"epochs": 3}}})
    with pytest.raises(ParamsError, match=r"pretrain_presets.deit_tiny.epoch: unknown parameter"):
        check_params({"pretrain_presets": {"deit_tiny": {"epoch": 3}}})
    with pytest.raises(ValueError, match="optimizer must be sgd or adamw"):
        PretrainConfig.from_dict({"optimizer": "adam"})


def test_adamw_leaves_the_vits_tokens_and_norms_undecayed_and_sgd_is_nesterov() -> None:
    vit = build_classifier("deit_tiny", 5, (64, 32))
    opt = make_optimizer(vit, PretrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 1e-3
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    names = {n.removeprefix("vit.") for n, p in vit.named_parameters() if id(p) in decayed}
    assert "blocks.0.attn.qkv.weight" in names and "patch_embed.proj.weight" in names
    assert not names & {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"}
    cnn = build_classifier("resnet18", 5, (64, 32))
    sgd = make_optimizer(cnn, PretrainConfig())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9


def test_pretraining_writes_a_file_the_baseline_starts_from(tiny_world, tmp_path: Path) -> None:
    from reid.methods import build_method

    out = tmp_path / "resnet18.pth"
    summary = pretrain("resnet18", tiny_world.index, tiny_world.root, out,
                       {"epochs": 2, "batch_size": 16, "input_size": [64, 32], "workers": 0}, progress=False)
    rows = [r for r in tiny_world.rows if r.split == "train"]
    assert summary["classes"] == len({r.clothes for r in rows}) > len({r.pid for r in rows})  # appearance classes
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(h["loss"] > 0 for h in summary["history"])
    assert json.loads(out.with_suffix(".json").read_text())["stands_in_for"].startswith("torchvision resnet18")
    state = torch.load(out, weights_only=True)
    assert state["fc.weight"].shape == (summary["classes"], 512)
    model = build_method("baseline", depth=18, weights=str(out)).build_model(num_classes=3)
    assert torch.equal(model.backbone.stem[0].weight, state["conv1.weight"])


def test_pretrained_runs_take_the_datasets_weights_and_depend_on_the_file() -> None:
    cfg = C.load_params(REPO / "params.yaml")
    run = "pgfl_kd--full--pretrained--s1"
    assert C.parse_run(run) == C.Run("pgfl_kd", "full", 1, True)
    params = C.stage_train(cfg, "synthocc", run)[0]["method_params"]
    assert params["weights"] == cfg["datasets"]["synthocc"]["pretrained"]["pgfl_kd"]["weights"]
    assert C.stage_train(cfg, "synthocc", "pgfl_kd--full--s1")[0]["method_params"]["weights"] == "random"
    deps = D.train_deps(cfg, "synthocc", run)
    assert deps["weights"] == "models/pretrain/resnet18.pth" and D.pretrain_arch(deps["weights"]) == "resnet18"
    assert "--cache weights" not in D.cache_args(deps)
    assert D.pretrain_arch("weights/resnet18-f37072fd.pth") is None  # a user's ImageNet file: a plain input
    assert D.pretrain_arch("models/pretrain/resnet18.pth.bak") is None
    assert C.model_run("pgfl_kd--test_P--pretrained--s1") == "pgfl_kd--full--pretrained--s1"
    with pytest.raises(C.ConfigError, match="datasets.synthcc.pretrained.isp"):
        cfg2 = {**cfg, "datasets": {**cfg["datasets"], "synthcc": {**cfg["datasets"]["synthcc"], "pretrained": {}}}}
        C.stage_train(cfg2, "synthcc", "isp--pretrained")


def test_a_pretrained_student_distils_from_a_teacher_of_the_same_init() -> None:
    """The derived caches (a trained teacher's outputs) follow the run's init; the auxiliary models' do not."""
    import re

    cfg = C.load_params(REPO / "params.yaml")
    scratch, pre = D.train_deps(cfg, "synthcc", "deskpro--s1"), D.train_deps(cfg, "synthcc", "deskpro--pretrained--s1")
    assert scratch["face_teacher"] == "cache/synthcc/face_teacher.h5"
    assert pre["face_teacher"] == "cache/synthcc/face_teacher--pretrained.h5"
    assert pre["parsing"] == scratch["parsing"] == "cache/synthcc/parsing.h5"
    assert D.derived_deps(cfg, "synthcc", "face_teacher")["model"] == "models/synthcc/deskpro_face_teacher/model.pt"
    teacher = D.derived_deps(cfg, "synthcc", "face_teacher--pretrained")
    assert teacher["model"] == "models/synthcc/deskpro_face_teacher--pretrained/model.pt"
    teacher_train = D.train_deps(cfg, "synthcc", C.derived_cache_run("face_teacher--pretrained"))
    assert teacher_train["weights"] == "models/pretrain/osnet_x0_25.pth"
    vit = D.train_deps(cfg, "synthocc", "sureid--pretrained")["vit_teacher"]
    assert vit == "cache/synthocc/vit_teacher--pretrained.h5"
    assert C.derived_cache_run("vit_teacher--pretrained") == "sureid_teacher--pretrained"
    # SUREID's strong-teacher control: a scratch student distilled from the pretrained teacher; the learned row
    # of the same configuration keeps the teacher of its own init
    control = D.train_deps(cfg, "synthocc", "sureid--strong_teacher_npkd--s1")
    assert control["vit_teacher"] == vit and "deit_small_weights" not in control
    assert D.train_deps(cfg, "synthocc", "sureid--t4_hts_npkd--s1")["vit_teacher"] == "cache/synthocc/vit_teacher.h5"
    with pytest.raises(ValueError, match="teacher_init"):
        build_method("sureid", teacher_init="scratch")
    for bad in ("parsing--pretrained", "face_teacher--pretrained--s1"):
        assert not re.fullmatch(C.derived_cache_pattern(), bad)
        with pytest.raises(C.ConfigError, match="not a derived cache"):
            C.derived_cache_run(bad)


@pytest.mark.slow
def test_pretrained_runs_plan_the_pretrain_stage_in_both_orchestrators(tmp_path: Path, repo_copier) -> None:
    import yaml

    from reid.pipeline.dvc_yaml import dvc_document
    from tests.test_dag import dvc_outputs, is_code, parse_dry_run, snakemake

    work = repo_copier(tmp_path / "repo")
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["dvc"]["runs"] = ["synthocc/pgfl_kd--pretrained", "synthcc/deskpro--model3_csa_att--pretrained--s1",
                        "synthcc/deskpro--model5_student_kd--pretrained--s1"]
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = snakemake(work, "-n", "--forceall", "--cores", "1", *(D.metrics_path(*C.split_target(t))
                                                                  for t in p["dvc"]["runs"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    snake = {frozenset(j["output"]): j for j in parse_dry_run(proc.stdout + proc.stderr)}
    stages = dvc_document(C.load_params(work / "params.yaml"))["stages"]
    dvc = {frozenset(dvc_outputs(s)): (name, s) for name, s in stages.items()
           if not name.startswith("claims-")}  # assembled from the ledger: no job in this plan
    assert set(snake) == set(dvc)
    for outs, (name, stage) in dvc.items():
        assert snake[outs]["input"] == {d for d in stage["deps"] if not is_code(d)}, name
    assert {"pretrain-resnet18", "pretrain-osnet_x0_25", "synth-synthpre", "index-synthpre"} <= set(stages)
    assert "models/pretrain/resnet18.pth" in stages["train-synthocc-pgfl_kd--pretrained"]["deps"]
    assert stages["pretrain-resnet18"]["params"] == ["pretrain"]
    kd = stages["train-synthcc-deskpro--model5_student_kd--pretrained--s1"]["deps"]
    assert "cache/synthcc/face_teacher--pretrained.h5" in kd and "cache/synthcc/face_teacher.h5" not in kd
    assert "models/pretrain/osnet_x0_25.pth" in stages["train-synthcc-deskpro_face_teacher--pretrained"]["deps"]


@pytest.mark.slow
def test_the_claims_table_needs_both_inits_and_the_probes_of_trained_rows(tmp_path: Path, repo_copier) -> None:
    """With `ablation.init: [scratch, pretrained]` every claim's rows run under both inits (the default,
    [pretrained], is checked in tests/test_claims.py)."""
    import yaml

    from tests.test_dag import parse_dry_run, snakemake

    work = repo_copier(tmp_path / "repo", skip=("ledger/", "results/"))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["ablation"]["init"] = ["scratch", "pretrained"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = snakemake(work, "-n", "--forceall", "--cores", "1", "results/synthocc/claims.md")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    outputs = {o for j in jobs for o in j["output"]}
    claims = next(j for j in jobs if j["rule"] == "claims")
    for init in ("", "--pretrained"):
        assert f"results/synthocc/pgfl_kd--full{init}--s2/per_query.csv" in claims["input"]
        assert f"results/synthocc/pgfl_kd--full{init}--s2/probe.json" in claims["input"]
        assert f"results/synthocc/pgfl_kd--test_P{init}--s2/per_query.csv" in claims["input"]
        assert f"results/synthocc/pgfl_kd--test_P{init}--s2/probe.json" not in claims["input"]  # eval-only row
        # a control's own baseline row (ISP) and an oracle control's probe (SUREID)
        assert f"results/synthocc/isp--extra_info_oracle_wo_arm{init}--s2/per_query.csv" in claims["input"]
        assert f"results/synthocc/sureid--noda_test_pool{init}--s2/per_query.csv" in claims["input"]  # NODA's bound
        assert f"results/synthocc/sureid--oracle_hts{init}--s2/probe.json" in claims["input"]
    assert {"models/pretrain/resnet18.pth", "models/pretrain/hrnet_w18_small.pth",
            "models/pretrain/deit_small.pth", "models/pretrain/deit_tiny.pth"} <= outputs  # SUREID: teacher, student
