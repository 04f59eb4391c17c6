"""The evidence ledger (reid/ledger.py): a recorded row is current until the code or parameters of a stage that
built it change, the claims read ledger rows as they read results/, and on a fresh clone the claims build
assembles from a complete ledger without training."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from reid import ledger as L
from reid.eval.claims import Evidence, assess, readme_table
from reid.methods.base import Claim
from reid.pipeline import params as C
from tests.test_pipeline_e2e import _init_repo, _ran_stages, _run

REPO = Path(__file__).resolve().parents[1]
CFG = C.load_params(REPO / "params.yaml")


def _fake_row(folder: Path, queries: int = 12, ap: float = 0.5, setting: str = "cross_clothes",
              probe: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({setting: {"mAP": 100 * ap}, "embed_dtype": "float32"}))
    rows = "".join(f"{setting},q{i}.jpg,{i % 3},{ap}\n" for i in range(queries))
    (folder / "per_query.csv").write_text("setting,query,first,ap\n" + rows)
    if probe:
        (folder / "probe.json").write_text(json.dumps({"stats": {}}))


def test_a_recorded_row_is_current_until_a_parameter_it_read_changes(tmp_path: Path) -> None:
    root = tmp_path / "tree"  # the code, and the trained model's train_log.csv
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models" / "synthcc" / "deskpro").mkdir(parents=True)
    (root / "models" / "synthcc" / "deskpro" / "train_log.csv").write_text("epoch,total,seconds\n1,9,30.5\n2,8,31.25\n")
    _fake_row(tmp_path / "results" / "synthcc" / "deskpro")
    folder = L.record(CFG, "synthcc", "deskpro", tmp_path / "results", tmp_path / "ledger", root=root)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["schema"] == L.SCHEMA and prov["embed_dtype"] == "float32" and prov["environment"]["cpus"]
    assert prov["train_seconds"] == 61.8  # 30.5 + 31.25, rounded to 0.1 s
    assert {"train-synthcc-deskpro", "evaluate-synthcc-deskpro", "teach-synthcc-faces"} <= set(prov["fingerprint"])
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "per_query.csv", "provenance.json",
                                                          "train_log.csv"]
    assert L.status(CFG, "synthcc", ["deskpro", "baseline"], tmp_path / "ledger", root) == {
        "deskpro": {"state": "current", "changed": [], "same_output": []},
        "baseline": {"state": "missing", "changed": [], "same_output": []}}

    changed = copy.deepcopy(CFG)
    changed["alpha"] = 0.9  # DeSKPro's KD weight: its training (and so its evaluation) read it, the teachers do not
    st = L.status(changed, "synthcc", ["deskpro"], tmp_path / "ledger", root)["deskpro"]
    assert st["state"] == "stale" and st["changed"] == ["train-synthcc-deskpro"]
    assert L.fingerprint(changed, "synthcc", "baseline", REPO) == L.fingerprint(CFG, "synthcc", "baseline", REPO)


def test_a_code_change_makes_stale_exactly_the_stages_that_import_it(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    before = L.fingerprint(CFG, "synthcc", "deskpro", root)
    assert before == L.fingerprint(CFG, "synthcc", "deskpro", REPO)
    with open(root / "reid" / "teachers" / "parsing.py", "a") as f:
        f.write("\n# an edit\n")
    after = L.fingerprint(CFG, "synthcc", "deskpro", root)
    changed = L.changed_stages(before, after)
    assert "teach-synthcc-parsing" in changed
    assert "teach-synthcc-faces" not in changed and "train-synthcc-deskpro_face_teacher" not in changed


def test_rows_fingerprinted_together_keep_each_its_own_ancestry() -> None:
    """One layout for several rows: DeSKPro's row carries the face teacher's stages, the baseline's does not, and
    each equals the row fingerprinted alone."""
    both = L.fingerprints(CFG, "synthcc", {"deskpro": True, "baseline": False}, REPO)
    assert "train-synthcc-deskpro_face_teacher" in both["deskpro"] and "probe" in both["deskpro"]
    assert not any("face" in stage for stage in both["baseline"]) and "probe" not in both["baseline"]
    assert both["baseline"] == L.fingerprint(CFG, "synthcc", "baseline", REPO)
    assert both["deskpro"] == L.fingerprint(CFG, "synthcc", "deskpro", REPO, probe=True)


def test_a_world_digest_changes_with_a_file_s_bytes_or_name_not_its_time(tmp_path: Path) -> None:
    world = tmp_path / "w"
    (world / "rgb").mkdir(parents=True)
    (world / "rgb" / "a.png").write_bytes(b"abc")
    (world / "WORLD.json").write_text("{}")
    before = L.world_digest(world)
    assert before["files"] == 2
    os.utime(world / "rgb" / "a.png", (1, 1))
    (world / ".snakemake_timestamp").write_text("")  # Snakemake's marker of a directory output: not the world's
    assert L.world_digest(world) == before
    (world / "rgb" / "a.png").write_bytes(b"abd")
    assert L.world_digest(world)["md5"] != before["md5"]
    (world / "rgb" / "a.png").write_bytes(b"abc")
    (world / "rgb" / "a.png").rename(world / "rgb" / "b.png")
    assert L.world_digest(world)["md5"] != before["md5"]


def test_a_renderer_edit_leaves_rows_current_when_their_world_renders_to_the_same_bytes(tmp_path: Path) -> None:
    """DVC's rule for a rerun stage whose output hash did not change: the rows trained on the world stay current,
    once the edited renderer's output is recorded with the digest they were trained on; another digest does not."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    world = root / "data" / "synthcc"
    (world / "rgb").mkdir(parents=True)
    (world / "rgb" / "a.jpg").write_bytes(b"pixels")
    ledger = tmp_path / "ledger"
    _fake_row(tmp_path / "results" / "synthcc" / "baseline")
    L.record(CFG, "synthcc", "baseline", tmp_path / "results", ledger, root=root)
    first = json.loads((ledger / "worlds" / "synthcc.json").read_text())
    assert [e["digest"] for e in first] == [L.world_digest(world)]  # the row's world, under today's renderer

    with open(root / "reid" / "data" / "render.py", "a") as f:
        f.write("\n# an occluder kind only synthocc draws\n")
    st = L.status(CFG, "synthcc", ["baseline"], ledger, root)["baseline"]
    assert st["state"] == "stale" and st["changed"] == ["synth-synthcc"]
    with pytest.raises(RuntimeError, match="older than its stage code"):
        L.record_output(CFG, "synth-synthcc", ledger, root)
    assert "data/synthcc" in L.code_stale_outputs(CFG, "synthcc", ["baseline"], root, ledger)
    fresh = tmp_path / "rerender"  # rendered beside the world by the edited code: the same bytes
    shutil.copytree(world, fresh)
    L.record_output(CFG, "synth-synthcc", ledger, root, made=fresh)
    st = L.status(CFG, "synthcc", ["baseline"], ledger, root)["baseline"]
    assert st == {"state": "current", "changed": [], "same_output": ["synth-synthcc"]}
    # the world on disk is what the edited renderer makes, so it is not redone (nor all that was built on it)
    assert "data/synthcc" not in L.code_stale_outputs(CFG, "synthcc", ["baseline"], root, ledger)

    with open(root / "reid" / "data" / "render.py", "a") as f:
        f.write("\n# a change that moves pixels\n")
    (world / "rgb" / "a.jpg").write_bytes(b"other pixels")
    os.utime(world, None)
    L.record_output(CFG, "synth-synthcc", ledger, root)
    st = L.status(CFG, "synthcc", ["baseline"], ledger, root)["baseline"]
    assert st["state"] == "stale" and st["changed"] == ["synth-synthcc"]
    assert len(json.loads((ledger / "worlds" / "synthcc.json").read_text())) == 3


