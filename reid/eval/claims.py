"""Paired comparisons that decide a paper's claims: mean difference with a 95% interval and a verdict.

A claim says one ablation row beats another on a protocol setting (e.g. DeSKPro Table 3: CSA + L_att beats the
baseline on cross-clothes queries). Both rows are evaluated on the same queries with the same seeds, so the
comparison is paired: per seed and per query the difference of the query's AP (mAP claims) or rank-1 hit (R1
claims). Two 95% intervals, one per source of chance: a percentile bootstrap over queries (the same resampled
queries for every seed; the trained models held fixed) and a Student t over the per-seed mean differences (another
training draw of the same rows). Verdict: **holds** (both intervals above 0), **does not hold** (both below 0),
**undecided** (otherwise; one seed has no seed interval and is decided over queries alone). A claim with a
positive control (an oracle form of the mechanism built from the world's ground truth) is **untestable on this
world** unless the control itself holds against its baseline (the same baseline row, or `control_worse`: e.g.
ISP's aligned matching on ground-truth parts vs concatenation of them).

Each claim is assessed once per initialisation (`ablation.init`): `scratch` (random weights) and `pretrained`
(runs named `--pretrained`: the pretrain stage's stand-ins for ImageNet weights); the table also reports what
pretraining does to each claim's baseline row (pretrained vs scratch, paired the same way) and each compared
row's mechanism probe (results/<ds>/<run>/probe.json), which says whether a mechanism does what its paper says
where ranking metrics cannot tell.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

from reid.methods.base import Claim, get_method_class

METRICS = {"ap": "mAP", "r1": "R1"}
INITS = ("scratch", "pretrained")


def run_name(method: str, row: str, init: str, seed: int | None) -> str:
    """The run a row was trained and evaluated as, e.g. `deskpro--oracle_csa--pretrained--s1` (no seed: the
    row's name across seeds). The run-name syntax is reid.pipeline.params' (`parse_run`; a test round-trips
    these names through it); eval does not import the pipeline package, which imports the engine."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return (f"{method}--{row}" + ("--pretrained" if init == "pretrained" else "")
            + (f"--s{seed}" if seed is not None else ""))


def read_query_results(path: str | Path) -> dict[tuple[str, str], tuple[int, float]]:
    """(setting, query image) -> (rank of the first correct match, AP) from an evaluation's per_query.csv."""
    with open(path, newline="") as fh:
        return {(r["setting"], r["query"]): (int(r["first"]), float(r["ap"])) for r in csv.DictReader(fh)}


def read_per_query(path: str | Path, setting: str, metric: str) -> dict[str, float]:
    """query image -> the query's AP or rank-1 hit (0/1), in percent, from an evaluation's per_query.csv."""
    out = {query: 100.0 * (ap if metric == "ap" else float(first == 0))
           for (s, query), (first, ap) in read_query_results(path).items() if s == setting}
    if not out:
        raise ValueError(f"{path}: no query of setting {setting!r}")
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """(seeds, queries) arrays of the two rows on the same queries -> mean difference, 95% interval, n."""
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"paired values must be (seeds, queries) of one shape, got {a.shape} and {b.shape}")
    diff = (a - b).astype(np.float64)
    rng = np.random.default_rng(seed)
    q = diff.shape[1]
    per_query = diff.mean(axis=0)  # the seeds' mean, per query: resampling queries keeps the pairing
    boots = np.empty(n_boot)
    for i in range(n_boot):
        boots[i] = per_query[rng.integers(0, q, q)].mean()
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(per_query.mean()), "lo": float(lo), "hi": float(hi), "seeds": int(diff.shape[0]),
            "queries": int(q)}


