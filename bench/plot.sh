#!/usr/bin/env bash
# Plots from bench/run.py results files (bench/plot.py), with matplotlib in
# its own venv under target/:  bash bench/plot.sh bench/results/FILE.json...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=target/plot-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import matplotlib" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "matplotlib>=3.8,<4"
fi
exec "$VENV/bin/python" bench/plot.py "$@"