def test_a_pretrain_edit_leaves_rows_current_only_when_their_stand_in_is_remade_to_the_same_bytes(
        tmp_path: Path) -> None:
    """The same rule for a pretrain stand-in (an edit that adds another backbone to the pretrain stage): the row
    records the digest of the weights file it started from; it is current again once the edited stage is recorded
    to make that file, and not when it makes other bytes (or when only another row's file was shown the same)."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    weights = root / "models" / "pretrain" / "osnet_x0_25.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"osnet stand-in")
    weights.with_suffix(".json").write_text(json.dumps({"history": [
        {"epoch": 1, "train_acc": 0.123456, "seconds": 60.4}, {"epoch": 2, "train_acc": 0.5, "seconds": 121.6}]}))
    ledger, run = tmp_path / "ledger", "deskpro--model1_baseline--pretrained--s0"
    _fake_row(tmp_path / "results" / "synthcc" / run)
    folder = L.record(CFG, "synthcc", run, tmp_path / "results", ledger, root=root)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["pretrained"] == {"osnet_x0_25": {"files": 1, "md5": L.output_digest(weights)["md5"]}}
    assert L.output_records(ledger)["pretrain-osnet_x0_25"][0]["digest"] == prov["pretrained"]["osnet_x0_25"]
    # how strong the stand-in was, from the pretrain stage's summary beside it
    assert L.output_records(ledger)["pretrain-osnet_x0_25"][0]["summary"] == {"train_acc": [0.1235, 0.5],
                                                                              "seconds": 122}

    with open(root / "reid" / "engine" / "pretrain.py", "a") as f:
        f.write("\n# another backbone's stand-in\n")
    st = L.status(CFG, "synthcc", [run], ledger, root)[run]
    assert st["state"] == "stale" and st["changed"] == ["pretrain-osnet_x0_25"]
    assert "models/pretrain/osnet_x0_25.pth" in L.code_stale_outputs(CFG, "synthcc", [run], root, ledger)
    other = tmp_path / "other.pth"  # the edited stage trained to other bytes: the row stays stale
    other.write_bytes(b"another stand-in")
    L.record_output(CFG, "pretrain-osnet_x0_25", ledger, root, made=other)
    assert L.status(CFG, "synthcc", [run], ledger, root)[run]["state"] == "stale"
    same = tmp_path / "same.pth"
    same.write_bytes(b"osnet stand-in")
    L.record_output(CFG, "pretrain-osnet_x0_25", ledger, root, made=same)
    st = L.status(CFG, "synthcc", [run], ledger, root)[run]
    assert st == {"state": "current", "changed": [], "same_output": ["pretrain-osnet_x0_25"]}
    # the stand-in on disk (and its summary .json) is what the edited stage makes: not redone
    assert not [o for o in L.code_stale_outputs(CFG, "synthcc", [run], root, ledger) if "pretrain" in o]


def test_a_content_stage_rerun_runs_the_stage_s_own_command_beside_its_output(tmp_path: Path, monkeypatch) -> None:
    """`rerun_content_stage` runs the DAG's command for the stage with only --out (and --params) redirected, and
    leaves the output on disk alone."""
    calls = []
    monkeypatch.setattr(L.subprocess, "run", lambda argv, check: calls.append(argv))
    recorded = {}
    monkeypatch.setattr(L, "record_output", lambda cfg, name, ledger, made: recorded.setdefault(
        name, {"stage": {}, "digest": {"files": 1, "md5": str(made)}}))
    L.rerun_content_stage(CFG, "pretrain-osnet_x0_25", "my.yaml", tmp_path)
    argv = calls[0]
    # the file keeps its own name (torch.save writes it into the archive) in a folder beside the one on disk
    assert argv[0] == sys.executable
    assert argv[argv.index("--out") + 1] == "models/pretrain/.osnet_x0_25.pth.rerun/osnet_x0_25.pth"
    assert argv[argv.index("--params") + 1] == "my.yaml" and argv[argv.index("--arch") + 1] == "osnet_x0_25"
    assert argv[1:5] == ["-m", "reid", "pipeline", "pretrain"]


def test_claims_read_a_ledger_row_as_they_read_results(tmp_path: Path) -> None:
    """The same rows from results/ or from ledger folders (Evidence) give the same verdict; a row given twice is
    refused."""
    claim = Claim("good beats base", "good", "base", "standard")
    for s in (0, 1):
        _fake_row(tmp_path / "results" / "w" / f"m--good--s{s}", 30, 0.8, "standard")
        _fake_row(tmp_path / "results" / "w" / f"m--base--s{s}", 30, 0.5, "standard")
    plain = assess(tmp_path / "results", "w", "m", claim, [0, 1])
    shutil.copytree(tmp_path / "results" / "w", tmp_path / "ledger" / "w")
    shutil.rmtree(tmp_path / "results" / "w" / "m--good--s1")
    ev = Evidence.from_paths(tmp_path / "results", [tmp_path / "ledger" / "w" / "m--good--s1" / "per_query.csv"])
    assert assess(ev, "w", "m", claim, [0, 1]) == plain and plain["verdict"] == "holds"
    with pytest.raises(ValueError, match="given twice"):
        Evidence.from_paths(tmp_path, [tmp_path / "ledger/w/m--good--s0", tmp_path / "results/w/m--good--s0"])


@pytest.mark.slow
def test_a_complete_current_ledger_assembles_the_claims_without_training(tmp_path: Path, repo_copier) -> None:
    """A fresh copy with every synthcc claims row in the ledger: the claims target plans the claims job alone and
    writes the table from the ledger, as `dvc repro claims-synthcc` does; a changed parameter makes exactly
    DeSKPro's rows stale."""
    work = repo_copier(tmp_path / "repo", skip=("ledger/", "results/", ".dvc/", "dvc.lock"))
    py = sys.executable
    runs = L.claims_runs(CFG, "synthcc")
    for run in runs:
        _fake_row(work / "results" / "synthcc" / run, probe=C.model_run(run) == run)
    _run(work, py, "-m", "reid", "ledger", "record", "--dataset", "synthcc", timeout=600)
    shutil.rmtree(work / "results")
    status = _run(work, py, "-m", "reid", "ledger", "status", "--dataset", "synthcc", timeout=600)
    assert f"synthcc: {len(runs)} current, 0 stale, 0 missing" in status, status[-2000:]

    plan = _run(work, py, "-m", "snakemake", "-n", "--cores", "2", "results/synthcc/claims.md", timeout=600)
    stats = plan.rsplit("Job stats:", 1)[1].split("Reasons")[0]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE))
    assert jobs == {"claims": "1", "total": "1"}, plan[-2000:]  # nothing trained, evaluated or probed
    _run(work, py, "-m", "snakemake", "--cores", "2", "results/synthcc/claims.md", timeout=600)
    verdicts = json.loads((work / "results/synthcc/claims.json").read_text())
    assert len(verdicts["claims"]) == len(C.method_class("deskpro").claims) * len(CFG["ablation"]["init"])
    assert verdicts["pending"] == [] and json.loads((work / "ledger/synthcc/claims.json").read_text()) == verdicts

    # the DVC twin: `dvc repro claims-synthcc` assembles the same verdicts from the ledger, running nothing else
    shutil.rmtree(work / "results")
    _init_repo(work, "a complete ledger")
    out = _run(work, py, "-m", "dvc", "repro", "claims-synthcc", timeout=600)
    assert _ran_stages(out) == {"claims-synthcc"}, out[-2000:]
    assert json.loads((work / "results/synthcc/claims.json").read_text()) == verdicts

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["alpha"] = 0.9
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run(work, py, "-m", "reid", "ledger", "status", "--dataset", "synthcc", timeout=600)
    assert "0 current" in status and "changed: train-synthcc-deskpro" in status, status[-2000:]


