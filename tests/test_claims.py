"""Deciding claims: paired bootstrap intervals, verdicts, controls, and the per-query files they read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import reid.methods  # noqa: F401  (registers the built-in methods)
from reid.eval.claims import (assess, paired_bootstrap, pretraining_effects, probe_summaries, read_per_query, run_name,
                              seed_interval, to_markdown, verdict)
from reid.methods.base import METHODS, Claim


def test_a_constant_paired_gain_has_a_zero_width_interval() -> None:
    a = np.array([[3.0, 5.0, 7.0], [2.0, 4.0, 6.0]])
    stats = paired_bootstrap(a, a - 2.0)
    assert stats == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "seeds": 2, "queries": 3}
    assert verdict(stats) == "holds" and verdict(paired_bootstrap(a - 2.0, a)) == "does not hold"


def test_the_interval_is_over_queries_of_the_seed_mean() -> None:
    """Per-query differences (seed means) 1 and -1 in equal numbers: the mean is 0 and the interval spans it;
    one query of +10 among zeros: the bootstrap interval is [0, 10 * k / n] shaped, never below 0."""
    b = np.zeros((2, 40))
    a = np.tile(np.array([1.0, -1.0] * 20), (2, 1))
    stats = paired_bootstrap(a, b, n_boot=500)
    assert stats["mean"] == 0.0 and stats["lo"] < 0 < stats["hi"] and verdict(stats) == "undecided"
    a2 = np.zeros((1, 20))
    a2[0, 3] = 10.0
    s2 = paired_bootstrap(a2, np.zeros((1, 20)), n_boot=500)
    assert s2["mean"] == pytest.approx(0.5) and s2["lo"] >= 0.0


def test_the_seed_interval_is_a_student_t_over_the_per_seed_means() -> None:
    """Per-seed differences 1, 2, 6 (by hand): mean 3, sample sd sqrt(7), t(0.975, df 2) = 4.3027, half-width
    4.3027 * sqrt(7) / sqrt(3) = 6.572; one seed has no interval."""
    lo, hi = seed_interval([1.0, 2.0, 6.0])
    assert lo == pytest.approx(3.0 - 6.5724, abs=1e-3) and hi == pytest.approx(3.0 + 6.5724, abs=1e-3)
    assert seed_interval([4.0]) is None


def test_a_gain_over_queries_that_one_seed_reverses_is_undecided(tmp_path: Path) -> None:
    """Every query gains +3 in seeds 0 and 1 and loses 1 in seed 2: the query interval is [5/3, 5/3] (the seed
    mean is the same for every query), the seed interval spans 0 (mean 5/3, sd 2.309, half-width 5.737), so the
    claim is undecided; with seed 2 also gaining it holds."""
    queries = [f"q{i}.jpg" for i in range(40)]
    for s, gain in ((0, 0.03), (1, 0.03), (2, -0.01)):
        _per_query(tmp_path / "w" / f"m--good--s{s}" / "per_query.csv", {q: (0, 0.5 + gain) for q in queries})
        _per_query(tmp_path / "w" / f"m--base--s{s}" / "per_query.csv", {q: (0, 0.5) for q in queries})
    stats = assess(tmp_path, "w", "m", Claim("good beats base", "good", "base", "standard", "ap"), [0, 1, 2])["learned"]
    assert stats["lo"] == pytest.approx(5 / 3) and stats["hi"] == pytest.approx(5 / 3)
    assert stats["per_seed"] == pytest.approx([3.0, 3.0, -1.0])
    assert stats["seed_lo"] == pytest.approx(5 / 3 - 5.737, abs=1e-3) and stats["seed_hi"] > 0
    assert stats["verdict"] == "undecided"
    assert verdict({**stats, "seed_lo": 0.5, "seed_hi": 3.0}) == "holds"
    assert verdict({**stats, "seed_lo": None, "seed_hi": None}) == "holds"  # one seed: queries alone


def _per_query(path: Path, values: dict[str, tuple[int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["setting,query,first,ap"] + [f"standard,{q},{f},{ap}" for q, (f, ap) in values.items()]
    path.write_text("\n".join(lines) + "\n")


def test_assess_pairs_rows_by_seed_and_query_and_checks_the_control(tmp_path: Path) -> None:
    queries = [f"q{i}.jpg" for i in range(30)]
    for s in (0, 1):
        _per_query(tmp_path / "w" / f"m--good--s{s}" / "per_query.csv", {q: (0, 0.8) for q in queries})
        _per_query(tmp_path / "w" / f"m--base--s{s}" / "per_query.csv", {q: (1, 0.5) for q in queries})
        _per_query(tmp_path / "w" / f"m--oracle--s{s}" / "per_query.csv", {q: (1, 0.4) for q in queries})
    assert read_per_query(tmp_path / "w/m--good--s0/per_query.csv", "standard", "r1")["q1.jpg"] == 100.0
    claim = Claim("good beats base", "good", "base", "standard", "ap")
    result = assess(tmp_path, "w", "m", claim, [0, 1, 2])  # seed 2 absent on both: 2 seeds used
    assert result["verdict"] == "holds"
    assert result["learned"]["mean"] == pytest.approx(30.0) and result["learned"]["seeds"] == 2
    with_control = assess(tmp_path, "w", "m", Claim("good beats base", "good", "base", "standard", "ap", "oracle"),
                          [0, 1])
    assert with_control["control"]["verdict"] == "does not hold"
    assert with_control["verdict"] == "untestable on this world"
    # a partial run without the control's evaluations still reports the learned comparison, marked as such
    missing = assess(tmp_path, "w", "m", Claim("good beats base", "good", "base", "standard", "ap", "absent"), [0, 1])
    assert missing["control"] is None and missing["verdict"] == "holds (control not run)"
    assert "absent: not run" in to_markdown([missing], "w")


def test_a_control_with_its_own_baseline_compares_that_pair(tmp_path: Path) -> None:
    """ISP's ARM claim: the control is the same comparison on ground-truth parts (oracle vs oracle_concat). The
    oracle loses to `base` but beats its own baseline row: read against `base` it would say untestable."""
    queries = [f"q{i}.jpg" for i in range(30)]
    for s in (0, 1):
        for row, ap in (("good", 0.6), ("base", 0.5), ("oracle", 0.45), ("oracle_concat", 0.3)):
            _per_query(tmp_path / "w" / f"m--{row}--s{s}" / "per_query.csv", {q: (0, ap) for q in queries})
    claim = Claim("good beats base", "good", "base", "standard", "ap", "oracle", "oracle_concat")
    assert claim.rows == ("good", "base", "oracle", "oracle_concat")
    assert Claim("x", "good", "base", "standard", control="oracle").rows == ("good", "base", "oracle")
    result = assess(tmp_path, "w", "m", claim, [0, 1])
    assert result["control"]["mean"] == pytest.approx(15.0) and result["verdict"] == "holds"
    assert "oracle vs oracle_concat: +15.0" in to_markdown([result], "w")


def test_each_init_is_assessed_on_its_own_runs_and_pretraining_is_reported(tmp_path: Path) -> None:
    """Scratch: good beats base; pretrained: base catches up (the claim no longer holds there); pretraining
    lifts base by 20 AP points. An init that reads the other's files would give the same verdict twice."""
    assert run_name("m", "good", "pretrained", 2) == "m--good--pretrained--s2"
    from reid.pipeline.params import Run, parse_run  # the pipeline's run-name syntax reads the same names

    assert parse_run(run_name("pgfl_kd", "test_P", "pretrained", 2)) == Run("pgfl_kd", "test_P", 2, True)
    assert parse_run(run_name("pgfl_kd", "full", "scratch", None)) == Run("pgfl_kd", "full", None, False)
    queries = [f"q{i}.jpg" for i in range(30)]
    for s in (0, 1):
        _per_query(tmp_path / "w" / f"m--good--s{s}" / "per_query.csv", {q: (0, 0.8) for q in queries})
        _per_query(tmp_path / "w" / f"m--base--s{s}" / "per_query.csv", {q: (1, 0.5) for q in queries})
        _per_query(tmp_path / "w" / f"m--good--pretrained--s{s}" / "per_query.csv", {q: (0, 0.6) for q in queries})
        _per_query(tmp_path / "w" / f"m--base--pretrained--s{s}" / "per_query.csv", {q: (0, 0.7) for q in queries})
    claim = Claim("good beats base", "good", "base", "standard", "ap")
    scratch = assess(tmp_path, "w", "m", claim, [0, 1], "scratch")
    pre = assess(tmp_path, "w", "m", claim, [0, 1], "pretrained")
    assert (scratch["verdict"], pre["verdict"]) == ("holds", "does not hold")
    assert pre["learned"]["mean"] == pytest.approx(-10.0) and pre["init"] == "pretrained"
    effects = pretraining_effects(tmp_path, "w", [scratch, pre], [0, 1])
    assert len(effects) == 1 and effects[0]["row"] == "base"
    assert effects[0]["stats"]["mean"] == pytest.approx(20.0) and effects[0]["stats"]["verdict"] == "holds"


