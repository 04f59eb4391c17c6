"""`python -m reid ablation-table`: a method's ablation rows x seeds -> mean and spread, beside the paper.

A Method class declares `ablations` (row -> parameter overrides), `eval_ablations` (row -> (trained row,
test-time overrides)) and `paper_tables` (table -> row -> {metric: value}); the table prints the paper's numbers
next to the measured ones. They are read through the METHODS registry, so a plugin method's rows work too.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping

from reid.pipeline import params as C

METRIC_KEYS = ("R1", "mAP")


def ablation_rows(method: str, cfg: Mapping[str, Any] | None = None) -> list[str]:
    """The method's ABLATIONS and EVAL_ABLATIONS rows in the paper's table order (rows outside the paper's tables
    last, as declared), restricted to `ablation.rows.<method>` when that is set."""
    cls = C.method_class(method)
    rows = list(cls.ablations) + list(cls.eval_ablations)
    paper_order = {row: i for i, row in enumerate(paper_numbers(method))}
    rows.sort(key=lambda row: paper_order.get(row, len(paper_order)))  # stable: the others keep their order
    chosen = C._get(cfg or {}, f"ablation.rows.{method}", None)
    if not chosen:
        return rows
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        raise C.ConfigError(f"ablation.rows.{method} names unknown rows {unknown}; known: {rows}")
    return [r for r in rows if r in chosen]


def ablation_seeds(cfg: Mapping[str, Any]) -> list[int]:
    return [int(s) for s in (C._get(cfg, "ablation.seeds", [0, 1, 2]) or [0])]


def ablation_runs(cfg: Mapping[str, Any], method: str) -> list[str]:
    """Run names of every ablation row for every seed: <method>--<row>--s<seed>."""
    return [f"{method}--{row}--s{seed}" for row in ablation_rows(method, cfg) for seed in ablation_seeds(cfg)]


def _is_row(vals: Any) -> bool:
    """A paper row maps metric names to numbers (a table of tables maps names to rows)."""
    return isinstance(vals, Mapping) and all(not isinstance(v, Mapping) for v in vals.values())


def paper_numbers(method: str) -> dict[str, dict[str, float]]:
    """Every row of the method's paper tables, by row name, in table order."""
    out: dict[str, dict[str, float]] = {}

    def collect(table: Mapping[str, Any]) -> None:
        for row, vals in table.items():
            if _is_row(vals):
                out.setdefault(str(row), {}).update({str(k): v for k, v in vals.items()})
            elif isinstance(vals, Mapping):
                collect(vals)

    collect(C.method_class(method).paper_tables)
    return out


def settings_of(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {k: v for k, v in metrics.items() if isinstance(v, Mapping) and "mAP" in v}


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def assemble(files: list[str | Path]) -> dict[str, Any]:
    """Group metrics files by ablation row (parsed from results/<ds>/<method>--<row>--s<seed>/metrics.json)."""
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    for f in files:
        run = Path(f).parent.name
        parsed = C.parse_run(run)
        row = parsed.ablation or "default"
        metrics = read_metrics(f)
        for setting, vals in settings_of(metrics).items():
            for key in METRIC_KEYS:
                rows.setdefault(row, {}).setdefault(setting, {}).setdefault(key, []).append(float(vals[key]))
    summary: dict[str, Any] = {}
    for row, settings in rows.items():
        summary[row] = {
            setting: {key: dict(zip(("mean", "std"), mean_std(v)), n=len(v)) for key, v in keys.items()}
            for setting, keys in settings.items()
        }
    return summary


def to_markdown(summary: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]], title: str) -> str:
    settings = sorted({s for row in summary.values() for s in row})
    head = ["row"] + [f"{s} {k}" for s in settings for k in METRIC_KEYS] + ["paper"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, vals in summary.items():
        cells = [row]
        for s in settings:
            for k in METRIC_KEYS:
                v = vals.get(s, {}).get(k)
                cells.append(f"{v['mean']:.1f} ± {v['std']:.1f} (n={v['n']})" if v else "-")
        p = paper.get(row, {})
        cells.append(", ".join(f"{k} {v}" for k, v in p.items()) if p else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± sample standard deviation over seeds, in percent; paper numbers are on the real dataset.")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="the method whose ablation table this is")
    p.add_argument("--dataset", required=True, help="the dataset (params.yaml datasets key) the runs are on")
    p.add_argument("--out-md", required=True, help="the table as Markdown")
    p.add_argument("--out-json", required=True, help="the table as JSON (mean and spread per row over seeds)")
    p.add_argument("--out-png", help="also draw the table as bars with error bars (paper values as black ticks)")
    p.add_argument("metrics", nargs="+", help="metrics.json files of the ablation runs")


def main(args: argparse.Namespace) -> int:
    summary = assemble(args.metrics)
    paper = paper_numbers(args.method)
    order = {r: i for i, r in enumerate(ablation_rows(args.method))}
    summary = dict(sorted(summary.items(), key=lambda kv: order.get(kv[0], len(order))))
    md = to_markdown(summary, paper, f"{args.method} ablation on {args.dataset}")
    Path(args.out_md).write_text(md)
    Path(args.out_json).write_text(json.dumps({"rows": summary, "paper": paper}, indent=2, sort_keys=True) + "\n")
    if args.out_png:
        from reid.viz.charts import ablation_chart

        ablation_chart(summary, args.out_png, f"{args.method} on {args.dataset}", paper)
    print(md)
    return 0




def add_show_metrics_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("metrics", nargs="+", help="metrics.json files")


def main_show_metrics(args: argparse.Namespace) -> int:
    """Print each metrics.json as one block: protocol, then R1/R5/mAP/mINP per setting."""
    from reid.engine.commands import format_metrics

    for f in sorted(args.metrics):
        metrics, path = read_metrics(f), Path(f)
        # results/<dataset>/<run>/metrics.json names its run by its folder (two rows of one method stay apart)
        label = f"{metrics.get('dataset')}/{path.parent.name}" if path.parent.name else None
        print(format_metrics(metrics, label))
    return 0


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics.json written by `evaluate`; anything else (not JSON, `{}`, no setting with mAP) is a ValueError
    naming the file."""
    from reid.serialization import read_json

    path = Path(path)
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a metrics file (a JSON object is expected)")
    settings = [k for k, v in metrics.items() if isinstance(v, dict) and "mAP" in v]
    if not isinstance(metrics.get("protocol"), str) or not settings:
        raise ValueError(f"{path}: not a metrics file written by `reid evaluate` (no protocol, or no setting with "
                         "R1 / mAP)")
    for key in settings:
        bad = [m for m in ("R1", "mAP") if not isinstance(metrics[key].get(m), (int, float))]
        if bad:
            raise ValueError(f"{path}: setting {key!r} has no numeric {', '.join(bad)}")
    return metrics
