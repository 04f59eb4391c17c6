#!/usr/bin/env bash
# Every GPU check and benchmark in one call: bash benchmarks/gpu_suite.sh [OUT_DIR] (see benchmarks/gpu_suite.py).
# Sets up .venv first when it is missing (make install: a few minutes on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make install
exec .venv/bin/python benchmarks/gpu_suite.py --out "${1:-benchmarks/out/gpu_suite}"