def test_probes_of_the_compared_rows_are_averaged_over_seeds_per_init(tmp_path: Path) -> None:
    import json

    queries = [f"q{i}.jpg" for i in range(10)]
    for row in ("good", "base"):
        for s in (0, 1):
            _per_query(tmp_path / "w" / f"m--{row}--s{s}" / "per_query.csv", {q: (0, 0.5) for q in queries})
    stats = {0: {"corr": {"mean": 0.2, "std": 0.1}}, 1: {"corr": {"mean": 0.6, "std": 0.1}}}
    for s in (0, 1):
        (tmp_path / "w" / f"m--good--s{s}" / "probe.json").write_text(json.dumps({"stats": stats[s]}))
        (tmp_path / "w" / f"m--base--s{s}" / "probe.json").write_text(json.dumps({"stats": {}}))  # no mechanism
    assessed = [assess(tmp_path, "w", "m", Claim("good beats base", "good", "base", "standard", "ap"), [0, 1])]
    probes = probe_summaries(tmp_path, "w", assessed, [0, 1, 2])
    assert probes == [{"method": "m", "row": "good", "init": "scratch", "seeds": 2, "stats": {"corr": 0.4}}]
    assert "| m | good | scratch | corr 0.400 |" in to_markdown(assessed, "w", (), probes)


