"""Ablation tables: runs grouped by row, mean and sample std over seeds, paper numbers beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reid.pipeline import params as C
from reid import report


def _write(root: Path, run: str, r1: float, m_ap: float) -> Path:
    path = root / run / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"protocol": "test", "cc": {"R1": r1, "mAP": m_ap, "R5": 0.0}}))
    return path


def test_assemble_gives_mean_and_sample_std_per_row(tmp_path: Path) -> None:
    files = [
        _write(tmp_path, "deskpro--model2_csa--s0", 10.0, 20.0),
        _write(tmp_path, "deskpro--model2_csa--s1", 14.0, 22.0),
        _write(tmp_path, "deskpro--model2_csa--s2", 12.0, 30.0),
        _write(tmp_path, "deskpro--deskpro--s0", 50.0, 40.0),
    ]
    summary = report.assemble(files)
    # R1: mean 12, sample std sqrt(((-2)^2 + 2^2 + 0^2) / 2) = 2; mAP: mean 24, std sqrt((16 + 4 + 36) / 2) = sqrt(28)
    assert summary["model2_csa"]["cc"]["R1"] == {"mean": 12.0, "std": 2.0, "n": 3}
    assert summary["model2_csa"]["cc"]["mAP"]["mean"] == 24.0
    assert summary["model2_csa"]["cc"]["mAP"]["std"] == pytest.approx(28**0.5)
    assert summary["deskpro"]["cc"]["R1"] == {"mean": 50.0, "std": 0.0, "n": 1}
    md = report.to_markdown(summary, {"deskpro": {"R1": 65.8}}, "t")
    assert "| model2_csa | 12.0 ± 2.0 (n=3) | 24.0 ± 5.3 (n=3) | - |" in md
    assert "| deskpro | 50.0 ± 0.0 (n=1) | 40.0 ± 0.0 (n=1) | R1 65.8 |" in md


def test_paper_numbers_flatten_tables_of_tables() -> None:
    """SUREID keeps its tables in one dict of tables; every row must still reach the ablation table."""
    paper = report.paper_numbers("sureid")
    assert paper["t4_vanilla"] == {"throughput": 1074, "R1": 57.6, "mAP": 49.2}
    assert "IV" not in paper
    assert report.paper_numbers("pgfl_kd")["baseline"] == {"R1": 52.7, "mAP": 45.9}


def test_ablation_rows_can_be_restricted_in_params() -> None:
    everything = report.ablation_runs({"ablation": {"seeds": [0, 1]}}, "pgfl_kd")
    # Tables 6-7 with the literal Eq. 4 row (8), Table 8 (5), the control: raw baseline feature, visible pooling (2)
    assert len(everything) == 2 * (8 + 5 + 2) and everything[0] == "pgfl_kd--baseline--s0"
    assert everything[-2:] == ["pgfl_kd--visible_pool--s0", "pgfl_kd--visible_pool--s1"]
    cfg = {"ablation": {"seeds": [0], "rows": {"pgfl_kd": ["full", "baseline"]}}}
    assert report.ablation_runs(cfg, "pgfl_kd") == ["pgfl_kd--baseline--s0", "pgfl_kd--full--s0"]  # table order
    with pytest.raises(C.ConfigError, match=r"ablation.rows.pgfl_kd names unknown rows \['nope'\]"):
        report.ablation_runs({"ablation": {"rows": {"pgfl_kd": ["nope"]}}}, "pgfl_kd")


def test_extra_ablations_are_reachable_by_run_name() -> None:
    from reid.methods.pgfl_kd import EXTRA_ABLATIONS

    assert C.ablation_overrides("pgfl_kd", "full_t1_heatmaps") == EXTRA_ABLATIONS["full_t1_heatmaps"]
    assert "full_t1_heatmaps" not in report.ablation_rows("pgfl_kd")  # not part of the assembled table


def test_the_ablation_cli_draws_the_table(tmp_path: Path, capsys) -> None:
    from reid.cli import main

    files = [_write(tmp_path, f"pgfl_kd--{row}--s{s}", 30.0 + s, 20.0 + s) for row in ("baseline", "full")
             for s in (0, 1)]
    out = tmp_path / "t"
    assert main(["ablation-table", "--method", "pgfl_kd", "--dataset", "synthocc", "--out-md", f"{out}.md",
                 "--out-json", f"{out}.json", "--out-png", f"{out}.png", *map(str, files)]) == 0
    import cv2

    img = cv2.imread(f"{out}.png")
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    assert json.loads(Path(f"{out}.json").read_text())["rows"]["full"]["cc"]["R1"]["n"] == 2
