"""The evidence ledger: the small files each evaluated row of the claims build leaves, committed to git with the
provenance that says which code and parameters made them, so a fresh clone assembles the claims tables without
training and anyone can see, and re-run, what a verdict rests on.

Layout (`ledger/<dataset>/<run>/`, the same names as `results/<dataset>/<run>/`): `metrics.json`,
`per_query.csv`, `probe.json` (trained rows the claims probe), `train_log.csv` (the trained model's) and
`provenance.json`:

- `fingerprint`: per DVC stage of the row's ancestry (synth, index, teachers, pretrain, train, evaluate; the
  stages `python -m reid dvc-yaml` writes, from the same layout code as the Snakefile), an md5 over the md5s of
  the code files it imports (DVC's md5 of each file's bytes, which dvc.lock records per file) and the value of
  every params.yaml key it reads (as dvc.lock records them). Data the stages pass to each
  other (worlds, caches, models) is determined by these and is not hashed. The probe's own code is added for
  rows with a probe.
- `environment`: commit (and whether the code, workflow or params.yaml had uncommitted changes), CPU model and
  count, Python and library versions; `embed_dtype` (metrics.json's), `train_seconds` (the sum of train_log.csv's
  epochs).
- `worlds`, `pretrained`: the digest of each synthetic world the row was trained and evaluated on
  (`world_digest`) and of each pretrain stand-in it started from (the weights file's md5).

A row is **current** when its fingerprint equals the one computed now from the working tree's code and
params.yaml, except for the stages compared by content (`CONTENT_STAGES`: `synth-<world>`, `pretrain-<arch>`)
whose code now makes the very output the row was built on (`ledger/worlds/<world>.json`,
`ledger/pretrain/<arch>.json` record what each fingerprint of the stage made: DVC's rule for a rerun stage whose
output is unchanged); **stale** otherwise (`python -m reid ledger status` names the stages that changed). The
claims rule reads a current ledger row instead of building it, and builds (then records) the others.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reid.pipeline.dvc_yaml import assembly_inputs, claims_runs, probe_code  # noqa: F401  (the ledger's API too)
from reid.pipeline.dvc_yaml import pretrain_stage, synth_stage
from reid.pipeline.layout import LEDGER_ROOT

LEDGER = Path(LEDGER_ROOT)
ROW_FILES = ("metrics.json", "per_query.csv", "probe.json")  # copied from results/<ds>/<run>/ when present
PROVENANCE = "provenance.json"
SCHEMA = "reid-ledger/1"
LIBRARIES = ("torch", "torchvision", "numpy", "onnxruntime", "h5py", "opencv-python-headless", "snakemake", "dvc")
CODE_PATHS = ("reid", "workflow", "Snakefile", "params.yaml")  # what `dirty` checks: the code and its params


@functools.lru_cache(maxsize=4096)
def _md5_cached(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _md5(path: Path) -> str:
    """md5 of a file's bytes (DVC's hash of a file dependency), cached per path, mtime and size."""
    st = path.stat()
    return _md5_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def code_digest(root: Path, files: Sequence[str]) -> dict[str, Any]:
    """One md5 over `path md5` lines of a stage's code files: equal exactly when every file is."""
    lines = "".join(f"{f} {_md5(root / f)}\n" for f in sorted(files))
    return {"files": len(files), "md5": hashlib.md5(lines.encode()).hexdigest()}


def fingerprints(cfg: Mapping[str, Any], dataset: str, runs: Mapping[str, bool],
                 root: str | Path = ".") -> dict[str, dict[str, Any]]:
    """run -> {stage: {"code": {"files", "md5"}, "params": {key: value}}} over the stages that build the row (see
    the module docstring), plus "probe" where `runs[run]` says the row has one. The stages of all rows are laid
    out once and each row takes its ancestry from them."""
    from reid.pipeline import params as C
    from reid.pipeline.dvc_yaml import stages_for

    root = Path(root)
    stages = stages_for(cfg, [f"{dataset}/{run}" for run in runs])
    made_by = {out: name for name, stage in stages.items() for out in stage.outs}
    digests: dict[str, dict[str, Any]] = {}

    def digest(name: str) -> dict[str, Any]:
        if name not in digests:
            digests[name] = stage_digest(stages[name], cfg, root)
        return digests[name]

    def ancestry(name: str, seen: set[str]) -> set[str]:
        if name not in seen:
            seen.add(name)
            for dep in stages[name].deps:
                if dep in made_by:
                    ancestry(made_by[dep], seen)
        return seen

    out = {}
    for run, probe in runs.items():
        rows = {name: digest(name) for name in sorted(ancestry(f"evaluate-{dataset}-{run}", set()))}
        if probe:
            rows["probe"] = {"code": code_digest(root, probe_code(C.stage_method_modules(cfg, run))), "params": {}}
        out[run] = rows
    return out


