#!/usr/bin/env bash
# Runs every benchmark in sequence: about 15 minutes on a 2-core machine.
# Usage: bench/run_all.sh [python]   (default: .venv/bin/python, else python3; the package
# must be installed in that interpreter). py-spy, if installed there, adds an ingest profile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
PROFILE=10
if ! "$PY" -c 'import shutil, sys, pathlib; p = pathlib.Path(sys.executable).parent / "py-spy"; sys.exit(0 if p.exists() or shutil.which("py-spy") else 1)'; then
    echo "py-spy not found next to $PY: ingest runs without a profile (pip install py-spy)"
    PROFILE=0
fi
run() { echo; echo "\$ $*"; timeout --signal=TERM 240 "$@"; }
run_long() { echo; echo "\$ $*"; timeout --signal=TERM 900 "$@"; }
run "$PY" bench/bench_reconciler.py 2000 5
run "$PY" bench/bench_store.py --prefill 300000 --events 100000
run "$PY" bench/bench_ingest.py --duration 20 --profile "$PROFILE"
run "$PY" bench/bench_footprint.py --cap 150
run "$PY" bench/bench_idle.py --duration 60
run "$PY" bench/bench_health_latency.py --count 500 --cap 40
run "$PY" bench/bench_faults.py --min-seconds 60
run "$PY" bench/bench_daemon.py -n 5
run "$PY" bench/bench_statusline.py -n 20
# The short form of the soak (the long one, >= 30 minutes: see bench/README.md).
run_long "$PY" bench/bench_soak.py --minutes 6 --window 2
run "$PY" bench/backtest_projections.py