def seed_interval(per_seed: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval (df = seeds - 1) of the mean of the per-seed mean differences; None for one seed.

    The query bootstrap conditions on the trained models, so it cannot see that another training of the same rows
    may rank them the other way (PGFL-KD's MCL vs CL: -1.04 on one build, +0.78 on the next, each interval clear
    of 0); the spread between seeds can, at the price of a wide interval when seeds are few."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.size < 2:
        return None
    half = scipy_stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def verdict(stats: Mapping[str, Any]) -> str:
    """holds / does not hold when the query interval and, where there are seeds to spread, the seed interval are
    both on one side of 0; otherwise undecided."""
    lows, highs = [stats["lo"]], [stats["hi"]]
    if stats.get("seed_lo") is not None:
        lows.append(stats["seed_lo"])
        highs.append(stats["seed_hi"])
    if min(lows) > 0:
        return "holds"
    if max(highs) < 0:
        return "does not hold"
    return "undecided"


@dataclass(frozen=True)
class Evidence:
    """Where each evaluated row's files are: `results/<ds>/<run>/`, unless the row was given from elsewhere (a
    committed ledger row, reid/ledger.py), by run name."""

    results: Path
    rows: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, results: str | Path, paths: Sequence[str | Path]) -> "Evidence":
        """Each path a row's folder or a file in it (per_query.csv, probe.json): the folder's name is the run."""
        rows: dict[str, Path] = {}
        for p in map(Path, paths):
            folder = p if p.is_dir() else p.parent
            if rows.setdefault(folder.name, folder) != folder:
                raise ValueError(f"run {folder.name} given twice: {rows[folder.name]} and {folder}")
        return cls(Path(results), rows)


def row_dir(results: Evidence | Path, dataset: str, run: str) -> Path:
    """The folder holding one row's evaluation files."""
    if isinstance(results, Evidence):
        return results.rows.get(run, results.results / dataset / run)
    return Path(results) / dataset / run


def compare(results: Evidence | Path, dataset: str, method: str, better: str, worse: str, setting: str, metric: str,
            seeds: Sequence[int], init: str = "scratch", worse_init: str | None = None) -> dict[str, Any]:
    """Paired statistics of two rows over the seeds whose per_query.csv both have (queries both scored).
    `worse_init` (default: `init`) compares across initialisations, e.g. a row pretrained vs from scratch."""
    a_runs, b_runs = [], []
    for s in seeds:
        pa = row_dir(results, dataset, run_name(method, better, init, s)) / "per_query.csv"
        pb = row_dir(results, dataset, run_name(method, worse, worse_init or init, s)) / "per_query.csv"
        if pa.is_file() and pb.is_file():
            a_runs.append(read_per_query(pa, setting, metric))
            b_runs.append(read_per_query(pb, setting, metric))
    if not a_runs:
        raise FileNotFoundError(f"no seed of {list(seeds)} with both {run_name(method, better, init, None)} and "
                                f"{run_name(method, worse, worse_init or init, None)} evaluated under "
                                f"{row_dir(results, dataset, '')}")
    queries = sorted(set.intersection(*(set(r) for r in a_runs + b_runs)))
    a = np.array([[r[q] for q in queries] for r in a_runs])
    b = np.array([[r[q] for q in queries] for r in b_runs])
    stats: dict[str, Any] = paired_bootstrap(a, b)
    per_seed = (a - b).mean(axis=1)
    seed_ci = seed_interval(per_seed)
    seed_lo, seed_hi = seed_ci if seed_ci is not None else (None, None)
    stats.update(per_seed=[float(d) for d in per_seed], seed_lo=seed_lo, seed_hi=seed_hi,
                 better_mean=float(a.mean()), worse_mean=float(b.mean()))
    stats["verdict"] = verdict(stats)
    return stats


def assess(results: Evidence | Path, dataset: str, method: str, claim: Claim, seeds: Sequence[int],
           init: str = "scratch") -> dict[str, Any]:
    """A claim's learned comparison, its control (when declared) and the final verdict, under one init.
    A partial run whose control rows were not evaluated still reports the learned comparison, with the verdict
    marked "(control not run)" rather than stopping every other claim."""
    learned = compare(results, dataset, method, claim.better, claim.worse, claim.setting, claim.metric, seeds, init)
    out: dict[str, Any] = {"claim": asdict(claim), "method": method, "init": init, "learned": learned,
                           "verdict": learned["verdict"]}
    if claim.control:
        try:
            control = compare(results, dataset, method, claim.control, claim.control_worse or claim.worse,
                              claim.setting, claim.metric, seeds, init)
        except FileNotFoundError:
            out["control"] = None
            out["verdict"] = f"{learned['verdict']} (control not run)"
            return out
        out["control"] = control
        if control["verdict"] != "holds":
            out["verdict"] = "untestable on this world"
    return out


def _seeds_part(stats: Mapping[str, Any], digits: int) -> str:
    """`; seeds lo, hi` (inside the query interval's brackets) where the row pair has a seed interval; a comparison
    of one seed has none, nor do claims.json files written before the seed interval existed."""
    if stats.get("seed_lo") is None:
        return ""
    return f"; seeds {stats['seed_lo']:+.{digits}f}, {stats['seed_hi']:+.{digits}f}"