@pytest.mark.parametrize("method", METHODS.names())
def test_declared_claims_name_rows_of_the_methods_tables(method: str) -> None:
    cls = METHODS.get(method)
    rows = {*cls.ablations, *cls.extra_ablations, *cls.eval_ablations}
    for claim in cls.claims:
        for row in claim.rows:
            assert row in rows, f"{method}: claim {claim.name!r} names unknown row {row!r}"
        assert claim.metric in ("ap", "r1")


def test_a_claim_that_needs_scratch_rows_names_its_inits() -> None:
    """ablation.init is [pretrained] (the papers start from ImageNet); SUREID's NPKD claims also need scratch
    (only there is their control's teacher better than the student's own), so exactly their rows run from scratch."""
    import copy

    from reid import ledger
    from reid.eval.claims import claim_inits
    from reid.methods.base import get_method_class
    from reid.pipeline import params as C

    cfg = copy.deepcopy(C.load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    assert cfg["ablation"]["init"] == ["pretrained"]
    cfg["ablation"]["claims"]["synthocc"] = ["sureid"]
    claims = {c.name: c for c in get_method_class("sureid").claims}
    assert claim_inits(claims["NPKD recovers what HTS loses (Table IV)"], ["pretrained"]) == ["scratch", "pretrained"]
    assert claim_inits(claims["SUREID beats the vanilla DeiT-S (Table IV)"], ["pretrained"]) == ["pretrained"]
    runs = set(ledger.claims_runs(cfg, "synthocc"))
    assert {"sureid--t4_hts--s0", "sureid--strong_teacher_npkd--s2", "sureid--t4_hts_npkd--pretrained--s1"} <= runs
    assert "sureid--t4_vanilla--s0" not in runs and "sureid--t4_vanilla--pretrained--s0" in runs
