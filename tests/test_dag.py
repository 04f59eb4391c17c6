"""The two orchestrators agree: dvc.yaml is up to date, Snakemake's planned jobs equal dvc.yaml's stages (same
outputs, same input files), each DVC stage lists exactly the params.yaml keys reid.pipeline.params resolves for it, the
params schema rejects unknown keys, and `snakemake --lint` is clean."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reid.pipeline import params as C
from reid.pipeline import dvc_yaml as Y
from reid.pipeline import layout as D

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout)


def parse_dry_run(text: str) -> list[dict]:
    """Jobs of `snakemake -n` output: [{'rule', 'input': set, 'output': set}] (the `all` rule excluded)."""
    jobs: list[dict] = []
    current: dict | None = None
    for line in text.splitlines():
        head = re.match(r"^(local)?rule (\w+):$", line)
        if head:
            current = {"rule": head.group(2), "input": set(), "output": set()}
            jobs.append(current)
            continue
        field = re.match(r"^    (input|output): (.*)$", line)
        if field and current is not None:
            current[field.group(1)] = {p.strip() for p in field.group(2).split(",") if p.strip()}
    return [j for j in jobs if j["rule"] != "all"]


def is_code(dep: str) -> bool:
    return dep == "reid" or dep.startswith("reid/")


def dvc_outputs(stage: dict) -> set[str]:
    out = set(stage.get("outs", []))
    for key in ("metrics", "plots"):
        for item in stage.get(key, []):
            out |= set(item) if isinstance(item, dict) else {item}
    return out


@pytest.fixture(scope="module")
def params() -> dict:
    return C.load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def planned_jobs(params: dict, tmp_path_factory: pytest.TempPathFactory, repo_copier) -> list[dict]:
    """Snakemake's dry-run plan, everything forced, for every dvc.runs target, in a copy of the repository."""
    work = repo_copier(tmp_path_factory.mktemp("repo"))
    targets = [D.metrics_path(*C.split_target(t)) for t in params["dvc"]["runs"]]
    proc = snakemake(work, "-n", "--forceall", "--cores", "1", *targets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    assert jobs, "no job parsed from the dry run"
    return jobs


def test_dvc_yaml_is_up_to_date() -> None:
    proc = subprocess.run([sys.executable, "-m", "reid", "dvc-yaml", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is up to date" in proc.stdout


def test_dvc_yaml_check_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "dvc.yaml"
    stale.write_text((REPO / "dvc.yaml").read_text().replace("--out data/synthcc", "--out data/other", 1))
    proc = subprocess.run([sys.executable, "-m", "reid", "dvc-yaml", "--check", "--params",
                           str(REPO / "params.yaml"), "--out", str(stale)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "is out of date" in proc.stdout


@pytest.mark.slow
def test_snakemake_jobs_equal_dvc_stages(planned_jobs: list[dict], dvc_stages: dict, params: dict) -> None:
    snake = {frozenset(j["output"]): j for j in planned_jobs}
    assert len(snake) == len(planned_jobs), "two Snakemake jobs with the same outputs"
    # claims-<ds> assembles the verdicts from the committed ledger (reid.pipeline.dvc_yaml.claims_stages): it has
    # no job in this plan; it writes what the Snakemake claims rule writes
    assembly = {name: s for name, s in dvc_stages.items() if name.startswith("claims-")}
    assert sorted(assembly) == sorted(f"claims-{ds}" for ds in params["ablation"]["claims"])
    rule = (REPO / "workflow" / "rules" / "report.smk").read_text()
    assert 'md=report("results/{dataset}/claims.md"' in rule and 'json="results/{dataset}/claims.json"' in rule
    for name, s in assembly.items():
        ds = name.removeprefix("claims-")
        assert dvc_outputs(s) == {f"results/{ds}/claims.md", f"results/{ds}/claims.json"}
        assert f"ledger/{ds}" in s["deps"] and "ledger assemble" in s["cmd"]
    dvc = {frozenset(dvc_outputs(s)): (name, s) for name, s in dvc_stages.items() if name not in assembly}
    assert set(snake) == set(dvc), (
        f"only in Snakemake: {sorted(map(sorted, set(snake) - set(dvc)))}; "
        f"only in dvc.yaml: {sorted(map(sorted, set(dvc) - set(snake)))}"
    )
    for outs, (name, stage) in dvc.items():
        data_deps = {d for d in stage["deps"] if not is_code(d)}
        assert snake[outs]["input"] == data_deps, f"{name}: inputs differ"


@pytest.mark.slow
def test_each_target_needs_the_same_jobs(planned_jobs: list[dict], params: dict) -> None:
    """Per target: the jobs upstream of its metrics.json in Snakemake's plan =
    reid.pipeline.layout.stages_for([target])."""
    producer = {out: j for j in planned_jobs for out in j["output"]}

    def upstream(path: str, seen: set[frozenset]) -> None:
        job = producer.get(path)
        if job is None or frozenset(job["output"]) in seen:
            return
        seen.add(frozenset(job["output"]))
        for dep in job["input"]:
            upstream(dep, seen)

    for target in params["dvc"]["runs"]:
        seen: set[frozenset] = set()
        upstream(D.metrics_path(*C.split_target(target)), seen)
        stages = Y.stages_for(params, [target])
        expected = {frozenset(s.outs + s.metrics + [p for plot in s.plots for p in plot]) for s in stages.values()}
        assert seen == expected, target


def _stage_keys(params: dict, stage: dict) -> list[str]:
    """The keys reid.pipeline.params resolves for the command a DVC stage runs."""
    argv = shlex.split(stage["cmd"])
    if argv[:5] == ["python", "-m", "reid", "ledger", "assemble"]:  # claims-<ds>: what its rows' stages read
        from reid.pipeline.dvc_yaml import assembly_inputs

        return assembly_inputs(params, argv[argv.index("--dataset") + 1])[1]
    assert argv[:4] == ["python", "-m", "reid", "pipeline"], stage["cmd"]
    kind = argv[4]
    opts = dict(zip(argv[5::2], argv[6::2]))
    ds = opts["--dataset"]
    assert opts["--params"] == "params.yaml"
    if kind == "synth":
        return C.stage_synth(params, ds)[1]
    if kind == "index":
        return C.stage_index(params, ds)[1]
    if kind == "teach":
        return C.stage_teacher(params, ds, opts["--teacher"])[1]
    if kind == "train":
        return C.stage_train(params, ds, opts["--run"])[1]
    if kind in ("evaluate", "teacher-outputs"):
        return C.stage_evaluate(params, ds, opts["--run"])[1]
    raise AssertionError(f"unknown pipeline stage {kind!r} in {stage['cmd']}")


def test_dvc_params_are_exactly_the_resolved_keys(params: dict, dvc_stages: dict) -> None:
    assert dvc_stages
    for name, stage in dvc_stages.items():
        assert stage.get("params", []) == _stage_keys(params, stage), name
        for key in stage.get("params", []):
            assert C._has(params, key), f"{name} lists {key}, which params.yaml lacks"


def test_dvc_code_deps_are_narrow(dvc_stages: dict) -> None:
    """Editing a method must not rerun a teacher cache or the synthetic world."""
    for name, stage in dvc_stages.items():
        if name.startswith(("synth-", "index-", "teach-")):
            assert not any(d.startswith(("reid/methods", "reid/engine")) for d in stage["deps"]), name


@pytest.mark.parametrize("kind, teacher", [("synth", None), ("index", None), ("train", None), ("evaluate", None),
                                           ("teacher-outputs", None), ("teach", "parsing"), ("teach", "faces"),
                                           ("teach", "restored_faces"), ("teach", "keypoints"),
                                           ("teach", "isp_labels")])
def test_dvc_code_deps_cover_every_module_the_stage_imports(kind: str, teacher: str | None) -> None:
    """Import a stage's entry modules in a fresh interpreter: every `reid` module that ends up loaded must be a
    dependency of its DVC stage (else editing it would not rerun the stage)."""
    import subprocess
    import sys

    entries = list(Y.STAGE_ENTRIES[kind]) + ([f"reid.teachers.{teacher}"] if teacher else [])
    probe = ("import importlib, sys\n"
             f"for m in {entries!r}: importlib.import_module(m)\n"
             "print('\\n'.join(sorted(m for m in sys.modules if m == 'reid' or m.startswith('reid.'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    deps = set(Y.code_deps(kind, (f"reid.teachers.{teacher}",) if teacher else ()))
    missing = [m for m in loaded if Y.module_file(m) is not None
               and Y.module_file(m).relative_to(REPO).as_posix() not in deps]
    assert not missing, f"{kind} {teacher or ''}: imports {missing} that its DVC deps do not cover"


def test_import_closure_follows_local_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "reid"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from reid.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import reid.c\n")
    (pkg / "c.py").write_text("")
    (pkg / "unused.py").write_text("")
    assert Y.import_closure(["reid.a"], tmp_path) == [
        "reid/__init__.py", "reid/a.py", "reid/c.py", "reid/sub/__init__.py", "reid/sub/b.py"]


def test_schema_accepts_params_and_rejects_unknown_keys(params: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = yaml.safe_load((REPO / "workflow/schemas/params.schema.yaml").read_text())
    jsonschema.validate(params, schema)
    bad = dict(params, learning_rate=0.1)
    with pytest.raises(jsonschema.ValidationError, match="learning_rate"):
        jsonschema.validate(bad, schema)
    bad_train = dict(params, train=dict(params["train"], epoch=3))
    with pytest.raises(jsonschema.ValidationError, match="epoch"):
        jsonschema.validate(bad_train, schema)
    for bad_pretrain in (dict(params, pretrain=dict(params["pretrain"], epoch=3)),
                         dict(params, pretrain={k: v for k, v in params["pretrain"].items() if k != "dataset"}),
                         dict(params, pretrain_presets={"deit_tiny": {"optimizer": "adam"}}),
                         dict(params, pretrain_presets={"deit_tiny": {"epoch": 3}})):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad_pretrain, schema)
    jsonschema.validate(dict(params, pretrain_presets={"deit_tiny": {"optimizer": "adamw", "lr": 0.001}}), schema)


def test_snakemake_lint_is_clean(tmp_path: Path, repo_copier) -> None:
    work = repo_copier(tmp_path)
    proc = snakemake(work, "--lint", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_parse_dry_run_reads_rule_blocks() -> None:
    text = ("rule train:\n    input: a/index.csv, data/x\n    output: m/model.pt, m/log.csv\n    jobid: 1\n"
            "localrule all:\n    input: r/metrics.json\n")
    assert parse_dry_run(text) == [{"rule": "train", "input": {"a/index.csv", "data/x"},
                                    "output": {"m/model.pt", "m/log.csv"}}]


def test_dvc_stage_names_are_valid() -> None:
    """DVC reserves '@' (foreach/matrix) and most punctuation in stage names; only letters, digits, '_' and '-'."""
    is_valid_name = pytest.importorskip("dvc.stage.utils").is_valid_name
    names = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert names and all(is_valid_name(n) for n in names), [n for n in names if not is_valid_name(n)]


@pytest.mark.slow
def test_sharded_teachers_plan_the_same_jobs_in_both_orchestrators(tmp_path: Path, repo_copier) -> None:
    """`teachers.<t>.shards: N` makes N shard jobs + one merge in Snakemake and the same stages in dvc.yaml."""
    from reid.pipeline.dvc_yaml import dvc_document

    work = repo_copier(tmp_path / "repo")
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["dvc"]["runs"] = ["synthocc/pgfl_kd", "synthocc/isp--learned_cache"]  # the latter reads isp_labels
    p["datasets"]["synthocc"]["teachers"]["keypoints"]["shards"] = 3
    p["datasets"]["synthocc"]["teachers"]["isp_labels"]["shards"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = snakemake(work, "-n", "--forceall", "--cores", "1", *(D.metrics_path(*C.split_target(t))
                                                                  for t in p["dvc"]["runs"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = parse_dry_run(proc.stdout + proc.stderr)
    snake = {frozenset(j["output"]): j for j in jobs}
    stages = dvc_document(C.load_params(work / "params.yaml"))["stages"]
    dvc = {frozenset(dvc_outputs(s)): (name, s) for name, s in stages.items()
           if not name.startswith("claims-")}  # assembled from the ledger: no job in this plan
    assert set(snake) == set(dvc)
    for outs, (name, stage) in dvc.items():
        assert snake[outs]["input"] == {d for d in stage["deps"] if not is_code(d)}, name
    assert {"teach-synthocc-keypoints-0-of-3", "teach-synthocc-keypoints-2-of-3", "teach-synthocc-isp_labels-1-of-2",
            "teach-synthocc-keypoints"} <= set(stages)
    assert stages["teach-synthocc-keypoints"]["cmd"].startswith("python -m reid merge-shards --out "
                                                                "cache/synthocc/keypoints.h5 ")
    assert "--shard 1/3" in stages["teach-synthocc-keypoints-1-of-3"]["cmd"]