def _cell(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "-"
    return (f"{stats['mean']:+.1f} [{stats['lo']:+.1f}, {stats['hi']:+.1f}{_seeds_part(stats, 1)}] "
            f"({stats['better_mean']:.1f} vs {stats['worse_mean']:.1f}; {stats['seeds']} seeds x "
            f"{stats['queries']} queries)")


def _control_cell(claim: Mapping[str, Any], stats: Mapping[str, Any] | None) -> str:
    if not claim.get("control"):
        return "-"
    if not stats:
        return f"{claim['control']}: not run"
    return f"{claim['control']} vs {claim.get('control_worse') or claim['worse']}: {_cell(stats)}"


def pretraining_effects(results: Evidence | Path, dataset: str, assessed: list[dict[str, Any]],
                        seeds: Sequence[int]) -> list[dict[str, Any]]:
    """What pretraining does to each claim's baseline row (pretrained vs scratch), when both were run."""
    out, seen = [], set()
    for a in assessed:
        c = a["claim"]
        key = (a["method"], c["worse"], c["setting"], c["metric"])
        if key in seen:
            continue
        seen.add(key)
        try:
            stats = compare(results, dataset, a["method"], c["worse"], c["worse"], c["setting"], c["metric"], seeds,
                            "pretrained", "scratch")
        except FileNotFoundError:
            continue
        out.append({"method": a["method"], "row": c["worse"], "setting": c["setting"], "metric": c["metric"],
                    "stats": stats})
    return out


def probe_summaries(results: Evidence | Path, dataset: str, assessed: list[dict[str, Any]],
                    seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Each compared row's mechanism probe (results/<ds>/<run>/probe.json, `python -m reid probe`): per
    statistic the mean over the seeds that have one of the per-model means. Rows without a probe are left out."""
    out, seen = [], set()
    for a in assessed:
        c, init = a["claim"], a.get("init", "scratch")
        for row in Claim(**c).rows:
            if (a["method"], row, init) in seen:
                continue
            seen.add((a["method"], row, init))
            found = [row_dir(results, dataset, run_name(a["method"], row, init, s)) / "probe.json" for s in seeds]
            reports = [json.loads(p.read_text())["stats"] for p in found if p.is_file()]
            reports = [r for r in reports if r]
            if not reports:
                continue
            names = sorted(set.intersection(*(set(r) for r in reports)))
            out.append({"method": a["method"], "row": row, "init": init, "seeds": len(reports),
                        "stats": {n: float(np.mean([r[n]["mean"] for r in reports])) for n in names}})
    return out


def to_markdown(assessed: list[dict[str, Any]], dataset: str, effects: Sequence[dict[str, Any]] = (),
                probes: Sequence[dict[str, Any]] = ()) -> str:
    lines = [f"### Claims on {dataset}", "",
             ("| method | claim | init | metric | learned: difference [95% CI] | control: difference [95% CI] | "
              "verdict |"), "|---|---|---|---|---|---|---|"]
    for a in assessed:
        c = a["claim"]
        lines.append(f"| {a['method']} | {c['name']} ({c['better']} vs {c['worse']}, {c['setting']}) | "
                     f"{a.get('init', 'scratch')} | {METRICS[c['metric']]} | {_cell(a['learned'])} | "
                     f"{_control_cell(c, a.get('control'))} | **{a['verdict']}** |")
    lines += ["", ("Paired by seed and query, percentage points; two 95% intervals: a percentile bootstrap over "
                   "queries (2,000 resamples; the trained models fixed), then `seeds`, a Student t over the per-seed "
                   "mean differences (another training draw). A verdict needs both on one side of 0. A claim with a "
                   "control is untestable unless the control beats its baseline.")]
    if effects:
        lines += ["", "Pretraining (the pretrain stage's weights vs random initialisation), per baseline row:", "",
                  "| method | row | setting | metric | pretrained vs scratch [95% CI] |", "|---|---|---|---|---|"]
        lines += [f"| {e['method']} | {e['row']} | {e['setting']} | {METRICS[e['metric']]} | {_cell(e['stats'])} |"
                  for e in effects]
    if probes:
        lines += ["", ("Mechanism probes (`python -m reid probe`: per-image statistics against the world's ground "
                       "truth on 256 query images, mean over seeds):"), "", "| method | row | init | probe |",
                  "|---|---|---|---|"]
        lines += [f"| {p['method']} | {p['row']} | {p['init']} | "
                  + ", ".join(f"{n} {v:.3f}" for n, v in p["stats"].items()) + " |" for p in probes]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="the world (or dataset) the runs were evaluated on")
    p.add_argument("--methods", nargs="+", required=True, help="methods whose declared claims to assess")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the seeds each row was run with")
    p.add_argument("--init", nargs="+", choices=INITS, default=["scratch"],
                   help="initialisations to assess every claim under (params.yaml ablation.init)")
    p.add_argument("--results", default="results", help="the results/ folder")
    p.add_argument("--evidence", nargs="+", default=[], metavar="PATH",
                   help="rows read from elsewhere (a ledger row's folder, or its per_query.csv / probe.json): the "
                        "folder's name is the run; the other rows come from --results")
    p.add_argument("--out-md", required=True, help="the verdicts as Markdown")
    p.add_argument("--out-json", required=True, help="the verdicts as JSON")
    p.add_argument("--only", nargs="+", default=None,
                   help="assess only the claims whose name contains one of these strings (a partial run)")


def claim_inits(claim: Claim, default: Sequence[str]) -> list[str]:
    """The initialisations a claim is decided under: its own (`Claim.inits`) or the configured ones."""
    return list(claim.inits) if claim.inits else list(default)


def verdicts(evidence: Evidence, dataset: str, claims: Sequence[tuple[str, Claim, str]],
             seeds: Sequence[int]) -> dict[str, Any]:
    """claims.json's content: each (method, claim, init) assessed, the pretraining effects where both inits were
    run, and the compared rows' probes."""
    assessed = [assess(evidence, dataset, method, claim, seeds, init) for method, claim, init in claims]
    return {"claims": assessed, "pretraining": pretraining_effects(evidence, dataset, assessed, seeds),
            "probes": probe_summaries(evidence, dataset, assessed, seeds)}


def declared_claims(methods: Sequence[str], inits: Sequence[str],
                    only: Sequence[str] | None = None) -> list[tuple[str, Claim, str]]:
    """(method, claim, init) for every declared claim of `methods` (matching `only`) under the inits it needs."""
    return [(m, claim, init) for m in methods for claim in get_method_class(m).claims
            if not only or any(s in claim.name for s in only) for init in claim_inits(claim, inits)]


def readme_table(by_dataset: Mapping[str, Mapping[str, Any]]) -> str:
    """The README's claims table, generated from claims.json files (dataset -> content): one line per claim and
    init with the learned comparison, the control and the verdict; claims listed as `pending` (not yet in the
    evidence) say how many of their rows are missing or stale."""
    lines = ["| method | claim (better vs worse, setting) | world, init | learned [95% CI: queries; seeds] | "
             "control [95% CI: queries; seeds] | verdict |", "|---|---|---|---|---|---|"]
    for dataset, content in by_dataset.items():
        for a in content["claims"]:
            c = a["claim"]
            lines.append(f"| {a['method']} | {c['name']} ({c['better']} vs {c['worse']}, {c['setting']}) | "
                         f"{dataset}, {a.get('init', 'scratch')} | {_short(a['learned'])} | "
                         f"{_short(a.get('control')) if c.get('control') else '-'} | **{a['verdict']}** |")
        for p in content.get("pending", []):
            c = p["claim"]
            lines.append(f"| {p['method']} | {c['name']} ({c['better']} vs {c['worse']}, {c['setting']}) | "
                         f"{dataset}, {p['init']} | - | - | pending: {p['missing']} missing, {p['stale']} stale "
                         f"of {p['rows']} rows |")
    return "\n".join(lines) + "\n"


def _short(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "not run"
    return (f"{stats['mean']:+.2f} [{stats['lo']:+.2f}, {stats['hi']:+.2f}{_seeds_part(stats, 2)}] "
            f"({stats['better_mean']:.2f} vs {stats['worse_mean']:.2f})")


def main(args: argparse.Namespace) -> int:
    only = getattr(args, "only", None)
    claims = declared_claims(args.methods, getattr(args, "init", None) or ["scratch"], only)
    if not claims:
        raise SystemExit(f"no claim of {args.methods} matches --only {only}")
    evidence = Evidence.from_paths(args.results, getattr(args, "evidence", None) or [])
    content = verdicts(evidence, args.dataset, claims, args.seeds)
    md = to_markdown(content["claims"], args.dataset, content["pretraining"], content["probes"])
    Path(args.out_md).write_text(md)
    Path(args.out_json).write_text(json.dumps(content, indent=2) + "\n")
    print(md)
    return 0