def test_compare_row_reports_exact_agreement_and_the_size_of_a_difference(tmp_path: Path) -> None:
    """Two settings x 2 queries. The re-run moves one query's AP 0.5 -> 0.25 and its first match 1 -> 3:
    max |AP| diff 0.25, one of four ranks moved, that setting's mAP 50.0 -> 37.5 (the other stays 75.0)."""
    def write(folder: Path, second_ap: float, second_first: int) -> Path:
        folder.mkdir(parents=True)
        (folder / "per_query.csv").write_text(
            "setting,query,first,ap\n"
            f"a,q0.jpg,0,0.5\na,q1.jpg,{second_first},{second_ap}\nb,q0.jpg,0,1.0\nb,q1.jpg,2,0.5\n")
        return folder

    ledger_row = write(tmp_path / "ledger", 0.5, 1)
    same = L.compare_row(ledger_row, write(tmp_path / "same", 0.5, 1))
    assert same["exact"] and same["max_ap_diff"] == 0.0 and same["rank_moved"] == 0.0
    moved = L.compare_row(ledger_row, write(tmp_path / "moved", 0.25, 3))
    assert not moved["exact"] and moved["max_ap_diff"] == 0.25 and moved["rank_moved"] == 0.25
    assert moved["mAP"] == {"a": {"ledger": 50.0, "rerun": 37.5}, "b": {"ledger": 75.0, "rerun": 75.0}}
    prov = {"environment": {"cpu": "X", "versions": {"torch": "2"}}, "embed_dtype": "float32"}
    assert L.same_environment(prov, {"cpu": "X", "versions": {"torch": "2"}}, "float32")
    assert not L.same_environment(prov, {"cpu": "X", "versions": {"torch": "2"}}, "bfloat16")
    assert not L.same_environment(prov, {"cpu": "Y", "versions": {"torch": "2"}}, "float32")
    # a row that records its CPU class must meet the same class: one name, two CPUs (Zen 3 / Zen 4 "AMD EPYC")
    classed = {**prov, "environment": {**prov["environment"], "cpu_class": "AuthenticAMD family 25 model 17 [avx2]"}}
    here = {"cpu": "X", "versions": {"torch": "2"}, "cpu_class": "AuthenticAMD family 25 model 1 [avx2]"}
    assert not L.same_environment(classed, here, "float32") and L.same_environment(prov, here, "float32")
    assert L.same_environment(classed, {**here, "cpu_class": "AuthenticAMD family 25 model 17 [avx2]"}, "float32")


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: other
"""


def test_the_cpu_class_names_vendor_family_model_stepping_and_the_kernel_flags(tmp_path: Path) -> None:
    """From the first processor's block only (not the second's model name), flags in KERNEL_FLAGS' order and
    only those (sse2, sha_ni dropped); a machine without /proc/cpuinfo still gets a name."""
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    want = "AuthenticAMD family 25 model 1 stepping 1 [avx2 fma avx512f avx512_bf16]"
    assert L.cpu_class(tmp_path / "cpuinfo") == want
    assert L.cpu_model(tmp_path / "cpuinfo") == "AMD EPYC"
    assert L.cpu_class(tmp_path / "missing") and L.cpu_model(tmp_path / "missing")


def test_seed_spread_is_the_sd_of_the_row_s_recorded_seeds_only(tmp_path: Path) -> None:
    """x--s0/1/2 have mAP 50, 60, 80 on setting a (sd sqrt(700/3) = 15.275); x--pretrained--s0 and xy--s0 are other
    rows and must not count; a row recorded under one seed has no spread."""
    def row(run: str, ap: float) -> None:
        (tmp_path / "w" / run).mkdir(parents=True)
        (tmp_path / "w" / run / "per_query.csv").write_text(f"setting,query,first,ap\na,q0.jpg,0,{ap}\n")

    for run, ap in (("x--s0", 0.5), ("x--s1", 0.6), ("x--s2", 0.8), ("x--pretrained--s0", 0.0), ("xy--s0", 1.0)):
        row(run, ap)
    assert L.seed_spread("w", "x--s1", tmp_path)["a"] == pytest.approx((700 / 3) ** 0.5)
    assert L.seed_spread("w", "x--pretrained--s0", tmp_path) == {"a": None}


def test_a_rerun_elsewhere_agrees_within_a_point_or_three_sd_of_a_difference_of_two_draws() -> None:
    """Seed sd 0.46 (the ISP row of the 2026-12-07 verify): 3 x sqrt(2) x 0.46 = 1.952 points, so its 1.05-point
    difference agrees under this rule; a tight row (sd 0.1: 0.424) keeps the 1-point floor; no spread: the floor."""
    assert L.tolerance(0.46) == pytest.approx(1.9516, abs=1e-4)
    assert L.tolerance(0.1) == L.MAP_TOLERANCE == 1.0
    assert L.tolerance(None) == 1.0


def test_verify_applies_the_wider_tolerance_only_to_a_row_whose_seeds_spread(tmp_path: Path, monkeypatch) -> None:
    """Two rows re-run 1.5 mAP away on another CPU (no Snakemake here: its call is stubbed, the re-runs written
    beforehand): x--s0, whose seeds read 50/51/49 (sd 1.0: tolerance 4.24), agrees; y--s0, recorded under one
    seed only (tolerance 1.0), differs."""
    def row(folder: Path, ap: float, prov: bool) -> None:
        _fake_row(folder, queries=4, ap=ap, setting="a")
        if prov:
            (folder / L.PROVENANCE).write_text(json.dumps({
                "schema": L.SCHEMA, "fingerprint": {}, "embed_dtype": "float32",
                "environment": {"cpu": "another CPU", "versions": {}}}))

    for run, ap in (("x--s0", 0.50), ("x--s1", 0.51), ("x--s2", 0.49), ("y--s0", 0.50)):
        row(tmp_path / "ledger" / "w" / run, ap, prov=True)
    for run in ("x--s0", "y--s0"):
        row(tmp_path / "results" / "w" / run, 0.515, prov=False)
    rerun_metrics = tmp_path / "results" / "w" / "x--s0" / "metrics.json"  # re-embedded in bf16 there
    rerun_metrics.write_text(json.dumps({**json.loads(rerun_metrics.read_text()), "embed_dtype": "bfloat16"}))
    calls = []
    monkeypatch.setattr(L.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(L, "environment", lambda *a: {"cpu": "this CPU", "versions": {}})
    report = {r["run"]: r for r in L.verify(CFG, "w", ["x--s0", "y--s0"], 2, tmp_path / "ledger",
                                            tmp_path / "results")}
    assert len(calls) == 1 and "--forcerun" in calls[0]
    assert report["x--s0"]["max_map_diff"] == pytest.approx(1.5) and report["x--s0"]["tolerance"]["a"] == 4.2426
    assert report["x--s0"]["agree"] and not report["x--s0"]["strict"]
    assert report["x--s0"]["embed_dtype"] == {"ledger": "float32", "rerun": "bfloat16"}
    assert report["y--s0"]["tolerance"]["a"] == 1.0 and not report["y--s0"]["agree"]


def test_the_verify_report_names_the_command_as_typed_and_keeps_every_row(tmp_path: Path, monkeypatch) -> None:
    """`--report` writes the evidence the seventh sitting wrote by hand: `python -m reid` for the module path
    Python puts in argv[0], 4,530 s as 1:15:30, the exit status, the rows as verify returned them and the
    environment it is given (taken at the start: not the one `environment` would say now)."""
    monkeypatch.setattr(L, "environment", lambda *a: {"cpu": "this CPU", "commit": "committed during the run"})
    rows = [{"run": "x--s0", "agree": False}, {"run": "y--s1", "agree": True}]
    out = tmp_path / "verify" / "w--2026-12-08.json"
    L.write_verify_report(out, ["/repo/reid/__main__.py", "ledger", "verify", "--sample", "2"],
                          {"cpu": "this CPU", "commit": "abc"}, "2026-12-08T00:10:00", 4530.4, rows, 1)
    got = json.loads(out.read_text())
    assert got["command"] == "python -m reid ledger verify --sample 2"
    assert got["wall"] == "1:15:30" and got["exit_status"] == 1 and got["started"] == "2026-12-08T00:10:00"
    assert got["rows"] == rows and got["environment"] == {"cpu": "this CPU", "commit": "abc"}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it


def test_verify_on_the_command_line_writes_its_report_with_its_exit_status(tmp_path: Path, monkeypatch) -> None:
    """`ledger verify --runs ... --report F` (Snakemake and the comparison stubbed): a row that differs makes the
    command exit 1 and the report says so; without --report no file is written."""
    import argparse

    rows = [{"run": "x--s0", "agree": True, "strict": True, "tolerance": {"a": 1.0}, "max_ap_diff": 0.0,
             "rank_moved": 0.0, "queries": 4, "max_map_diff": 0.0, "noise_z": None},
            {"run": "y--s0", "agree": False, "strict": True, "tolerance": {"a": 1.0}, "max_ap_diff": 0.1,
             "rank_moved": 0.25, "queries": 4, "max_map_diff": 2.5, "noise_z": None}]
    monkeypatch.setattr(L, "status", lambda *a, **k: {})
    head = {"commit": "started on"}  # a commit made while the rows re-train must not become the report's

    def rerun(*a, **k):
        head["commit"] = "committed during the run"
        return rows

    monkeypatch.setattr(L, "verify", rerun)
    monkeypatch.setattr(L, "environment", lambda *a: {"cpu": "this CPU", **head})
    monkeypatch.setattr(sys, "argv", ["/x/reid/__main__.py", "ledger", "verify", "--runs", "x--s0", "y--s0"])
    parser = argparse.ArgumentParser()
    L.add_arguments(parser)
    report = tmp_path / "v.json"
    common = ["verify", "--dataset", "synthocc", "--runs", "x--s0", "y--s0", "--ledger", str(tmp_path / "ledger")]
    assert L.main(parser.parse_args(common)) == 1 and not report.exists()
    head["commit"] = "started on"
    assert L.main(parser.parse_args([*common, "--report", str(report)])) == 1
    got = json.loads(report.read_text())
    assert got["exit_status"] == 1 and [r["run"] for r in got["rows"]] == ["x--s0", "y--s0"]
    assert got["environment"]["commit"] == "started on"
    assert got["command"] == "python -m reid ledger verify --runs x--s0 y--s0"


def test_assemble_decides_the_claims_whose_rows_are_all_current_and_lists_the_rest(tmp_path: Path) -> None:
    """The 9 rows of DeSKPro's "CSA beats the baseline" (model2_csa, model1_baseline and the oracle_csa control, 3
    seeds) in the ledger: that claim is assessed from them alone (CSA 0.6 vs 0.5 AP: +10 points, holds; the
    control 0.7 holds too), every other claim is pending with its missing rows counted; the claims.json written is
    the one the README table is generated from."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    claim = next(c for c in C.method_class("deskpro").claims if c.name == "CSA beats the baseline")
    aps = {"model2_csa": 0.6, "model1_baseline": 0.5, "oracle_csa": 0.7}
    assert set(claim.rows) == set(aps)
    for row, ap in aps.items():
        for s in CFG["ablation"]["seeds"]:
            run = f"deskpro--{row}--pretrained--s{s}"
            _fake_row(tmp_path / "results" / "synthcc" / run, ap=ap)
            L.record(CFG, "synthcc", run, tmp_path / "results", tmp_path / "ledger", root=root)
    shutil.rmtree(tmp_path / "results")
    moved = tmp_path / "ledger" / "synthcc" / "deskpro--oracle_csa--pretrained--s2" / L.PROVENANCE
    prov = json.loads(moved.read_text())  # one row measured elsewhere: the claim says so
    prov["environment"]["cpu"], prov["embed_dtype"] = "Other CPU", "bfloat16"
    moved.write_text(json.dumps(prov))
    here = L.row_environment(tmp_path / "ledger" / "synthcc" / "deskpro--oracle_csa--pretrained--s1")
    content = L.assemble(CFG, "synthcc", tmp_path / "ledger")
    assert [a["claim"]["name"] for a in content["claims"]] == ["CSA beats the baseline"]
    envs = dict(sorted({here: 8, "Other CPU, bfloat16": 1}.items()))
    assert content["claims"][0]["environments"] == envs
    assert (f"deskpro CSA beats the baseline (pretrained): {', '.join(f'{k}: {n}' for k, n in envs.items())}"
            in (tmp_path / "ledger" / "synthcc" / "claims.md").read_text())
    learned = content["claims"][0]["learned"]
    assert (round(learned["mean"], 6), learned["seeds"], content["claims"][0]["verdict"]) == (10.0, 3, "holds")
    assert round(content["claims"][0]["control"]["mean"], 6) == 20.0
    kd = next(p for p in content["pending"] if p["claim"]["name"] == "the KD face student beats the plain student")
    assert (kd["rows"], kd["missing"], kd["stale"]) == (6, 6, 0)
    att = next(p for p in content["pending"] if p["claim"]["name"] == "CSA + L_att beat the baseline")
    assert (att["rows"], att["missing"]) == (9, 3)  # model3_csa_att's seeds; the baseline and control are there
    assert json.loads((tmp_path / "ledger" / "synthcc" / "claims.json").read_text()) == content
    table = readme_table({"synthcc": content})
    assert ("| deskpro | CSA beats the baseline (model2_csa vs model1_baseline, cross_clothes) | synthcc, "
            "pretrained | +10.00 [+10.00, +10.00; seeds +10.00, +10.00] (60.00 vs 50.00) |") in table
    assert "pending: 3 missing, 0 stale of 9 rows |" in table

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{L.README_BEGIN}\nold\n{L.README_END}\n\nafter\n")
    assert L.update_readme(readme, table) and L.readme_block(readme) == table
    assert readme.read_text().endswith(f"{L.README_END}\n\nafter\n") and not L.update_readme(readme, table)