def stage_digest(stage: Any, cfg: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """One stage's part of a fingerprint: its code files' digest and the value of each params.yaml key it reads."""
    from reid.pipeline import params as C

    code = [d for d in stage.code if (root / d).is_file()]
    return {"code": code_digest(root, code), "params": {k: C._get(cfg, k) for k in stage.params}}


def fingerprint(cfg: Mapping[str, Any], dataset: str, run: str, root: str | Path = ".",
                probe: bool = False) -> dict[str, Any]:
    """One row's fingerprint (`fingerprints`)."""
    return fingerprints(cfg, dataset, {run: probe}, root)[run]


ORCHESTRATOR_MARKERS = (".snakemake_timestamp",)  # written into a directory output by Snakemake, not the renderer


def world_digest(folder: str | Path) -> dict[str, Any]:
    """md5 over `relpath md5` lines of every file of a rendered world (what DVC hashes for a directory output).

    Why: a synthetic world is a function of the renderer's code and its params, but an edit to the renderer that
    leaves one world's bytes unchanged (e.g. a new occluder kind another world enables) does not change anything
    that world's rows were trained on. The recorded digest lets that be shown, as DVC would see it."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ORCHESTRATOR_MARKERS)
    lines = "".join(f"{p.relative_to(folder).as_posix()} {_md5(p)}\n" for p in files)
    return {"files": len(files), "md5": hashlib.md5(lines.encode()).hexdigest()}


# Stages whose output is data compared by content, as DVC compares a stage's outputs: an edit to their code that
# leaves the output's bytes alone (a renderer edit for another world, a pretrain edit adding another backbone)
# does not make the rows built on it stale once a re-run has shown it. Stage-name prefix -> (the ledger folder of
# the records of what each fingerprint of the stage made, the provenance field of the digests a row was built on,
# the DAG's own builder of the stage). The digest covers the stage's first output: the world's folder, or the
# backbone's weights file (not its summary .json, which holds wall times).
CONTENT_STAGES: dict[str, tuple[str, str, Callable[[Mapping[str, Any], str], Any]]] = {
    "synth-": ("worlds", "worlds", synth_stage), "pretrain-": ("pretrain", "pretrained", pretrain_stage)}


def _content_kind(stage: str) -> tuple[str, str, str, Callable[[Mapping[str, Any], str], Any]] | None:
    """(prefix, records folder, provenance field, stage builder) of a stage compared by content; None for any
    other stage."""
    return next(((prefix, *v) for prefix, v in CONTENT_STAGES.items() if stage.startswith(prefix)), None)


def content_stage(cfg: Mapping[str, Any], name: str) -> Any:
    """The Stage named `name` (`synth-<world>` or `pretrain-<arch>`), laid out as the DAG lays it out."""
    kind = _content_kind(name)
    if kind is None:
        raise ValueError(f"{name}: not a stage compared by content ({', '.join(CONTENT_STAGES)})")
    return kind[3](cfg, name.removeprefix(kind[0]))


def output_digest(path: str | Path) -> dict[str, Any]:
    """What DVC hashes for an output: a directory's `world_digest`, a file's md5."""
    path = Path(path)
    return world_digest(path) if path.is_dir() else {"files": 1, "md5": _md5(path)}


def built_on(prov: Mapping[str, Any]) -> dict[str, Any]:
    """content stage -> the digest of its output the row was built on (its provenance's `worlds`, `pretrained`)."""
    return {prefix + name: digest for prefix, (_, field, _) in CONTENT_STAGES.items()
            for name, digest in prov.get(field, {}).items()}


def _code_written_at(code: Sequence[str], root: Path) -> float:
    """When the newest of a stage's code files was last written (0 when none exists)."""
    return max((os.stat(root / f).st_mtime for f in code if (root / f).is_file()), default=0.0)


def _made_before(path: Path, when: float) -> bool:
    """Whether an output exists and was made before `when`."""
    built = _built_at(path)
    return built is not None and built < when


def _built_at(path: Path) -> float | None:
    """When Snakemake last made an output (a directory output's marker file, else the path itself); None if absent."""
    if path.is_dir():
        stamp = path / ".snakemake_timestamp"
        return (stamp if stamp.is_file() else path).stat().st_mtime
    return path.stat().st_mtime if path.is_file() else None


def code_stale_outputs(cfg: Mapping[str, Any], dataset: str, runs: Sequence[str],
                       root: str | Path = ".", ledger: str | Path = LEDGER) -> list[str]:
    """The existing outputs of the rows' stages that are older than a code file their stage imports.

    Why: Snakemake tracks its rules' inputs and params, not the Python modules a stage imports, so after an edit
    to the code it still calls a trained model or a rendered world up to date, and recording that row would file
    old-code evidence under the new code's fingerprint. DVC hashes those modules (dvc.yaml lists them) and would
    redo these stages; `ledger build` forces exactly these outputs (`--forcerun`) and the claims rule refuses
    rows that have them. A world (or pretrain stand-in) older than its code is not stale when that code is recorded
    to make exactly its bytes (`ledger/worlds`, `ledger/pretrain`, `rerun_content_stages`): it is then what a rerun
    would make."""
    from reid.pipeline import params as C
    from reid.pipeline.dvc_yaml import stages_for
    from reid.pipeline.layout import probe_path

    root = Path(root)
    stages = stages_for(cfg, [f"{dataset}/{run}" for run in runs]).values()
    checks = [(st.outs + st.metrics, st.code, st) for st in stages]
    checks += [([probe_path(dataset, run)], list(probe_code(C.stage_method_modules(cfg, run))), None)
               for run in runs if has_probe(run)]
    records = output_records(ledger)
    stale = []
    for outs, code, stage in checks:
        written = _code_written_at(code, root)
        old = [out for out in outs if _made_before(root / out, written)]
        if old and stage is not None and _content_kind(stage.name) and _remade_as(
                records, stage.name, stage_digest(stage, cfg, root), root / stage.outs[0]):
            continue  # the code now makes these very bytes: what a rerun would make (its other outputs too)
        stale += old
    return sorted(set(stale))


def _remade_as(records: Mapping[str, list[dict[str, Any]]], stage: str, now: Mapping[str, Any], out: Path) -> bool:
    """Whether the content stage's code now (`now`) is recorded to make the very bytes of its output `out`."""
    made = [r["digest"] for r in records.get(stage, []) if r["stage"] == now]
    return bool(made) and out.exists() and output_digest(out) in made


def changed_stages(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The stages whose code or params differ between two fingerprints (added or removed stages too)."""
    return sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))


def environment(root: str | Path = ".") -> dict[str, Any]:
    """Where a row was measured: commit, CPU, versions (what decides whether a re-run must agree exactly)."""
    from importlib import metadata

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(dirty),
            "cpu": cpu_model(), "cpu_class": cpu_class(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions}


def _cpuinfo(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        lines = Path(cpuinfo).read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if k.strip()}


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    return _cpuinfo(cpuinfo).get("model name") or platform.processor() or platform.machine()


# The instruction sets whose presence changes which float kernels PyTorch / oneDNN run, hence the last bits of a
# result: two CPUs that differ in one of them need not reproduce each other's rows exactly.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def cpu_class(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU as far as exact reproduction goes: vendor, family / model / stepping and the kernel-picking ISA
    flags (`KERNEL_FLAGS`). A hypervisor may name different CPUs alike (a Zen 3 and a Zen 4 are both "AMD EPYC"
    on the build machines here; only the second has AVX-512 and bf16), so `cpu_model` alone cannot decide."""
    info = _cpuinfo(cpuinfo)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    ident = " ".join(f"{k.split()[-1]} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info)
    return " ".join(filter(None, [info.get("vendor_id") or info.get("CPU implementer") or platform.machine(),
                                  ident, "[" + " ".join(f for f in KERNEL_FLAGS if f in flags) + "]"]))


def has_probe(run: str) -> bool:
    """Whether a claims row carries a mechanism probe: trained rows do; eval-only rows (another row's model under
    other evaluation settings) share their model's."""
    from reid.pipeline import params as C

    return C.model_run(run) == run


def row_dir(dataset: str, run: str, ledger: str | Path = LEDGER) -> Path:
    return Path(ledger) / dataset / run


def read_provenance(folder: Path) -> dict[str, Any]:
    from reid.serialization import read_json

    prov = read_json(folder / PROVENANCE)
    if not isinstance(prov, dict) or prov.get("schema") != SCHEMA or not isinstance(prov.get("fingerprint"), dict):
        raise ValueError(f"{folder / PROVENANCE}: not a {SCHEMA} provenance record")
    return prov


def record(cfg: Mapping[str, Any], dataset: str, run: str, results: str | Path = "results",
           ledger: str | Path = LEDGER, root: str | Path = ".") -> Path:
    """Copy one evaluated row's small files into the ledger with its provenance; returns the ledger folder.
    Call it right after the row was built, with the code that built it (the claims rule does)."""
    from reid.pipeline import params as C
    from reid.pipeline.layout import train_log_path

    src = Path(results) / dataset / run
    missing = [f for f in ("metrics.json", "per_query.csv") if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: no {', '.join(missing)} to record (evaluate the row first)")
    dst = row_dir(dataset, run, ledger)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ROW_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    log = Path(root) / train_log_path(C.model_dataset(cfg, dataset), C.model_run(run))
    train_seconds = None
    if log.is_file():
        shutil.copy2(log, tmp / "train_log.csv")
        with open(log, newline="") as f:
            train_seconds = round(sum(float(r.get("seconds") or 0) for r in csv.DictReader(f)), 1)
    metrics = json.loads((src / "metrics.json").read_text())
    fp = fingerprint(cfg, dataset, run, root, probe=(src / "probe.json").is_file())
    outputs = {stage: Path(root) / content_stage(cfg, stage).outs[0] for stage in fp if _content_kind(stage)}
    used = {stage: output_digest(path) for stage, path in outputs.items() if path.exists()}
    prov = {"schema": SCHEMA, "dataset": dataset, "run": run, "fingerprint": fp,
            **{field: {stage.removeprefix(prefix): d for stage, d in used.items() if stage.startswith(prefix)}
               for prefix, (_, field, _) in CONTENT_STAGES.items()},
            "environment": environment(root), "embed_dtype": metrics.get("embed_dtype"),
            "train_seconds": train_seconds, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / PROVENANCE).write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
    for stage, digest in used.items():  # the world / backbone this row used, made by the code its fingerprint names
        add_output_entry(ledger, stage, fp[stage], digest, output_summary(outputs[stage]))
    return dst


def status(cfg: Mapping[str, Any], dataset: str, runs: Sequence[str], ledger: str | Path = LEDGER,
           root: str | Path = ".") -> dict[str, dict[str, Any]]:
    """run -> {"state": current | stale | missing, "changed": [stages]} for the ledger's rows of `runs`."""
    recorded = {run: read_provenance(row_dir(dataset, run, ledger)) for run in runs
                if (row_dir(dataset, run, ledger) / PROVENANCE).is_file()}
    now = fingerprints(cfg, dataset, {run: "probe" in prov["fingerprint"] for run, prov in recorded.items()}, root)
    records = output_records(ledger)
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run not in recorded:
            out[run] = {"state": "missing", "changed": [], "same_output": []}
            continue
        changed = changed_stages(recorded[run]["fingerprint"], now[run])
        same = [st for st in changed if same_output(records, st, now[run].get(st), built_on(recorded[run]))]
        changed = [st for st in changed if st not in same]
        out[run] = {"state": "stale" if changed else "current", "changed": changed, "same_output": same}
    return out


def output_records(ledger: str | Path = LEDGER) -> dict[str, list[dict[str, Any]]]:
    """content stage -> its records: {"stage": the stage's fingerprint, "digest": `output_digest` of what it made}
    (ledger/worlds/<world>.json, ledger/pretrain/<arch>.json)."""
    from reid.serialization import read_json

    out: dict[str, list[dict[str, Any]]] = {}
    for prefix, (folder, _, _) in CONTENT_STAGES.items():
        for p in sorted((Path(ledger) / folder).glob("*.json")):
            out[prefix + p.stem] = read_json(p, "ledger output record")
    return out


def same_output(records: Mapping[str, list[dict[str, Any]]], stage: str, now: Any, used: Mapping[str, Any]) -> bool:
    """Whether a changed content stage leaves a row current: the code it runs now made its output with the very
    digest the row was built on (`used`, `built_on`). DVC's rule: a rerun stage whose output hash is unchanged
    does not make the stages after it stale; so a renderer edit for one world keeps the other world's rows."""
    if not _content_kind(stage) or now is None:
        return False
    return any(r["stage"] == now and r["digest"] == used.get(stage) for r in records.get(stage, []))


def record_output(cfg: Mapping[str, Any], name: str, ledger: str | Path = LEDGER, root: str | Path = ".",
                  made: str | Path | None = None) -> dict:
    """Add (once) the digest of what content stage `name` makes with the code checked out now (`made`: a fresh
    re-run's output; by default the output on disk, refused if older than its code) under the stage's fingerprint."""
    root = Path(root)
    stage = content_stage(cfg, name)
    if made is None:
        made = root / stage.outs[0]
        if _built_at(made) is None or _made_before(made, _code_written_at(stage.code, root)):
            raise RuntimeError(f"{made}: {'absent' if _built_at(made) is None else 'older than its stage code'}; "
                               f"make it first (`snakemake --cores 2 --force {stage.outs[0]}`)")
    entry = {"stage": stage_digest(stage, cfg, root), "digest": output_digest(made)}
    add_output_entry(ledger, name, entry["stage"], entry["digest"], output_summary(Path(made)))
    return entry


def output_summary(made: Path) -> dict[str, Any] | None:
    """What a pretrain stand-in learnt, from the summary the pretrain stage writes beside it (`<arch>.json`): its
    final train accuracy per epoch and wall time, so the ledger shows how strong each stand-in was; None for a
    world or a stand-in without one."""
    summary = made.with_suffix(".json")
    if made.suffix != ".pth" or not summary.is_file():
        return None
    history = json.loads(summary.read_text()).get("history") or []
    return {"train_acc": [round(h["train_acc"], 4) for h in history],
            "seconds": round(history[-1]["seconds"]) if history else None}


def add_output_entry(ledger: str | Path, name: str, stage: Mapping[str, Any], digest: Mapping[str, Any],
                     summary: Mapping[str, Any] | None = None) -> None:
    """Append {stage, digest} (and the output's `summary`) to the content stage's record file unless it is there
    already."""
    from reid.serialization import read_json

    kind = _content_kind(name)
    if kind is None:
        raise ValueError(f"{name}: not a stage compared by content ({', '.join(CONTENT_STAGES)})")
    path = Path(ledger) / kind[1] / f"{name.removeprefix(kind[0])}.json"
    entries = read_json(path, "ledger output record") if path.is_file() else []
    if not any(e["stage"] == stage and e["digest"] == digest for e in entries):
        path.parent.mkdir(parents=True, exist_ok=True)
        entries.append({"stage": stage, "digest": digest, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        **({"summary": dict(summary)} if summary else {})})
        path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


# Agreement of a re-run with its ledger row. Exact (every query's AP and first-match rank equal) is expected where
# the CPU model, the library versions and the dtype match the row's provenance: the trainings are seeded and the
# stages pin their threads. Elsewhere other kernels (bf16 ones above all) move the numbers: the demo's
# cross-clothes mAP read 4.00 (Intel bf16), 4.80 (AMD EPYC bf16) and 4.69 (float32), so a re-run on another
# machine agrees when each setting's mAP is within this many percentage points, or (`NOISE_Z`) within three
# standard deviations of the difference of two training draws, sd from the row's recorded seeds: a re-run elsewhere
# is another draw of training noise, and a row whose seeds spread by sd 0.46 (ISP's, 25 mAP) differs by more than
# a point from its own record about one time in eight on that account alone (the 2026-12-07 verify's one miss,
# 1.05 points, 1.6 sd; the rule was declared after that run and is first applied by the next one).
MAP_TOLERANCE = 1.0
NOISE_Z = 3.0


def tolerance(seed_sd: float | None) -> float:
    """The mAP difference (percentage points) a re-run in another environment may show and still agree."""
    return MAP_TOLERANCE if seed_sd is None else max(MAP_TOLERANCE, NOISE_Z * 2 ** 0.5 * seed_sd)


def setting_map(results: Mapping[tuple[str, str], tuple[int, float]]) -> dict[str, float]:
    """Per setting, the mean AP in percent of `read_query_results`' {(setting, query): (first, ap)}."""
    settings = sorted({k[0] for k in results})
    return {s: 100 * sum(v[1] for k, v in results.items() if k[0] == s) / sum(1 for k in results if k[0] == s)
            for s in settings}


def compare_row(recorded: Path, rerun: Path) -> dict[str, Any]:
    """A re-run's per_query.csv against its ledger row: queries compared, max |AP| difference, share of
    queries whose first correct match moved, and per setting the mAP of both (percent)."""
    from reid.eval.claims import read_query_results

    a, b = read_query_results(recorded / "per_query.csv"), read_query_results(rerun / "per_query.csv")
    if set(a) != set(b):
        raise ValueError(f"{rerun}: its queries differ from the ledger row's {recorded} "
                         f"({len(set(a) ^ set(b))} not in both)")
    ma, mb = setting_map(a), setting_map(b)
    return {"queries": len(a), "max_ap_diff": max(abs(a[k][1] - b[k][1]) for k in a),
            "rank_moved": sum(a[k][0] != b[k][0] for k in a) / len(a),
            "mAP": {s: {"ledger": round(ma[s], 4), "rerun": round(mb[s], 4)} for s in ma},
            "exact": all(a[k] == b[k] for k in a)}


def same_environment(prov: Mapping[str, Any], env: Mapping[str, Any], dtype: Any) -> bool:
    """Whether a re-run here must reproduce the row exactly: same CPU model and class (`cpu_class`; rows recorded
    before it was, 2026-12-08, compare by model name alone), library versions and dtype."""
    was = prov.get("environment", {})
    same_class = "cpu_class" not in was or was["cpu_class"] == env.get("cpu_class")
    return (was.get("cpu") == env.get("cpu") and same_class and was.get("versions") == env.get("versions")
            and prov.get("embed_dtype") == dtype)


def seed_spread(dataset: str, run: str, ledger: str | Path = LEDGER) -> dict[str, float | None]:
    """Per setting, the sample standard deviation (percentage points) of the mAP of `run`'s recorded seeds (every
    `<name>--s<N>` row of the ledger, `run`'s own included); None with fewer than two. A re-run in another
    environment is another draw of training noise, so its difference from the record is read against this spread
    (`verify` reports |diff| / (sqrt(2) sd) and widens its tolerance to NOISE_Z of those: `tolerance`)."""
    import statistics

    from reid.eval.claims import read_query_results
    from reid.pipeline import params as C

    def unseeded(name: str) -> C.Run | None:
        try:
            parsed = C.parse_run(name)
        except C.ConfigError:  # claims.json and other files beside the rows
            return None
        return dataclasses.replace(parsed, seed=None) if parsed.seed is not None else None

    same = unseeded(run)
    maps: dict[str, list[float]] = {}
    for folder in sorted((Path(ledger) / dataset).iterdir()):
        if same is None or unseeded(folder.name) != same or not (folder / "per_query.csv").is_file():
            continue
        for setting, m in setting_map(read_query_results(folder / "per_query.csv")).items():
            maps.setdefault(setting, []).append(m)
    return {s: (statistics.stdev(v) if len(v) > 1 else None) for s, v in sorted(maps.items())}


def verify(cfg: Mapping[str, Any], dataset: str, runs: Sequence[str], cores: int = 2, ledger: str | Path = LEDGER,
           results: str | Path = "results", env: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Re-run the given ledger rows here (Snakemake, forcing their training, evaluation and probe) and compare
    each with its record: exact where the environment (`env`, the caller's record of where the re-run started;
    `environment()` when None) matches, within `tolerance` of each setting's mAP otherwise."""
    from reid.pipeline.layout import metrics_path, probe_path

    targets = []
    for run in runs:
        folder = row_dir(dataset, run, ledger)
        read_provenance(folder)  # a missing or malformed record stops here, before any training
        targets.append(metrics_path(dataset, run))
        if (folder / "probe.json").is_file():
            targets.append(probe_path(dataset, run))
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "--forcerun", "train", "evaluate",
                    "probe", "--", *targets], check=True)
    env = environment() if env is None else env
    out = []
    for run in runs:
        folder, rerun = row_dir(dataset, run, ledger), Path(results) / dataset / run
        prov = read_provenance(folder)
        dtype = json.loads((rerun / "metrics.json").read_text()).get("embed_dtype")
        cmp = compare_row(folder, rerun)
        strict = same_environment(prov, env, dtype)
        worst = max(abs(m["ledger"] - m["rerun"]) for m in cmp["mAP"].values())
        spread = seed_spread(dataset, run, ledger)
        within = all(abs(m["ledger"] - m["rerun"]) <= tolerance(spread.get(s)) for s, m in cmp["mAP"].items())
        agree = cmp["exact"] if strict else within
        z = [abs(m["ledger"] - m["rerun"]) / (2 ** 0.5 * spread[s]) for s, m in cmp["mAP"].items() if spread.get(s)]
        out.append({"run": run, "strict": strict, "agree": agree, "max_map_diff": round(worst, 4),
                    "embed_dtype": {"ledger": prov.get("embed_dtype"), "rerun": dtype},
                    "tolerance": {s: round(tolerance(spread.get(s)), 4) for s in cmp["mAP"]},
                    "seed_sd": {s: round(v, 4) for s, v in spread.items() if v is not None},
                    "noise_z": round(max(z), 2) if z else None, **cmp})
    return out


def write_verify_report(path: str | Path, argv: Sequence[str], env: Mapping[str, Any], started: str,
                        seconds: float, rows: Sequence[Mapping[str, Any]], exit_status: int) -> dict[str, Any]:
    """The evidence file of a verify run: the command as typed, where it ran (`env`, the `environment` taken when
    the run started: the commit whose code it ran, which a commit made during an hour-long run must not replace),
    when, how long it took and each row's comparison; written atomically, so a file in ledger/verify is always a
    finished run."""
    argv = list(argv)
    if argv and argv[0].endswith(("__main__.py", "reid")):  # `python -m reid ...` arrives as .../reid/__main__.py
        argv[0] = "python -m reid"
    hours, rest = divmod(round(seconds), 3600)
    content = {"command": " ".join(argv), "environment": dict(env), "started": started,
               "wall": f"{hours}:{rest // 60:02d}:{rest % 60:02d}", "exit_status": exit_status,
               "rows": list(rows)}
    from reid.serialization import atomic_write

    text = json.dumps(content, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), "verify report")
    return content


def rerun_content_stages(cfg: Mapping[str, Any], states: Mapping[str, Mapping[str, Any]],
                         params: str = "params.yaml", ledger: str | Path = LEDGER) -> list[str]:
    """Re-run the content stages (worlds, pretrain stand-ins) that alone make rows stale, and record what they make
    now (`record_output`): rows whose input came out with the digest they were built on are current again,
    without training. Returns the stages re-run."""
    stages = sorted({c for v in states.values() if v["state"] == "stale"
                     and all(_content_kind(c) for c in v["changed"]) for c in v["changed"]})
    for name in stages:
        rerun_content_stage(cfg, name, params, ledger)
    return stages


def rerun_content_stage(cfg: Mapping[str, Any], name: str, params: str = "params.yaml",
                        ledger: str | Path = LEDGER) -> dict[str, Any]:
    """Run content stage `name`'s own command with the code checked out now, its output redirected beside the one
    on disk, and record the digest it gets (`record_output`). The output on disk stays as it is: replacing it
    would make Snakemake redo, by time, everything built on it even when the bytes come out the same."""
    import shlex

    stage = content_stage(cfg, name)
    on_disk = Path(stage.outs[0])
    # under its own name in a folder beside it (torch.save names the archive inside a .pth after the file, so
    # another name would be other bytes for the same tensors)
    side = on_disk.with_name(f".{on_disk.name}.rerun")
    fresh = side / on_disk.name
    shutil.rmtree(side, ignore_errors=True)
    argv = shlex.split(stage.cmd)
    if argv[:1] != ["python"] or "--out" not in argv or "--params" not in argv:
        raise ValueError(f"{name}: cannot redirect the output of {stage.cmd!r}")
    argv[0] = sys.executable
    argv[argv.index("--out") + 1] = str(fresh)
    argv[argv.index("--params") + 1] = params
    print(f"ledger: re-running {name} with the code checked out now into {fresh}", flush=True)
    subprocess.run(argv, check=True)
    entry = record_output(cfg, name, ledger, made=fresh)
    shutil.rmtree(side, ignore_errors=True)
    same = on_disk.exists() and output_digest(on_disk) == entry["digest"]
    print(f"ledger: {name} makes {entry['digest']['md5']} ({entry['digest']['files']} files): "
          f"{'the same bytes as' if same else 'not the bytes of'} {on_disk}", flush=True)
    return entry


def code_of(fp: Mapping[str, Any]) -> dict[str, Any]:
    """stage -> its code digest, from a row's fingerprint."""
    return {stage: entry.get("code") for stage, entry in fp.items()}


def seed_major(runs: Sequence[str]) -> list[str]:
    """Runs ordered by seed first, so a build cut short leaves whole seeds of every row rather than every seed of
    a few rows (no claim can be assessed from those)."""
    from reid.pipeline.params import parse_run

    def key(run: str) -> tuple[int, str]:
        seed = parse_run(run).seed
        return (-1 if seed is None else seed, run)

    return sorted(runs, key=key)


def build(cfg: Mapping[str, Any], dataset: str, runs: Sequence[str], cores: int = 2, ledger: str | Path = LEDGER,
          results: str | Path = "results") -> list[Path]:
    """Build the given claims rows one at a time with Snakemake (each row's evaluation, and its probe where it has
    one; outputs older than their code are redone, `code_stale_outputs`) and record each in the ledger as soon as
    it is evaluated, so a build stopped at any point keeps every finished row; returns the recorded folders.
    dvc.lock is not updated (`python -m reid dvc-commit` does that)."""
    from reid.pipeline.layout import metrics_path, probe_path

    done = []
    for k, run in enumerate(runs, 1):
        targets = [metrics_path(dataset, run)] + ([probe_path(dataset, run)] if has_probe(run) else [])
        forced = code_stale_outputs(cfg, dataset, [run], ledger=ledger)
        if forced:
            print(f"ledger build: {dataset}/{run}: redoing {len(forced)} output(s) older than their code: "
                  f"{', '.join(forced)}", flush=True)
        t0 = time.monotonic()
        code_before = code_of(fingerprint(cfg, dataset, run))
        # REID_DVC_SYNC=0: no DVC sync after each row (it re-hashes the worlds, ~40 s a row)
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores),
                               *(["--forcerun", *forced] if forced else []), "--", *targets],
                              env={**os.environ, "REID_DVC_SYNC": "0"}, check=False)
        if proc.returncode:
            locks = Path(".snakemake") / "locks"
            hint = (f"; Snakemake's lock files in {locks} remain, which a run killed mid-way (a machine cut off) "
                    "leaves behind: if no other Snakemake runs in this folder, `snakemake --unlock` removes them"
                    if locks.is_dir() and any(locks.iterdir()) else "")
            raise SystemExit(f"ledger build: {dataset}/{run} failed (snakemake exit {proc.returncode}); the "
                             f"{len(done)} row(s) built before it are recorded{hint}")
        edited = sorted(st for st, c in code_of(fingerprint(cfg, dataset, run)).items() if code_before.get(st) != c)
        if edited:  # a job that imported the code before the edit may write its outputs after it
            raise SystemExit(f"ledger build: {dataset}/{run} was built, but the code of its stages changed while it "
                             f"ran ({', '.join(edited)}); not recorded. The {len(done)} row(s) built before it are "
                             "recorded; build again once the code is final")
        changed = code_stale_outputs(cfg, dataset, [run], ledger=ledger)
        if changed:  # the code was edited while the row was built: its fingerprint would name code it did not run
            raise SystemExit(f"ledger build: {dataset}/{run} was built, but code it imports changed meanwhile "
                             f"({', '.join(changed)} are now older than their code); not recorded. The "
                             f"{len(done)} row(s) built before it are recorded; build again once the code is final")
        done.append(record(cfg, dataset, run, results, ledger))
        print(f"[{k}/{len(runs)}] {dataset}/{run}: built in {time.monotonic() - t0:.0f} s, recorded in {done[-1]}",
              flush=True)
    return done


