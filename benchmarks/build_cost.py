"""Where a build's time went: the Snakemake benchmark files (logs/**/*.benchmark.tsv) written since a given time,
summed by stage kind (synth, index, teach, pretrain, train, teacher outputs, evaluate), with each kind's share.

    python benchmarks/build_cost.py --since 2026-12-06T14:25

Probes have no benchmark file (tens of seconds each); the per-row DVC sync and Snakemake's own start-up are not
counted either, so the sum is below the build's wall time, which `ledger build` prints per row.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path

KINDS = (("synth", "synth"), ("index", "index"), ("teach_", "teach"), ("pretrain", "pretrain"),
         ("train_", "train"), ("outputs_", "teacher outputs"), ("evaluate_", "evaluate"))


def kind_of(path: Path) -> str:
    if path.parent.name == "pretrain":
        return "pretrain"
    for prefix, kind in KINDS:
        if path.name.startswith(prefix):
            return kind
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--since", required=True, help="local time, YYYY-MM-DDTHH:MM: count benchmark files written after")
    p.add_argument("--logs", default="logs")
    args = p.parse_args()
    since = time.mktime(time.strptime(args.since, "%Y-%m-%dT%H:%M"))
    seconds: dict[str, float] = defaultdict(float)
    jobs: dict[str, int] = defaultdict(int)
    for f in Path(args.logs).rglob("*.benchmark.tsv"):
        if f.stat().st_mtime < since:
            continue
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            seconds[kind_of(f)] += float(rows[-1]["s"])
            jobs[kind_of(f)] += 1
    total = sum(seconds.values())
    print(f"{'stage kind':16s} {'jobs':>5s} {'minutes':>8s} {'share':>6s}")
    for kind in sorted(seconds, key=seconds.get, reverse=True):
        print(f"{kind:16s} {jobs[kind]:5d} {seconds[kind] / 60:8.1f} {100 * seconds[kind] / total:5.1f}%")
    print(f"{'total':16s} {sum(jobs.values()):5d} {total / 60:8.1f}")


if __name__ == "__main__":
    main()