def test_the_readme_claims_table_is_the_committed_ledger_s_verdicts() -> None:
    """README.md's table = the committed ledger/*/claims.json rendered, and every verdict and statistic each
    claims.json states is what the committed rows give, for the claims declared now. The rows are counted as
    current whatever code is checked out (a later code edit does not fail this check; `ledger status` says which
    rows are stale), so a claim claims.json lists as pending is either pending from its recorded rows too (the
    same rows missing) or was pending only because its rows were stale when it was assembled."""
    committed = L.assembled(CFG, REPO / "ledger")
    assert set(committed) == set(CFG["ablation"]["claims"]), "run `python -m reid ledger assemble` for each world"
    assert L.readme_block(REPO / "README.md") == readme_table(committed), "run `python -m reid ledger readme`"

    def key(entry: dict) -> tuple:
        return entry["method"], entry["claim"]["name"], entry["init"]

    for dataset, content in committed.items():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(REPO / "ledger" / dataset, Path(tmp) / dataset)
            again = json.loads(json.dumps(L.assemble(CFG, dataset, tmp, recorded_as_current=True)))
        hint = f"ledger/{dataset}/claims.json is not what its rows give under today's claims: re-run assemble"
        assessed, pending = {key(c): c for c in again["claims"]}, {key(p): p for p in again["pending"]}
        assert {key(c) for c in content["claims"] + content["pending"]} == set(assessed) | set(pending), hint
        for claim in content["claims"]:
            assert assessed.get(key(claim)) == claim, hint
        for section in ("pretraining", "probes"):
            assert all(entry in again[section] for entry in content[section]), hint
        for entry in content["pending"]:
            if key(entry) in pending:
                want = pending[key(entry)]
                assert (entry["rows"], entry["missing"]) == (want["rows"], want["missing"]), hint
            else:
                assert entry["missing"] == 0 and entry["stale"] > 0, hint