README_BEGIN = "<!-- claims table: generated by `python -m reid ledger readme` from ledger/*/claims.json -->"
README_END = "<!-- end of claims table -->"


def row_environment(folder: Path) -> str:
    """'<CPU model>, <embedding dtype>' of a recorded row, from its provenance."""
    prov = read_provenance(folder)
    return f"{prov.get('environment', {}).get('cpu', 'unknown CPU')}, {prov.get('embed_dtype', 'unknown dtype')}"


def assemble(cfg: Mapping[str, Any], dataset: str, ledger: str | Path = LEDGER,
             recorded_as_current: bool = False, out: str | Path | Sequence[str | Path] | None = None
             ) -> dict[str, Any]:
    """claims.json's content from the ledger alone: every claim (and init) whose rows are all current is assessed
    from them, as the claims rule would; the others are listed as `pending` with their missing and stale counts.
    Written to ledger/<dataset>/claims.json (and .md) so the verdicts are committed beside their evidence, or to
    each folder of `out` (the DVC stage claims-<dataset> writes results/<dataset>/, where the Snakemake claims
    rule writes; that rule writes both folders from the one assembly).
    `recorded_as_current` counts every recorded row as current (the check that the committed verdicts are what
    the committed rows give, whatever code is checked out now)."""
    from reid.eval.claims import Evidence, declared_claims, run_name, to_markdown, verdicts

    ablation = cfg.get("ablation", {})
    seeds = ablation.get("seeds", [0, 1, 2])
    claims = declared_claims(ablation.get("claims", {}).get(dataset, []), ablation.get("init", ["scratch"]))
    runs = claims_runs(cfg, dataset)
    if recorded_as_current:
        states = {run: {"state": "current" if (row_dir(dataset, run, ledger) / PROVENANCE).is_file() else "missing"}
                  for run in runs}
    else:
        states = status(cfg, dataset, runs, ledger)
    complete, pending, rows_of = [], [], {}
    for method, claim, init in claims:
        needed = rows_of[method, claim.name, init] = [run_name(method, row, init, s) for row in claim.rows
                                                      for s in seeds]
        counts = {k: sum(states[r]["state"] == k for r in needed) for k in ("missing", "stale")}
        if counts["missing"] or counts["stale"]:
            pending.append({"method": method, "claim": dataclasses.asdict(claim), "init": init, "rows": len(needed),
                            **counts})
        else:
            complete.append((method, claim, init))
    current = [row_dir(dataset, run, ledger) for run, st in states.items() if st["state"] == "current"]
    evidence = Evidence(Path(os.devnull), {p.name: p for p in current})  # ledger rows only, never results/
    content = verdicts(evidence, dataset, complete, seeds)
    for entry in content["claims"]:  # where the rows were measured: a claim pairs rows within a seed
        rows = rows_of[entry["method"], entry["claim"]["name"], entry["init"]]
        entry["environments"] = dict(sorted(Counter(row_environment(row_dir(dataset, r, ledger))
                                                    for r in rows).items()))
    content["pending"] = pending
    md = to_markdown(content["claims"], dataset, content["pretraining"], content["probes"]) if complete else ""
    mixed = [e for e in content["claims"] if len(e["environments"]) > 1]
    if mixed:
        md += ("\nRows measured in more than one environment (CPU, dtype: rows): "
               + "; ".join(f"{e['method']} {e['claim']['name']} ({e['init']}): "
                           + ", ".join(f"{k}: {n}" for k, n in e["environments"].items()) for e in mixed) + "\n")
    if pending:
        md += ("\nPending (rows not yet current in the ledger): "
               + "; ".join(f"{p['method']} {p['claim']['name']} ({p['init']})" for p in pending) + "\n")
    folders = [Path(ledger) / dataset] if out is None else [Path(out)] if isinstance(out, (str, Path)) else out
    for folder in map(Path, folders):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "claims.json").write_text(json.dumps(content, indent=2) + "\n")
        (folder / "claims.md").write_text(md)
    return content