def test_build_records_each_row_as_it_finishes_and_stops_at_a_failure(tmp_path: Path, monkeypatch) -> None:
    """`ledger build` asks Snakemake for one row at a time (its probe only where it has one) and records it before
    the next starts; a failed row stops the build with the finished ones kept."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(root)
    calls, real_run = [], subprocess.run

    def fake_snakemake(cmd, **kw):
        if "snakemake" not in cmd:
            return real_run(cmd, **kw)  # git, for the provenance
        targets = cmd[cmd.index("--") + 1:]
        calls.append(targets)
        assert kw["env"]["REID_DVC_SYNC"] == "0"  # no DVC sync per row
        run = Path(targets[0]).parent.name
        if run == "isp--wo_arm--pretrained--s0":
            return subprocess.CompletedProcess(cmd, 1)
        _fake_row(tmp_path / "results" / "synthocc" / run, setting="standard")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(L.subprocess, "run", fake_snakemake)
    runs = L.seed_major(["isp--k7--pretrained--s1", "isp--k7--pretrained--s0", "isp--wo_arm--pretrained--s0"])
    assert runs == ["isp--k7--pretrained--s0", "isp--wo_arm--pretrained--s0", "isp--k7--pretrained--s1"]
    with pytest.raises(SystemExit, match=r"isp--wo_arm--pretrained--s0 failed .* 1 row\(s\) built before it"):
        L.build(CFG, "synthocc", runs, ledger=tmp_path / "ledger", results=tmp_path / "results")
    assert calls == [["results/synthocc/isp--k7--pretrained--s0/metrics.json",
                      "results/synthocc/isp--k7--pretrained--s0/probe.json"],
                     ["results/synthocc/isp--wo_arm--pretrained--s0/metrics.json"]]  # eval-only: no probe of its own
    recorded = [p.parent.name for p in (tmp_path / "ledger" / "synthocc").glob("*/provenance.json")]
    assert recorded == ["isp--k7--pretrained--s0"]
    # a killed run's lock files make every later Snakemake fail: the error says how to clear them
    (root / ".snakemake" / "locks").mkdir(parents=True)
    (root / ".snakemake" / "locks" / "0.input.lock").write_text("")
    with pytest.raises(SystemExit, match=r"failed .*lock files in \.snakemake/locks .* `snakemake --unlock`"):
        L.build(CFG, "synthocc", ["isp--wo_arm--pretrained--s0"], ledger=tmp_path / "ledger",
                results=tmp_path / "results")


def _trained_before_an_edit(root: Path, model: Path) -> None:
    model.write_bytes(b"weights")
    os.utime(model, (1, 1))  # trained before an edit of the code it imports


def _edited_then_written(root: Path, model: Path) -> None:
    with open(root / "reid" / "engine" / "trainer.py", "a") as f:
        f.write("\n# edited while the row trained\n")
    model.write_bytes(b"weights")  # written after the edit: newer than the code


@pytest.mark.parametrize("during, error", [
    (_trained_before_an_edit, r"code it imports changed meanwhile \(.*model.pt"),
    (_edited_then_written, r"code of its stages changed while it ran \(.*train-synthocc-isp"),
])
def test_build_does_not_record_a_row_whose_code_changed_while_it_was_built(tmp_path: Path, monkeypatch, during,
                                                                           error: str) -> None:
    """An edit during a row's build: outputs left older than the code the fingerprint would name, or (the job
    imported the code, the code was edited, then the job wrote its model) a model newer than the code, which only
    the code's content read before and after the row shows. Either way the row is not recorded."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(root)
    real_run = subprocess.run

    def fake_snakemake(cmd, **kw):
        if "snakemake" not in cmd:
            return real_run(cmd, **kw)
        _fake_row(tmp_path / "results" / "synthocc" / "isp--k7--pretrained--s0", setting="standard")
        model = root / "models" / "synthocc" / "isp--k7--pretrained--s0" / "model.pt"
        model.parent.mkdir(parents=True)
        during(root, model)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(L.subprocess, "run", fake_snakemake)
    with pytest.raises(SystemExit, match=error):
        L.build(CFG, "synthocc", ["isp--k7--pretrained--s0"], ledger=tmp_path / "ledger",
                results=tmp_path / "results")
    assert not (tmp_path / "ledger" / "synthocc").exists()


def test_outputs_older_than_the_code_their_stage_imports_are_found(tmp_path: Path) -> None:
    """Snakemake sees no imported code: an index older than reid/data/datasets.py is reported (DVC would redo it),
    a newer one is not; a world directory counts from its Snakemake marker, not from its own mtime; the model of a
    row whose trainer code is newer is reported, another world's outputs are not."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "reid", root / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    code_time = 1_000_000.0
    for f in (root / "reid").rglob("*.py"):
        os.utime(f, (code_time, code_time))
    index = root / "cache" / "synthcc" / "index.csv"
    world = root / "data" / "synthcc"
    model = root / "models" / "synthcc" / "baseline" / "model.pt"
    other = root / "cache" / "synthocc" / "index.csv"
    for path in (index, model, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (world / "rgb").mkdir(parents=True)
    (world / ".snakemake_timestamp").write_text("")
    os.utime(world, (code_time - 50, code_time - 50))  # the folder itself looks old ...
    os.utime(world / ".snakemake_timestamp", (code_time + 50, code_time + 50))  # ... Snakemake finished it later
    os.utime(index, (code_time - 10, code_time - 10))
    os.utime(model, (code_time + 10, code_time + 10))
    os.utime(other, (code_time - 10, code_time - 10))
    assert L.code_stale_outputs(CFG, "synthcc", ["baseline"], root) == ["cache/synthcc/index.csv"]
    os.utime(index, (code_time + 10, code_time + 10))
    os.utime(root / "reid" / "engine" / "trainer.py", (code_time + 20, code_time + 20))
    assert L.code_stale_outputs(CFG, "synthcc", ["baseline"], root) == ["models/synthcc/baseline/model.pt"]


@pytest.mark.slow
def test_the_claims_rule_refuses_a_row_built_before_the_code_changed(tmp_path: Path, repo_copier) -> None:
    """A results/ row older than the evaluation code (Snakemake would call it up to date) stops the claims DAG with
    the file named and the command that redoes it; --forceall, which redoes it anyway, plans normally."""
    from tests.test_dag import snakemake

    work = repo_copier(tmp_path / "repo", skip=("ledger/", "results/"))
    run = L.claims_runs(CFG, "synthcc")[0]
    folder = work / "results" / "synthcc" / run
    _fake_row(folder, probe=True)
    for f in folder.iterdir():
        os.utime(f, (1.0, 1.0))  # 1970: older than any code file
    proc = snakemake(work, "-n", "--cores", "1", "results/synthcc/claims.md")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert f"results/synthcc/{run}/metrics.json" in text and "ledger build --dataset synthcc" in text, text[-3000:]
    proc = snakemake(work, "-n", "--forceall", "--cores", "1", "results/synthcc/claims.md")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_build_re_runs_only_content_stages_that_alone_make_rows_stale(monkeypatch) -> None:
    """A row stale by a stand-in and its own training must be retrained anyway: re-running the stand-in for it
    would cost a pretrain and decide nothing. Only rows stale by content stages alone have theirs re-run, once."""
    ran = []
    monkeypatch.setattr(L, "rerun_content_stage", lambda cfg, name, params, ledger: ran.append(name))
    states = {"a": {"state": "stale", "changed": ["pretrain-osnet_x0_25", "synth-synthcc"]},
              "b": {"state": "stale", "changed": ["pretrain-osnet_x0_25"]},
              "c": {"state": "stale", "changed": ["pretrain-resnet18", "train-synthcc-baseline"]},
              "d": {"state": "current", "changed": []}, "e": {"state": "missing", "changed": []}}
    assert L.rerun_content_stages(CFG, states) == ["pretrain-osnet_x0_25", "synth-synthcc"] == ran