def update_readme(readme: str | Path, table: str) -> bool:
    """Replace the README's claims table (between README_BEGIN and README_END) with `table`; True if it changed."""
    path = Path(readme)
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{path}: no claims table markers ({README_BEGIN} ... {README_END})")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_BEGIN}\n{table}{README_END}{tail}"
    path.write_text(new)
    return new != text


def readme_block(readme: str | Path) -> str:
    """The claims table the README holds now (what `update_readme` wrote)."""
    text = Path(readme).read_text()
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].removeprefix("\n")


def assembled(cfg: Mapping[str, Any], ledger: str | Path = LEDGER) -> dict[str, dict[str, Any]]:
    """dataset -> the committed ledger/<dataset>/claims.json, for the datasets params.yaml has claims for."""
    from reid.serialization import read_json

    out = {}
    for dataset in cfg.get("ablation", {}).get("claims", {}):
        path = Path(ledger) / dataset / "claims.json"
        if path.is_file():
            out[dataset] = read_json(path)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("status", "build", "record", "verify", "assemble", "readme", "rerun-inputs"),
                   help="status: each claims row's ledger state (current / stale: which stages changed / missing); "
                        "build: build the stale and missing rows (or --runs) one at a time, seed by seed, and "
                        "record each as it finishes; "
                        "record: copy evaluated rows from --results into the ledger with their provenance; "
                        "verify: re-run ledger rows here (--runs, or --sample N of them) and report agreement; "
                        "assemble: the verdicts of every claim whose rows are current, from the ledger alone, into "
                        "ledger/<dataset>/claims.json and .md; readme: the README's claims table from those files; "
                        "rerun-inputs: re-run, beside the ones on disk, the stages whose outputs are compared by "
                        "content (the synthetic worlds and pretrain stand-ins the dataset's rows use) with today's "
                        "code and record their digests (after an edit to their code: rows whose input comes out the "
                        "same stay current; `build` does this by itself for rows stale by those stages alone)")
    p.add_argument("--dataset", default=None,
                   help="the dataset whose claims rows to list, record, verify or assemble (readme: every one)")
    p.add_argument("--readme", default="README.md", help="readme: the file whose claims table to rewrite")
    p.add_argument("--out", nargs="+", default=None, help="assemble: the folder(s) for claims.json / claims.md, "
                   "all written from one assembly (default: ledger/<dataset>, the files the README table is "
                   "generated from)")
    p.add_argument("--runs", nargs="*", default=None,
                   help="only these runs (default: every run the dataset's claims compare; given empty: none)")
    p.add_argument("--params", default="params.yaml", help="the configuration the fingerprints are computed from")
    p.add_argument("--results", default="results", help="where `record` reads evaluated rows")
    p.add_argument("--ledger", default=str(LEDGER), help="the ledger folder (committed to git)")
    p.add_argument("--only-built", action="store_true",
                   help="record: skip rows not evaluated under --results instead of failing")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="verify: N rows drawn at random from the ledger's rows of --dataset")
    p.add_argument("--seed", type=int, default=0, help="verify --sample: the draw's seed")
    p.add_argument("--cores", type=int, default=2, help="build, verify: Snakemake's --cores")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="verify: also write the report (command, environment, start, wall time, rows) to FILE as "
                        "JSON, e.g. ledger/verify/<dataset>--<date>.json to commit as evidence")


def main(args: argparse.Namespace) -> int:
    from reid.eval.claims import readme_table
    from reid.pipeline import params as C

    cfg = C.load_params(args.params)
    if args.action == "readme":
        found = assembled(cfg, args.ledger)
        changed = update_readme(args.readme, readme_table(found))
        print(f"{args.readme}: claims table {'updated' if changed else 'unchanged'} from "
              f"{', '.join(f'{args.ledger}/{d}/claims.json' for d in found) or 'no assembled claims'}")
        return 0
    if args.dataset is None:
        raise SystemExit(f"{args.action}: name the dataset with --dataset")
    if args.action == "assemble":
        outs = [Path(o) for o in args.out] if args.out else [Path(args.ledger) / args.dataset]
        content = assemble(cfg, args.dataset, args.ledger, out=outs)
        print(f"{', '.join(str(o / 'claims.json') for o in outs)}: {len(content['claims'])} claim(s) assessed from "
              f"current rows, {len(content['pending'])} pending")
        return 0
    runs = args.runs if args.runs is not None else claims_runs(cfg, args.dataset)
    if args.action == "rerun-inputs":
        from reid.pipeline.dvc_yaml import stages_for

        stages = stages_for(cfg, [f"{args.dataset}/{run}" for run in runs])
        for name in sorted(st for st in stages if _content_kind(st)):
            rerun_content_stage(cfg, name, args.params, args.ledger)
        return 0
    if args.action == "record":
        done = 0
        for run in runs:
            if args.only_built and not (Path(args.results) / args.dataset / run / "per_query.csv").is_file():
                continue
            print(f"recorded {record(cfg, args.dataset, run, args.results, args.ledger)}")
            done += 1
        print(f"{done} row(s) recorded under {Path(args.ledger) / args.dataset}; commit them with git")
        return 0
    if args.action == "build":
        if args.runs is None:
            states = status(cfg, args.dataset, runs, args.ledger)
            if rerun_content_stages(cfg, states, args.params, args.ledger):
                states = status(cfg, args.dataset, runs, args.ledger)
            runs = [run for run, st in states.items() if st["state"] != "current"]
        runs = seed_major(runs)
        print(f"ledger build: {len(runs)} row(s) of {args.dataset} to build", flush=True)
        build(cfg, args.dataset, runs, args.cores, args.ledger, args.results)
        print(f"{len(runs)} row(s) recorded under {Path(args.ledger) / args.dataset}; `python -m reid ledger assemble "
              f"--dataset {args.dataset}` and `python -m reid ledger readme` update the verdicts; commit ledger/")
        return 0
    if args.action == "verify":
        if args.sample is not None:
            recorded = sorted(p.parent.name for p in (Path(args.ledger) / args.dataset).glob(f"*/{PROVENANCE}"))
            if args.runs is not None:
                recorded = [r for r in recorded if r in args.runs]
            runs = random.Random(args.seed).sample(recorded, min(args.sample, len(recorded)))
        elif args.runs is None:
            raise SystemExit("verify: name rows with --runs or draw them with --sample N")
        if not runs:
            raise SystemExit(f"verify: no ledger rows under {Path(args.ledger) / args.dataset}")
        for run, st in status(cfg, args.dataset, runs, args.ledger).items():
            if st["state"] == "stale":  # the re-run uses today's code: agreement then also tests that the edit
                print(f"note: {args.dataset}/{run} is stale (changed: {', '.join(st['changed'])}); the re-run uses "
                      f"the code checked out now", flush=True)  # did not change what the row measures
        started, t0, env = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.monotonic(), environment()
        report = verify(cfg, args.dataset, runs, args.cores, args.ledger, args.results, env)
        for r in report:
            how = "exact" if r["strict"] else f"within {max(r['tolerance'].values()):.2f} mAP"
            print(f"{'agrees' if r['agree'] else 'DIFFERS':8s} {args.dataset}/{r['run']} ({how} expected): "
                  f"max |AP| diff {r['max_ap_diff']:.4f}, first-match rank moved for {100 * r['rank_moved']:.1f}% "
                  f"of {r['queries']} queries, max mAP diff {r['max_map_diff']:.2f}"
                  + ("" if r["noise_z"] is None else f" ({r['noise_z']:.1f} x the seed-to-seed sd of a difference)"))
        print(json.dumps(report, sort_keys=True))
        status_code = 0 if all(r["agree"] for r in report) else 1
        if args.report:
            write_verify_report(args.report, sys.argv, env, started, time.monotonic() - t0, report, status_code)
            print(f"verify report written to {args.report}")
        return status_code
    states = status(cfg, args.dataset, runs, args.ledger)
    for run, st in states.items():
        print(f"{st['state']:8s} {args.dataset}/{run}" + (f"  (changed: {', '.join(st['changed'])})"
                                                         if st["changed"] else "")
              + (f"  (re-run to the same bytes: {', '.join(st['same_output'])})" if st["same_output"] else ""))
    counts = {s: sum(1 for v in states.values() if v["state"] == s) for s in ("current", "stale", "missing")}
    print(f"{args.dataset}: {counts['current']} current, {counts['stale']} stale, {counts['missing']} missing "
          f"of {len(states)} rows; `snakemake --cores 2 results/{args.dataset}/claims.md` rebuilds exactly the "
          f"stale and missing ones and records them")
    return 0
